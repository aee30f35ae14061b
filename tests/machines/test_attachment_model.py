"""Model-based test of the Attachment machine against an independent reference table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rdscsi.machines import AttachInput, AttachmentModel, TransitionNotAllowed, compile_machine
from rdscsi.machines.attachment import AttachmentMachine

from .support import HookLog, coverage_settings, make_rig, uncovered

GRACE = 30.0
MIGRATION = 300.0
NODES = ("n1", "n2", "n3")
# A volume's access type is fixed: pvc-a single-node, pvc-b read-write-many block.
RWX = {"pvc-a": False, "pvc-b": True, "pvc-c": True}
VOLUMES = tuple(RWX)
PICK = st.integers(0, 4)


@dataclass(frozen=True)
class Ref:
    state: str = "detached"
    node: str | None = None
    peer: str | None = None
    rwx: bool = False
    stale_since: float | None = None
    deadline: float | None = None


CLEARED = {"node": None, "peer": None, "stale_since": None, "deadline": None}
NOT_ALLOWED = "not allowed"

# The reference, written from the rules, not from the machine: for (state, event)
# the first row whose condition holds gives (target, field changes, hooks).
# Condition and change functions take (ref, node, rwx, evidence, now); `now` is the event's
# clock, and `SINCE[0]` when the cause happened per the objects (None: now).
SINCE: list[float | None] = [None]


def started(t: float) -> float:
    return t if SINCE[0] is None else SINCE[0]


TABLE: dict[tuple[str, str], list[tuple[Any, str, Any, tuple[str, ...]]]] = {
    ("detached", "publish"): [
        (
            lambda r, n, w, e, t: True,
            "attached",
            lambda r, n, w, e, t: {"node": n, "rwx": w},
            ("VolumeAttached",),
        ),
    ],
    ("detached", "unpublish"): [(lambda *a: True, "detached", None, ())],
    ("attached", "publish"): [
        (lambda r, n, w, e, t: n == r.node, "attached", None, ()),
        (
            # an RWX block volume may go to a second node, unless the target's
            # attachment is already older than the migration timeout
            lambda r, n, w, e, t: r.rwx and w and t < started(t) + MIGRATION,
            "migrating",
            lambda r, n, w, e, t: {"peer": n, "deadline": started(t) + MIGRATION},
            ("MigrationStarted",),
        ),
        (lambda *a: True, "attached", None, ("AttachmentConflict",)),
    ],
    ("attached", "unpublish"): [
        (lambda r, n, w, e, t: n == r.node, "detached", lambda *a: CLEARED, ("VolumeDetached",)),
        (lambda *a: True, "attached", None, ()),
    ],
    ("attached", "node_lost"): [
        (
            lambda r, n, w, e, t: n == r.node,
            "stale",
            lambda r, n, w, e, t: {"stale_since": started(t)},
            ("marked_stale",),
        ),
    ],
    ("migrating", "publish"): [
        (lambda r, n, w, e, t: n in (r.node, r.peer), "migrating", None, ()),
        (lambda *a: True, "migrating", None, ("AttachmentConflict",)),
    ],
    ("migrating", "unpublish"): [
        (
            lambda r, n, w, e, t: n == r.node,
            "attached",
            lambda r, n, w, e, t: {"node": r.peer, "peer": None, "deadline": None},
            ("MigrationCompleted",),
        ),
        (
            lambda r, n, w, e, t: n == r.peer,
            "attached",
            lambda *a: {"peer": None, "deadline": None},
            ("MigrationFailed",),
        ),
        (lambda *a: True, "migrating", None, ()),
    ],
    ("migrating", "node_lost"): [
        (
            lambda r, n, w, e, t: n == r.peer,
            "attached",
            lambda *a: {"peer": None, "deadline": None},
            ("MigrationFailed",),
        ),
        (
            lambda r, n, w, e, t: n == r.node,
            "attached",
            lambda r, n, w, e, t: {"node": r.peer, "peer": None, "deadline": None},
            ("MigrationFailed",),
        ),
    ],
    ("migrating", "reconcile"): [
        (
            lambda r, n, w, e, t: t >= r.deadline,
            "attached",
            lambda *a: {"peer": None, "deadline": None},
            ("MigrationFailed", "migration_expired"),
        ),
        (lambda *a: True, "migrating", None, ()),
    ],
    ("stale", "publish"): [
        (lambda r, n, w, e, t: n == r.node, "stale", None, ()),
        (lambda *a: True, "stale", None, ("AttachmentConflict",)),
    ],
    ("stale", "unpublish"): [
        (lambda r, n, w, e, t: n == r.node, "detached", lambda *a: CLEARED, ("VolumeDetached",)),
        (lambda *a: True, "stale", None, ()),
    ],
    ("stale", "node_ready"): [
        (
            lambda r, n, w, e, t: n == r.node,
            "attached",
            lambda *a: {"stale_since": None},
            ("recovered",),
        ),
    ],
    ("stale", "reconcile"): [
        (
            lambda r, n, w, e, t: e and t - r.stale_since >= GRACE,
            "detached",
            lambda *a: CLEARED,
            ("StaleAttachmentCleared", "stale_cleared"),
        ),
        (lambda *a: True, "stale", None, ()),
    ],
}


def reference_step(
    ref: Ref, event: str, node: str, rwx: bool, evidence: bool, now: float
) -> tuple[Ref, tuple[str, ...]] | str:
    for cond, target, change, hooks in TABLE.get((ref.state, event), []):
        if cond(ref, node, rwx, evidence, now):
            fields = change(ref, node, rwx, evidence, now) if change else {}
            return replace(ref, state=target, **fields), hooks
    return NOT_ALLOWED


class AttachmentModelTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        d = compile_machine(AttachmentMachine)
        self.log = HookLog(d.hook_names)
        self.rig = make_rig((self.log,))
        self.engine = self.rig.machines.attachment
        self.models = {v: self.engine.track(AttachmentModel(v)) for v in VOLUMES}
        self.refs = {v: Ref() for v in VOLUMES}
        self.cleared_at: list[tuple[float, float]] = []

    def _now(self) -> float:
        return self.rig.clock.monotonic()

    def _apply(
        self,
        vol: str,
        event: str,
        node: str,
        rwx: bool = False,
        ev: bool = False,
        ago: float | None = None,
    ) -> None:
        now = self._now()
        model, ref = self.models[vol], self.refs[vol]
        before = model.fields()
        SINCE[0] = None if ago is None else now - ago
        expected = reference_step(ref, event, node, rwx, ev, now)
        p = AttachInput(
            now=now,
            node=node,
            rwx_block=rwx,
            evidence=ev,
            grace_s=GRACE,
            migration_s=MIGRATION,
            since=SINCE[0],
        )
        start = len(self.log.fired)
        if expected == NOT_ALLOWED:
            with pytest.raises(TransitionNotAllowed) as err:
                self.engine.send(model, event, p)
            assert vol in str(err.value) and event in str(err.value)
            assert model.fields() == before, "a refused event must change nothing"
            return
        assert not isinstance(expected, str)
        new_ref, hooks = expected
        if ref.state == "stale" and new_ref.state == "detached" and event == "reconcile":
            self.cleared_at.append((now - (ref.stale_since or 0.0), 1.0 if ev else 0.0))
        reasons_before = len(self.rig.sink.events)
        self.engine.send(model, event, p)
        self.refs[vol] = new_ref
        fired = tuple(h for _, h, _ in self.log.fired[start:])
        assert fired == hooks, f"{vol} {event}({node}): fired {fired}, expected {hooks}"
        reasons = [e.reason for e in list(self.rig.sink.events)[reasons_before:]]
        assert reasons == [h for h in hooks if h[0].isupper()]

    def _node(self, vol: str, pick: int) -> str:
        # 0..2: any node; 3: the holder; 4: the migration target (steers towards legal events)
        model = self.models[vol]
        if pick == 3 and model.node:
            name = model.node
        elif pick == 4 and model.peer:
            name = model.peer
        else:
            name = NODES[pick % len(NODES)]
        # Node names arrive from the wire: equal strings, never the same object. A guard
        # comparing with `is` instead of `==` must fail here.
        fresh = "".join(list(name))
        assert fresh == name and fresh is not name
        return fresh

    @rule(
        vol=st.sampled_from(VOLUMES),
        pick=PICK,
        odd=st.integers(0, 9),
        ago=st.sampled_from([None, None, 0.0, 10.0, MIGRATION - 0.001, MIGRATION, 400.0]),
    )
    def publish(self, vol: str, pick: int, odd: int, ago: float | None) -> None:
        # now and then a request whose access type disagrees with the volume's; `ago`: the
        # requesting node's VolumeAttachment was created that long ago
        rwx = RWX[vol] if odd else not RWX[vol]
        self._apply(vol, "publish", self._node(vol, pick), rwx=rwx, ago=ago)

    @rule(vol=st.sampled_from(VOLUMES), pick=PICK)
    def unpublish(self, vol: str, pick: int) -> None:
        self._apply(vol, "unpublish", self._node(vol, pick))

    @rule(
        vol=st.sampled_from(VOLUMES),
        pick=PICK,
        ago=st.sampled_from([None, 0.0, 5.0, GRACE - 0.001, GRACE, 100.0]),
    )
    def node_lost(self, vol: str, pick: int, ago: float | None) -> None:
        # `ago`: the node's Ready condition changed that long ago (None: unknown, now)
        self._apply(vol, "node_lost", self._node(vol, pick), ago=ago)

    @rule(vol=st.sampled_from(VOLUMES), pick=PICK)
    def node_ready(self, vol: str, pick: int) -> None:
        self._apply(vol, "node_ready", self._node(vol, pick))

    @rule(vol=st.sampled_from(VOLUMES), evidence=st.booleans())
    def reconcile(self, vol: str, evidence: bool) -> None:
        self._apply(vol, "reconcile", self.models[vol].node or "", ev=evidence)

    @precondition(lambda self: any(m.state == "migrating" for m in self.models.values()))
    @rule(
        event=st.sampled_from(["publish", "unpublish", "node_lost"]),
        who=st.sampled_from(["source", "target", "other"]),
    )
    def during_migration(self, event: str, who: str) -> None:
        # A migration is rare enough that random picks may miss its corners (a third node,
        # the target lost): aim at them.
        vol = next(v for v, m in self.models.items() if m.state == "migrating")
        model = self.models[vol]
        other = next(n for n in NODES if n not in (model.node, model.peer))
        node = {"source": model.node, "target": model.peer, "other": other}[who] or other
        self._apply(vol, event, "".join(list(node)), rwx=RWX[vol])

    @precondition(lambda self: any(m.state == "migrating" for m in self.models.values()))
    @rule(late=st.sampled_from([-0.001, 0.0, 1.0]))
    def migration_deadline(self, late: float) -> None:
        # jump to just before, at, or after a migration's deadline, then reconcile it
        vol = next(v for v, m in self.models.items() if m.state == "migrating")
        deadline = self.models[vol].deadline
        assert deadline is not None
        self.rig.clock.advance(max(0.0, deadline + late - self._now()))
        self._apply(vol, "reconcile", self.models[vol].node or "")

    @precondition(lambda self: any(m.state == "stale" for m in self.models.values()))
    @rule(late=st.sampled_from([-0.001, 0.0, 1.0]), evidence=st.booleans())
    def grace_boundary(self, late: float, evidence: bool) -> None:
        # jump to just before, at, or after a stale attachment's grace, then reconcile it
        vol = next(v for v, m in self.models.items() if m.state == "stale")
        since = self.models[vol].stale_since
        assert since is not None
        self.rig.clock.advance(max(0.0, since + GRACE + late - self._now()))
        self._apply(vol, "reconcile", self.models[vol].node or "", ev=evidence)

    @rule(dt=st.sampled_from([0.0, 1.0, 10.0, 29.0, 29.999, 30.0, 31.0, 120.0, 301.0]))
    def advance(self, dt: float) -> None:
        self.rig.clock.advance(dt)

    @invariant()
    def matches_reference(self) -> None:
        for vol, model in self.models.items():
            ref = self.refs[vol]
            got = (
                model.state,
                model.node,
                model.peer,
                model.rwx_block,
                model.stale_since,
                model.deadline,
            )
            want = (ref.state, ref.node, ref.peer, ref.rwx, ref.stale_since, ref.deadline)
            assert got == want, f"{vol}: machine {got} != reference {want}"

    @invariant()
    def single_node_volume_never_on_two_nodes(self) -> None:
        for model in self.models.values():
            if not model.rwx_block:
                assert model.peer is None and len(model.nodes) <= 1
            assert (model.state == "migrating") == (model.peer is not None)
            assert (model.state == "detached") == (model.node is None)

    @invariant()
    def stale_never_cleared_early(self) -> None:
        for waited, evidence in self.cleared_at:
            assert evidence and waited >= GRACE

    @invariant()
    def gauges_count_models(self) -> None:
        for state in compile_machine(AttachmentMachine).states:
            n = sum(1 for m in self.models.values() if m.state == state)
            assert self.rig.gauge("attachment", state) == n


def test_attachment_machine_against_reference() -> None:
    run_state_machine_as_test(AttachmentModelTest, settings=coverage_settings())
    missing = uncovered(compile_machine(AttachmentMachine))
    assert not missing, f"transitions never exercised: {missing}"
