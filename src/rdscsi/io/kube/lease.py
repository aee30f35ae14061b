"""Leader election on a coordination.k8s.io/v1 Lease, timed by the injected clock.

The library's elector sleeps on real time, so this is our own, following client-go's rules:
- expiry is judged on OUR clock: a candidate remembers when it last saw the record change
  and takes over only `leaseDurationSeconds` after that, never trusting the holder's
  renewTime (clocks of different machines disagree);
- every write is a replace carrying the resourceVersion just read (optimistic concurrency):
  a 409 means another candidate wrote first, so we re-read next round;
- the leader renews every `retry_period`; if no renewal has succeeded for `renew_deadline`
  (< lease_duration), or the Lease shows another holder, it stops leading at once, so it
  has stopped mutating before anyone else can take the lease;
- `on_started_leading` runs as its own task (long start-up work cannot delay renewals) and
  is cancelled if leadership ends first; `on_stopped_leading` is awaited before anything
  else happens, so the caller has stopped mutating when it returns;
- `stop()` releases a held lease (empty holder) so a successor need not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from enum import Enum
from typing import Any

from kubernetes.aio.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta

from ...clock import Clock
from .wire import JSON, MicroTime, micro_time, read_json, status_of

log = logging.getLogger("rdscsi.kube.lease")

Callback = Callable[[], Awaitable[None]] | Callable[[], None]

_Record = tuple[Any, ...]


def lease_name(driver: str) -> str:
    """The reconciler's Lease for a driver (the namespaced Role names it in resourceNames)."""
    return f"{driver}-controller"


class Outcome(Enum):
    HELD = "held"  # we hold the lease (acquired or renewed)
    BUSY = "busy"  # another holder's lease has not expired (as we observe it)
    FAILED = "failed"  # could not tell: API error, conflict, timeout


def _record(spec: JSON) -> _Record:
    """What identifies one write of the lease; any change restarts the expiry count."""
    return (
        spec.get("holderIdentity") or "",
        spec.get("leaseDurationSeconds"),
        spec.get("acquireTime"),
        spec.get("renewTime"),
        spec.get("leaseTransitions"),
    )


def _parse_time(value: Any, fallback: float) -> MicroTime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
            return micro_time(parsed.timestamp())
    return micro_time(fallback)


