"""Reconcile triggers: hooks and informers ask for a pass; passes coalesce.

Any number of `trigger()` calls while a pass is pending (requested, not yet started) cause
one pass; calls during a running pass cause exactly one more after it. Triggering a
reconciler that is not running is a harmless no-op (nothing is queued for later): only the
leader runs one. A failing pass is retried after a capped, jittered backoff on the injected
clock, never in a tight loop; a pass that succeeds resets the backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

from ..clock import Clock
from ..io.kube.ratelimit import Backoff

log = logging.getLogger("rdscsi.reconcile")

PassFn = Callable[[frozenset[str]], Awaitable[None]]

# After a failed pass: 1 s, doubling to 60 s (+ up to 20 % jitter).
RETRY_INITIAL_S = 1.0
RETRY_CAP_S = 60.0


class NotLeading(Exception):
    """Leadership ended: reconciler work stops before its next appliance command."""


class Reconciler:
    """Runs `run_pass(reasons)` once per coalesced batch of triggers, one pass at a time."""

    def __init__(
        self,
        run_pass: PassFn,
        name: str = "reconcile",
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._run_pass = run_pass
        self._passes = (
            Counter(
                "rds_csi_reconcile_passes_total",
                "Reconcile passes run, by what triggered them",
                ["trigger"],
                registry=registry,
            )
            if registry is not None
            else None
        )
        self.name = name
        self._clock = clock
        self._backoff = backoff or Backoff(initial=RETRY_INITIAL_S, cap=RETRY_CAP_S)
        self._wake = asyncio.Event()
        self._reasons: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self.passes = 0
        self.failures = 0
        self.triggers: collections.Counter[str] = collections.Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def trigger(self, reason: str) -> None:
        if not self._running:
            return
        self.triggers[reason] += 1
        self._reasons.add(reason)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._backoff.reset()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        self._running = False
        self._reasons.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake.clear()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no pass is pending or running (tests and shutdown)."""
        await self._idle.wait()

    async def _loop(self) -> None:
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            reasons, self._reasons = frozenset(self._reasons), set()
            failed = False
            try:
                await self._run_pass(reasons)
            except asyncio.CancelledError:
                raise
            except NotLeading:
                log.info("%s pass stopped: no longer the leader", self.name)
            except Exception:
                self.failures += 1
                failed = True
                log.exception("%s pass failed (triggered by %s)", self.name, sorted(reasons))
            self.passes += 1
            if self._passes is not None:
                # "connection:succeeded" counts as "connection", "grace:pvc-1" as "grace"
                for kind in sorted({r.split(":", 1)[0] for r in reasons}):
                    self._passes.labels(kind).inc()
            if failed:
                # Never a tight loop: wait, then try again even if nothing else asks.
                self._reasons |= reasons | {"retry"}
                delay = self._backoff.next()
                log.info("%s: next attempt in %.1fs", self.name, delay)
                if self._clock is not None:
                    await self._clock.sleep(delay)
                else:
                    await asyncio.sleep(delay)
                self._wake.set()
                continue
            self._backoff.reset()
            if not self._wake.is_set():
                self._idle.set()
