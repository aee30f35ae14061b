"""The reconciler's pass over every attachment: run by the leader only.

The leader keeps one Attachment model per attached volume (these are what the
`rds_csi_attachment_state` gauge counts). Each pass, per volume:

1. observe its claims; those this leader already released are left out;
2. when the holders differ from the ones the kept model was restored from, restore it
   (`control.derive`), silently: the change itself was an RPC's, reported there;
3. `settle` it on the real engine: a holder's node lost -> `node_lost` (stale, dated by
   the Node object), back -> `node_ready`, stale with evidence past the grace period ->
   cleared, a migration past its deadline or with a lost end -> back to one node. These
   transitions fire the events and metrics, once per leadership term;
4. a node the machine let go of is remembered as released, so the next pass does not
   restore it while its VolumeAttachment lingers; every replica reaches the same answer for
   its own decisions from the same objects and the clock (the release rules are the
   machine's guards). With the fence, the released node is also queued in `unfence`: the
   leader takes it off the disk's allow-list after the pass (`control.audit`), retried until
   the appliance accepts it.

A pass may be given session evidence (`control.evidence`): one listing of the appliance for
all the volumes it settles.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

from ..machines import AttachmentModel, Step
from .derive import Deriver
from .evidence import Evidence
from .record import AttachmentRecord, Claim

log = logging.getLogger("rdscsi.reconcile")


class AttachmentPass:
    def __init__(self, deriver: Deriver, record: AttachmentRecord, fencing: bool = False) -> None:
        self.deriver = deriver
        self.record = record
        self.fencing = fencing  # queue released nodes for the fence
        self.models: dict[str, AttachmentModel] = {}
        self._restored_from: dict[str, tuple[str, ...]] = {}  # claim keys per kept model
        self.released: dict[str, set[str]] = {}  # volume -> claim keys let go by this leader
        self.problems: dict[str, str] = {}  # volume -> what does not add up (logged once)
        self.unfence: dict[str, set[str]] = {}  # volume -> released nodes still on its fence
        self._sessions: Evidence | None = None

    def wants_sessions(self) -> bool:
        """Whether a session listing could be evidence this pass."""
        return self.deriver.wants_sessions(sorted(self.record.nodes()))

    def run(self, sessions: Evidence | None = None) -> Counter[str]:
        """One pass; returns how many volumes took each action (for logs and tests)."""
        done: Counter[str] = Counter()
        seen: set[str] = set()
        self._sessions = sessions
        for vid in list(self.record.volume_ids()):
            seen.add(vid)
            self._volume(vid, done)
        for vid in [v for v in self.models if v not in seen]:
            self._volume(vid, done)  # its last claim went away
        self._sessions = None
        for vid in [v for v in self.released if v not in seen]:
            del self.released[vid]
        # a node still to be taken off a fence keeps its host NQN until it is
        waiting = {n for nodes in self.unfence.values() for n in nodes}
        self.deriver.nodes.forget_deleted(keep=self.record.nodes() | waiting)
        return done

    def _volume(self, vid: str, done: Counter[str]) -> None:
        observed = self.record.observe(vid)
        released = self.released.get(vid)
        holders = observed.holders()
        if released:
            keys = {c.key for c in observed.claims}
            released.intersection_update(keys)  # its attachment is gone: forget the release
            if not released:
                del self.released[vid]
            holders = [c for c in holders if c.key not in released]
        self._check(observed.volume_id, observed.rwx_block, holders)
        restored_from = tuple(c.key for c in holders)
        engine = self.deriver.engine
        model = self.models.get(vid)
        if model is None or self._restored_from.get(vid) != restored_from:
            if model is not None:
                engine.forget(model)
            model = self.deriver.restore(engine, vid, observed.rwx_block, holders)
            self.models[vid] = model
        before = model.nodes
        steps = self.deriver.settle(engine, model, self._sessions)
        for step in steps:
            done[_action(step)] += 1
        dropped = [n for n in before if n not in model.nodes]
        if dropped:
            keys = {c.key for c in holders if c.node in dropped}
            self.released.setdefault(vid, set()).update(keys)
            restored_from = tuple(k for k in restored_from if k not in keys)
            release = getattr(self.record, "release", None)
            if release is not None:  # standalone: the record is ours to change
                for node in dropped:
                    release(vid, node)
            if self.fencing:
                self.unfence.setdefault(vid, set()).update(dropped)
        self._restored_from[vid] = restored_from
        if model.state == "detached":
            engine.forget(model)
            del self.models[vid]
            self._restored_from.pop(vid, None)
            let_go = self.released.get(vid, set())
            if dropped and any(c.key not in let_go for c in holders):
                # A holder after the one let go stands in its place (attached elsewhere
                # while the dead node's VolumeAttachment lingers): keep that now, not at
                # the next trigger. Each round releases one more holder, so this ends.
                self._volume(vid, done)

    def _check(self, vid: str, rwx_block: bool, holders: list[Claim]) -> None:
        limit = 2 if rwx_block else 1
        if len(holders) > limit:
            text = (
                f"volume {vid} is attached to nodes {', '.join(c.node for c in holders)}; "
                f"a {'read-write-many block' if rwx_block else 'single-node'} volume may be on "
                f"{limit}: keeping {', '.join(c.node for c in holders[:limit])} (the oldest)"
            )
            if self.problems.get(vid) != text:
                log.warning("%s", text)
            self.problems[vid] = text
        else:
            self.problems.pop(vid, None)

    def next_due(self) -> float | None:
        """Monotonic time the next grace period or migration deadline ends, if any."""
        due = math.inf
        grace = self.deriver.timing.grace_s
        for model in self.models.values():
            if model.state == "stale" and model.stale_since is not None:
                due = min(due, model.stale_since + grace)
            elif model.state == "migrating" and model.deadline is not None:
                due = min(due, model.deadline)
        return None if due == math.inf else due

    def clear(self) -> None:
        """Leadership lost: drop the kept models (their gauges go back to zero) and the
        releases; the next leader derives them again from the objects."""
        for model in self.models.values():
            self.deriver.engine.forget(model)
        self.models.clear()
        self._restored_from.clear()
        self.released.clear()
        self.problems.clear()
        self.unfence.clear()  # the next leader finds them in its sweep


def _action(step: Step) -> str:
    if step.event == "node_lost":
        return "node_lost"
    if step.event == "node_ready":
        return "node_ready"
    if step.source == "stale":
        return "cleared" if step.target == "detached" else "waiting"
    if step.source == "migrating" and step.target != "migrating":
        return "migration_expired"
    return "waiting"
