"""NodeWatcher against FakeKube with the real client: list, watch, relist, tombstones."""

from __future__ import annotations

import asyncio

from kubernetes.aio.client import ApiClient

from rdscsi.clock import ManualClock
from rdscsi.io.kube.nodes import NodeView, NodeWatcher
from rdscsi.io.kube.ratelimit import Backoff
from rdscsi.machines.node import OUT_OF_SERVICE_TAINT
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi.objects import node, pv

from .conftest import DEAD_URL, new_client, our_tasks, until

OOS = {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}


class Views:
    """Collects every view the watcher forwards."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[NodeView] = asyncio.Queue()
        self.all: list[NodeView] = []

    def __call__(self, view: NodeView) -> None:
        self.all.append(view)
        self.queue.put_nowait(view)

    async def next(self) -> NodeView:
        return await asyncio.wait_for(self.queue.get(), 5.0)

    async def take(self, n: int) -> list[NodeView]:
        return [await self.next() for _ in range(n)]


async def test_list_then_watch_add_modify_delete(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    kube.put(node("b", ready=False))
    views = Views()
    watcher = NodeWatcher(api, views, clock)
    watcher.start()
    try:
        assert sorted(await views.take(2), key=lambda v: v.name) == [
            NodeView("a", True, False, False),
            NodeView("b", False, False, False),
        ]
        await asyncio.wait_for(watcher.synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")

        kube.put(node("c"))
        assert await views.next() == NodeView("c", True, False, False)
        kube.put(node("a", ready=False))
        assert await views.next() == NodeView("a", False, False, False)
        kube.put(node("a", ready=False, taints=[OOS]))
        assert await views.next() == NodeView("a", False, True, False)
        kube.put(node("a", ready=False))  # taint lifted
        assert await views.next() == NodeView("a", False, False, False)
        kube.remove("v1", "Node", "b")
        assert await views.next() == NodeView("b", False, False, True)

        assert watcher.views == {
            "a": NodeView("a", False, False, False),
            "c": NodeView("c", True, False, False),
        }
        assert watcher.relists == 1
    finally:
        await watcher.stop()
    await until(lambda: not kube.open_watches(), "the watch stream to close")


async def test_relist_after_compaction_reports_tombstones(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    for name in ("a", "b", "c"):
        kube.put(node(name))
    views = Views()
    watcher = NodeWatcher(api, views, clock)
    watcher.start()
    try:
        await views.take(3)
        await kube.wait_watchers(1, "/api/v1/nodes")
        # The watch goes down; meanwhile c is deleted, b is tainted and history is
        # compacted, so resuming from the old resourceVersion is answered with 410.
        kube.drop_watches()
        kube.remove("v1", "Node", "c")
        kube.put(node("b", ready=False, taints=[OOS]))
        kube.compact()
        got = await views.take(3)  # the relist: a, b, then the tombstone for c
        assert got == [
            NodeView("a", True, False, False),
            NodeView("b", False, True, False),
            NodeView("c", True, False, True),
        ]
        assert watcher.relists == 2
        assert set(watcher.views) == {"a", "b"}
        # ...and watching resumes from the new list.
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.put(node("d"))
        assert await views.next() == NodeView("d", True, False, False)
        # No backoff was needed for any of it: 410 means relist at once.
        assert clock.pending() == []
    finally:
        await watcher.stop()


async def test_dropped_stream_resumes_without_relisting(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    views = Views()
    watcher = NodeWatcher(api, views, clock)
    watcher.start()
    try:
        await views.take(1)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.drop_watches()
        kube.put(node("a", ready=False))  # happens while no watch is open
        assert await views.next() == NodeView("a", False, False, False)  # replayed on resume
        assert watcher.relists == 1
        assert watcher.watches == 2
    finally:
        await watcher.stop()


async def test_failed_list_backs_off_on_the_clock(kube: FakeKube, clock: ManualClock) -> None:
    kube.put(node("a"))
    api = await new_client(DEAD_URL)
    views = Views()
    watcher = NodeWatcher(api, views, clock, backoff=Backoff(initial=1.0, cap=4.0, jitter=0.0))
    watcher.start()
    try:
        await until(lambda: clock.pending() == [clock.monotonic() + 1.0], "the first backoff")
        assert watcher.failures == 1 and not watcher.synced.is_set()
        clock.advance(1.0)
        await until(lambda: clock.pending() == [clock.monotonic() + 2.0], "the doubled backoff")
        clock.advance(2.0)
        await until(lambda: clock.pending() == [clock.monotonic() + 4.0], "the capped backoff")
        clock.advance(4.0)
        await until(lambda: clock.pending() == [clock.monotonic() + 4.0], "still capped")
        assert watcher.failures == 4
        # The API server becomes reachable: the next retry lists and syncs.
        api.configuration.host = kube.url
        clock.advance(4.0)
        assert await views.next() == NodeView("a", True, False, False)
        await asyncio.wait_for(watcher.synced.wait(), 5)
    finally:
        await watcher.stop()
        await api.close()


async def test_server_error_event_relists_after_backoff(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    views = Views()
    watcher = NodeWatcher(api, views, clock, backoff=Backoff(initial=1.0, cap=1.0, jitter=0.0))
    watcher.start()
    try:
        await views.take(1)
        await kube.wait_watchers(1, "/api/v1/nodes")
        # The API server goes away under the open watch.
        api.configuration.host = DEAD_URL
        kube.drop_watches()
        await until(lambda: watcher.failures >= 1, "the failed resume")
        assert clock.pending() == [clock.monotonic() + 1.0]
        api.configuration.host = kube.url
        clock.advance(1.0)
        assert await views.next() == NodeView("a", True, False, False)  # relisted
        assert watcher.relists == 2
    finally:
        await watcher.stop()


async def test_consumer_errors_do_not_stop_the_watcher(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    seen: list[NodeView] = []

    def flaky(view: NodeView) -> None:
        seen.append(view)
        raise RuntimeError("consumer bug")

    watcher = NodeWatcher(api, flaky, clock)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.put(node("b"))
        await until(lambda: len(seen) == 2, "the second view")
        assert watcher.views.keys() == {"a", "b"}
    finally:
        await watcher.stop()


async def test_stop_leaves_no_task(kube: FakeKube, api: ApiClient, clock: ManualClock) -> None:
    watcher = NodeWatcher(api, Views(), clock)
    watcher.start()
    await asyncio.wait_for(watcher.synced.wait(), 5)
    await kube.wait_watchers(1, "/api/v1/nodes")
    assert len(our_tasks()) == 1
    await watcher.stop()
    assert our_tasks() == []
    await until(lambda: not kube.open_watches(), "the server to see the stream closed")
    await watcher.stop()  # idempotent


async def test_bookmarks_keep_the_resume_point_fresh(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    views = Views()
    watcher = NodeWatcher(api, views, clock)
    watcher.start()
    try:
        await views.take(1)
        await kube.wait_watchers(1, "/api/v1/nodes")
        listed = watcher.resource_version
        kube.put(
            pv("pv-1", "rds.csi.mikrotik.com", "vol-1")
        )  # other kinds move the global resourceVersion on
        kube.bookmark()
        await until(lambda: watcher.resource_version != listed, "the bookmark")
        assert watcher.resource_version == str(kube.resource_version)
        # Compacted history is no problem now: the resume point is current.
        kube.drop_watches()
        kube.compact()
        await until(lambda: watcher.watches == 2, "the resumed watch")
        await kube.wait_watchers(1, "/api/v1/nodes")
        assert watcher.relists == 1
    finally:
        await watcher.stop()


async def test_watches_that_end_at_once_back_off(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    watcher = NodeWatcher(
        api, Views(), clock, backoff=Backoff(initial=1.0, cap=8.0, jitter=0.0), min_watch_s=1.0
    )
    watcher.start()
    try:
        await asyncio.wait_for(watcher.synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.drop_watches()  # the first quick end: resumed at once
        await until(lambda: watcher.watches == 2, "the immediate resume")
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.drop_watches()  # again with nothing delivered: now it waits
        await until(lambda: clock.pending() == [clock.monotonic() + 1.0], "a backoff")
        assert watcher.watches == 2
        clock.advance(1.0)
        await until(lambda: watcher.watches == 3, "the delayed resume")
        assert watcher.relists == 1 and watcher.failures == 0
    finally:
        await watcher.stop()
