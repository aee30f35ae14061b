"""Session evidence: "this node has no NVMe/TCP session to this volume", from the appliance.

Only with `rds.fence: allow-host`: a node without a session now could open one later (the
kernel reconnects for `ctrl_loss_tmo`), so its absence is proof only once the node is also
fenced off the disk when its attachment is cleared, which is what the fence does. A listing
is read when a holder is lost with no other evidence: once per reconcile pass on the leader,
and by a ControllerPublish that meets such a holder (any replica, from the same appliance).

A listing that cannot be taken, or not read whole, is no evidence (`SessionsUnavailable`):
the stale attachment keeps waiting for deletion or the out-of-service taint, as without one.
`rds_csi_session_listings_total{outcome}` counts both outcomes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from ..io.rds.sessions import SessionListing, SessionsUnavailable, read_sessions
from ..io.rds.volumes import VolumeStore
from .nodes import NodeBook

log = logging.getLogger("rdscsi.evidence")


class Evidence(Protocol):
    def absent(self, volume_id: str, node: str) -> bool: ...


class SessionEvidence:
    """One appliance's listing, read against the nodes' host NQNs. It is evidence only for
    that appliance's volumes: `slot_of` gives a volume id's slot there, or None for a volume
    of another appliance (for which this listing proves nothing)."""

    def __init__(
        self,
        listing: SessionListing,
        nodes: NodeBook,
        export_nqn: Callable[[str], str],
        slot_of: Callable[[str], str | None] = lambda vid: vid,
        appliance: str = "",
    ) -> None:
        self.listing = listing
        self.nodes = nodes
        self.export_nqn = export_nqn  # of a slot
        self.slot_of = slot_of
        self.appliance = appliance

    def absent(self, volume_id: str, node: str) -> bool:
        """True only if the listing proves the node's host holds no session to the volume:
        the volume is on this listing's appliance, and the node's host NQN is known and its
        own (no other node reports it)."""
        slot = self.slot_of(volume_id)
        if slot is None:
            return False
        nqn = self.nodes.host_nqn(node)
        if nqn is None or self.nodes.sharing(node):
            return False
        return not self.listing.connected(nqn, self.export_nqn(slot), slot)


class FleetEvidence:
    """The listings of one pass, one per appliance that could be read: a volume's evidence
    is its own appliance's listing only. An appliance without one (down, hung, listing
    unreadable, fence off) gives no evidence for its volumes: never "no session"."""

    def __init__(
        self, by_appliance: dict[str, SessionEvidence], appliance_of: Callable[[str], str]
    ):
        self.by_appliance = by_appliance
        self.appliance_of = appliance_of

    def __bool__(self) -> bool:
        return bool(self.by_appliance)

    def absent(self, volume_id: str, node: str) -> bool:
        evidence = self.by_appliance.get(self.appliance_of(volume_id))
        return evidence is not None and evidence.absent(volume_id, node)


class SessionReader:
    """Reads listings for session evidence, counting each outcome per appliance."""

    def __init__(
        self,
        nodes: NodeBook,
        now: Callable[[], float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.nodes = nodes
        self.now = now
        self.listings = Counter(
            "rds_csi_session_listings_total",
            "NVMe/TCP session listings read from each appliance for evidence, by outcome "
            "(unavailable: failed, or not readable whole: no evidence)",
            ["appliance", "outcome"],
            registry=registry,
        )
        self.last_problem: dict[str, str] = {}  # appliance -> the last failure, once logged

    def preset(self, appliance: str) -> None:
        """A fenced appliance's series, at 0 from the start."""
        for outcome in ("listed", "unavailable"):
            self.listings.labels(appliance, outcome)

    async def read(
        self,
        store: VolumeStore,
        appliance: str,
        export_nqn: Callable[[str], str],
        slot_of: Callable[[str], str | None],
    ) -> SessionEvidence | None:
        """Evidence from one listing of `store`'s appliance; None when there is none."""
        try:
            listing = await read_sessions(store, self.now())
        except SessionsUnavailable as exc:
            self.listings.labels(appliance, "unavailable").inc()
            if str(exc) != self.last_problem.get(appliance):
                log.warning("appliance %s: no session evidence: %s", appliance, exc)
            self.last_problem[appliance] = str(exc)
            return None
        self.listings.labels(appliance, "listed").inc()
        self.last_problem.pop(appliance, None)
        return SessionEvidence(listing, self.nodes, export_nqn, slot_of, appliance)
