"""Where each volume may be used, as ControllerPublish/Unpublish and the listings see it.

Nothing is remembered here: each call observes the volume's claims (`control.record`: the
VolumeAttachments and PVs in a cluster, the local record standalone), restores its
Attachment machine from them (`control.derive`), sends the RPC's event and lets the machine
pick the transition (fencing, migration, conflicts); its hooks report. Any replica answers
alike, leader or not, and a restart or failover changes no answer.

With `rds.fence: allow-host` the decision is carried to the appliance before the call is
answered (`control.fence`): a publish puts the node's host on the disk's allow-list, after
taking off whoever does not hold the volume; an unpublish takes the node off. A publish that
meets a holder lost with no other evidence reads the appliance's session listing first
(`control.evidence`): no session of that holder to the volume is evidence too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..control.derive import Deriver, Unsettled
from ..control.evidence import SessionEvidence
from ..control.fence import Fencer
from ..control.record import INFLIGHT_PREFIX, AttachmentRecord, Observed
from ..io.rds.fence import AllowList
from ..machines import Engine, Step

# The session listing of the appliance holding a volume (None: no evidence).
SessionSource = Callable[[str], Awaitable[SessionEvidence | None]]

CLAIM_WAIT_S = 5.0  # how long a publish waits for its VolumeAttachment to reach our view


class NodeDirectory(Protocol):
    """Which node ids exist (NOT_FOUND for others), and which are proven gone."""

    def known(self, node_id: str) -> bool: ...

    def evidence(self, node_id: str) -> bool: ...


class ClaimNotSeen(Exception):
    """The VolumeAttachment the attacher acts on is not in this replica's view yet, or its
    order against another one created with it is not settled: the attacher retries."""


@dataclass(frozen=True)
class Decision:
    step: Step
    refused: bool  # AttachmentConflict: another node holds (or claimed first)
    holders: tuple[str, ...]  # who holds the volume after the decision
    pending: bool  # a holder is an older VolumeAttachment not yet attached


class AttachmentBook:
    def __init__(
        self,
        deriver: Deriver,
        record: AttachmentRecord,
        claim_wait: float = CLAIM_WAIT_S,
        fencer: Fencer | None = None,
        sessions: SessionSource | None = None,
    ) -> None:
        self.deriver = deriver
        self.record = record
        self.claim_wait = claim_wait
        self.fencer = fencer  # rds.fence: allow-host
        self.sessions = sessions  # session evidence (with the fence only)

    @property
    def engine(self) -> Engine:
        return self.deriver.engine

    async def _sessions(self, observed: Observed) -> SessionEvidence | None:
        if self.sessions is None:
            return None
        if not self.deriver.wants_sessions([c.node for c in observed.holders()]):
            return None
        return await self.sessions(observed.volume_id)

    async def publish(
        self, volume_id: str, node: str, rwx_block: bool, allow: AllowList | None = None
    ) -> Decision:
        """`allow`: the disk's allow-list as just read (the fence is set when given)."""
        if not await self.record.wait_claim(volume_id, node, self.claim_wait):
            raise ClaimNotSeen(
                f"volume {volume_id}: no VolumeAttachment for node {node} observed yet"
            )
        observed = self.record.observe(volume_id)
        sessions = await self._sessions(observed)
        if sessions is not None:
            observed = self.record.observe(volume_id)  # as it is after the round trip
        try:
            blockers = self.deriver.blockers(observed, node)
        except Unsettled as exc:
            raise ClaimNotSeen(f"volume {volume_id}: {exc}") from None
        model = self.deriver.for_decision(observed, blockers, sessions)
        try:
            mine = observed.claim(node)
            # A migration's deadline runs from its target's VolumeAttachment.
            since = (
                self.deriver.mono(mine.since)
                if mine is not None and not mine.key.startswith(INFLIGHT_PREFIX)
                else None
            )
            reason = f"ControllerPublishVolume for node {node}" + (
                " (read-write-many block)" if rwx_block else ""
            )
            step = self.engine.send(
                model, "publish", self.deriver.input(node, rwx_block, since=since, reason=reason)
            )
            refused = "AttachmentConflict" in step.transition.hooks
            if not refused:
                # Recorded before the fence is written: a publish whose outcome is uncertain
                # holds the volume until it is unpublished.
                self.record.published(volume_id, node, observed.rwx_block or rwx_block)
                if self.fencer is not None and allow is not None:
                    await self.fencer.admit(model, allow, node, observed)
            pending = any(not c.attached for c in blockers if c.node in model.nodes)
            return Decision(step, refused, model.nodes, pending)
        finally:
            self.engine.forget(model)

    async def unpublish(
        self, volume_id: str, node: str = "", allow: AllowList | None = None
    ) -> list[Step]:
        """From `node`, or from every node holding it when `node` is empty (CSI spec).
        `allow`: the disk's allow-list as just read (the node comes off it when given)."""
        observed = self.record.observe(volume_id)
        model = self.deriver.for_decision(observed, observed.holders())
        steps: list[Step] = []
        try:
            targets = [node] if node else list(model.nodes)
            for n in targets:
                reason = (
                    f"ControllerUnpublishVolume from node {n}"
                    if node
                    else (f"ControllerUnpublishVolume from every node ({n})")
                )
                p = self.deriver.input(n, reason=reason)
                steps.append(self.engine.send(model, "unpublish", p))
                self.record.unpublished(volume_id, n)
            if self.fencer is not None and allow is not None:
                await self.fencer.release(model, allow, targets)
        finally:
            self.engine.forget(model)
        return steps

    def nodes(self, volume_id: str) -> tuple[str, ...]:
        """The nodes the volume is published to now."""
        return self.deriver.current(self.record.observe(volume_id)).nodes

    def forget(self, volume_id: str) -> None:
        """The volume is deleted."""
        self.record.forget(volume_id)
        self.engine.retire(volume_id)
