"""Cluster events fired by machine hooks, delivered through an `EventSink`.

The sink is an interface: `MemorySink` keeps events for tests and, in standalone mode,
logs them; the Kubernetes sink (events.k8s.io/v1) plugs in the same way. Every emitted
event ends with one outcome, counted in `rds_csi_events_total{outcome}`: `sent` (posted, or
logged standalone), `aggregated` (a repeat folded into an existing Event's series) or
`dropped` (lost: queue full, rejected, out of retries, nothing to attach it to).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from ..machines.attachment import AttachmentModel
from ..machines.connection import ConnectionModel
from ..machines.engine import Step
from ..machines.orphan import OrphanModel

log = logging.getLogger("rdscsi.events")

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an event is about. The Kubernetes sink resolves volumes to their PVC."""

    kind: str  # "PersistentVolume", "Node" or "Appliance"
    name: str
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    reason: str  # one of REASONS
    type: str  # Normal or Warning
    regarding: ObjectRef
    note: str  # human message naming the volume, node or appliance
    action: str  # what the driver did (events.k8s.io/v1 `action`)
    related: ObjectRef | None = None  # e.g. the node an attachment concerns


class EventSink(Protocol):
    def emit(self, event: ClusterEvent) -> None: ...


OUTCOMES = ("sent", "aggregated", "dropped")


