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
from rdscsi.machines.connection import REJECTED_SETTINGS, ConnectionMachine

from .support import HookLog, coverage_settings, make_rig, uncovered

ADDRESS = "10.0.0.1:22"
ON = {"appliance": ADDRESS}  # a connection without a fleet name is known by its address
CAP_WITH_JITTER = 16.0 * 1.1


@dataclass(frozen=True)
class Ref:
    state: str = "starting"
    failures: int = 0  # failed dials since the link was last up
    reconnect: bool = False  # the next success is a reconnect (the link was up before)
    lost_at: float | None = None  # when the link went down (or the first dial failed)
    setting: str = ""  # the last rejection's setting, until a success


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
    ("connecting", "rejected"): ("misconfigured", ("RDSMisconfigured", "config_rejected")),
    ("reconnecting", "rejected"): ("misconfigured", ("RDSMisconfigured", "config_rejected")),
    ("misconfigured", "retry"): ("reconnecting", ()),
}
for _s in ("starting", "connecting", "disconnected", "backoff", "misconfigured", "reconnecting"):
    TABLE[(_s, "close")] = ("closed", ())
TABLE[("connected", "close")] = ("closed", ("RDSDisconnected",))

# `close` is final: keep it rare so walks reach the reconnect paths.
EVENTS = ("dial", "succeeded", "failed", "rejected", "lost", "retry") * 4 + ("close",)
BACKOFF_EVENTS = ("failed", "rejected")


class ConnectionModelTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = HookLog(compile_machine(ConnectionMachine).hook_names)
        self.rig = make_rig((self.log,))
        self.engine = self.rig.machines.connection
        self.model = self.engine.track(ConnectionModel(ADDRESS))
        self.ref = Ref()
        self.delays: list[tuple[int, float]] = []  # (failures before, delay chosen)

    @rule(
        event=st.sampled_from(EVENTS),
        jitter=st.floats(-1.0, 1.0),
        setting=st.sampled_from(REJECTED_SETTINGS),
    )
    def send(self, event: str, jitter: float, setting: str = REJECTED_SETTINGS[0]) -> None:
        now = self.rig.clock.monotonic()
        expected = TABLE.get((self.ref.state, event))
        before = self.model.fields()
        start, sink_start = len(self.log.fired), len(self.rig.sink.events)
        payload = ConnInput(now, jitter)
        if event == "rejected":
            payload = ConnInput(
                now, jitter, reason=f"refused {setting}", setting=setting, fingerprint="SHA256:abc"
            )
        if expected is None:
            with pytest.raises(TransitionNotAllowed) as err:
                self.engine.send(self.model, event, payload)
            assert ADDRESS in str(err.value) and self.ref.state in str(err.value)
            assert self.model.fields() == before
            return
        target, hooks = expected
        failures_before = self.ref.failures
        durations_before = self._durations()
        self.engine.send(self.model, event, payload)
        if event in BACKOFF_EVENTS:
            self.ref = replace(self.ref, failures=self.ref.failures + 1)
            self.delays.append((failures_before, self.model.delay))
            # exactly the step scaled by the drawn jitter: ±10 %, both ways
            base = min(16.0, 2.0**failures_before)
            assert abs(self.model.delay - base * (1.0 + 0.1 * jitter)) < 1e-9
            if self.ref.lost_at is None:
                self.ref = replace(self.ref, lost_at=now)
        if event == "rejected":
            self.ref = replace(self.ref, setting=setting)
        if event == "lost":
            self.ref = replace(self.ref, failures=0, lost_at=now)
        if event == "succeeded":
            if self.ref.state == "reconnecting":
                # the outage is measured from the loss (or the first failed dial)
                count, total = self._durations()
                assert self.ref.lost_at is not None
                assert count == durations_before[0] + 1
                assert abs(total - durations_before[1] - (now - self.ref.lost_at)) < 1e-6
            self.ref = replace(self.ref, failures=0, setting="")
        self.ref = replace(self.ref, state=target)
        fired = tuple(h for _, h, _ in self.log.fired[start:])
        assert fired == hooks, f"{event}: fired {fired}, expected {hooks}"
        new_events = list(self.rig.sink.events)[sink_start:]
        reasons = [e.reason for e in new_events]
        assert reasons == [h for h in hooks if h[0].isupper()]
        for e in new_events:
            if e.reason == "RDSMisconfigured":
                # names the setting and the server's key; a wrong setting, not an outage
                assert setting in e.note and "SHA256:abc" in e.note and "not an outage" in e.note
                assert e.type == "Warning"
        if target == "connected" and self.log.fired[start:]:
            # every successful (re)connect fires exactly one reconcile trigger
            assert self.rig.triggers[-1] == f"connection:{event}"
            assert fired.count("reconcile") == 1
            if self.model.attempt != 0:
                raise AssertionError("backoff not reset after a successful reconnect")

    def _durations(self) -> tuple[float, float]:
        return (
            self.rig.sample("rds_csi_rds_reconnect_duration_seconds_count", ON),
            self.rig.sample("rds_csi_rds_reconnect_duration_seconds_sum", ON),
        )

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

    @precondition(lambda self: self.ref.state == "misconfigured")
    @rule(k=st.integers(1, 6), jitter=st.floats(-1.0, 1.0))
    def stays_misconfigured(self, k: int, jitter: float) -> None:
        # the operator has not fixed it yet: backoff goes on up the same ladder
        for _ in range(k):
            self.rig.clock.advance(self.model.delay)
            self.send("retry", jitter)
            self.send("rejected", jitter)

    @precondition(lambda self: self.ref.state != "closed")
    @rule(
        data=st.data(),
        jitter=st.floats(-1.0, 1.0),
        setting=st.sampled_from(REJECTED_SETTINGS),
    )
    def take_a_declared_transition(self, data: st.DataObject, jitter: float, setting: str) -> None:
        # Every way out of the current state is equally likely, whatever examples hypothesis
        # draws (they depend on the modules loaded): covering each transition is not luck.
        events = sorted({e for (s, e) in TABLE if s == self.ref.state})
        self.send(data.draw(st.sampled_from(events)), jitter, setting)

    @invariant()
    def state_matches_reference(self) -> None:
        assert self.model.state == self.ref.state
        assert self.model.attempt == self.ref.failures
        assert self.model.setting == self.ref.setting

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
    def rejections_are_counted_by_setting(self) -> None:
        fired = [(h, k) for k, h, _ in self.log.fired]
        total = sum(
            self.rig.sample("rds_csi_rds_config_rejected_total", {**ON, "setting": s})
            for s in REJECTED_SETTINGS
        )
        assert total == sum(1 for h, _ in fired if h == "config_rejected")

    @invariant()
    def reconnect_counters(self) -> None:
        fired = [h for _, h, _ in self.log.fired]
        succeeded = self.rig.sample("rds_csi_rds_reconnect_total", {**ON, "status": "success"})
        failed = self.rig.sample("rds_csi_rds_reconnect_total", {**ON, "status": "failure"})
        assert succeeded == fired.count("reconnect_succeeded")
        assert failed == fired.count("reconnect_failed")
        assert fired.count("RDSReconnected") == fired.count("reconnect_succeeded")


def test_connection_machine_against_reference() -> None:
    run_state_machine_as_test(ConnectionModelTest, settings=coverage_settings())
    missing = uncovered(compile_machine(ConnectionMachine))
    assert not missing, f"transitions never exercised: {missing}"
