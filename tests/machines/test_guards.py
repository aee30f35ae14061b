"""Every guard explains itself, and the explanation is the guard.

- each guard of each machine has `@explained` conditions and each event a `sent_by` line;
  without them `rdscsi diagrams` refuses to write specs/ (so CI fails);
- the conjunction of a guard's declared conditions equals the guard, for any model and input
  (random ones, boundaries included): an explanation can never disagree with the decision;
- `evaluate` (what `rdscsi explain` asks) predicts what `send` does, and the guard results a
  step carries (`Step.refused`) are the ones `evaluate` reports.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from statemachine import State, StateMachine

from rdscsi import cli
from rdscsi.machines import (
    MACHINES,
    AttachInput,
    AttachmentMachine,
    AttachmentModel,
    Engine,
    NodeVolumeInput,
    NodeVolumeMachine,
    NodeVolumeModel,
    TransitionNotAllowed,
    compile_machine,
    diagrams,
)
from rdscsi.machines.engine import evaluate
from rdscsi.machines.guards import ATTRIBUTE, doc_of, explained, fill, guard_names, unexplained

NODES = st.sampled_from(["n1", "n2", "n3", ""])
# Times on a coarse grid, so that boundaries (now == since + grace) are drawn often.
TIMES = st.one_of(st.integers(0, 60).map(float), st.floats(0, 1000, allow_nan=False))
MAYBE = st.one_of(st.none(), TIMES)


def attachment_model(node: str | None, peer: str | None, rwx: bool, stale: Any, dl: Any) -> Any:
    m = AttachmentModel("pvc-1")
    m.node, m.peer, m.rwx_block, m.stale_since, m.deadline = node, peer, rwx, stale, dl
    return m


ATTACHMENT = st.builds(
    attachment_model,
    st.one_of(st.none(), NODES),
    st.one_of(st.none(), NODES),
    st.booleans(),
    MAYBE,
    MAYBE,
)
ATTACH_INPUT = st.builds(
    AttachInput,
    now=TIMES,
    node=NODES,
    rwx_block=st.booleans(),
    evidence=st.booleans(),
    grace_s=st.sampled_from([0.0, 10.0, 30.0]),
    migration_s=st.sampled_from([0.0, 10.0, 300.0]),
    since=MAYBE,
)
NODE_VOLUME_INPUT = st.builds(
    NodeVolumeInput,
    block=st.booleans(),
    other_targets=st.integers(0, 2),
    repairable=st.booleans(),
)


def test_every_guard_and_event_is_explained() -> None:
    for cls in MACHINES:
        d = compile_machine(cls)
        assert unexplained(cls, d.transitions) == [], d.name
        assert set(getattr(cls, "sent_by", {})) == set(d.events), d.name
        for name in guard_names(d.transitions):
            doc = doc_of(cls, name)
            assert doc is not None and doc.parts and doc.holds, (d.name, name)
        lines = diagrams.explanations(d)
        assert ("## Guards" in lines) == bool(guard_names(d.transitions))


def test_a_guard_without_an_explanation_stops_the_specs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clearable = AttachmentMachine.__dict__["clearable"].__func__
    monkeypatch.delattr(clearable, ATTRIBUTE)
    with pytest.raises(diagrams.Unexplained, match="no explanation for guard clearable"):
        diagrams.expected_text()
    assert cli.main(["diagrams", "--check"]) == 1
    assert "no explanation for guard clearable" in capsys.readouterr().err


def test_an_event_without_a_sender_stops_the_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        AttachmentMachine,
        "sent_by",
        {k: v for k, v in AttachmentMachine.sent_by.items() if k != "reconcile"},
    )
    with pytest.raises(diagrams.Unexplained, match="event reconcile"):
        diagrams.explanations(compile_machine(AttachmentMachine))


def test_a_new_machine_with_a_bare_guard_is_caught() -> None:
    class Bare(StateMachine):
        a = State(initial=True)
        b = State(final=True)
        go = a.to(b, cond="ok") | a.to(a)
        sent_by = {"go": "someone"}

        @staticmethod
        def ok(model: Any, p: Any) -> bool:
            return bool(p)

    d = compile_machine(Bare)
    assert unexplained(Bare, d.transitions) == ["ok"]
    with pytest.raises(diagrams.Unexplained, match="guard ok"):
        diagrams.explanations(d)


def _agree(cls: type[StateMachine], model: Any, p: Any) -> None:
    d = compile_machine(cls)
    for name in guard_names(d.transitions):
        doc = doc_of(cls, name)
        assert doc is not None
        guard = getattr(cls, name)
        parts = [part.holds(model, p) for part in doc.parts]
        assert bool(guard(model, p)) is all(parts), (
            name,
            parts,
            vars(p) if hasattr(p, "__dict__") else p,
        )
        for part in doc.parts:  # every text fills in
            assert "{" not in fill(part.text, model, p)
        assert "{" not in fill(doc.holds, model, p)


@given(model=ATTACHMENT, p=ATTACH_INPUT)
def test_attachment_guards_are_their_conditions(model: Any, p: AttachInput) -> None:
    _agree(AttachmentMachine, model, p)


@given(p=NODE_VOLUME_INPUT)
def test_node_volume_guards_are_their_conditions(p: NodeVolumeInput) -> None:
    _agree(NodeVolumeMachine, NodeVolumeModel("pvc-1"), p)


def test_boundaries_are_the_guards_own() -> None:
    """At the instant the grace period or a deadline ends, condition and guard agree."""
    m = attachment_model("n1", "n2", True, 100.0, 130.0)
    for now in (129.999, 130.0, 130.001):
        p = AttachInput(
            now=now, node="n1", evidence=True, grace_s=30.0, since=100.0, migration_s=30.0
        )
        _agree(AttachmentMachine, m, p)
    p = AttachInput(now=130.0, node="n1", evidence=True, grace_s=30.0)
    assert AttachmentMachine.clearable(m, p) and AttachmentMachine.deadline_passed(m, p)


@given(data=st.data())
def test_evaluate_predicts_send_and_the_refusals_it_records(data: st.DataObject) -> None:
    d = compile_machine(AttachmentMachine)
    engine = Engine(d)
    model = engine.track(AttachmentModel("pvc-1"))
    for _ in range(data.draw(st.integers(1, 30))):
        event = data.draw(st.sampled_from(d.events))
        p = data.draw(ATTACH_INPUT)
        found = evaluate(d, model, event, p)
        state = model.state
        try:
            step = engine.send(model, event, p)
        except TransitionNotAllowed:
            assert not found or not found[-1].passes
            assert model.state == state
            continue
        assert found[-1].passes and found[-1].transition == step.transition
        expected = tuple(
            (c.transition.index, [want is got for _, want, got in c.results].index(False))
            for c in found[:-1]
        )
        assert step.refused == expected
        for c in found[:-1]:
            assert c.refusing  # every refused candidate names its guard


def test_explained_keeps_the_function() -> None:
    def g(model: Any, p: Any) -> bool:
        return True

    marked = explained("always")(g)
    assert marked is g and doc_of(type("C", (), {"g": staticmethod(g)}), "g") is not None
