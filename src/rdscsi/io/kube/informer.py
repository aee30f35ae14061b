"""One informer for any resource: list, then watch, into a store of parsed views.

`Informer` keeps `store` (key -> view, only the objects `parse` accepts) and calls
`on_change(key, old, new)` for every view that changed (`new` None: gone), on the loop,
synchronously. A relist reports objects that disappeared while no watch was open as gone
(tombstones): for Nodes that is the evidence that releases a stale attachment.

Resilience, every wait on the injected clock:
- each list page has an explicit request timeout (`list_timeout`);
- the server ends a watch (its `timeoutSeconds`): resume from the last resourceVersion;
- 410 Gone/Expired (the resourceVersion was compacted): relist at once;
- any other failure (network, 5xx, 403, an ERROR event): back off, then watch again from
  the last resourceVersion (a relist only when that version has expired in turn);
- a stream that delivers nothing, not even a bookmark, for `read_timeout` (about twice the
  API server's bookmark interval) is taken for half-open: closed and resumed as above;
- 429/503 with Retry-After: wait at least that long before the next request;
- watches that end at once with nothing delivered, twice in a row, back off too.

Series (one label per resource): `rds_csi_kube_informer_synced` (1 while the view is
current: listed, and the watch not failing), `rds_csi_kube_informer_relists_total` (lists
after the first) and `rds_csi_kube_informer_failures_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry, Counter, Gauge

from ...clock import Clock, TimerHandle
from .ratelimit import Backoff
from .wire import ListCall, get_path, list_all, read_json, retry_after, status_of

log = logging.getLogger("rdscsi.kube.informer")

V = TypeVar("V")

# kube-apiserver's watch cache sends a bookmark to every watch that allows them about once a
# minute; a stream silent for twice that is dead even if TCP has not noticed.
BOOKMARK_INTERVAL_S = 60.0
READ_TIMEOUT_S = 2 * BOOKMARK_INTERVAL_S
LIST_TIMEOUT_S = 60.0
WATCH_TIMEOUT_S = 300  # asked of the server; the client allows 30 s more


@dataclass(frozen=True)
class Resource(Generic[V]):
    """What to list and watch, and how to read one object."""

    name: str  # plural resource name: the metrics label and in logs
    list_method: Callable[[ApiClient], ListCall]  # the generated `*_without_preload_content`
    parse: Callable[[Mapping[str, Any]], V | None]  # None: not an object we track
    key: Callable[[V], str]


Handler = Callable[[str, Any, Any], None]


class InformerMetrics:
    """The three per-resource series, shared by every informer of a process."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.synced = Gauge(
            "rds_csi_kube_informer_synced",
            "1 while the informer's view of the resource is current (listed, watch healthy)",
            ["resource"],
            registry=registry,
        )
        self.relists = Counter(
            "rds_csi_kube_informer_relists_total",
            "Full lists after the first (410 Expired or a failed list)",
            ["resource"],
            registry=registry,
        )
        self.failures = Counter(
            "rds_csi_kube_informer_failures_total",
            "Failed lists and watches (errors, 429, half-open streams)",
            ["resource"],
            registry=registry,
        )


class _Expired(Exception):
    """The watch's resourceVersion is too old (410): only a relist recovers."""


class _Silent(Exception):
    """Nothing arrived for the read timeout: the stream is taken for half-open."""


