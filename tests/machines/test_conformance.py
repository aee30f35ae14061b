"""The compiled engine must behave exactly like python-statemachine's own engine.

Both run the same declared classes on twin models through random event sequences; the
states, model fields, hooks fired and refusals must agree step by step.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from statemachine import StateMachine
from statemachine.exceptions import TransitionNotAllowed as LibraryNotAllowed

from rdscsi.machines import (
    AttachInput,
    AttachmentMachine,
    AttachmentModel,
    ConnectionMachine,
    ConnectionModel,
    ConnInput,
    Engine,
    NodeInput,
    NodeMachine,
    NodeModel,
    NodeVolumeInput,
    NodeVolumeMachine,
    NodeVolumeModel,
    OrphanInput,
    OrphanMachine,
    OrphanModel,
    TransitionNotAllowed,
    compile_machine,
)

NODES = st.sampled_from(["n1", "n2", "n3"])
TIMES = st.floats(0, 1000, allow_nan=False)

PAYLOADS: dict[type[StateMachine], tuple[Any, st.SearchStrategy[Any]]] = {
    ConnectionMachine: (
        lambda: ConnectionModel("rds:22"),
        st.builds(ConnInput, now=TIMES, jitter=st.floats(-1, 1)),
    ),
    NodeMachine: (lambda: NodeModel("n1"), st.builds(NodeInput, now=TIMES)),
    NodeVolumeMachine: (
        lambda: NodeVolumeModel("pvc-1"),
        st.builds(
            NodeVolumeInput,
            now=TIMES,
            target_path=st.sampled_from(["/t1", "/t2"]),
            block=st.booleans(),
            other_targets=st.integers(0, 2),
            repairable=st.booleans(),
        ),
    ),
    AttachmentMachine: (
        lambda: AttachmentModel("pvc-1"),
        st.builds(
            AttachInput,
            now=TIMES,
            node=NODES,
            rwx_block=st.booleans(),
            evidence=st.booleans(),
            grace_s=st.sampled_from([0.0, 30.0]),
            migration_s=st.sampled_from([0.0, 300.0]),
            nqn=st.sampled_from(["", "nqn.2014-08.org.example:n1", "nqn.2014-08.org.example:n2"]),
        ),
    ),
    OrphanMachine: (
        lambda: OrphanModel("disk pvc-1", "volume"),
        st.builds(
            OrphanInput,
            now=TIMES,
            wall=TIMES,
            mode=st.sampled_from(["report", "quarantine", "delete"]),
            claimed=st.booleans(),
            min_age_s=st.sampled_from([0.0, 100.0]),
            retention_s=st.sampled_from([0.0, 100.0]),
        ),
    ),
}


def _recorder(hooks: frozenset[str], log: list[tuple[str, str, str, str]]) -> object:
    """A listener the library can bind: one method per hook name."""

    def make(name: str) -> Any:
        def hook(self: object, event: Any, source: Any, target: Any) -> None:
            log.append((name, str(event), source.id, target.id))

        return hook

    return type("Recorder", (), {h: make(h) for h in hooks})()


class _Ours:
    def __init__(self, hooks: frozenset[str], log: list[tuple[str, str, str, str]]) -> None:
        for h in hooks:
            setattr(
                self, h, lambda step, h=h: log.append((h, step.event, step.source, step.target))
            )


def _fields(model: Any) -> dict[str, Any]:
    f = model.fields()
    f.pop("entered_at")
    return f


@pytest.mark.parametrize("cls", list(PAYLOADS), ids=lambda c: c.__name__)
@given(data=st.data())
def test_compiled_engine_matches_library(cls: type[StateMachine], data: st.DataObject) -> None:
    d = compile_machine(cls)
    new_model, payloads = PAYLOADS[cls]
    lib_log: list[tuple[str, str, str, str]] = []
    our_log: list[tuple[str, str, str, str]] = []
    lib_model, our_model = new_model(), new_model()
    library = cls(model=lib_model, listeners=[_recorder(d.hook_names, lib_log)])
    engine = Engine(d, [_Ours(d.hook_names, our_log)])
    engine.track(our_model)
    assert lib_model.state == our_model.state == d.initial
    for _ in range(data.draw(st.integers(1, 40))):
        event = data.draw(st.sampled_from(d.events))
        p = data.draw(payloads)
        lib_refused = our_refused = False
        try:
            library.send(event, p=p)
        except LibraryNotAllowed:
            lib_refused = True
        try:
            engine.send(our_model, event, p)
        except TransitionNotAllowed:
            our_refused = True
        assert lib_refused == our_refused, f"{event}: library refused={lib_refused}"
        assert _fields(lib_model) == _fields(our_model), f"after {event}"
        assert lib_log == our_log, f"hooks differ after {event}"
