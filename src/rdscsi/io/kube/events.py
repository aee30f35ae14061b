"""The Kubernetes `EventSink`: machine events become events.k8s.io/v1 Events.

`emit` is called from machine hooks, so it is synchronous and cheap: no task per event, no
I/O. Repeats are aggregated into series as client-go's events recorder does: events with
the same regarding object, reason, action, reporting controller and related object are
isomorphic; the first is created, the second patches `series` (count 2, lastObservedTime)
onto it, later ones only count until the next refresh (every 30 min, or when the series
ends). A series ends 6 minutes after its last occurrence; the next repeat starts a new Event.
Nothing is dropped for being a repeat: it is counted into its series.

One worker posts creates and series patches from a bounded queue (full: the event is
dropped and counted), paced by a token bucket so a mass failover cannot flood the API
server. A write that fails on the way (connection, 5xx, 429) is retried up to 12 times,
Retry-After honoured, all on the injected clock; one the server rejects (4xx) is dropped.
Every emitted event gets one outcome in `rds_csi_events_total{outcome}`: sent, aggregated
or dropped (see `hooks.events`).

Where an event is shown (`regarding`):
- PersistentVolume -> the bound PVC from `spec.claimRef`, so users see it with
  `kubectl describe pvc`; the PV itself when unbound or unreadable;
- Node -> the Node (its uid looked up, as `kubectl describe` matches on it);
- Appliance -> `appliance_ref`, normally the driver's own Pod (`pod_ref_from_env`: the
  downward API's POD_NAME/POD_NAMESPACE/POD_UID). Without one, appliance events are dropped
  as unroutable and only logged: there is no honest cluster object to pin them on.
Cluster-scoped objects (Node, PV) get their Events in `namespace_for_cluster_objects`,
which the API server only accepts as `default` or `kube-system`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubernetes.aio.client import (
    ApiClient,
    CoreV1Api,
    EventsV1Api,
    EventsV1Event,
    EventsV1EventSeries,
    V1ObjectMeta,
    V1ObjectReference,
)

from ...clock import Clock, TimerHandle
from ...hooks.events import ClusterEvent, EventMetrics, ObjectRef
from .ratelimit import Backoff, TokenBucket
from .wire import (
    format_micro_time,
    get_path,
    micro_time,
    read_json,
    retry_after,
    status_of,
    truncate_utf8,
)

log = logging.getLogger("rdscsi.kube.events")

# Limits the API server enforces on events.k8s.io/v1 (bytes, as Go counts them).
NOTE_LIMIT = 1024
REASON_LIMIT = 128
ACTION_LIMIT = 128
INSTANCE_LIMIT = 128
CLUSTER_EVENT_NAMESPACES = frozenset({"default", "kube-system"})

# client-go's events recorder (tools/events): a series ends 6 minutes after its last
# occurrence, open series are refreshed every 30 minutes, a write is tried 12 times.
FINISH_S = 6 * 60.0
REFRESH_S = 30 * 60.0
MAX_TRIES = 12
HOUSEKEEPING_S = 60.0

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def is_qualified_name(value: str) -> bool:
    """Kubernetes qualified name: `[dns-subdomain/]name` (name up to 63 characters)."""
    prefix, _, name = value.rpartition("/")
    return bool(_NAME.match(name)) and (not prefix or bool(_DNS_SUBDOMAIN.match(prefix)))


@dataclass(frozen=True, slots=True)
class KubeRef:
    """A resolved Kubernetes object reference (what `regarding`/`related` carry)."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"

    def to_model(self) -> V1ObjectReference:
        return V1ObjectReference(
            api_version=self.api_version,
            kind=self.kind,
            name=self.name,
            namespace=self.namespace or None,
            uid=self.uid or None,
        )


