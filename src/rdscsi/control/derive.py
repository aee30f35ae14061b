"""Per-volume derivation: the Attachment machine restored from what is observed.

Before every decision (ControllerPublish, ControllerUnpublish, each reconcile pass) a
volume's Attachment model is rebuilt from its claims (`control.record`): no holder is
`detached`, one is `attached`, two on a read-write-many block volume are `migrating`
(source the older, deadline from the target's creation). Then `settle` brings it up to date
with the Node machines and the clock by sending the machine's own events: a lost holder
`node_lost` (stale since the node's Ready transition), a returned one `node_ready`, and
`reconcile` for grace and migration deadlines. The machine picks every transition.

Session evidence (`control.evidence`, with `rds.fence: allow-host` only): a stale holder with
no NVMe/TCP session to the volume in the appliance's listing counts as evidence, beside
deletion and the out-of-service taint. A listing is read only when some holder is lost
without other evidence, once per pass or per such publish; without one there is no session
evidence, never "no session".

On the RPC path this runs on a *silent* engine (the same compiled machine without
listeners): each replica reaches the same state without emitting the reconciler's events;
only the RPC's own event goes through the real engine. The leader's pass
(`control.reconcile`) settles its kept models on the real engine, so stale marking, clearing
and migration expiry are reported once, by one replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..clock import Clock
from ..machines import AttachInput, AttachmentModel, Engine, Step
from .evidence import Evidence
from .nodes import NodeBook, to_monotonic
from .record import Claim, Observed, claim_order

SETTLE_LIMIT = 4  # events `settle` may send: lost -> stale -> cleared, plus one spare
# Two claims created closer than TIE_S apart (creationTimestamp has one-second steps, and
# apiservers' clocks differ a little) have no order every replica can agree on from what it
# has seen so far; once both are older than SETTLE_S every replica's informer has both, and
# their names decide.
TIE_S = 2.0
SETTLE_S = 5.0
MIGRATION_CHECK = "both nodes of the migration are up: its deadline is checked"


class Unsettled(Exception):
    """Two claims' order is not yet knowable alike on every replica: retry shortly."""


@dataclass(frozen=True)
class Timing:
    grace_s: float
    migration_s: float


