"""Model-based test of the node-side volume machine against an independent reference."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from rdscsi.machines import (
    NodeVolumeInput,
    NodeVolumeMachine,
    NodeVolumeModel,
    TransitionNotAllowed,
    compile_machine,
)

from .support import HookLog, coverage_settings, make_rig, uncovered

EVENTS = ("stage", "unstage", "publish", "unpublish", "interrupted")


def reference(
    state: str, event: str, block: bool, others: int, repairable: bool
) -> tuple[str, tuple[str, ...]] | None:
    """What the node must do, written from the issue: (next state, hooks) or None (refused)."""
    resting = "connected" if block else "staged"  # where a staged volume rests
    if event == "interrupted":
        return ("uncertain", ("interrupted_op",)) if state != "uncertain" else None
    if event == "stage":
        if state in ("unstaged", "connected"):
            return (resting, ())
        if state in ("staged", "published"):
            return (state, ())
        return (resting, ("repaired",)) if repairable else None
    if event == "unstage":
        if state == "uncertain":
            return ("unstaged", ("repaired",)) if repairable else None
        if state == "published":
            return None  # still used by a pod: refused
        return ("unstaged", ())
    if event == "publish":
        if state == "published" or state == resting:
            return ("published", ())
        return None  # publish without stage: refused, never half-done
    # unpublish
    if state == "published":
        return ("published" if others else resting, ())
    return (state, ())


class NodeVolumeTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = HookLog(compile_machine(NodeVolumeMachine).hook_names)
        self.rig = make_rig((self.log,))
        self.engine = self.rig.machines.node_volume
        self.model = self.engine.track(NodeVolumeModel("pvc-n"))
        self.state = "unstaged"

    @rule(
        event=st.sampled_from(EVENTS),
        block=st.booleans(),
        others=st.integers(0, 2),
        repairable=st.booleans(),
    )
    def send(self, event: str, block: bool, others: int, repairable: bool) -> None:
        p = NodeVolumeInput(
            target_path="/t", block=block, other_targets=others, repairable=repairable
        )
        expected = reference(self.state, event, block, others, repairable)
        start = len(self.log.fired)
        if expected is None:
            with pytest.raises(TransitionNotAllowed, match="pvc-n"):
                self.engine.send(self.model, event, p)
            return
        self.engine.send(self.model, event, p)
        self.state = expected[0]
        assert tuple(h for _, h, _ in self.log.fired[start:]) == expected[1]

    @rule(state=st.sampled_from(["unstaged", "connected", "staged", "published", "uncertain"]))
    def observe(self, state: str) -> None:
        # every RPC restores the machine to what the node shows
        self.engine.forget(self.model)
        self.model = self.engine.track(NodeVolumeModel("pvc-n"), state)
        self.state = state

    @invariant()
    def matches(self) -> None:
        assert self.model.state == self.state
        assert self.rig.gauge("node_volume", self.state) == 1


def test_node_volume_machine_against_reference() -> None:
    run_state_machine_as_test(NodeVolumeTest, settings=coverage_settings())
    missing = uncovered(compile_machine(NodeVolumeMachine))
    assert not missing, f"transitions never exercised: {missing}"
