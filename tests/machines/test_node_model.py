"""Model-based test of the Node machine against an independent reference table."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from rdscsi.machines import NodeInput, NodeModel, TransitionNotAllowed, compile_machine
from rdscsi.machines.node import NodeMachine

from .support import HookLog, coverage_settings, make_rig, uncovered

NAMES = ("n1", "n2")
EVENTS = (
    "became_ready",
    "became_not_ready",
    "taint_out_of_service",
    "untaint_out_of_service",
    "delete",
)

# (state, event) -> (target, out_of_service after (None: unchanged), fires reconcile)
TABLE: dict[tuple[str, str], tuple[str, bool | None, bool]] = {
    ("new", "became_ready"): ("ready", None, False),
    ("new", "became_not_ready"): ("not_ready", None, True),
    ("new", "delete"): ("deleted", None, True),
    ("ready", "became_not_ready"): ("not_ready", None, True),
    ("ready", "delete"): ("deleted", None, True),
    ("ready", "taint_out_of_service"): ("ready", True, True),
    ("ready", "untaint_out_of_service"): ("ready", False, False),
    ("not_ready", "became_ready"): ("ready", None, True),
    ("not_ready", "delete"): ("deleted", None, True),
    ("not_ready", "taint_out_of_service"): ("not_ready", True, True),
    ("not_ready", "untaint_out_of_service"): ("not_ready", False, False),
}


class NodeModelTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = HookLog(compile_machine(NodeMachine).hook_names)
        self.rig = make_rig((self.log,))
        self.engine = self.rig.machines.node
        self.models = {n: self.engine.track(NodeModel(n)) for n in NAMES}
        self.ref = {n: ("new", False) for n in NAMES}

    @rule(name=st.sampled_from(NAMES), event=st.sampled_from(EVENTS))
    def send(self, name: str, event: str) -> None:
        model = self.models[name]
        state, oos = self.ref[name]
        expected = TABLE.get((state, event))
        triggers = len(self.rig.triggers)
        if expected is None:
            with pytest.raises(TransitionNotAllowed) as err:
                self.engine.send(model, event, NodeInput(self.rig.clock.monotonic()))
            assert name in str(err.value) and event in str(err.value)
            return
        target, new_oos, reconcile = expected
        self.engine.send(model, event, NodeInput(self.rig.clock.monotonic()))
        self.ref[name] = (target, oos if new_oos is None else new_oos)
        assert len(self.rig.triggers) - triggers == (1 if reconcile else 0)

    @invariant()
    def matches_reference(self) -> None:
        for name, model in self.models.items():
            assert (model.state, model.out_of_service) == self.ref[name]
            state, oos = self.ref[name]
            assert model.evidence == (state == "deleted" or oos)

    @invariant()
    def gauges(self) -> None:
        for state in compile_machine(NodeMachine).states:
            n = sum(1 for m in self.models.values() if m.state == state)
            assert self.rig.gauge("node", state) == n


def test_node_machine_against_reference() -> None:
    run_state_machine_as_test(NodeModelTest, settings=coverage_settings())
    missing = uncovered(compile_machine(NodeMachine))
    assert not missing, f"transitions never exercised: {missing}"
