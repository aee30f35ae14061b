"""LeaderElector against FakeKube, with time on a ManualClock.

Each elector sleeps `retry_period` on the clock between attempts; `tick` advances the clock
and waits until every named elector has finished the attempt that woke up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from kubernetes.aio.client import ApiClient

from rdscsi.clock import ManualClock
from rdscsi.io.kube.lease import LeaderElector, Outcome
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi.objects import lease

from .conftest import DEAD_URL, new_client, our_tasks, until

NS, NAME = "rds-csi", "rds-csi-controller"


class Calls:
    """Records when leadership started and stopped (sync start, async stop: both kinds)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.started: list[float] = []
        self.stopped: list[float] = []

    def on_started(self) -> None:
        self.started.append(self.clock.monotonic())

    async def on_stopped(self) -> None:
        await asyncio.sleep(0)
        self.stopped.append(self.clock.monotonic())


def elector(api: ApiClient, identity: str, clock: ManualClock, calls: Calls) -> LeaderElector:
    return LeaderElector(
        api,
        NS,
        NAME,
        identity,
        clock,
        lease_duration=15.0,
        renew_deadline=10.0,
        retry_period=2.0,
        on_started_leading=calls.on_started,
        on_stopped_leading=calls.on_stopped,
    )


async def tick(clock: ManualClock, electors: Sequence[LeaderElector], seconds: float = 2.0) -> None:
    before = [e.attempts for e in electors]
    clock.advance(seconds)
    await until(
        lambda: all(e.attempts > b for e, b in zip(electors, before, strict=True)),
        f"attempts after {seconds}s",
    )


@pytest.fixture
async def api_b(kube: FakeKube) -> AsyncIterator[ApiClient]:
    client = await new_client(kube.url)
    try:
        yield client
    finally:
        await client.close()


def held(kube: FakeKube) -> dict[str, Any]:
    obj = kube.get("coordination.k8s.io/v1", "Lease", NAME, NS)
    assert obj is not None
    spec: dict[str, Any] = obj["spec"]
    return spec


async def pair(
    api: ApiClient, api_b: ApiClient, clock: ManualClock
) -> tuple[LeaderElector, LeaderElector, Calls, Calls]:
    """Two candidates started together; returns (leader, follower, their calls)."""
    ca, cb = Calls(clock), Calls(clock)
    a, b = elector(api, "a", clock, ca), elector(api_b, "b", clock, cb)
    a.start()
    b.start()
    await until(lambda: a.attempts >= 1 and b.attempts >= 1, "first attempts")
    assert [a.is_leader, b.is_leader].count(True) == 1
    await until(lambda: len(ca.started) + len(cb.started) == 1, "on_started_leading")
    return (a, b, ca, cb) if a.is_leader else (b, a, cb, ca)


async def test_two_candidates_exactly_one_leader(
    kube: FakeKube, api: ApiClient, api_b: ApiClient, clock: ManualClock
) -> None:
    leader, follower, lc, fc = await pair(api, api_b, clock)
    try:
        for _ in range(20):  # 40 s: well past the lease duration
            await tick(clock, [leader, follower])
            assert leader.is_leader and not follower.is_leader
            assert follower.last_outcome is Outcome.BUSY
        spec = held(kube)
        assert spec["holderIdentity"] == leader.identity
        assert spec["leaseDurationSeconds"] == 15
        assert spec["leaseTransitions"] == 0
        assert spec["renewTime"] == "2023-11-14T22:14:00.000000Z"  # renewed at 40 s
        assert spec["acquireTime"] == "2023-11-14T22:13:20.000000Z"  # kept across renewals
        assert len(lc.started) == 1 and lc.stopped == [] and fc.started == []
        assert follower.holder == leader.identity
    finally:
        await follower.stop()
        await leader.stop()
    assert our_tasks() == []