class EventMetrics:
    """`rds_csi_events_total{outcome}`, every outcome visible at 0 from the start."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.total = Counter(
            "rds_csi_events_total",
            "Cluster events by outcome: sent, aggregated into a series, dropped",
            ["outcome"],
            registry=registry,
        )
        self.sent = self.total.labels("sent")
        self.aggregated = self.total.labels("aggregated")
        self.dropped = self.total.labels("dropped")


def bind_metrics(sink: EventSink, registry: CollectorRegistry | None) -> None:
    """Give a sink that counts outcomes (`bind_metrics`) its series in `registry`."""
    bind = getattr(sink, "bind_metrics", None)
    if bind is not None and getattr(sink, "metrics", None) is None:
        bind(EventMetrics(registry))


class MemorySink:
    """Keeps the most recent events (bounded) and optionally logs each one."""

    def __init__(self, maxlen: int = 10_000, log_events: bool = False) -> None:
        self.events: deque[ClusterEvent] = deque(maxlen=maxlen)
        self._log = log_events
        self.metrics: EventMetrics | None = None

    def bind_metrics(self, metrics: EventMetrics) -> None:
        self.metrics = metrics

    def emit(self, event: ClusterEvent) -> None:
        self.events.append(event)
        if self.metrics is not None:
            self.metrics.sent.inc()
        if self._log:
            level = logging.WARNING if event.type == WARNING else logging.INFO
            log.log(
                level,
                "%s %s/%s: %s",
                event.reason,
                event.regarding.kind,
                event.regarding.name,
                event.note,
            )

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def _volume(step: Step) -> AttachmentModel:
    model = step.model
    assert isinstance(model, AttachmentModel)
    return model


def _pv(name: str) -> ObjectRef:
    return ObjectRef("PersistentVolume", name)


def _node(name: str | None) -> ObjectRef | None:
    return ObjectRef("Node", name) if name else None


class EventListener:
    """Turns hook names that are event reasons into `ClusterEvent`s on a sink."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink

    def _attachment(
        self,
        step: Step,
        reason: str,
        type_: str,
        action: str,
        note: Callable[[AttachmentModel, str], str],
    ) -> None:
        vol = _volume(step)
        node = getattr(step.payload, "node", "") or ""
        self.sink.emit(
            ClusterEvent(
                reason, type_, _pv(vol.volume_id), note(vol, node), action, _node(node or vol.node)
            )
        )

    def VolumeAttached(self, step: Step) -> None:
        self._attachment(
            step,
            "VolumeAttached",
            NORMAL,
            "Attach",
            lambda v, n: f"volume {v.volume_id} attached to node {n}",
        )

    def VolumeDetached(self, step: Step) -> None:
        self._attachment(
            step,
            "VolumeDetached",
            NORMAL,
            "Detach",
            lambda v, n: f"volume {v.volume_id} detached from node {n}",
        )

    def AttachmentConflict(self, step: Step) -> None:
        self._attachment(
            step,
            "AttachmentConflict",
            WARNING,
            "RefuseAttach",
            lambda v, n: (
                f"volume {v.volume_id} refused for node {n}: held by "
                f"{', '.join(v.nodes)} ({step.source}); a single-node volume is never on two nodes"
            ),
        )

    def MigrationStarted(self, step: Step) -> None:
        self._attachment(
            step,
            "MigrationStarted",
            NORMAL,
            "Migrate",
            lambda v, n: f"volume {v.volume_id} migrating from node {v.node} to node {v.peer}",
        )

    def MigrationCompleted(self, step: Step) -> None:
        self._attachment(
            step,
            "MigrationCompleted",
            NORMAL,
            "Migrate",
            lambda v, n: f"volume {v.volume_id} migration completed: now on node {v.node}",
        )

    def MigrationFailed(self, step: Step) -> None:
        why = {
            "unpublish": "target detached",
            "node_lost": "a node was lost",
            "reconcile": "deadline passed",
        }.get(step.event, step.event)
        self._attachment(
            step,
            "MigrationFailed",
            WARNING,
            "Migrate",
            lambda v, n: f"volume {v.volume_id} migration failed ({why}): stays on node {v.node}",
        )

    def StaleAttachmentCleared(self, step: Step) -> None:
        vol = _volume(step)
        node = getattr(step.payload, "node", "") or ""
        since = step.previous_entered_at
        self.sink.emit(
            ClusterEvent(
                "StaleAttachmentCleared",
                WARNING,
                _pv(vol.volume_id),
                f"volume {vol.volume_id} released from node {node}: node deleted or out of "
                f"service, stale for {step.now - since:.0f}s",
                "Detach",
                _node(node),
            )
        )

    def NodeFenced(self, step: Step) -> None:
        self._attachment(
            step,
            "NodeFenced",
            WARNING,
            "Fence",
            lambda v, n: (
                f"volume {v.volume_id}: node {n or '(unknown)'} taken off the appliance's "
                f"allow-list (host {getattr(step.payload, 'nqn', '')}): it can no longer connect"
            ),
        )

    def FenceRepaired(self, step: Step) -> None:
        self._attachment(
            step,
            "FenceRepaired",
            WARNING,
            "Fence",
            lambda v, n: (
                f"volume {v.volume_id}: host {getattr(step.payload, 'nqn', '')} "
                f"({'node ' + n if n else 'no node reports it'}) was on the appliance's "
                "allow-list but does not hold the volume: taken off"
            ),
        )

    def _orphan(self, step: Step, reason: str, type_: str, action: str, note: str) -> None:
        orphan = step.model
        assert isinstance(orphan, OrphanModel)
        # related: the PV that would claim it (so each volume's events are their own series)
        self.sink.emit(
            ClusterEvent(
                reason,
                type_,
                ObjectRef("Appliance", orphan.appliance),
                f"RDS {orphan.appliance}: {orphan.kind} {orphan.name}: {note}",
                action,
                _pv(orphan.volume) if orphan.volume else None,
            )
        )

    def OrphanSuspected(self, step: Step) -> None:
        self._orphan(
            step,
            "OrphanSuspected",
            WARNING,
            "Report",
            "no PersistentVolume, VolumeSnapshotContent or operation in flight claims it",
        )

    def OrphanQuarantined(self, step: Step) -> None:
        self._orphan(
            step,
            "OrphanQuarantined",
            WARNING,
            "Quarantine",
            "unclaimed past the minimum age: renamed into quarantine, export disabled",
        )

    def OrphanDeleted(self, step: Step) -> None:
        self._orphan(
            step,
            "OrphanDeleted",
            WARNING,
            "Delete",
            "quarantined for the retention period and still unclaimed: deleted",
        )

    def OrphanRestored(self, step: Step) -> None:
        self._orphan(
            step,
            "OrphanRestored",
            NORMAL,
            "Restore",
            "a claimant appeared: taken out of quarantine, exported again",
        )

    def _appliance(self, step: Step, reason: str, type_: str, note: str) -> None:
        conn = step.model
        assert isinstance(conn, ConnectionModel)
        where = conn.address if conn.name == conn.address else f"{conn.name} ({conn.address})"
        self.sink.emit(
            ClusterEvent(
                reason,
                type_,
                ObjectRef("Appliance", conn.name),
                f"RDS {where}: {note}",
                "Connect",
            )
        )

    def RDSDisconnected(self, step: Step) -> None:
        why = "driver stopping" if step.event == "close" else "connection lost"
        self._appliance(step, "RDSDisconnected", WARNING, f"disconnected ({why})")

    def RDSMisconfigured(self, step: Step) -> None:
        conn = step.model
        assert isinstance(conn, ConnectionModel)
        key = f"; server host key {conn.fingerprint}" if conn.fingerprint else ""
        self._appliance(
            step,
            "RDSMisconfigured",
            WARNING,
            f"configuration rejected (not an outage): {conn.setting}: {conn.reason}{key}; "
            f"retrying in {conn.delay:.0f}s",
        )

    def RDSReconnected(self, step: Step) -> None:
        conn = step.model
        assert isinstance(conn, ConnectionModel)
        down = "" if conn.lost_at is None else f" after {step.now - conn.lost_at:.1f}s"
        self._appliance(step, "RDSReconnected", NORMAL, f"reconnected{down}")


REASONS = frozenset(
    {
        "VolumeAttached",
        "VolumeDetached",
        "AttachmentConflict",
        "MigrationStarted",
        "MigrationCompleted",
        "MigrationFailed",
        "StaleAttachmentCleared",
        "RDSDisconnected",
        "RDSReconnected",
        "RDSMisconfigured",
        "NodeFenced",
        "FenceRepaired",
        "OrphanSuspected",
        "OrphanQuarantined",
        "OrphanDeleted",
        "OrphanRestored",
        # Not a transition: the node service posts it when a volume's record is unreadable.
        "NodeRecordUnreadable",
    }
)
