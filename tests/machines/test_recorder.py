"""The flight recorder: a bounded history per object, with the guard results and reasons."""

from __future__ import annotations

from rdscsi.clock import ManualClock
from rdscsi.hooks.recorder import DEPTH, FlightRecorder
from rdscsi.machines import (
    AttachInput,
    AttachmentMachine,
    AttachmentModel,
    Engine,
    NodeInput,
    NodeModel,
    compile_machine,
)

from .support import make_rig

D = compile_machine(AttachmentMachine)


def engine(recorder: FlightRecorder, clock: ManualClock) -> Engine:
    return Engine(D, [recorder], clock.monotonic)


def texts(recorder: FlightRecorder, key: str) -> list[str]:
    return [str(e.transition) for e in recorder.history("attachment", key)]


def test_the_last_transitions_oldest_first_with_times_and_reasons() -> None:
    clock, rec = ManualClock(), FlightRecorder()
    eng = engine(rec, clock)
    m = eng.track(AttachmentModel("pvc-1"))
    for i in range(DEPTH + 4):
        clock.advance(1.0)
        event = "publish" if i % 2 == 0 else "unpublish"
        eng.send(m, event, AttachInput(node="n1", reason=f"call {i}"))
    history = rec.history("attachment", "pvc-1")
    assert len(history) == DEPTH == 16  # the depth
    assert FlightRecorder().max_objects == 100_000
    assert [e.reason for e in history] == [f"call {i}" for i in range(4, DEPTH + 4)]
    start = clock.monotonic() - (DEPTH + 4)
    assert [e.first - start for e in history] == [float(i + 1) for i in range(4, DEPTH + 4)]
    assert history[0].transition.event == "publish"
    assert all(e.repeats == 1 and e.first == e.last for e in history)


def test_a_waiting_self_transition_counts_up_in_place() -> None:
    clock, rec = ManualClock(), FlightRecorder()
    eng = engine(rec, clock)
    m = eng.track(AttachmentModel("pvc-1"))
    eng.send(m, "publish", AttachInput(node="n1"))
    eng.send(m, "node_lost", AttachInput(node="n1", reason="node n1 not Ready"))
    for _ in range(50):
        clock.advance(5.0)
        eng.send(
            m, "reconcile", AttachInput(now=clock.monotonic(), node="n1", reason="no evidence")
        )
    clock.advance(5.0)
    eng.send(m, "reconcile", AttachInput(node="n1", evidence=True, reason="node n1 deleted"))
    history = rec.history("attachment", "pvc-1")
    assert texts(rec, "pvc-1") == [
        "detached --publish--> attached",
        "attached --node_lost [on_node]--> stale",
        "stale --reconcile--> stale",
        "stale --reconcile--> stale",
    ]
    waiting, evidence = history[2], history[3]
    start = clock.monotonic() - 255.0
    assert (waiting.repeats, waiting.first - start, waiting.last - start) == (50, 5.0, 250.0)
    (clear,) = [
        t
        for t in D.transitions
        if (t.source, t.event, t.target) == ("stale", "reconcile", "detached")
    ]
    assert waiting.decision.refused == ((clear, "clearable", True),)
    assert evidence.reason == "node n1 deleted" and evidence.repeats == 1  # another reason


def test_refusals_name_the_candidates_and_their_guards() -> None:
    clock, rec = ManualClock(), FlightRecorder()
    eng = engine(rec, clock)
    m = eng.track(AttachmentModel("pvc-1"))
    eng.send(m, "publish", AttachInput(node="n1"))
    eng.send(m, "publish", AttachInput(node="n2", reason="second node"))
    conflict = rec.history("attachment", "pvc-1")[-1]
    assert "AttachmentConflict" in conflict.transition.hooks
    assert [(str(t), g, want) for t, g, want in conflict.decision.refused] == [
        ("attached --publish [on_node]--> attached", "on_node", True),
        ("attached --publish [can_migrate]--> migrating", "can_migrate", True),
    ]
    eng.send(m, "publish", AttachInput(node="n3", reason="second node"))
    again = rec.history("attachment", "pvc-1")[-1]
    assert again.decision is conflict.decision  # interned: one per kind of decision
    assert again.repeats == 2


def test_histories_outlive_models_until_retired_and_stay_bounded() -> None:
    clock, rec = ManualClock(), FlightRecorder(max_objects=3)
    eng = engine(rec, clock)
    for i in range(5):
        m = eng.track(AttachmentModel(f"pvc-{i}"))
        eng.send(m, "publish", AttachInput(node="n1", reason="publish"))
        eng.forget(m)  # the controller forgets its model after every decision
    assert rec.keys("attachment") == ["pvc-2", "pvc-3", "pvc-4"]  # the oldest went first
    reasons = {id(rec.history("attachment", k)[0].reason) for k in rec.keys("attachment")}
    assert len(reasons) == 1  # one shared string
    eng.retire("pvc-3")  # the volume was deleted
    assert rec.history("attachment", "pvc-3") == []
    assert rec.keys("attachment") == ["pvc-2", "pvc-4"]


def test_every_engine_of_the_driver_records() -> None:
    rig = make_rig()
    m = rig.machines
    vol = m.attachment.track(AttachmentModel("pvc-9"))
    m.attachment.send(vol, "publish", AttachInput(node="n1"))
    node = m.node.track(NodeModel("n1"))
    m.node.send(node, "became_ready", NodeInput(reason="Ready"))
    assert [e.reason for e in m.recorder.history("node", "n1")] == ["Ready"]
    assert len(m.recorder.history("attachment", "pvc-9")) == 1
    assert m.attachment.listeners[0] is m.recorder  # first: on record even if a hook fails


def test_a_ring_grows_by_doubling_to_the_depth_and_no_further() -> None:
    """The memory bound (`bench/machines.py` recorder_10k_mb) rests on this: an object
    with few transitions keeps a small ring; a busy one, exactly `depth` records of two
    slots and three floats each, however long it runs."""
    clock, rec = ManualClock(), FlightRecorder()
    eng = engine(rec, clock)
    m = eng.track(AttachmentModel("pvc-1"))
    sizes = []
    for i in range(DEPTH + 5):
        clock.advance(1.0)
        eng.send(m, "publish" if i % 2 == 0 else "unpublish", AttachInput(node="n1"))
        h = rec._histories["attachment"]["pvc-1"]
        assert len(h.items) == 2 * h.capacity and len(h.data) == 3 * h.capacity
        sizes.append(h.capacity)
    assert sizes[:5] == [2, 2, 4, 4, 8]
    assert sizes[-1] == DEPTH and max(sizes) == DEPTH
    assert len(rec.history("attachment", "pvc-1")) == DEPTH
