"""Engine behaviour on bad input and failing hooks."""

from __future__ import annotations

import dataclasses

import pytest

from rdscsi.machines import (
    ActionFailed,
    AttachInput,
    AttachmentMachine,
    AttachmentModel,
    Engine,
    HookFailed,
    NodeInput,
    NodeModel,
    TransitionNotAllowed,
    UnknownState,
    compile_machine,
)

from .support import make_rig


def test_illegal_event_names_machine_object_state_and_event() -> None:
    rig = make_rig()
    vol = rig.machines.attachment.track(AttachmentModel("pvc-123"))
    with pytest.raises(TransitionNotAllowed) as err:
        rig.machines.attachment.send(vol, "node_ready", AttachInput(node="n1"))
    msg = str(err.value)
    assert "attachment" in msg and "pvc-123" in msg and "detached" in msg and "node_ready" in msg
    assert (err.value.machine, err.value.obj, err.value.state, err.value.event) == (
        "attachment",
        "pvc-123",
        "detached",
        "node_ready",
    )


def test_unknown_event_is_refused() -> None:
    rig = make_rig()
    node = rig.machines.node.track(NodeModel("worker-1"))
    with pytest.raises(TransitionNotAllowed, match=r"worker-1.*'explode'"):
        rig.machines.node.send(node, "explode", NodeInput())


def test_guards_refusing_every_alternative_says_so() -> None:
    rig = make_rig()
    eng = rig.machines.attachment
    vol = eng.track(AttachmentModel("pvc-9"))
    eng.send(vol, "publish", AttachInput(node="n1"))
    with pytest.raises(TransitionNotAllowed, match="guards refused"):
        eng.send(vol, "node_lost", AttachInput(node="n2"))
    assert vol.state == "attached" and vol.node == "n1"


def test_unknown_stored_state_names_the_object() -> None:
    rig = make_rig()
    vol = AttachmentModel("pvc-old")
    with pytest.raises(UnknownState, match=r"pvc-old.*'limbo'"):
        rig.machines.attachment.track(vol, "limbo")
    vol.state = "limbo"
    with pytest.raises(UnknownState, match="pvc-old"):
        rig.machines.attachment.send(vol, "publish", AttachInput(node="n1"))


def test_restore_keeps_stored_state_and_counts_it() -> None:
    rig = make_rig()
    vol = AttachmentModel("pvc-r")
    vol.node = "n1"
    rig.machines.attachment.track(vol, "stale")
    assert vol.state == "stale"
    assert rig.gauge("attachment", "stale") == 1
    rig.machines.attachment.forget(vol)
    assert rig.gauge("attachment", "stale") == 0


class Boom(Exception):
    pass


class FailingListener:
    def __init__(self) -> None:
        self.after_calls = 0

    def VolumeAttached(self, step: object) -> None:
        raise Boom("sink down")

    def after_transition(self, step: object) -> None:
        self.after_calls += 1


def test_hook_failure_surfaces_after_a_complete_transition() -> None:
    rig = make_rig()
    failing = FailingListener()
    eng = Engine(AttachmentMachine, [failing, *rig.machines.attachment.listeners])
    vol = eng.track(AttachmentModel("pvc-h"))
    with pytest.raises(HookFailed, match=r"pvc-h.*1 hook") as err:
        eng.send(vol, "publish", AttachInput(node="n1"))
    assert isinstance(err.value.errors[0], Boom)
    # the transition is whole: state, fields, and every other listener ran
    assert vol.state == "attached" and vol.node == "n1"
    assert failing.after_calls == 1
    assert rig.sink.reasons() == ["VolumeAttached"]
    assert rig.gauge("attachment", "attached") == 1


def test_action_failure_restores_the_model() -> None:
    def bad_bind(model: AttachmentModel, p: AttachInput) -> None:
        model.node = p.node
        raise Boom("half-way")

    rig = make_rig()
    d = compile_machine(AttachmentMachine)
    # a copy of the compiled table whose first publish action fails half-way
    (tr, guards, _actions), *_ = d.table[("detached", "publish")]
    broken = dataclasses.replace(
        d, table={**d.table, ("detached", "publish"): ((tr, guards, (bad_bind,)),)}
    )
    eng = Engine(broken, rig.machines.attachment.listeners)
    vol = eng.track(AttachmentModel("pvc-a"))
    with pytest.raises(ActionFailed, match="pvc-a"):
        eng.send(vol, "publish", AttachInput(node="n1"))
    assert vol.state == "detached" and vol.node is None
    assert rig.sink.reasons() == []
    assert rig.gauge("attachment", "attached") == 0


def test_allowed_reports_without_changing_anything() -> None:
    rig = make_rig()
    eng = rig.machines.attachment
    vol = eng.track(AttachmentModel("pvc-q"))
    tr = eng.allowed(vol, "publish", AttachInput(node="n1"))
    assert tr is not None and tr.target == "attached"
    assert vol.state == "detached" and rig.sink.reasons() == []
    assert eng.allowed(vol, "node_ready", AttachInput(node="n1")) is None


def test_a_self_loop_keeps_the_time_the_state_was_entered() -> None:
    """A repeated publish (attached --publish--> attached) is not a new stay in `attached`:
    time in state, grace periods and deadlines keep counting from the first entry."""
    rig = make_rig()
    eng = rig.machines.attachment
    vol = eng.track(AttachmentModel("pvc-loop"))
    eng.send(vol, "publish", AttachInput(node="n1"))
    entered = vol.entered_at
    rig.clock.advance(10.0)
    step = eng.send(vol, "publish", AttachInput(node="n1"))
    assert step.source == step.target == "attached"
    assert vol.entered_at == entered and step.previous_entered_at == entered
    rig.clock.advance(5.0)
    eng.send(vol, "unpublish", AttachInput(node="n1"))
    labels = {"machine": "attachment", "state": "attached"}
    assert rig.sample("rds_csi_fsm_time_in_state_seconds_sum", labels) == 15.0
    assert rig.sample("rds_csi_fsm_time_in_state_seconds_count", labels) == 1.0
