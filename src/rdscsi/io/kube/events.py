"""The Kubernetes `EventSink`: machine events become events.k8s.io/v1 Events.

`emit` is called from machine hooks, so it is synchronous and cheap: a per-(object, reason)
token bucket drops spam from a flapping object, then the event joins a bounded queue (full:
dropped and counted; the caller never blocks and no task is made per event). One worker
posts the queue, paced by a global token bucket so a mass failover cannot flood the API
server; the queue absorbs the burst meanwhile. A failed POST is logged and counted, never
raised: events are best effort, the machines are the truth.

Where an event is shown (`regarding`):
- PersistentVolume -> the bound PVC from `spec.claimRef`, so users see it with
  `kubectl describe pvc`; the PV itself when unbound or unreadable;
- Node -> the Node (its uid looked up, as `kubectl describe` matches on it);
- Appliance -> `appliance_ref`, normally the driver's own Pod (`pod_ref_from_env`: the
  downward API's POD_NAME/POD_NAMESPACE/POD_UID). Without one, appliance events are counted
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
from dataclasses import dataclass

from kubernetes.aio.client import (
    ApiClient,
    CoreV1Api,
    EventsV1Api,
    EventsV1Event,
    V1ObjectMeta,
    V1ObjectReference,
)

from ...clock import Clock
from ...hooks.events import ClusterEvent, ObjectRef
from .ratelimit import TokenBucket
from .wire import get_path, micro_time, read_json, status_of, truncate_utf8

log = logging.getLogger("rdscsi.kube.events")

# Limits the API server enforces on events.k8s.io/v1 (bytes, as Go counts them).
NOTE_LIMIT = 1024
REASON_LIMIT = 128
ACTION_LIMIT = 128
INSTANCE_LIMIT = 128
CLUSTER_EVENT_NAMESPACES = frozenset({"default", "kube-system"})

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
    """Counters for every fate an emitted event can have."""

    posted: int = 0
    rate_limited: int = 0  # per-(object, reason) bucket empty: dropped at emit
    dropped_full: int = 0  # queue full: dropped at emit
    failed: int = 0  # the POST failed
    unroutable: int = 0  # nothing to attach it to (appliance event without a Pod ref)


_Key = tuple[str, str, str, str]


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
        key_burst: int = 5,
        key_per_second: float = 1.0 / 60.0,
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
        self._key_burst = key_burst
        self._key_per_second = key_per_second
        self._keys: dict[_Key, TokenBucket] = {}
        self._max_keys = max_keys
        self._queue: asyncio.Queue[tuple[ClusterEvent, float]] = asyncio.Queue(queue_size)
        self.appliance_ref = appliance_ref
        self._post_timeout = post_timeout
        self._lookup_ttl = lookup_ttl
        self._lookups: dict[tuple[str, str], tuple[KubeRef, float]] = {}
        self.stats = EventStats()
        self._task: asyncio.Task[None] | None = None
        self._warned_unroutable = False

    # --- the caller's side: synchronous, bounded -----------------------------------------

    def emit(self, event: ClusterEvent) -> None:
        now = self._clock.monotonic()
        ref = event.regarding
        key = (ref.kind, ref.namespace, ref.name, event.reason)
        bucket = self._keys.get(key)
        if bucket is None:
            if len(self._keys) >= self._max_keys:
                self._prune(now)
            bucket = self._keys[key] = TokenBucket(self._key_burst, self._key_per_second, now)
        if not bucket.take(now):
            self.stats.rate_limited += 1
            log.debug("event %s on %s/%s rate-limited", event.reason, ref.kind, ref.name)
            return
        try:
            self._queue.put_nowait((event, self._clock.wall()))
        except asyncio.QueueFull:
            self.stats.dropped_full += 1
            if self.stats.dropped_full % 100 == 1:  # a storm must not become a log storm
                log.warning(
                    "event queue full (%d): dropped %d events so far",
                    self._queue.maxsize,
                    self.stats.dropped_full,
                )

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they would admit a burst anyway); if every
        bucket is busy, forget the oldest half rather than grow without bound."""
        full = [k for k, b in self._keys.items() if b.full(now)]
        for k in full:
            del self._keys[k]
        if len(self._keys) >= self._max_keys:
            for k in list(self._keys)[: len(self._keys) // 2]:
                del self._keys[k]

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kube-events")

    async def stop(self, drain_s: float = 2.0) -> None:
        """Give queued events up to `drain_s` seconds (real time: this bounds shutdown,
        not a protocol period), then cancel the worker."""
        task, self._task = self._task, None
        if task is None:
            return
        if drain_s > 0 and not task.done():
            try:
                await asyncio.wait_for(self._queue.join(), drain_s)
            except TimeoutError:
                log.info("stopping with %d events not posted", self._queue.qsize())
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    # --- the worker -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            event, wall = await self._queue.get()
            try:
                await self._pace()
                if await self._post(event, wall):
                    self.stats.posted += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.failed += 1
                status = status_of(exc)
                log.warning(
                    "event %s on %s/%s not posted: %s",
                    event.reason,
                    event.regarding.kind,
                    event.regarding.name,
                    f"HTTP {status} {getattr(exc, 'reason', '')}" if status else repr(exc),
                )
            finally:
                self._queue.task_done()

    async def _pace(self) -> None:
        while not self._global.take(self._clock.monotonic()):
            await self._clock.sleep(self._global.wait_time(self._clock.monotonic()))

    async def _post(self, event: ClusterEvent, wall: float) -> bool:
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
            return False
        namespace = regarding.namespace or self.cluster_namespace
        related = self._plain(event.related) if event.related is not None else None
        body = EventsV1Event(
            metadata=V1ObjectMeta(generate_name=f"{regarding.name}.", namespace=namespace),
            event_time=micro_time(wall),
            reporting_controller=self.reporting_controller,
            reporting_instance=self.reporting_instance,
            action=truncate_utf8(event.action, ACTION_LIMIT),
            reason=truncate_utf8(event.reason, REASON_LIMIT),
            note=truncate_utf8(event.note, NOTE_LIMIT),
            type=event.type,
            regarding=regarding.to_model(),
            related=related.to_model() if related is not None else None,
        )
        resp = await self._events.create_namespaced_event_without_preload_content(
            namespace, body, _request_timeout=self._post_timeout
        )
        await read_json(resp)
        return True

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
