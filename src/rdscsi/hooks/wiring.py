"""Builds the engines with their listeners: the one place hooks meet machines."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry

from ..clock import Clock
from ..machines import (
    MACHINES,
    AttachmentMachine,
    ConnectionMachine,
    NodeMachine,
    NodeVolumeMachine,
    OrphanMachine,
)
from ..machines.engine import Engine, compile_machine
from .events import EventListener, EventSink
from .metrics import MachineMetrics, MetricsListener
from .recorder import FlightRecorder
from .triggers import Reconciler, TriggerListener


@dataclass(frozen=True)
class Machines:
    connection: Engine
    node: Engine
    attachment: Engine
    node_volume: Engine
    orphan: Engine
    metrics: MachineMetrics
    recorder: FlightRecorder  # the last transitions of every object (`rdscsi explain`)


def build_machines(
    clock: Clock,
    sink: EventSink,
    trigger: Reconciler | Callable[[str], None],
    registry: CollectorRegistry = REGISTRY,
    extra_listeners: Iterable[object] = (),
) -> Machines:
    """Engines sharing one set of listeners: the flight recorder, metrics, cluster events,
    reconcile triggers."""
    defs = [compile_machine(c) for c in MACHINES]
    metrics = MachineMetrics(defs, registry)
    recorder = FlightRecorder()  # each engine below binds its machine to it
    events = EventListener(sink)
    triggers = TriggerListener(trigger)
    extra = tuple(extra_listeners)

    def engine(cls: type) -> Engine:
        d = compile_machine(cls)
        # The recorder first: a transition is on record even when a later hook fails.
        listeners = (recorder, MetricsListener(metrics, d), *extra, events, triggers)
        return Engine(d, listeners, clock.monotonic)

    return Machines(
        connection=engine(ConnectionMachine),
        node=engine(NodeMachine),
        attachment=engine(AttachmentMachine),
        node_volume=engine(NodeVolumeMachine),
        orphan=engine(OrphanMachine),
        metrics=metrics,
        recorder=recorder,
    )
