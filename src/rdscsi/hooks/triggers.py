"""The `reconcile` hook: each transition that declares it asks the reconciler for a pass.

The reconciler itself (coalescing, retry backoff) lives with the pass in
`rdscsi.control.triggers`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..control.triggers import Reconciler
from ..machines.engine import Step

__all__ = ["Reconciler", "TriggerListener"]


class TriggerListener:
    """Implements the `reconcile` hook: each transition that declares it asks for a pass."""

    def __init__(self, reconciler: Reconciler | Callable[[str], None]) -> None:
        self._fire = reconciler.trigger if isinstance(reconciler, Reconciler) else reconciler

    def reconcile(self, step: Step) -> None:
        self._fire(f"{step.machine}:{step.event}")