async def test_takeover_waits_a_lease_duration_after_the_last_renewal(
    kube: FakeKube, api: ApiClient, api_b: ApiClient, clock: ManualClock
) -> None:
    leader, follower, lc, fc = await pair(api, api_b, clock)
    try:
        for _ in range(3):
            await tick(clock, [leader, follower])
        last_renew = clock.monotonic()
        await leader.stop(release=False)  # crashed: the Lease still names it
        assert lc.stopped == [last_renew] and not leader.is_leader
        assert held(kube)["holderIdentity"] == leader.identity
        while not follower.is_leader:
            await tick(clock, [follower])
            assert clock.monotonic() - last_renew < 30, "never took over"
        await until(lambda: fc.started != [], "on_started_leading")
        took_over = fc.started[0]
        assert took_over >= last_renew + 15.0
        assert took_over <= last_renew + 15.0 + 2 * 2.0  # observed within a retry, then a retry
        spec = held(kube)
        assert spec["holderIdentity"] == follower.identity
        assert spec["leaseTransitions"] == 1
    finally:
        await follower.stop()
        await leader.stop()


async def test_release_on_stop_hands_over_at_the_next_retry(
    kube: FakeKube, api: ApiClient, api_b: ApiClient, clock: ManualClock
) -> None:
    leader, follower, lc, fc = await pair(api, api_b, clock)
    try:
        await tick(clock, [leader, follower])
        await leader.stop()  # release=True
        assert held(kube)["holderIdentity"] in (None, "")
        stopped = clock.monotonic()
        await tick(clock, [follower])
        assert follower.is_leader
        await until(lambda: fc.started != [], "on_started_leading")
        assert fc.started == [stopped + 2.0]
        assert lc.stopped == [stopped]
    finally:
        await follower.stop()
    assert held(kube)["holderIdentity"] in (None, "")  # released again


async def test_leader_that_cannot_renew_steps_down_within_renew_deadline(
    kube: FakeKube, api: ApiClient, api_b: ApiClient, clock: ManualClock
) -> None:
    leader, follower, lc, fc = await pair(api, api_b, clock)
    lost_api = api if leader.identity == "a" else api_b
    try:
        await tick(clock, [leader, follower])
        last_renew = clock.monotonic()
        lost_api.configuration.host = DEAD_URL  # its API calls now fail at once
        while lc.stopped == []:
            await tick(clock, [leader, follower])
            if clock.monotonic() < last_renew + 10.0:
                assert leader.is_leader
        assert lc.stopped == [last_renew + 10.0]
        assert not leader.is_leader
        # Safety: the other replica starts only after the old leader has stopped.
        while not follower.is_leader:
            await tick(clock, [leader, follower])
        await until(lambda: fc.started != [], "on_started_leading")
        assert fc.started[0] >= last_renew + 15.0 > lc.stopped[0]
    finally:
        await follower.stop()
        await leader.stop()


