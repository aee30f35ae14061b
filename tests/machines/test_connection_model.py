"""Model-based test of the Connection machine against an independent reference table."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rdscsi.machines import ConnectionModel, ConnInput, TransitionNotAllowed, compile_machine
from rdscsi.machines.connection import ConnectionMachine

from .support import HookLog, coverage_settings, make_rig, uncovered

ADDRESS = "10.0.0.1:22"
CAP_WITH_JITTER = 16.0 * 1.1


@dataclass(frozen=True)
class Ref:
    state: str = "starting"
    failures: int = 0  # failed dials since the link was last up
    reconnect: bool = False  # the next success is a reconnect (the link was up before)


# (state, event) -> (target, hooks); `failed` also counts a failure, `succeeded` resets.
TABLE: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("starting", "dial"): ("connecting", ()),
    ("connecting", "succeeded"): ("connected", ("reconcile",)),
    ("connecting", "failed"): ("backoff", ()),
    ("connected", "lost"): ("disconnected", ("RDSDisconnected",)),
    ("disconnected", "retry"): ("reconnecting", ()),
    ("backoff", "retry"): ("reconnecting", ()),
    ("reconnecting", "succeeded"): (
        "connected",
        ("reconcile", "RDSReconnected", "reconnect_succeeded"),
    ),
    ("reconnecting", "failed"): ("backoff", ("reconnect_failed",)),
}
for _s in ("starting", "connecting", "disconnected", "backoff", "reconnecting"):
    TABLE[(_s, "close")] = ("closed", ())
TABLE[("connected", "close")] = ("closed", ("RDSDisconnected",))

# `close` is final: keep it rare so walks reach the reconnect paths.
EVENTS = ("dial", "succeeded", "failed", "lost", "retry") * 4 + ("close",)


class ConnectionModelTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = HookLog(compile_machine(ConnectionMachine).hook_names)
        self.rig = make_rig((self.log,))
        self.engine = self.rig.machines.connection
        self.model = self.engine.track(ConnectionModel(ADDRESS))
        self.ref = Ref()
        self.delays: list[tuple[int, float]] = []  # (failures before, delay chosen)

    @rule(event=st.sampled_from(EVENTS), jitter=st.floats(-1.0, 1.0))
    def send(self, event: str, jitter: float) -> None:
        now = self.rig.clock.monotonic()
        expected = TABLE.get((self.ref.state, event))
        before = self.model.fields()
        start, sink_start = len(self.log.fired), len(self.rig.sink.events)
        if expected is None:
            with pytest.raises(TransitionNotAllowed) as err:
                self.engine.send(self.model, event, ConnInput(now, jitter))
            assert ADDRESS in str(err.value) and self.ref.state in str(err.value)
            assert self.model.fields() == before
            return
        target, hooks = expected
        failures_before = self.ref.failures
        self.engine.send(self.model, event, ConnInput(now, jitter))
        if event == "failed":
            self.ref = replace(self.ref, failures=self.ref.failures + 1)
            self.delays.append((failures_before, self.model.delay))
        if event == "lost":
            self.ref = replace(self.ref, failures=0)
        if event == "succeeded":
            self.ref = replace(self.ref, failures=0)
        self.ref = replace(self.ref, state=target)
        fired = tuple(h for _, h, _ in self.log.fired[start:])
        assert fired == hooks, f"{event}: fired {fired}, expected {hooks}"
        reasons = [e.reason for e in list(self.rig.sink.events)[sink_start:]]
        assert reasons == [h for h in hooks if h[0].isupper()]
        if target == "connected" and self.log.fired[start:]:
            # every successful (re)connect fires exactly one reconcile trigger
            assert self.rig.triggers[-1] == f"connection:{event}"
            assert fired.count("reconcile") == 1
            if self.model.attempt != 0:
                raise AssertionError("backoff not reset after a successful reconnect")

    @precondition(lambda self: self.ref.state == "backoff")
    @rule(k=st.integers(1, 8), jitter=st.floats(-1.0, 1.0))
    def long_outage(self, k: int, jitter: float) -> None:
        # many redials failing in a row: walks the whole backoff ladder up to its cap
        for _ in range(k):
            self.rig.clock.advance(self.model.delay)
            self.send("retry", jitter)
            self.send("failed", jitter)

    @rule(dt=st.sampled_from([0.5, 1.0, 5.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.rig.clock.advance(dt)

    @invariant()
    def state_matches_reference(self) -> None:
        assert self.model.state == self.ref.state
        assert self.model.attempt == self.ref.failures

    @invariant()
    def backoff_sequence(self) -> None:
        for failures, delay in self.delays:
            base = min(16.0, 2.0**failures)
            assert base * 0.9 - 1e-9 <= delay <= base * 1.1 + 1e-9, (failures, delay)
            assert delay <= CAP_WITH_JITTER

    @invariant()
    def gauges(self) -> None:
        for state in compile_machine(ConnectionMachine).states:
            want = 1.0 if self.model.state == state else 0.0
            assert self.rig.gauge("connection", state) == want
        up = self.rig.sample("rds_csi_rds_connection_state", {"appliance": ADDRESS})
        assert up == (1.0 if self.model.state == "connected" else 0.0)

    @invariant()
    def reconnect_counters(self) -> None:
        fired = [h for _, h, _ in self.log.fired]
        assert self.rig.sample("rds_csi_rds_reconnect_total", {"status": "success"}) == fired.count(
            "reconnect_succeeded"
        )
        assert self.rig.sample("rds_csi_rds_reconnect_total", {"status": "failure"}) == fired.count(
            "reconnect_failed"
        )
        assert fired.count("RDSReconnected") == fired.count("reconnect_succeeded")


def test_connection_machine_against_reference() -> None:
    run_state_machine_as_test(ConnectionModelTest, settings=coverage_settings())
    missing = uncovered(compile_machine(ConnectionMachine))
    assert not missing, f"transitions never exercised: {missing}"