class Deriver:
    def __init__(self, engine: Engine, nodes: NodeBook, clock: Clock, timing: Timing) -> None:
        self.engine = engine  # with the listeners: metrics, events, triggers
        self.silent = Engine(engine.definition, (), clock.monotonic)
        self.nodes = nodes
        self.clock = clock
        self.timing = timing

    def input(
        self,
        node: str = "",
        rwx_block: bool = False,
        evidence: bool = False,
        since: float | None = None,
        reason: str = "",
    ) -> AttachInput:
        return AttachInput(
            now=self.clock.monotonic(),
            node=node,
            rwx_block=rwx_block,
            evidence=evidence,
            grace_s=self.timing.grace_s,
            migration_s=self.timing.migration_s,
            since=since,
            reason=reason,
        )

    def mono(self, wall: float) -> float:
        return to_monotonic(self.clock, wall)

    # --- restore and settle ---------------------------------------------------------------

    def restore(
        self, engine: Engine, volume_id: str, rwx_block: bool, holders: Sequence[Claim]
    ) -> AttachmentModel:
        """A model tracked by `engine` in the state the holders (oldest first) describe."""
        model = AttachmentModel(volume_id)
        model.rwx_block = rwx_block
        state = "detached"
        entered = None
        if holders:
            model.node, state, entered = holders[0].node, "attached", holders[0].since
            if rwx_block and len(holders) > 1:
                target = holders[1]
                model.peer, state, entered = target.node, "migrating", target.since
                model.deadline = self.mono(target.since) + self.timing.migration_s
        engine.track(model, state)
        if entered is not None:
            model.entered_at = self.mono(entered)  # time in state counts from the object
        return model

    def evidence(self, volume_id: str, node: str, sessions: Evidence | None = None) -> bool:
        """Proof `node` no longer uses the volume: deleted or tainted out-of-service, or (with
        a session listing) no session of its host to the volume's export."""
        return self.nodes.evidence(node) or (
            sessions is not None and sessions.absent(volume_id, node)
        )

    def wants_sessions(self, nodes: Sequence[str]) -> bool:
        """Whether a session listing could be evidence for any of `nodes`: one is lost with
        no other evidence, and its host NQN is known."""
        book = self.nodes
        return any(
            book.lost(n) and not book.evidence(n) and book.host_nqn(n) is not None for n in nodes
        )

    def settle(
        self, engine: Engine, model: AttachmentModel, sessions: Evidence | None = None
    ) -> list[Step]:
        """Send the node and clock events the model is due, until it rests."""
        nodes = self.nodes
        steps: list[Step] = []
        for _ in range(SETTLE_LIMIT):
            state, holder = model.state, model.node or ""
            if state == "attached":
                if not nodes.lost(holder):
                    break
                since = nodes.lost_monotonic(holder)
                p = self.input(holder, since=since, reason=nodes.describe(holder))
                steps.append(engine.send(model, "node_lost", p))
            elif state == "stale":
                if nodes.ready(holder):
                    p = self.input(holder, reason=nodes.describe(holder))
                    steps.append(engine.send(model, "node_ready", p))
                    continue
                evidence = self.evidence(model.volume_id, holder, sessions)
                reason = nodes.describe(holder)
                if evidence and not nodes.evidence(holder):
                    reason += "; no NVMe/TCP session of its host to the volume on the appliance"
                p = self.input(holder, evidence=evidence, reason=reason)
                step = engine.send(model, "reconcile", p)
                steps.append(step)
                if step.target == "stale":
                    break
            elif state == "migrating":
                lost = next((n for n in (model.peer, model.node) if n and nodes.lost(n)), None)
                if lost is not None:
                    since = nodes.lost_monotonic(lost)
                    p = self.input(lost, since=since, reason=nodes.describe(lost))
                    steps.append(engine.send(model, "node_lost", p))
                    continue
                step = engine.send(model, "reconcile", self.input(holder, reason=MIGRATION_CHECK))
                steps.append(step)
                if step.target == "migrating":
                    break
            else:
                break
        return steps

    def settled(
        self,
        engine: Engine,
        volume_id: str,
        rwx_block: bool,
        holders: Sequence[Claim],
        sessions: Evidence | None = None,
    ) -> AttachmentModel:
        """`restore` then `settle`; when the machine lets go of a node it was restored on
        (a stale attachment cleared) and later holders remain, they stand in its place: a
        volume released from a dead node and attached elsewhere while the dead node's
        VolumeAttachment lingers is on the new node, not on none."""
        left = list(holders)
        while True:
            model = self.restore(engine, volume_id, rwx_block, left)
            before = model.nodes
            self.settle(engine, model, sessions)
            dropped = [n for n in before if n not in model.nodes]
            rest = [c for c in left if c.node not in before]
            if not dropped or not rest:
                return model
            engine.forget(model)
            left = [c for c in left if c.node not in dropped]

    # --- what RPCs ask --------------------------------------------------------------------

    def current(self, observed: Observed, sessions: Evidence | None = None) -> AttachmentModel:
        """Where the volume is attached now (an untracked model: read it, do not send)."""
        return self.settled(
            self.silent, observed.volume_id, observed.rwx_block, observed.holders(), sessions
        )

    def blockers(self, observed: Observed, node: str) -> list[Claim]:
        """Who stands before `node` for this volume: the holders, then the pending claims
        older than `node`'s own (nodes with evidence against them excluded). Every replica
        orders claims alike: by creationTimestamp, or by name for two created within TIE_S
        of each other, once SETTLE_S has passed (before that: `Unsettled`, retry). So two
        replicas never publish a single-node volume to two nodes, even before the holder's
        status is written: a replica that has seen a claim has seen every older one (a watch
        delivers in resourceVersion order)."""
        holders = observed.holders()
        if any(c.node == node for c in holders):
            return holders
        mine = observed.claim(node)
        held = {c.node for c in holders}
        ahead = []
        for c in observed.pending():
            if c.node == node or c.node in held or self.nodes.evidence(c.node):
                continue
            if mine is None:
                ahead.append(c)
            elif abs(c.since - mine.since) < TIE_S:
                newest = max(c.since, mine.since)
                if self.clock.wall() - newest < SETTLE_S:
                    raise Unsettled(
                        f"VolumeAttachments {c.key} (node {c.node}) and {mine.key} (node "
                        f"{node}) were created together; their order settles in {SETTLE_S:.0f}s"
                    )
                if c.key < mine.key:  # together: the name alone decides
                    ahead.append(c)
            elif c.since < mine.since:
                ahead.append(c)
        return sorted([*holders, *ahead], key=claim_order)

    def for_decision(
        self,
        observed: Observed,
        holders: Sequence[Claim],
        sessions: Evidence | None = None,
    ) -> AttachmentModel:
        """A model settled silently, then tracked by the real engine for the RPC's event
        (the caller forgets it afterwards)."""
        model = self.settled(self.silent, observed.volume_id, observed.rwx_block, holders, sessions)
        entered = model.entered_at
        self.engine.track(model, model.state)
        model.entered_at = entered
        return model