class LeaderElector:
    """Campaign for one Lease; `is_leader` says whether mutating is allowed right now."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        identity: str,
        clock: Clock,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        *,
        request_timeout: float = 10.0,
    ) -> None:
        if not identity:
            raise ValueError("LeaderElector: identity must not be empty")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "LeaderElector: need 0 < retry_period < renew_deadline < lease_duration, got "
                f"{retry_period}, {renew_deadline}, {lease_duration}"
            )
        self._coord = CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self._clock = clock
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        # Backstop for a hung HTTP call; the protocol bound is renew_deadline on the clock.
        self._request_timeout = request_timeout
        self._leader = False
        self._last_renew = -math.inf  # monotonic start of the last successful write
        self._attempt_started = -math.inf  # monotonic start of the latest attempt
        self._in_attempt = False
        self._observed: _Record | None = None
        self._observed_at = -math.inf  # monotonic time the observed record last changed
        self.holder = ""  # last holder seen in the Lease ("" released or unknown)
        self.attempts = 0  # finished acquire/renew attempts (any outcome)
        self.last_outcome: Outcome | None = None
        self.times_elected = 0
        self._task: asyncio.Task[None] | None = None
        self._leading: asyncio.Task[None] | None = None  # on_started_leading, while it runs

    # --- what the controller asks ---------------------------------------------------------

    @property
    def renewed_at(self) -> float:
        """Monotonic time (injected clock) our last successful write started; -inf if none."""
        return self._last_renew

    @property
    def campaigning(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def settled(self) -> bool:
        """No attempt is under way or due now (on the injected clock): for tests that move
        a ManualClock and want every due renewal to have landed first."""
        if not self.campaigning:
            return True
        due = self._attempt_started + self.retry_period
        return not self._in_attempt and self._clock.monotonic() < due

    @property
    def is_leader(self) -> bool:
        # Also bounded by the clock: even if the loop is starved and has not yet noticed,
        # past the renew deadline we no longer claim leadership.
        return self._leader and self._clock.monotonic() < self._last_renew + self.renew_deadline

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"leader-election-{self.name}"
            )

    async def stop(self, release: bool = True) -> None:
        """Stop campaigning. A leader first stops leading (callback), then, with `release`,
        hands the lease back so another replica can take it at once."""
        task, self._task = self._task, None
        current = asyncio.current_task()
        if task is not None:
            task.cancel()
            # From on_stopped_leading the loop is ourselves: it ends when the callback returns.
            if task is not current:
                try:
                    await task
                except asyncio.CancelledError:
                    if current is not None and current.cancelling():
                        raise
        if self._leader:
            await self._stop_leading("stopping")
            if release:
                try:
                    # Real-time bound: this is shutdown, not a protocol period.
                    await asyncio.wait_for(self._release(), self._request_timeout)
                except Exception as exc:
                    log.warning("lease %s/%s not released: %r", self.namespace, self.name, exc)

    # --- the campaign ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            while (await self._bounded(self._attempt(), self.renew_deadline)) is not Outcome.HELD:
                await self._sleep_until(self._attempt_started + self.retry_period)
            self._leader = True
            self.times_elected += 1
            log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
            # Its own task, as client-go runs OnStartedLeading in a goroutine: start-up work
            # (listing, rebuilding) must not hold up the renewals that keep the lease.
            self._leading = asyncio.get_running_loop().create_task(
                self._call(self._on_started, "on_started_leading"), name="on-started-leading"
            )
            why = await self._renew_until_lost()
            await self._stop_leading(why)

    async def _renew_until_lost(self) -> str:
        while True:
            # Never sleep past the deadline: stepping down must happen on time, not at the
            # next retry after it.
            deadline = self._last_renew + self.renew_deadline
            await self._sleep_until(min(self._attempt_started + self.retry_period, deadline))
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return f"no renewal for {self.renew_deadline:.0f}s"
            outcome = await self._bounded(self._attempt(), remaining)
            if outcome is Outcome.BUSY:
                return f"the lease is held by {self.holder!r}"
            if outcome is Outcome.FAILED and (
                self._clock.monotonic() >= self._last_renew + self.renew_deadline
            ):
                return f"no renewal for {self.renew_deadline:.0f}s"

    async def _stop_leading(self, why: str) -> None:
        if not self._leader:
            return
        self._leader = False
        log.warning(
            "lease %s/%s: %s stopped leading: %s", self.namespace, self.name, self.identity, why
        )
        # Start-up work still running must not go on mutating once we are not the leader.
        # (Unless it is what called us: on_started_leading may itself call stop().)
        leading, self._leading = self._leading, None
        if leading is not None and leading is not asyncio.current_task() and not leading.done():
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading
        await self._call(self._on_stopped, "on_stopped_leading")

    async def _sleep_until(self, when: float) -> None:
        """Attempts keep a fixed cadence from their starts: however late this loop got to
        run after the last one, the next is due `retry_period` after that one began."""
        delay = when - self._clock.monotonic()
        if delay > 0:
            await self._clock.sleep(delay)
        else:
            await asyncio.sleep(0)  # due already: just let others run first

    async def _bounded(self, attempt: Coroutine[Any, Any, Outcome], timeout: float) -> Outcome:
        """Run one attempt, giving up after `timeout` on the injected clock."""
        self._attempt_started = self._clock.monotonic()
        self._in_attempt = True
        task = asyncio.ensure_future(attempt)
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def expire() -> None:
            if not expired.done():
                expired.set_result(None)

        handle = self._clock.call_later(timeout, expire)
        try:
            await asyncio.wait((task, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            handle.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        outcome = Outcome.FAILED
        if not task.done() or task.cancelled():
            log.debug("lease %s/%s: attempt timed out", self.namespace, self.name)
        elif (exc := task.exception()) is not None:
            # A bug or a malformed Lease must not end the campaign: count it as a failure.
            log.error("lease %s/%s: attempt failed: %r", self.namespace, self.name, exc)
        else:
            outcome = task.result()
        self.attempts += 1
        self._in_attempt = False
        self.last_outcome = outcome
        return outcome

    async def _attempt(self) -> Outcome:
        """Acquire or renew once: read, decide, write with the read resourceVersion."""
        now, wall = self._clock.monotonic(), self._clock.wall()
        try:
            lease = await read_json(
                await self._coord.read_namespaced_lease_without_preload_content(
                    self.name, self.namespace, _request_timeout=self._request_timeout
                )
            )
        except Exception as exc:
            if status_of(exc) == 404:
                return await self._create(now, wall)
            log.debug("lease %s/%s: read failed: %r", self.namespace, self.name, exc)
            return Outcome.FAILED
        spec: JSON = lease.get("spec") or {}
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder = spec.get("holderIdentity") or ""
        self.holder = holder
        duration = spec.get("leaseDurationSeconds") or self._duration_s
        if holder and holder != self.identity and now < self._observed_at + duration:
            return Outcome.BUSY
        ours = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        body = V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=self._meta_for_replace(lease),
            spec=V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self._duration_s,
                acquire_time=_parse_time(spec.get("acquireTime"), wall)
                if ours
                else micro_time(wall),
                renew_time=micro_time(wall),
                lease_transitions=transitions if ours else transitions + 1,
            ),
        )
        try:
            written = await read_json(
                await self._coord.replace_namespaced_lease_without_preload_content(
                    self.name, self.namespace, body, _request_timeout=self._request_timeout
                )
            )
        except Exception as exc:
            # 409: someone wrote since our read; the next round re-reads and decides again.
            log.debug("lease %s/%s: write failed: %r", self.namespace, self.name, exc)
            return Outcome.FAILED
        return self._held(written, now)

    async def _create(self, now: float, wall: float) -> Outcome:
        body = V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self._duration_s,
                acquire_time=micro_time(wall),
                renew_time=micro_time(wall),
                lease_transitions=0,
            ),
        )
        try:
            written = await read_json(
                await self._coord.create_namespaced_lease_without_preload_content(
                    self.namespace, body, _request_timeout=self._request_timeout
                )
            )
        except Exception as exc:
            # 409: another candidate created it first.
            log.debug("lease %s/%s: create failed: %r", self.namespace, self.name, exc)
            return Outcome.FAILED
        return self._held(written, now)

    def _held(self, written: JSON, now: float) -> Outcome:
        self._observed, self._observed_at = _record(written.get("spec") or {}), now
        self.holder = self.identity
        self._last_renew = now
        return Outcome.HELD

    async def _release(self) -> None:
        lease = await read_json(
            await self._coord.read_namespaced_lease_without_preload_content(
                self.name, self.namespace, _request_timeout=self._request_timeout
            )
        )
        spec: JSON = lease.get("spec") or {}
        if (spec.get("holderIdentity") or "") != self.identity:
            return  # already someone else's: nothing of ours to release
        wall = self._clock.wall()
        body = V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=self._meta_for_replace(lease),
            # An empty holder is acquirable at once by any candidate.
            spec=V1LeaseSpec(
                holder_identity="",
                lease_duration_seconds=1,
                acquire_time=micro_time(wall),
                renew_time=micro_time(wall),
                lease_transitions=int(spec.get("leaseTransitions") or 0),
            ),
        )
        await read_json(
            await self._coord.replace_namespaced_lease_without_preload_content(
                self.name, self.namespace, body, _request_timeout=self._request_timeout
            )
        )
        self.holder = ""
        log.info("lease %s/%s released by %s", self.namespace, self.name, self.identity)

    def _meta_for_replace(self, lease: JSON) -> V1ObjectMeta:
        """The read resourceVersion (a stale one gets 409), keeping labels and annotations
        others may have set."""
        meta: JSON = lease.get("metadata") or {}
        return V1ObjectMeta(
            name=self.name,
            namespace=self.namespace,
            resource_version=meta.get("resourceVersion"),
            labels=meta.get("labels"),
            annotations=meta.get("annotations"),
        )

    @property
    def _duration_s(self) -> int:
        return max(1, math.ceil(self.lease_duration))

    async def _call(self, callback: Callback | None, what: str) -> None:
        """Run a callback, logging (not raising) its failure."""
        if callback is None:
            return
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lease %s/%s: %s failed", self.namespace, self.name, what)
