"""Shared fixtures for the machine tests: engines with real listeners and a coverage log."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import Machines, build_machines
from rdscsi.machines.engine import MachineDef, Step

# (machine name, transition index) of every transition any test took.
COVERED: set[tuple[str, int]] = set()


class CoverageListener:
    def after_transition(self, step: Step) -> None:
        COVERED.add((step.machine, step.transition.index))


class HookLog:
    """Records every hook fired, in order, per step."""

    def __init__(self, names: frozenset[str]) -> None:
        self.fired: list[tuple[str, str, str]] = []  # (object key, hook, event)
        for name in names:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name: str):  # type: ignore[no-untyped-def]
        def record(step: Step) -> None:
            self.fired.append((step.model.key, name, step.event))

        return record


@dataclass
class Rig:
    clock: ManualClock
    sink: MemorySink
    registry: CollectorRegistry
    machines: Machines
    triggers: list[str] = field(default_factory=list)

    def gauge(self, machine: str, state: str) -> float:
        return value_of(self.machines.metrics.state[machine], {"state": state})

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        # Collects only the named metric: a whole-registry collect per step is too slow.
        metrics = self.machines.metrics
        for metric in vars(metrics).values():
            base = getattr(metric, "_name", None)
            if base and name in (base, f"{base}_total", f"{base}_count", f"{base}_sum"):
                return value_of(metric, labels or {}, name)
        raise KeyError(name)


def value_of(metric: object, labels: dict[str, str], name: str | None = None) -> float:
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if (name is None or sample.name == name) and sample.labels == labels:
                return float(sample.value)
    return 0.0


def make_rig(extra: tuple[object, ...] = ()) -> Rig:
    clock = ManualClock()
    sink = MemorySink()
    registry = CollectorRegistry()
    triggers: list[str] = []
    machines = build_machines(
        clock, sink, triggers.append, registry, extra_listeners=(CoverageListener(), *extra)
    )
    return Rig(clock, sink, registry, machines, triggers)


def coverage_settings() -> settings:
    """The active profile, but never fewer examples than the `ci` profile: the coverage
    assertion is only meaningful with enough of them."""
    ci = settings.get_profile("ci")
    current = settings()
    return settings(
        current,
        max_examples=max(current.max_examples, ci.max_examples),
        stateful_step_count=max(current.stateful_step_count, ci.stateful_step_count),
    )


def uncovered(d: MachineDef) -> list[str]:
    return [str(t) for t in d.transitions if (d.name, t.index) not in COVERED]
