"""Model-based test of the Attachment machine against an independent reference table,
fence steps included (a node is never taken off the allow-list while it holds the volume; a
host goes on only while the list has room for it: a single-node volume's new holder never
before the old one is off)."""

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
    fenced: frozenset[str] = frozenset()

    @property
    def holders(self) -> tuple[str, ...]:
        return tuple(n for n in (self.node, self.peer) if n is not None)


def host(node: str) -> str:
    """The host NQN each node reports."""
    return f"nqn.2014-08.org.example:{node}"


STRAY = "nqn.2014-08.org.example:stray"  # on a list, reported by no node
HOSTS = (*(host(n) for n in ("n1", "n2", "n3")), STRAY)
ADD = ("fence", "repair_fence")
REMOVE = ("unfence", "fence_out", "repair_unfence")
FENCE_HOOKS = {
    "fence": ("fence_added",),
    "repair_fence": ("fence_added", "fence_repaired"),
    "unfence": ("fence_removed",),
    "fence_out": ("NodeFenced", "fence_removed"),
    "repair_unfence": ("FenceRepaired", "fence_removed", "fence_repaired"),
}
# The fence step's host NQN (the reference's conditions take the node, not the NQN).
NQN: list[str] = [""]


def room(r: Ref) -> bool:
    """The list may take one more host: a single-node volume's only while it is empty, a
    read-write-many block volume's while it has fewer than the nodes holding it."""
    if not r.rwx:
        return not r.fenced
    return len(r.fenced) < len(r.holders)


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


for _state in ("attached", "migrating"):
    for _event in ADD:
        TABLE[(_state, _event)] = [
            (
                lambda r, n, w, e, t: n in r.holders and NQN[0] not in r.fenced and room(r),
                _state,
                lambda r, n, w, e, t: {"fenced": r.fenced | {NQN[0]}},
                FENCE_HOOKS[_event],
            )
        ]
for _state in ("detached", "attached", "migrating", "stale"):
    for _event in REMOVE:
        TABLE[(_state, _event)] = [
            (
                lambda r, n, w, e, t: NQN[0] in r.fenced and n not in r.holders,
                _state,
                lambda r, n, w, e, t: {"fenced": r.fenced - {NQN[0]}},
                FENCE_HOOKS[_event],
            )
        ]


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
        nqn: str = "",
    ) -> None:
        now = self._now()
        model, ref = self.models[vol], self.refs[vol]
        before = model.fields()
        SINCE[0] = None if ago is None else now - ago
        NQN[0] = nqn
        expected = reference_step(ref, event, node, rwx, ev, now)
        p = AttachInput(
            now=now,
            node=node,
            rwx_block=rwx,
            evidence=ev,
            grace_s=GRACE,
            migration_s=MIGRATION,
            since=SINCE[0],
            nqn=nqn,
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
        holders = model.nodes
        self.engine.send(model, event, p)
        self.refs[vol] = new_ref
        if event in REMOVE:
            # the rule, checked apart from the reference: never a holder
            assert node not in holders, f"{vol}: {event} took holder {node} off"
        if event in ADD:
            # never more hosts than holders; a single-node volume's list never holds two
            assert len(model.fenced) <= len(model.nodes), (vol, event, model.fenced)
            assert model.rwx_block or len(model.fenced) == 1, (vol, event, model.fenced)
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
                model.fenced,
            )
            want = (
                ref.state,
                ref.node,
                ref.peer,
                ref.rwx,
                ref.stale_since,
                ref.deadline,
                ref.fenced,
            )
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