def pod_ref_from_env(environ: Mapping[str, str] = os.environ) -> KubeRef | None:
    """The driver's own Pod from the downward API (POD_NAME, POD_NAMESPACE, POD_UID)."""
    name, namespace = environ.get("POD_NAME", ""), environ.get("POD_NAMESPACE", "")
    if not name or not namespace:
        return None
    return KubeRef("Pod", name, namespace, environ.get("POD_UID", ""))


@dataclass(slots=True)
class EventStats:
    """Counters for every fate an emitted event (and each API write) can have."""

    sent: int = 0  # events created (their first occurrence)
    aggregated: int = 0  # repeats counted into a series
    dropped: int = 0  # events lost, for any of the reasons below
    dropped_full: int = 0  # queue full
    unroutable: int = 0  # nothing to attach it to (appliance event without a Pod ref)
    rejected: int = 0  # the API server refused it (4xx)
    exhausted: int = 0  # still failing after MAX_TRIES
    failed: int = 0  # API writes that failed (each try; retried or not)
    series_patches: int = 0  # series writes that succeeded


# client-go's isomorphism key: regarding, reason, action, reporting controller, related.
_Key = tuple[str, str, str, str, str, tuple[str, str, str] | None]


def _key(event: ClusterEvent) -> _Key:
    ref, rel = event.regarding, event.related
    return (
        ref.kind,
        ref.namespace,
        ref.name,
        event.reason,
        event.action,
        (rel.kind, rel.namespace, rel.name) if rel is not None else None,
    )


@dataclass(slots=True)
class _Series:
    event: ClusterEvent  # the first occurrence: what the Event object says
    first_wall: float
    last_wall: float
    last_mono: float
    count: int = 1
    written: int = 0  # the count the API server has (0: not created yet)
    name: str = ""  # the Event object, once created
    namespace: str = ""
    refreshed: float = 0.0  # monotonic time of the last series write
    queued: bool = False  # a create or patch for it is waiting in the queue
    dead: bool = False  # its create was dropped: repeats start afresh
    tries: int = 0
    retry: Backoff = field(default_factory=lambda: Backoff(initial=1.0, cap=30.0))


