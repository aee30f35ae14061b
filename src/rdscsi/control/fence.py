"""The fence at the appliance (`rds.fence: allow-host`): each disk's allow-list holds exactly
the host NQNs of the nodes that hold the volume in the cluster's view.

Every change is a step of the volume's Attachment machine (`fence`, `unfence`, `fence_out`,
`repair_fence`, `repair_unfence`): the step is checked against the machine's guards first,
then written to the appliance (one `/disk set` of the whole list), then taken, so its hooks
report only what the appliance accepted. A write that fails raises: the RPC fails and is
retried, or the reconciler's pass is retried, and the list is read again first.

- ControllerPublish (`admit`): hosts that do not hold the volume come off first, one step
  each (`fence_out`), and only then does the new holder go on (`fence`). A single-node
  volume's list never holds two hosts; a migration's holds both ends.
- ControllerUnpublish (`release`): the node that let go comes off (`unfence`).
- The reconciler (`fence_out` via `release_all`): a node it released (stale attachment
  cleared, migration ended) comes off. Its sweep (`converge`) repairs any list that
  disagrees with the cluster (a crash between two steps, a hand edit): a holder missing is
  put on (`repair_fence`), a host that holds nothing comes off (`repair_unfence`).

A publish still in flight elsewhere (a pending VolumeAttachment, while the volume has fewer
holders than it may have) keeps its host on: another replica may have just put it there.
A volume one of whose holders never reported its host NQN is left as it is (its list could
not name that holder): publishes to such a node are refused until it reports one.
An export with no list at all (fencing just turned on) is closed to exactly its holders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..clock import Clock
from ..io.rds.commands import validate_host_nqn
from ..io.rds.errors import InvalidValueError
from ..io.rds.fence import AllowList
from ..io.rds.volumes import VolumeStore
from ..machines import AttachInput, AttachmentMachine, AttachmentModel, Engine
from ..machines.guards import fill
from .nodes import NodeBook
from .record import Claim, Observed

log = logging.getLogger("rdscsi.fence")

ADDING = frozenset({"fence", "repair_fence"})


class FenceRefused(Exception):
    """The fence cannot be set for a node (no host NQN reported, one shared with another
    node, or one the allow-list cannot carry); the message says what to fix."""


@dataclass
class Repairs:
    """What one convergence changed, for the log."""

    added: int = 0
    removed: int = 0
    closed: int = 0
    skipped: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.closed or self.skipped)


class Fencer:
    def __init__(
        self,
        engine: Engine,
        nodes: NodeBook,
        clock: Clock,
        locate: Callable[[str], tuple[VolumeStore, str]],
    ) -> None:
        self.engine = engine  # the Attachment engine with its listeners
        self.nodes = nodes
        self.clock = clock
        # A volume id's appliance store and its disk slot there: in a fleet the id of a
        # volume on another appliance than the default is `<appliance>:<slot>`, and the
        # allow-list is that appliance's disk's, set by its slot.
        self.locate = locate

    async def _write(self, volume_id: str, hosts: frozenset[str]) -> None:
        store, slot = self.locate(volume_id)
        await store.set_allow_list(slot, hosts)

    # --- host NQNs ------------------------------------------------------------------------

    def host_of(self, node: str) -> str:
        """The node's host NQN, or FenceRefused saying why it cannot be fenced."""
        nqn = self.nodes.host_nqn(node)
        if nqn is None:
            raise FenceRefused(
                f"node {node} has not reported its NVMe host NQN (its node plugin writes it at "
                "start: is the plugin running there, with its Kubernetes access?); the "
                "appliance could not let it connect"
            )
        sharing = self.nodes.sharing(node)
        if sharing:
            raise FenceRefused(
                f"node {node} reports host NQN {nqn}, as do {', '.join(sharing)} (cloned "
                "machines?): the appliance cannot tell them apart; give each its own "
                "/etc/nvme/hostnqn (remove it and restart the node plugin)"
            )
        try:
            return validate_host_nqn(nqn)
        except InvalidValueError as exc:
            raise FenceRefused(f"node {node}: {exc}") from None

    def _holders_known(self, model: AttachmentModel) -> dict[str, str]:
        """node -> host NQN for every holder; FenceRefused if one cannot be named."""
        return {n: self.host_of(n) for n in model.nodes}

    def _keep(
        self,
        model: AttachmentModel,
        observed: Observed | None,
        holding: Iterable[Claim] = (),
    ) -> set[str]:
        """Hosts that stay on: the holders', those of the claims `holding` the volume in the
        cluster's view (the reconciler may not have released one yet), and while the volume
        has room for another holder, those of publishes pending (perhaps just fenced in by
        another replica)."""
        keep = set(self._holders_known(model).values())
        for claim in holding:
            nqn = self.nodes.host_nqn(claim.node)
            if nqn is None:
                raise FenceRefused(f"node {claim.node} holds the volume but reported no host NQN")
            keep.add(nqn)
        limit = 2 if model.rwx_block else 1
        if observed is not None and len(model.nodes) < limit:
            for claim in observed.pending():
                nqn = self.nodes.host_nqn(claim.node)
                if nqn is not None and not self.nodes.sharing(claim.node):
                    keep.add(nqn)
        return keep

    # --- steps ----------------------------------------------------------------------------

    async def _step(
        self,
        model: AttachmentModel,
        event: str,
        nqn: str,
        check: Callable[[], None] | None = None,
    ) -> None:
        node = self.nodes.owner(nqn) or ""
        p = AttachInput(now=self.clock.monotonic(), node=node or "unknown", nqn=nqn)
        # why, as the flight recorder keeps it: the machine's own words for who sends it
        p = replace(p, reason=fill(AttachmentMachine.sent_by[event], model, p))
        p = replace(p, node=node)
        if self.engine.allowed(model, event, p) is None:
            raise FenceRefused(
                f"volume {model.volume_id}: {event} of host {nqn} (node {node or 'unknown'}) "
                f"refused in state {model.state} with {sorted(model.fenced)} on the list"
            )
        after = model.fenced | {nqn} if event in ADDING else model.fenced - {nqn}
        if check is not None:
            check()  # the reconciler: still the leader, before every appliance command
        await self._write(model.volume_id, after)
        self.engine.send(model, event, p)

    async def _close(
        self, model: AttachmentModel, allow: AllowList, check: Callable[[], None] | None = None
    ) -> bool:
        """An open list (no fence yet) becomes exactly the holders' hosts (or nobody)."""
        if not allow.open:
            return False
        hosts = frozenset(self._holders_known(model).values())
        if check is not None:
            check()
        await self._write(model.volume_id, hosts)
        model.fenced = hosts
        return True

    async def admit(
        self, model: AttachmentModel, allow: AllowList, node: str, observed: Observed
    ) -> None:
        """ControllerPublish accepted `node`: whoever does not hold the volume comes off,
        then `node` goes on. `model` is after the publish."""
        mine = self.host_of(node)
        keep = self._keep(model, observed)
        model.fenced = allow.hosts
        for nqn in sorted(model.fenced - keep):
            await self._step(model, "fence_out", nqn)
        if mine not in model.fenced:
            await self._step(model, "fence", mine)

    async def release(self, model: AttachmentModel, allow: AllowList, nodes: Iterable[str]) -> None:
        """ControllerUnpublish: the `nodes` that let go come off. `model` is after it."""
        model.fenced = allow.hosts
        for node in nodes:
            nqn = self.nodes.host_nqn(node)
            if nqn is not None and nqn in model.fenced and node not in model.nodes:
                await self._step(model, "unfence", nqn)
        if allow.open:
            try:
                await self._close(model, allow)
            except FenceRefused as exc:
                log.warning("volume %s stays open: %s", model.volume_id, exc)

    async def fence_out(
        self,
        model: AttachmentModel,
        allow: AllowList,
        nodes: Iterable[str],
        check: Callable[[], None] | None = None,
    ) -> int:
        """The reconciler released `nodes`: each comes off. Returns how many came off."""
        model.fenced = allow.hosts
        done = 0
        for node in nodes:
            nqn = self.nodes.host_nqn(node)
            if nqn is not None and nqn in model.fenced and node not in model.nodes:
                await self._step(model, "fence_out", nqn, check)
                done += 1
        return done

    async def converge(
        self,
        model: AttachmentModel,
        allow: AllowList,
        observed: Observed | None,
        holding: list[Claim],
        repairs: Repairs,
        check: Callable[[], None] | None = None,
    ) -> None:
        """Make the list the cluster's view: hosts holding nothing off, missing holders on.
        `holding`: the claims that hold the volume (attached, not released by the leader);
        none of their hosts comes off, whatever the derived model says."""
        try:
            keep = self._keep(model, observed, holding)
            holders = self._holders_known(model)
        except FenceRefused as exc:
            repairs.skipped.append(f"volume {model.volume_id}: {exc}")
            return
        if await self._close(model, allow, check):
            repairs.closed += 1
            return
        model.fenced = allow.hosts
        for nqn in sorted(model.fenced - keep):
            await self._step(model, "repair_unfence", nqn, check)
            repairs.removed += 1
        if model.state in ("attached", "migrating"):
            for node in model.nodes:
                nqn = holders[node]
                if nqn not in model.fenced:
                    await self._step(model, "repair_fence", nqn, check)
                    repairs.added += 1

    def expected(self, holders: Iterable[str]) -> frozenset[str] | None:
        """The hosts a list should hold for these holder nodes (None: one is unknown): a
        cheap first look, so that a list that agrees costs no derivation."""
        out = set()
        for node in holders:
            nqn = self.nodes.host_nqn(node)
            if nqn is None:
                return None
            out.add(nqn)
        return frozenset(out)