class AttachmentFenceTest(AttachmentModelTest):
    """The same volumes and rules, with the fence's steps between them (a run of its own,
    so that the lifecycle's corners keep their share of the steps in the other)."""

    @rule(vol=st.sampled_from([v for v, rwx in RWX.items() if rwx]))
    def start_a_migration(self, vol: str) -> None:
        # steer towards two holders: the state where the list holds both ends
        model = self.models[vol]
        if model.state == "detached":
            self._apply(vol, "publish", "n1", rwx=True)
        if model.state == "attached" and model.node is not None:
            other = next(n for n in NODES if n != model.node)
            self._apply(vol, "publish", other, rwx=True)

    @rule(vol=st.sampled_from(VOLUMES))
    def lose_the_holder(self, vol: str) -> None:
        # steer towards a suspect holder: the state whose holder never comes off
        model = self.models[vol]
        if model.state == "detached":
            self._apply(vol, "publish", "n2", rwx=RWX[vol])
        if model.state == "attached" and model.node is not None:
            self._apply(vol, "node_lost", "".join(list(model.node)))

    @rule(
        vol=st.sampled_from(VOLUMES),
        pick=PICK,
        event=st.sampled_from((*ADD, *REMOVE)),
        stray=st.integers(0, 5),
    )
    def fence_step(self, vol: str, pick: int, event: str, stray: int) -> None:
        # any node's host, now and then one no node reports
        node = self._node(vol, pick)
        nqn = host(node)
        if stray == 0:
            node, nqn = "", STRAY
        self._apply(vol, event, node, nqn=nqn)

    @precondition(
        lambda self: any(m.state in ("attached", "migrating") for m in self.models.values())
    )
    @rule(data=st.data(), event=st.sampled_from(ADD))
    def holder_goes_on(self, data: st.DataObject, event: str) -> None:
        # aim at the holders of attached and migrating volumes
        vol = data.draw(
            st.sampled_from(
                [v for v, m in self.models.items() if m.state in ("attached", "migrating")]
            )
        )
        node = data.draw(st.sampled_from(self.models[vol].nodes))
        self._apply(vol, event, "".join(list(node)), nqn=host(node))

    @precondition(lambda self: any(m.fenced for m in self.models.values()))
    @rule(data=st.data(), event=st.sampled_from(REMOVE))
    def host_comes_off(self, data: st.DataObject, event: str) -> None:
        # aim at what is on a list: a holder's (refused) or another's
        vol = data.draw(st.sampled_from([v for v, m in self.models.items() if m.fenced]))
        nqn = data.draw(st.sampled_from(sorted(self.models[vol].fenced)))
        node = nqn.rsplit(":", 1)[1] if nqn != STRAY else ""
        self._apply(vol, event, node, nqn=nqn)

    @rule(vol=st.sampled_from(VOLUMES), event=st.sampled_from(REMOVE))
    def stray_beside_the_holders(self, vol: str, event: str) -> None:
        # a list holding a host beside the holders' (whatever the volume's state): only the
        # stray comes off, the holders never do
        holders = self.models[vol].nodes
        self.list_read(vol, {STRAY, *(host(n) for n in holders)})
        self._apply(vol, event, "", nqn=STRAY)
        for node in holders:
            self._apply(vol, event, "".join(list(node)), nqn=host(node))

    @rule(vol=st.sampled_from(VOLUMES), hosts=st.sets(st.sampled_from(HOSTS), max_size=3))
    def list_read(self, vol: str, hosts: set[str]) -> None:
        # the list as read from the appliance (after a crash between steps, a hand edit):
        # the Fencer starts every change from it
        self.models[vol].fenced = frozenset(hosts)
        self.refs[vol] = replace(self.refs[vol], fenced=frozenset(hosts))


def test_attachment_machine_against_reference() -> None:
    run_state_machine_as_test(AttachmentModelTest, settings=coverage_settings())
    d = compile_machine(AttachmentMachine)
    missing = [m for m in uncovered(d) if not any(f" --{e} " in m for e in (*ADD, *REMOVE))]
    assert not missing, f"transitions never exercised: {missing}"


def test_attachment_fence_steps_against_reference() -> None:
    run_state_machine_as_test(AttachmentFenceTest, settings=coverage_settings())
    d = compile_machine(AttachmentMachine)
    missing = [m for m in uncovered(d) if any(f" --{e} " in m for e in (*ADD, *REMOVE))]
    assert not missing, f"fence steps never exercised: {missing}"