@pytest.fixture
async def black_hole() -> AsyncIterator[str]:
    """A server that accepts connections and never answers (a hung API server)."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.close()


async def test_hung_renewal_is_bounded_by_the_clock(
    kube: FakeKube, api: ApiClient, clock: ManualClock, black_hole: str
) -> None:
    calls = Calls(clock)
    solo = elector(api, "a", clock, calls)
    solo.start()
    try:
        await until(lambda: solo.is_leader, "leadership")
        last_renew = clock.monotonic()
        api.configuration.host = black_hole
        attempts = solo.attempts
        clock.advance(2.0)  # the renewal starts and hangs
        await asyncio.sleep(0)
        clock.advance(7.9)
        for _ in range(20):
            await asyncio.sleep(0)
        assert calls.stopped == [] and solo.attempts == attempts
        # is_leader itself already turns false at the deadline, whatever the loop is doing.
        clock.advance(0.1)
        assert not solo.is_leader
        await until(lambda: calls.stopped != [], "on_stopped_leading")
        assert calls.stopped == [last_renew + 10.0]
        assert solo.last_outcome is Outcome.FAILED
    finally:
        api.configuration.host = kube.url
        await solo.stop()


async def test_existing_foreign_lease_is_respected_then_taken(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    # Another replica holds it (renewTime from the real clock: irrelevant, we do not trust it).
    kube.put(lease(NS, NAME, "old-pod", duration=15))
    calls = Calls(clock)
    e = elector(api, "new", clock, calls)
    e.start()
    try:
        await until(lambda: e.attempts == 1, "first attempt")
        assert e.last_outcome is Outcome.BUSY and e.holder == "old-pod"
        while not e.is_leader:
            await tick(clock, [e])
        await until(lambda: calls.started != [], "on_started_leading")
        assert calls.started == [clock.monotonic()]
        assert clock.monotonic() - 1000.0 >= 15.0
        assert held(kube)["leaseTransitions"] == 1
    finally:
        await e.stop()


async def test_lease_taken_by_another_stops_leading_at_once(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    calls = Calls(clock)
    e = elector(api, "a", clock, calls)
    e.start()
    try:
        await until(lambda: e.is_leader, "leadership")
        # An operator (or a buggy peer) rewrites the Lease to another holder.
        kube.put(lease(NS, NAME, "intruder"))
        await tick(clock, [e])
        assert not e.is_leader  # at once, not after the renew deadline
        await until(lambda: calls.stopped != [], "on_stopped_leading")
        assert calls.stopped == [clock.monotonic()]
    finally:
        await e.stop()


def test_timings_are_validated() -> None:
    clock = ManualClock()
    api: Any = None
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(api, NS, NAME, "a", clock, lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(api, NS, NAME, "", clock)


async def test_steps_down_at_the_deadline_even_between_retries(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    calls = Calls(clock)
    e = LeaderElector(
        api,
        NS,
        NAME,
        "a",
        clock,
        lease_duration=15.0,
        renew_deadline=10.0,
        retry_period=3.0,
        on_stopped_leading=calls.on_stopped,
    )
    e.start()
    try:
        await until(lambda: e.is_leader, "leadership")
        last_renew = clock.monotonic()
        api.configuration.host = DEAD_URL
        for _ in range(3):  # failed renewals at +3, +6, +9
            await tick(clock, [e], 3.0)
        assert e.is_leader and calls.stopped == []
        clock.advance(1.0)  # +10: the deadline, not the next retry at +12
        await until(lambda: calls.stopped != [], "on_stopped_leading")
        assert calls.stopped == [last_renew + 10.0]
    finally:
        api.configuration.host = kube.url
        await e.stop()


async def test_slow_start_up_does_not_hold_up_renewals(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    release = asyncio.Event()
    cancelled: list[float] = []

    async def slow_start() -> None:
        try:
            await release.wait()  # e.g. listing 10k VolumeAttachments on a slow API
        except asyncio.CancelledError:
            cancelled.append(clock.monotonic())
            raise

    calls = Calls(clock)
    e = LeaderElector(
        api,
        NS,
        NAME,
        "a",
        clock,
        on_started_leading=slow_start,
        on_stopped_leading=calls.on_stopped,
    )
    e.start()
    try:
        await until(lambda: e.is_leader, "leadership")
        for _ in range(10):  # 20 s, longer than the lease: still renewing
            await tick(clock, [e])
            assert e.is_leader and e.renewed_at == clock.monotonic()
        # Leadership ends while start-up is still running: start-up is cancelled first.
        kube.put(lease(NS, NAME, "intruder"))
        await tick(clock, [e])
        await until(lambda: calls.stopped != [], "on_stopped_leading")
        assert cancelled == [clock.monotonic()]
    finally:
        await e.stop()
    assert our_tasks() == []


async def test_stop_from_inside_the_callbacks(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    stopped = asyncio.Event()
    holder: list[LeaderElector] = []

    async def give_up() -> None:  # e.g. start-up reconciliation failed
        await holder[0].stop()

    e = LeaderElector(
        api, NS, NAME, "a", clock, on_started_leading=give_up, on_stopped_leading=stopped.set
    )
    holder.append(e)
    e.start()
    await asyncio.wait_for(stopped.wait(), 5)
    await until(lambda: our_tasks() == [], "every task to end")
    assert not e.is_leader
    assert held(kube)["holderIdentity"] in (None, "")  # released