class Informer(Generic[V]):
    def __init__(
        self,
        api: ApiClient,
        resource: Resource[V],
        clock: Clock,
        on_change: Handler,
        *,
        metrics: InformerMetrics | None = None,
        page_size: int = 500,
        list_timeout: float = LIST_TIMEOUT_S,
        watch_timeout: int = WATCH_TIMEOUT_S,
        read_timeout: float | None = READ_TIMEOUT_S,
        backoff: Backoff | None = None,
        min_watch_s: float = 1.0,
    ) -> None:
        self.resource = resource
        self._list = resource.list_method(api)
        self._clock = clock
        self._on_change = on_change
        self._page_size = page_size
        self._list_timeout = list_timeout
        self._watch_timeout = watch_timeout
        self._read_timeout = read_timeout
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._min_watch_s = min_watch_s
        self.store: dict[str, V] = {}
        self.has_synced = asyncio.Event()  # the first complete list is in (never cleared)
        self.resource_version = ""
        self.lists = 0
        self.watches = 0
        self.failures = 0
        self.read_timeouts = 0
        self.throttled = 0  # 429/503 answers whose Retry-After we waited out
        self._current = False
        self._delivered = 0
        self._last_read = 0.0
        self._silent = False
        self._watchdog: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._resp: Any = None
        if metrics is not None:
            name = resource.name
            self._g_synced: Any = metrics.synced.labels(name)
            self._c_relists: Any = metrics.relists.labels(name)
            self._c_failures: Any = metrics.failures.labels(name)
            self._g_synced.set(0)
        else:
            self._g_synced = self._c_relists = self._c_failures = None

    # --- state ----------------------------------------------------------------------------

    @property
    def current(self) -> bool:
        """The view is as recent as the watch can make it (listed; the watch not failing)."""
        return self._current

    def _set_current(self, value: bool) -> None:
        self._current = value
        if self._g_synced is not None:
            self._g_synced.set(1 if value else 0)

    def _failed(self) -> None:
        self.failures += 1
        self._set_current(False)
        if self._c_failures is not None:
            self._c_failures.inc()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"informer-{self.resource.name}"
            )

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self) -> None:
        """Cancel the loop and close the open stream; returns when nothing is left running."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        self._close_stream()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves: do not swallow it
        except Exception:
            # It had crashed (liveness reported it); stopping must still succeed.
            log.exception("%s informer had failed", self.resource.name)
        self._set_current(False)

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        name = self.resource.name
        need_list = True
        quick_ends = 0
        while True:
            if need_list:
                try:
                    await self._relist()
                except Exception as exc:
                    self._failed()
                    delay = self._delay(exc)
                    log.warning("%s list failed (%s); retrying in %.1fs", name, _why(exc), delay)
                    await self._clock.sleep(delay)
                    continue
                need_list = False
            started = self._clock.monotonic()
            self._delivered = 0
            try:
                await self._watch()
            except _Expired:
                log.info("%s watch expired at %s; relisting", name, self.resource_version)
                self._set_current(False)
                need_list = True
                continue
            except Exception as exc:
                self._failed()
                if self._delivered:
                    self._backoff.reset()  # it worked for a while: start the delays afresh
                delay = self._delay(exc)
                log.warning(
                    "%s watch failed (%s); watching again from %s in %.1fs",
                    name,
                    _why(exc),
                    self.resource_version,
                    delay,
                )
                await self._clock.sleep(delay)
                continue
            # The server closed the stream: normal. Resume from where we are.
            if self._delivered or self._clock.monotonic() - started >= self._min_watch_s:
                self._backoff.reset()
                quick_ends = 0
            else:
                quick_ends += 1
                if quick_ends > 1:
                    await self._clock.sleep(self._backoff.next())

    def _delay(self, exc: BaseException) -> float:
        """The backoff delay, stretched to what a 429/503 Retry-After asks for."""
        delay = self._backoff.next()
        wait = retry_after(exc)
        if wait is not None:
            self.throttled += 1
            delay = max(delay, wait)
        return delay

    async def _relist(self) -> None:
        items, version = await list_all(
            self._list, self._page_size, _request_timeout=self._list_timeout
        )
        parse, key_of = self.resource.parse, self.resource.key
        # Report only once the whole list is in: a list failing half way must not produce
        # tombstones for the objects on the pages never read.
        fresh: dict[str, V] = {}
        for obj in items:
            view = parse(obj)
            if view is not None:
                fresh[key_of(view)] = view
        old_store, self.store = self.store, fresh
        for key, view in fresh.items():
            old = old_store.get(key)
            if old != view:
                self._emit(key, old, view)
        for key, old in old_store.items():
            if key not in fresh:
                self._emit(key, old, None)
        self.resource_version = version
        self.lists += 1
        if self.lists > 1 and self._c_relists is not None:
            self._c_relists.inc()
        self._set_current(True)
        self.has_synced.set()

    async def _watch(self) -> None:
        self.watches += 1
        self._silent = False
        resp = await self._list(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _request_timeout=float(self._watch_timeout + 30),
        )
        self._resp = resp
        try:
            if resp.status == 410:
                raise _Expired()
            if resp.status != 200:
                await read_json(resp)  # raises ApiException with the status and headers
            self._set_current(True)
            self._arm_watchdog()
            while True:
                line = await resp.content.readline()
                if self._silent:
                    raise _Silent()
                if not line:
                    return
                self._last_read = self._clock.monotonic()
                if line.strip():
                    self._event(json.loads(line))
        except Exception:
            if self._silent:
                raise _Silent() from None  # closing the stream made the read fail
            raise
        finally:
            self._disarm_watchdog()
            self._close_stream()

    # --- half-open detection: a timer on the injected clock closes a silent stream --------

    def _arm_watchdog(self) -> None:
        if self._read_timeout is None:
            return
        self._last_read = self._clock.monotonic()
        self._watchdog = self._clock.call_later(self._read_timeout, self._check_silence)

    def _check_silence(self) -> None:
        assert self._read_timeout is not None
        idle = self._clock.monotonic() - self._last_read
        if idle < self._read_timeout:
            self._watchdog = self._clock.call_later(self._read_timeout - idle, self._check_silence)
            return
        self._watchdog = None
        self._silent = True
        self.read_timeouts += 1
        log.warning(
            "%s watch: nothing received for %.0fs (not even a bookmark): closing it",
            self.resource.name,
            idle,
        )
        self._close_stream()

    def _disarm_watchdog(self) -> None:
        handle, self._watchdog = self._watchdog, None
        if handle is not None:
            handle.cancel()

    # --- events ---------------------------------------------------------------------------

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise ValueError(f"watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Expired()
            raise RuntimeError(f"watch error {code}: {obj.get('reason')}: {obj.get('message')}")
        version = get_path(obj, "metadata", "resourceVersion")
        self._delivered += 1
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(obj, deleted=kind == "DELETED")
        # BOOKMARK (or anything new) only moves the resourceVersion on.
        if isinstance(version, str) and version:
            self.resource_version = version

    def _apply(self, obj: Mapping[str, Any], deleted: bool) -> None:
        view = self.resource.parse(obj)
        if view is None:
            # Not (or no longer) ours: if we held it, it is gone for us.
            name = get_path(obj, "metadata", "name")
            if isinstance(name, str) and name in self.store:
                self._emit(name, self.store.pop(name), None)
            return
        key = self.resource.key(view)
        old = self.store.get(key)
        if deleted:
            if key in self.store:
                del self.store[key]
                self._emit(key, old, None)
            return
        if old != view:
            self.store[key] = view
            self._emit(key, old, view)

    def _emit(self, key: str, old: V | None, new: V | None) -> None:
        try:
            self._on_change(key, old, new)
        except Exception:
            # A consumer bug must not stop the informer: the next change may still be handled.
            log.exception("%s informer: handler failed for %s", self.resource.name, key)

    def _close_stream(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, _Silent):
        return "half-open: read timeout"
    status = status_of(exc)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
