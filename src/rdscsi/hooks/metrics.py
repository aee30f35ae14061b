"""Prometheus series recorded from machine transitions.

Per machine: `rds_csi_<machine>_state{state}` (objects in each state),
`rds_csi_fsm_transitions_total{machine,source,target,event}` and
`rds_csi_fsm_time_in_state_seconds{machine,state}` (observed when a state is left).
From named hooks, labelled with the appliance's name: appliance reconnects and rejected
configurations, the fence's changes and repairs, and the orphan sweep's actions; and
stale-attachment clearing.
Label children are cached so a transition costs a few dictionary look-ups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ..machines.connection import ConnectionModel
from ..machines.engine import FSMModel, MachineDef, Step
from ..machines.orphan import OrphanModel

RECONNECT_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TIME_IN_STATE_BUCKETS = (0.01, 0.1, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)


class MachineMetrics:
    """Owns the series; one per registry, shared by the listeners of every machine."""

    def __init__(self, machines: list[MachineDef], registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.state: dict[str, Gauge] = {}
        for d in machines:
            g = Gauge(
                f"rds_csi_{d.name}_state",
                f"{d.name} machines in each state",
                ["state"],
                registry=registry,
            )
            for s in d.states:
                g.labels(s).set(0)  # every state is visible at 0, not absent
            self.state[d.name] = g
        self.transitions = Counter(
            "rds_csi_fsm_transitions_total",
            "State machine transitions taken",
            ["machine", "source", "target", "event"],
            registry=registry,
        )
        self.time_in_state = Histogram(
            "rds_csi_fsm_time_in_state_seconds",
            "Time spent in a state before leaving it",
            ["machine", "state"],
            buckets=TIME_IN_STATE_BUCKETS,
            registry=registry,
        )
        self.connection_state = Gauge(
            "rds_csi_rds_connection_state",
            "1 while the appliance connection is up, else 0",
            ["appliance"],
            registry=registry,
        )
        # Per appliance: their label values are pre-set when its Connection model is tracked.
        self.reconnects = Counter(
            "rds_csi_rds_reconnect_total",
            "Reconnect attempts to an appliance by outcome",
            ["appliance", "status"],
            registry=registry,
        )
        self.reconnect_duration = Histogram(
            "rds_csi_rds_reconnect_duration_seconds",
            "From losing an appliance connection to having it back",
            ["appliance"],
            buckets=RECONNECT_BUCKETS,
            registry=registry,
        )
        self.config_rejected = Counter(
            "rds_csi_rds_config_rejected_total",
            "Dials an appliance answered but rejected, by the setting to fix (not outages)",
            ["appliance", "setting"],
            registry=registry,
        )
        self.stale_cleared = Counter(
            "rds_csi_attachment_stale_cleared_total",
            "Stale attachments released after evidence and the grace period",
            registry=registry,
        )
        self.reconcile_actions = Counter(
            "rds_csi_attachment_reconcile_total",
            "Attachment changes made by the reconciler, by action",
            ["action"],
            registry=registry,
        )
        for action in RECONCILE_ACTIONS.values():
            self.reconcile_actions.labels(action)
        self.node_repairs = Counter(
            "rds_csi_node_volume_repairs_total",
            "Node volumes brought back from an uncertain state (stale mount, half-done call)",
            registry=registry,
        )
        self.node_interrupted = Counter(
            "rds_csi_node_volume_interrupted_total",
            "Node operations that failed or timed out half-way, leaving the volume uncertain",
            registry=registry,
        )
        self.fence_changes = Counter(
            "rds_csi_fence_changes_total",
            "Host NQNs put on (add) or taken off (remove) a disk's allow-list, per appliance",
            ["appliance", "change"],
            registry=registry,
        )
        self.fence_repairs = Counter(
            "rds_csi_fence_repairs_total",
            "Allow-list entries the reconciler corrected to the cluster's view (after a crash "
            "between fence steps, or a hand edit), per appliance",
            ["appliance"],
            registry=registry,
        )
        self.orphan_actions = Counter(
            "rds_csi_orphan_actions_total",
            "Orphan sweep actions on unclaimed objects of this driver, per appliance",
            ["appliance", "action"],
            registry=registry,
        )
        # A volume id's appliance (the fleet sets it: `<appliance>:<slot>`, or the default's).
        self.appliance_of: Callable[[str], str] = lambda volume_id: "unknown"

    def preset(self, appliance: str) -> None:
        """The fence's and sweep's series of an appliance, at 0 from the start."""
        for change in ("add", "remove"):
            self.fence_changes.labels(appliance, change)
        self.fence_repairs.labels(appliance)
        for action in ORPHAN_ACTIONS.values():
            self.orphan_actions.labels(appliance, action)


# Hook name -> reconcile action label.
RECONCILE_ACTIONS = {
    "marked_stale": "mark_stale",
    "recovered": "recover",
    "stale_cleared": "clear_stale",
    "migration_expired": "expire_migration",
}


# Hook name -> orphan action label.
ORPHAN_ACTIONS = {
    "orphan_suspected": "suspect",
    "orphan_quarantined": "quarantine",
    "orphan_deleted": "delete",
    "orphan_restored": "restore",
}


class MetricsListener:
    """Records the per-machine series and the hook-driven ones for one machine."""

    def __init__(self, metrics: MachineMetrics, machine: MachineDef) -> None:
        self.m = metrics
        self.machine = machine.name
        gauge = metrics.state[machine.name]
        self._state = {s: gauge.labels(s) for s in machine.states}
        self._edges: dict[int, Any] = {
            t.index: metrics.transitions.labels(machine.name, t.source, t.target, t.event)
            for t in machine.transitions
        }
        self._tis = {s: metrics.time_in_state.labels(machine.name, s) for s in machine.states}
        self._actions = {
            h: metrics.reconcile_actions.labels(a) for h, a in RECONCILE_ACTIONS.items()
        }

    # lifecycle of tracked objects
    def on_track(self, machine: str, model: FSMModel) -> None:
        self._state[model.state or ""].inc()
        if isinstance(model, ConnectionModel):
            for status in ("success", "failure"):
                self.m.reconnects.labels(model.key, status)
            self.m.reconnect_duration.labels(model.key)
            for setting in model.rejectable:
                self.m.config_rejected.labels(model.key, setting)
            self._connection(model)

    def on_forget(self, machine: str, model: FSMModel) -> None:
        self._state[model.state or ""].dec()

    def after_transition(self, step: Step) -> None:
        tr = step.transition
        self._edges[tr.index].inc()
        if tr.source != tr.target:
            self._state[tr.source].dec()
            self._state[tr.target].inc()
            self._tis[tr.source].observe(max(0.0, step.now - step.previous_entered_at))
            if isinstance(step.model, ConnectionModel):
                self._connection(step.model)

    def _connection(self, model: ConnectionModel) -> None:
        up = 1 if model.state == "connected" else 0
        self.m.connection_state.labels(model.key).set(up)

    # named hooks
    def reconnect_succeeded(self, step: Step) -> None:
        model = step.model
        if isinstance(model, ConnectionModel):
            self.m.reconnects.labels(model.key, "success").inc()
            if model.lost_at is not None:
                seconds = max(0.0, step.now - model.lost_at)
                self.m.reconnect_duration.labels(model.key).observe(seconds)

    def reconnect_failed(self, step: Step) -> None:
        model = step.model
        if isinstance(model, ConnectionModel):
            self.m.reconnects.labels(model.key, "failure").inc()

    def config_rejected(self, step: Step) -> None:
        model = step.model
        if isinstance(model, ConnectionModel):
            self.m.config_rejected.labels(model.key, model.setting or "unknown").inc()

    def marked_stale(self, step: Step) -> None:
        self._actions["marked_stale"].inc()

    def recovered(self, step: Step) -> None:
        self._actions["recovered"].inc()

    def migration_expired(self, step: Step) -> None:
        self._actions["migration_expired"].inc()

    def repaired(self, step: Step) -> None:
        self.m.node_repairs.inc()

    def interrupted_op(self, step: Step) -> None:
        self.m.node_interrupted.inc()

    def stale_cleared(self, step: Step) -> None:
        self._actions["stale_cleared"].inc()
        self.m.stale_cleared.inc()

    def _appliance(self, step: Step) -> str:
        model = step.model
        if isinstance(model, OrphanModel):
            return model.appliance
        return self.m.appliance_of(getattr(model, "volume_id", ""))

    def fence_added(self, step: Step) -> None:
        self.m.fence_changes.labels(self._appliance(step), "add").inc()

    def fence_removed(self, step: Step) -> None:
        self.m.fence_changes.labels(self._appliance(step), "remove").inc()

    def fence_repaired(self, step: Step) -> None:
        self.m.fence_repairs.labels(self._appliance(step)).inc()

    def _orphan(self, step: Step, hook: str) -> None:
        self.m.orphan_actions.labels(self._appliance(step), ORPHAN_ACTIONS[hook]).inc()

    def orphan_suspected(self, step: Step) -> None:
        self._orphan(step, "orphan_suspected")

    def orphan_quarantined(self, step: Step) -> None:
        self._orphan(step, "orphan_quarantined")

    def orphan_deleted(self, step: Step) -> None:
        self._orphan(step, "orphan_deleted")

    def orphan_restored(self, step: Step) -> None:
        self._orphan(step, "orphan_restored")
