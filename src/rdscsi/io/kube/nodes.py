"""Node informer: list, then watch, and report a `NodeView` for every observation.

Every view is forwarded, changed or not: the consumer (`control.nodes.NodeBook`) computes
deltas. A relist also reports, as deleted, every node known before but absent now (a
tombstone: a deletion that happened while no watch was open), which is the evidence that
lets a stale attachment go.

Resilience, all on the injected clock:
- the server ends a watch (its timeout): resume from the last resourceVersion at once;
- 410 Gone/Expired (the RV was compacted): relist at once;
- any other failure (network, 5xx, 403): back off (capped, jittered), then relist;
- watches that end at once with nothing delivered, twice in a row, also back off, so a
  misbehaving proxy cannot make us spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.aio.client import ApiClient, CoreV1Api

from ...clock import Clock
from ...control.nodes import NodeView
from ...machines.node import OUT_OF_SERVICE_TAINT
from .ratelimit import Backoff
from .wire import get_path, list_all, read_json, status_of

log = logging.getLogger("rdscsi.kube.nodes")

__all__ = ["NodeView", "NodeWatcher", "node_view"]


def node_view(obj: Mapping[str, Any], deleted: bool = False) -> NodeView | None:
    """The view of one Node object (API JSON); None when it has no name."""
    name = get_path(obj, "metadata", "name")
    if not isinstance(name, str) or not name:
        return None
    conditions = get_path(obj, "status", "conditions") or []
    # Only an explicit "True" is ready: "False" and "Unknown" (kubelet silent) are not.
    ready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )
    taints = get_path(obj, "spec", "taints") or []
    # Any effect counts: NoExecute is the documented one, NoSchedule is seen in the wild.
    out_of_service = any(
        isinstance(t, Mapping) and t.get("key") == OUT_OF_SERVICE_TAINT for t in taints
    )
    return NodeView(name, ready, out_of_service, deleted)


class _Expired(Exception):
    """The watch's resourceVersion is too old (410): only a relist recovers."""


class NodeWatcher:
    """List+watch Nodes; `on_change` gets every view (called on the loop, must not block)."""

    def __init__(
        self,
        api: ApiClient,
        on_change: Callable[[NodeView], None],
        clock: Clock,
        *,
        page_size: int = 500,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        min_watch_s: float = 1.0,
    ) -> None:
        self._core = CoreV1Api(api)
        self._on_change = on_change
        self._clock = clock
        self._page_size = page_size
        # Server-side watch timeout; the client's own timeout is a little longer so the
        # server normally ends the stream cleanly and we just resume.
        self._watch_timeout = watch_timeout
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._min_watch_s = min_watch_s
        self.views: dict[str, NodeView] = {}  # live nodes, last observed; deleted ones leave
        self.synced = asyncio.Event()  # set after the first complete list
        self.resource_version = ""
        self.relists = 0
        self.watches = 0
        self.failures = 0
        self._delivered = 0
        self._task: asyncio.Task[None] | None = None
        self._resp: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="node-watcher")

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

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        need_list = True
        quick_ends = 0
        while True:
            if need_list:
                try:
                    await self._relist()
                except Exception as exc:
                    self.failures += 1
                    delay = self._backoff.next()
                    log.warning("node list failed (%s); retrying in %.1fs", _why(exc), delay)
                    await self._clock.sleep(delay)
                    continue
                need_list = False
            started = self._clock.monotonic()
            self._delivered = 0
            try:
                await self._watch()
            except _Expired:
                log.info(
                    "node watch expired at resourceVersion %s; relisting", self.resource_version
                )
                need_list = True
                continue
            except Exception as exc:
                self.failures += 1
                if self._delivered:
                    self._backoff.reset()  # it worked for a while: start the delays afresh
                delay = self._backoff.next()
                log.warning("node watch failed (%s); relisting in %.1fs", _why(exc), delay)
                need_list = True
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

    async def _relist(self) -> None:
        items, version = await list_all(
            self._core.list_node_without_preload_content, self._page_size
        )
        # Emit only once the whole list is in: a list failing half way must not produce
        # tombstones for the nodes on the pages never read.
        seen: set[str] = set()
        for obj in items:
            view = node_view(obj)
            if view is None:
                continue
            seen.add(view.name)
            self._emit(view)
        for name in [n for n in self.views if n not in seen]:
            self._emit(dataclasses.replace(self.views[name], deleted=True))
        self.resource_version = version
        self.relists += 1
        self.synced.set()

    async def _watch(self) -> None:
        self.watches += 1
        resp = await self._core.list_node_without_preload_content(
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
                await read_json(resp)  # raises ApiException with the status
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if line.strip():
                    self._event(json.loads(line))
        finally:
            self._close_stream()

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
            view = node_view(obj, deleted=kind == "DELETED")
            if view is not None:
                self._emit(view)
        # BOOKMARK (or anything new) only moves the resourceVersion on.
        if isinstance(version, str) and version:
            self.resource_version = version

    def _emit(self, view: NodeView) -> None:
        if view.deleted:
            self.views.pop(view.name, None)
        else:
            self.views[view.name] = view
        try:
            self._on_change(view)
        except Exception:
            # A consumer bug must not stop the informer: the next view may still be handled.
            log.exception("node watcher: on_change failed for node %s", view.name)

    def _close_stream(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.close()


def _why(exc: BaseException) -> str:
    status = status_of(exc)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