class KubeEventSink:
    """`EventSink` posting events.k8s.io/v1 Events; `start()` the worker, `await stop()`."""

    def __init__(
        self,
        api: ApiClient,
        reporting_controller: str,
        reporting_instance: str,
        namespace_for_cluster_objects: str,
        clock: Clock,
        burst: int = 25,
        per_second: float = 1.0,
        queue_size: int = 1000,
        *,
        appliance_ref: KubeRef | None = None,
        post_timeout: float = 10.0,
        lookup_ttl: float = 300.0,
        max_keys: int = 10_000,
    ) -> None:
        if not is_qualified_name(reporting_controller):
            raise ValueError(
                f"reporting_controller {reporting_controller!r} is not a qualified name "
                "(e.g. rds.csi.mikrotik.com/controller)"
            )
        if not reporting_instance or len(reporting_instance.encode()) > INSTANCE_LIMIT:
            raise ValueError(f"reporting_instance must be 1..{INSTANCE_LIMIT} bytes")
        if namespace_for_cluster_objects not in CLUSTER_EVENT_NAMESPACES:
            raise ValueError(
                f"namespace_for_cluster_objects {namespace_for_cluster_objects!r}: the API "
                "server accepts Events about cluster-scoped objects (Node, PersistentVolume) "
                f"only in {sorted(CLUSTER_EVENT_NAMESPACES)}"
            )
        self._core = CoreV1Api(api)
        self._events = EventsV1Api(api)
        self.reporting_controller = reporting_controller
        self.reporting_instance = reporting_instance
        self.cluster_namespace = namespace_for_cluster_objects
        self._clock = clock
        self._global = TokenBucket(burst, per_second, clock.monotonic())
        self._series: dict[_Key, _Series] = {}
        self._max_keys = max_keys
        self._queue: asyncio.Queue[_Key] = asyncio.Queue(queue_size)
        self._retrying: set[TimerHandle] = set()
        self.appliance_ref = appliance_ref
        self._post_timeout = post_timeout
        self._lookup_ttl = lookup_ttl
        self._lookups: dict[tuple[str, str], tuple[KubeRef, float]] = {}
        self.stats = EventStats()
        self.metrics: EventMetrics | None = None
        self._task: asyncio.Task[None] | None = None
        self._housekeeping: TimerHandle | None = None
        self._warned_unroutable = False

    def bind_metrics(self, metrics: EventMetrics) -> None:
        self.metrics = metrics

    # --- the caller's side: synchronous, bounded -----------------------------------------

    def emit(self, event: ClusterEvent) -> None:
        now, wall = self._clock.monotonic(), self._clock.wall()
        key = _key(event)
        series = self._series.get(key)
        if series is not None and not series.dead and now - series.last_mono < FINISH_S:
            series.count += 1
            series.last_wall, series.last_mono = wall, now
            self._outcome("aggregated")
            if series.count == 2 and series.written:
                self._enqueue(key, series)  # the second occurrence makes the series
            return
        if len(self._series) >= self._max_keys:
            self._prune(now)
        series = _Series(event, wall, wall, now)
        self._series[key] = series
        if not self._enqueue(key, series):
            del self._series[key]

    def _enqueue(self, key: _Key, series: _Series) -> bool:
        if series.queued:
            return True
        try:
            self._queue.put_nowait(key)
        except asyncio.QueueFull:
            if not series.written:
                self.stats.dropped_full += 1
                self._drop(series)
                if self.stats.dropped_full % 100 == 1:  # a storm must not become a log storm
                    log.warning(
                        "event queue full (%d): dropped %d events so far",
                        self._queue.maxsize,
                        self.stats.dropped_full,
                    )
            return False
        series.queued = True
        return True

    def _outcome(self, outcome: str) -> None:
        if outcome == "aggregated":
            self.stats.aggregated += 1
        if self.metrics is not None:
            getattr(self.metrics, outcome).inc()

    def _drop(self, series: _Series) -> None:
        self.stats.dropped += 1
        series.dead = True
        self._outcome("dropped")

    def _prune(self, now: float) -> None:
        """Forget ended series; if none has ended, the oldest half rather than grow."""
        ended = [
            k for k, s in self._series.items() if not s.queued and now - s.last_mono >= FINISH_S
        ]
        for k in ended:
            del self._series[k]
        if len(self._series) >= self._max_keys:
            for k in [k for k, s in self._series.items() if not s.queued][: len(self._series) // 2]:
                del self._series[k]

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def written(self) -> None:
        """Until every write queued so far is done (posted, or given up): `rdscsi demo`
        prints the Events once they are in the API. Writes waiting for a retry are not
        awaited."""
        await self._queue.join()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kube-events")
            self._arm_housekeeping()

    async def stop(self, drain_s: float = 2.0) -> None:
        """Give queued writes up to `drain_s` seconds (real time: this bounds shutdown,
        not a protocol period), then cancel the worker."""
        task, self._task = self._task, None
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        for handle in self._retrying:
            handle.cancel()
        self._retrying.clear()
        if task is None:
            return
        if drain_s > 0 and not task.done():
            try:
                await asyncio.wait_for(self._queue.join(), drain_s)
            except TimeoutError:
                log.info("stopping with %d event writes not done", self._queue.qsize())
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    def _arm_housekeeping(self) -> None:
        self._housekeeping = self._clock.call_later(HOUSEKEEPING_S, self._housekeep)

    def _housekeep(self) -> None:
        """Refresh open series every REFRESH_S; end those quiet for FINISH_S (writing their
        last count first)."""
        now = self._clock.monotonic()
        for key, series in list(self._series.items()):
            if series.queued:
                continue
            behind = series.written and series.count > series.written
            if now - series.last_mono >= FINISH_S:
                if behind:
                    self._enqueue(key, series)
                else:
                    del self._series[key]
            elif behind and now - series.refreshed >= REFRESH_S:
                self._enqueue(key, series)
        if self._task is not None:
            self._arm_housekeeping()

    # --- the worker -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            key = await self._queue.get()
            try:
                series = self._series.get(key)
                if series is not None:
                    series.queued = False
                    await self._pace()
                    await self._write(key, series)
            except asyncio.CancelledError:
                raise
            finally:
                self._queue.task_done()

    async def _pace(self) -> None:
        while not self._global.take(self._clock.monotonic()):
            await self._clock.sleep(self._global.wait_time(self._clock.monotonic()))

    async def _write(self, key: _Key, series: _Series) -> None:
        creating = not series.written
        try:
            if creating:
                posted = await self._create(series)
                if not posted:
                    return
            else:
                await self._patch(series)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed += 1
            status = status_of(exc)
            if status == 404 and not creating:
                # The Event was deleted (TTL): the series goes on in a new one.
                series.written = 0
                self._enqueue(key, series)
                return
            series.tries += 1
            retryable = status is None or status == 429 or status >= 500
            what = "event" if creating else "series of"
            reason = f"HTTP {status} {getattr(exc, 'reason', '')}" if status else repr(exc)
            if retryable and series.tries < MAX_TRIES:
                delay = max(series.retry.next(), retry_after(exc) or 0.0)
                log.info(
                    "%s %s on %s/%s not written (%s); try %d in %.1fs",
                    what,
                    series.event.reason,
                    series.event.regarding.kind,
                    series.event.regarding.name,
                    reason,
                    series.tries + 1,
                    delay,
                )
                self._later(key, series, delay)
                return
            log.warning(
                "%s %s on %s/%s dropped: %s",
                what,
                series.event.reason,
                series.event.regarding.kind,
                series.event.regarding.name,
                reason,
            )
            if creating:
                if retryable:
                    self.stats.exhausted += 1
                else:
                    self.stats.rejected += 1
                self._drop(series)
            return
        series.tries = 0
        series.retry.reset()
        if creating:
            self.stats.sent += 1
            self._outcome("sent")
        else:
            self.stats.series_patches += 1
        if series.count > series.written:
            self._enqueue(key, series)  # repeats arrived meanwhile: the second makes the series

    def _later(self, key: _Key, series: _Series, delay: float) -> None:
        series.queued = True  # not queued yet, but spoken for: repeats only count

        def again(handle: list[TimerHandle]) -> None:
            self._retrying.discard(handle[0])
            series.queued = False
            if self._series.get(key) is series:
                self._enqueue(key, series)

        holder: list[TimerHandle] = []
        handle = self._clock.call_later(delay, lambda: again(holder))
        holder.append(handle)
        self._retrying.add(handle)

    async def _create(self, series: _Series) -> bool:
        event = series.event
        regarding = await self._regarding(event.regarding)
        if regarding is None:
            self.stats.unroutable += 1
            if not self._warned_unroutable:
                self._warned_unroutable = True
                log.warning(
                    "events about %s have no Kubernetes object (set POD_NAME/POD_NAMESPACE "
                    "via the downward API); logging them instead",
                    event.regarding.kind,
                )
            log.info("%s %s: %s", event.reason, event.regarding.name, event.note)
            self._drop(series)
            return False
        namespace = regarding.namespace or self.cluster_namespace
        related = self._plain(event.related) if event.related is not None else None
        count = series.count
        body = EventsV1Event(
            metadata=V1ObjectMeta(generate_name=f"{regarding.name}.", namespace=namespace),
            event_time=micro_time(series.first_wall),
            reporting_controller=self.reporting_controller,
            reporting_instance=self.reporting_instance,
            action=truncate_utf8(event.action, ACTION_LIMIT),
            reason=truncate_utf8(event.reason, REASON_LIMIT),
            note=truncate_utf8(event.note, NOTE_LIMIT),
            type=event.type,
            regarding=regarding.to_model(),
            related=related.to_model() if related is not None else None,
            series=EventsV1EventSeries(count=count, last_observed_time=micro_time(series.last_wall))
            if count > 1
            else None,
        )
        resp = await self._events.create_namespaced_event_without_preload_content(
            namespace, body, _request_timeout=self._post_timeout
        )
        created = await read_json(resp)
        series.name = get_path(created, "metadata", "name") or ""
        series.namespace = namespace
        series.written = count
        series.refreshed = self._clock.monotonic()
        return True

    async def _patch(self, series: _Series) -> None:
        count, last = series.count, series.last_wall
        patch = {"series": {"count": count, "lastObservedTime": format_micro_time(last)}}
        resp = await self._events.patch_namespaced_event_without_preload_content(
            series.name,
            series.namespace,
            patch,
            _content_type="application/merge-patch+json",
            _request_timeout=self._post_timeout,
        )
        await read_json(resp)
        series.written = count
        series.refreshed = self._clock.monotonic()

    # --- regarding resolution -------------------------------------------------------------

    def _plain(self, ref: ObjectRef) -> KubeRef | None:
        """A reference without look-ups (for `related`), using what is cached."""
        if ref.kind == "Appliance":
            return self.appliance_ref
        cached = self._cached(ref.kind, ref.name)
        return cached or KubeRef(ref.kind, ref.name, ref.namespace)

    def _cached(self, kind: str, name: str) -> KubeRef | None:
        hit = self._lookups.get((kind, name))
        if hit is None:
            return None
        if hit[1] <= self._clock.monotonic():
            del self._lookups[(kind, name)]
            return None
        return hit[0]

    def _remember(self, kind: str, name: str, ref: KubeRef) -> KubeRef:
        if len(self._lookups) >= self._max_keys:
            del self._lookups[next(iter(self._lookups))]  # oldest insertion
        self._lookups[(kind, name)] = (ref, self._clock.monotonic() + self._lookup_ttl)
        return ref

    async def _regarding(self, ref: ObjectRef) -> KubeRef | None:
        if ref.kind == "Appliance":
            return self.appliance_ref
        cached = self._cached(ref.kind, ref.name)
        if cached is not None:
            return cached
        if ref.kind == "PersistentVolume":
            return await self._pv_claim(ref.name)
        if ref.kind == "Node":
            return await self._node(ref.name)
        return KubeRef(ref.kind, ref.name, ref.namespace)

    async def _pv_claim(self, name: str) -> KubeRef:
        try:
            pv = await read_json(
                await self._core.read_persistent_volume_without_preload_content(
                    name, _request_timeout=self._post_timeout
                )
            )
        except Exception as exc:
            # Deleted already, or the API is struggling: the PV itself is still a fine target.
            log.debug("PV %s not readable (%r): event goes on the PV", name, exc)
            return KubeRef("PersistentVolume", name)
        claim = get_path(pv, "spec", "claimRef") or {}
        claim_name, claim_ns = claim.get("name"), claim.get("namespace")
        if isinstance(claim_name, str) and claim_name and isinstance(claim_ns, str) and claim_ns:
            ref = KubeRef("PersistentVolumeClaim", claim_name, claim_ns, claim.get("uid") or "")
            # Only bound claims are cached: an unbound PV may be bound a moment later.
            return self._remember("PersistentVolume", name, ref)
        return KubeRef("PersistentVolume", name, uid=get_path(pv, "metadata", "uid") or "")

    async def _node(self, name: str) -> KubeRef:
        try:
            node = await read_json(
                await self._core.read_node_without_preload_content(
                    name, _request_timeout=self._post_timeout
                )
            )
        except Exception as exc:
            log.debug("node %s not readable (%r): event without its uid", name, exc)
            return KubeRef("Node", name)
        uid = get_path(node, "metadata", "uid") or ""
        return self._remember("Node", name, KubeRef("Node", name, uid=uid))
