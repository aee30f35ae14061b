"""Leadership gates the reconciler, and only the reconciler.

In a cluster the Lease holder runs the reconcile passes (stale clearing, migration expiry,
StartupReconciliation, and any sweep to come); standalone the process always does. No CSI
RPC asks who leads: any replica answers every call from the cluster's objects.

- `acquired`: a new term. `rds_csi_leader` 1, `StartupReconciliation` posted (exactly once
  per term), the reconciler started with a `startup` pass.
- `lost`: `rds_csi_leader` 0, the reconciler stopped (a running pass is cancelled), the
  kept attachment models dropped so their per-volume gauges leave with the leadership.
- `check()`: called by the pass before each appliance command; once the Lease is no longer
  ours (the elector's clock-bounded view) it raises `NotLeading`, so a deposed leader sends
  nothing more, even before its elector task has noticed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..hooks.events import NORMAL, WARNING, ClusterEvent, EventSink, ObjectRef
from .triggers import NotLeading, Reconciler

log = logging.getLogger("rdscsi.leadership")

TRANSITIONS = ("acquired", "lost", "released")


class LeaderMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.leader = Gauge(
            "rds_csi_leader",
            "1 while this replica runs the reconciler (holds the Lease), else 0",
            registry=registry,
        )
        self.transitions = Counter(
            "rds_csi_lease_transitions_total",
            "Reconciler leadership changes of this replica: acquired, lost (taken or not "
            "renewed in time), released (given back: shutdown or unable to sync)",
            ["event"],
            registry=registry,
        )
        for event in TRANSITIONS:
            self.transitions.labels(event)


Summary = Callable[[], tuple[str, list[str]]]  # (what was found, problems)


class Leadership:
    def __init__(
        self,
        reconciler: Reconciler,
        sink: EventSink,
        appliance: str,
        identity: str,
        is_leader: Callable[[], bool],
        summary: Summary,
        on_lost: Callable[[], None] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.sink = sink
        self.appliance = appliance
        self.identity = identity
        # The elector's clock-bounded view in a cluster; standalone always True.
        self.lease_held = is_leader
        self._summary = summary
        self._on_lost = on_lost
        self.metrics = LeaderMetrics(registry)
        self.metrics.leader.set(0)
        self.leading = False
        self.terms = 0
        self.startup_events = 0

    def check(self) -> None:
        """Raise `NotLeading` unless this replica holds the leadership right now."""
        if not (self.leading and self.lease_held()):
            raise NotLeading(f"{self.identity} no longer leads")

    def exported(self) -> bool:
        """Per-volume and per-node series are exported by the leader only."""
        return self.leading

    async def acquired(self) -> None:
        if self.leading:
            return
        self.leading = True
        self.terms += 1
        self.metrics.leader.set(1)
        self.metrics.transitions.labels("acquired").inc()
        found, problems = self._summary()
        log.info("%s leads (term %d): %s", self.identity, self.terms, found)
        for problem in problems:
            log.warning("startup reconciliation: %s", problem)
        self.startup_events += 1
        self.sink.emit(
            ClusterEvent(
                "StartupReconciliation",
                WARNING if problems else NORMAL,
                ObjectRef("Appliance", self.appliance),
                f"{self.identity} leads: {found}"
                + (f"; {'; '.join(problems)}" if problems else ""),
                "Reconcile",
            )
        )
        self.reconciler.start()
        self.reconciler.trigger("startup")

    async def lost(self, released: bool = False) -> None:
        if not self.leading:
            return
        self.leading = False
        self.metrics.leader.set(0)
        if released:
            self.metrics.transitions.labels("released").inc()
        else:
            self.metrics.transitions.labels("lost").inc()
        log.warning(
            "%s %s the leadership: reconciliation stopped",
            self.identity,
            "released" if released else "lost",
        )
        await self.reconciler.stop()
        if self._on_lost is not None:
            self._on_lost()
