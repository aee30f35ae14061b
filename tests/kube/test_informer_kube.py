"""The informer against FakeKube with the real client: list, watch, relist on 410, re-watch
from the last resourceVersion after other errors, half-open streams, 429 + Retry-After, list
timeouts, tombstones, bookmarks, and its per-resource series."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.io.kube.attachments import (
    AttachmentView,
    VolumeView,
    attachments_resource,
    volumes_resource,
)
from rdscsi.io.kube.informer import (
    BOOKMARK_INTERVAL_S,
    LIST_TIMEOUT_S,
    READ_TIMEOUT_S,
    Informer,
    InformerMetrics,
)
from rdscsi.io.kube.nodes import NODES, NodeView
from rdscsi.io.kube.ratelimit import Backoff
from rdscsi.machines.node import OUT_OF_SERVICE_TAINT
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi.objects import node, pv, volume_attachment

from .conftest import DEAD_URL, new_client, our_tasks, until

OOS = {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}
DRIVER = "rds.csi.mikrotik.com"
NO_JITTER = {"jitter": 0.0}


def plain(view: NodeView | None) -> tuple[str, bool, bool, bool] | None:
    """A node view without its time (FakeKube stamps real times)."""
    return None if view is None else (view.name, view.ready, view.out_of_service, view.deleted)


class Changes:
    """Collects every (key, old, new) the informer reports."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self.all: list[tuple[str, Any, Any]] = []

    def __call__(self, key: str, old: Any, new: Any) -> None:
        self.all.append((key, old, new))
        self.queue.put_nowait((key, old, new))

    async def next(self) -> tuple[str, Any, Any]:
        return await asyncio.wait_for(self.queue.get(), 5.0)

    async def take(self, n: int) -> list[tuple[str, Any, Any]]:
        return [await self.next() for _ in range(n)]


def nodes(api: ApiClient, clock: ManualClock, changes: Changes, **kw: Any) -> Informer[NodeView]:
    return Informer(api, NODES, clock, changes, **kw)


async def test_list_then_watch_add_modify_delete(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    kube.put(node("b", ready=False))
    changes = Changes()
    informer = nodes(api, clock, changes)
    informer.start()
    try:
        got = sorted(await changes.take(2), key=lambda c: c[0])
        assert [(k, o, plain(n)) for k, o, n in got] == [
            ("a", None, ("a", True, False, False)),
            ("b", None, ("b", False, False, False)),
        ]
        await asyncio.wait_for(informer.has_synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.put(node("c"))
        assert plain((await changes.next())[2]) == ("c", True, False, False)
        kube.put(node("a", ready=False))
        assert plain((await changes.next())[2]) == ("a", False, False, False)
        kube.put(node("a", ready=False, taints=[OOS]))
        assert plain((await changes.next())[2]) == ("a", False, True, False)
        kube.remove("v1", "Node", "b")
        key, old, new = await changes.next()
        assert (key, plain(old), new) == ("b", ("b", False, False, False), None)
        assert set(informer.store) == {"a", "c"}
        assert informer.lists == 1
        # an update that changes nothing we read is not reported
        obj = node("c")
        obj["metadata"]["labels"]["extra"] = "x"
        kube.put(obj)
        kube.put(node("d"))
        assert (await changes.next())[0] == "d"
    finally:
        await informer.stop()
    await until(lambda: not kube.open_watches(), "the watch stream to close")


async def test_relist_after_compaction_reports_tombstones(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    for name in ("a", "b", "c"):
        kube.put(node(name))
    changes = Changes()
    registry = CollectorRegistry()
    informer = nodes(api, clock, changes, metrics=InformerMetrics(registry))
    informer.start()
    try:
        await changes.take(3)
        await kube.wait_watchers(1, "/api/v1/nodes")
        assert registry.get_sample_value("rds_csi_kube_informer_synced", {"resource": "nodes"}) == 1
        # The watch goes down; meanwhile c is deleted, b is tainted and history is
        # compacted, so resuming from the old resourceVersion is answered with 410.
        kube.drop_watches()
        kube.remove("v1", "Node", "c")
        kube.put(node("b", ready=False, taints=[OOS]))
        kube.compact()
        got = await changes.take(2)  # the relist: b changed, then the tombstone for c
        assert [(k, plain(n)) for k, _, n in got] == [("b", ("b", False, True, False)), ("c", None)]
        assert informer.lists == 2
        labels = {"resource": "nodes"}
        assert registry.get_sample_value("rds_csi_kube_informer_relists_total", labels) == 1
        assert registry.get_sample_value("rds_csi_kube_informer_failures_total", labels) == 0
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.put(node("d"))
        assert (await changes.next())[0] == "d"
        # 410 means relist at once: no backoff, only the new stream's read timeout
        assert clock.pending() == [clock.monotonic() + READ_TIMEOUT_S]
    finally:
        await informer.stop()


async def test_dropped_stream_resumes_without_relisting(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    changes = Changes()
    informer = nodes(api, clock, changes)
    informer.start()
    try:
        await changes.take(1)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.drop_watches()
        kube.put(node("a", ready=False))  # happens while no watch is open
        assert plain((await changes.next())[2]) == ("a", False, False, False)  # replayed
        assert informer.lists == 1 and informer.watches == 2
    finally:
        await informer.stop()


async def test_failed_list_backs_off_on_the_clock(kube: FakeKube, clock: ManualClock) -> None:
    kube.put(node("a"))
    api = await new_client(DEAD_URL)
    changes = Changes()
    informer = nodes(api, clock, changes, backoff=Backoff(1.0, 4.0, **NO_JITTER))
    informer.start()
    try:
        await until(lambda: clock.pending() == [clock.monotonic() + 1.0], "the first backoff")
        assert informer.failures == 1 and not informer.has_synced.is_set()
        clock.advance(1.0)
        await until(lambda: clock.pending() == [clock.monotonic() + 2.0], "the doubled backoff")
        clock.advance(2.0)
        await until(lambda: clock.pending() == [clock.monotonic() + 4.0], "the capped backoff")
        clock.advance(4.0)
        await until(lambda: clock.pending() == [clock.monotonic() + 4.0], "still capped")
        assert informer.failures == 4
        api.configuration.host = kube.url  # the API server becomes reachable
        clock.advance(4.0)
        assert (await changes.next())[0] == "a"
        await asyncio.wait_for(informer.has_synced.wait(), 5)
    finally:
        await informer.stop()
        await api.close()


async def test_other_errors_watch_again_from_the_last_version(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    changes = Changes()
    informer = nodes(api, clock, changes, backoff=Backoff(1.0, 1.0, **NO_JITTER))
    informer.start()
    try:
        await changes.take(1)
        await kube.wait_watchers(1, "/api/v1/nodes")
        api.configuration.host = DEAD_URL  # the API server goes away under the open watch
        kube.drop_watches()
        await until(lambda: informer.failures >= 1, "the failed resume")
        assert not informer.current
        assert clock.pending() == [clock.monotonic() + 1.0]
        kube.put(node("a", ready=False))  # meanwhile
        api.configuration.host = kube.url
        clock.advance(1.0)
        assert plain((await changes.next())[2]) == ("a", False, False, False)
        assert informer.lists == 1  # watched again from where it was: no relist
        await until(lambda: informer.current, "current again")
    finally:
        await informer.stop()


async def test_a_half_open_stream_is_noticed_within_the_read_timeout(
    api: ApiClient, clock: ManualClock
) -> None:
    assert READ_TIMEOUT_S == 2 * BOOKMARK_INTERVAL_S == 120.0
    async with FakeKube(clock=clock, bookmark_interval=BOOKMARK_INTERVAL_S) as kube:
        kube.put(node("a"))
        client = ApiClient(kube.configuration())
        changes = Changes()
        informer = nodes(client, clock, changes, backoff=Backoff(1.0, 1.0, **NO_JITTER))
        informer.start()
        try:
            await changes.take(1)
            await kube.wait_watchers(1, "/api/v1/nodes")
            # Healthy: bookmarks keep coming, so silence never builds up.
            for i in range(3):
                kube.put(pv(f"pv-{i}", DRIVER, f"vol-{i}"))  # moves the global version on
                version = str(kube.resource_version)
                clock.advance(BOOKMARK_INTERVAL_S)
                await until(lambda v=version: informer.resource_version == v, "a bookmark")  # type: ignore[misc]
            assert informer.read_timeouts == 0 and informer.watches == 1
            # The connection goes half-open: nothing more arrives, the stream never ends.
            assert kube.half_open("nodes") == 1
            kube.put(node("a", ready=False))
            clock.advance(READ_TIMEOUT_S - 1)
            await asyncio.sleep(0.05)
            assert informer.read_timeouts == 0
            clock.advance(1.0)
            await until(lambda: informer.read_timeouts == 1, "the read timeout")
            await until(lambda: clock.monotonic() + 1.0 in clock.pending(), "the backoff")
            clock.advance(1.0)  # then a new watch from the last version
            assert plain((await changes.next())[2]) == ("a", False, False, False)
            assert informer.lists == 1 and informer.watches == 2
        finally:
            await informer.stop()
            await client.close()


async def test_429_retry_after_is_honoured_for_lists_and_watches(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    kube.throttle(1, retry_after=7, resource="nodes", verb="list")
    changes = Changes()
    informer = nodes(api, clock, changes, backoff=Backoff(1.0, 30.0, **NO_JITTER))
    informer.start()
    try:
        # The backoff would say 1 s; the server said 7.
        await until(lambda: clock.pending() == [clock.monotonic() + 7.0], "Retry-After")
        clock.advance(6.9)
        await asyncio.sleep(0.05)
        assert not informer.has_synced.is_set()
        clock.advance(0.1)
        await asyncio.wait_for(informer.has_synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.throttle(1, retry_after=5, resource="nodes", verb="watch")
        kube.drop_watches()
        await until(lambda: clock.pending() == [clock.monotonic() + 5.0], "Retry-After")
        clock.advance(5.0)
        await kube.wait_watchers(1, "/api/v1/nodes")
        assert informer.throttled == 2 and kube.throttled == 2
    finally:
        await informer.stop()


async def test_every_list_page_has_a_timeout(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    assert LIST_TIMEOUT_S == 60.0
    kube.put(node("a"))
    kube.delay(1.0, "nodes")  # a stuck API server
    changes = Changes()
    informer = nodes(api, clock, changes, list_timeout=0.1, backoff=Backoff(1.0, 1.0, **NO_JITTER))
    informer.start()
    try:
        await until(lambda: informer.failures == 1, "the list to time out", 5.0)
        kube.delay(0.0, "nodes")
        clock.advance(1.0)
        await asyncio.wait_for(informer.has_synced.wait(), 5)
    finally:
        await informer.stop()


async def test_consumer_errors_do_not_stop_the_informer(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    seen: list[str] = []

    def flaky(key: str, old: object, new: object) -> None:
        seen.append(key)
        raise RuntimeError("consumer bug")

    informer = Informer(api, NODES, clock, flaky)
    informer.start()
    try:
        await asyncio.wait_for(informer.has_synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.put(node("b"))
        await until(lambda: len(seen) == 2, "the second change")
        assert informer.store.keys() == {"a", "b"}
    finally:
        await informer.stop()


async def test_stop_leaves_no_task(kube: FakeKube, api: ApiClient, clock: ManualClock) -> None:
    informer = nodes(api, clock, Changes())
    informer.start()
    await asyncio.wait_for(informer.has_synced.wait(), 5)
    await kube.wait_watchers(1, "/api/v1/nodes")
    assert len(our_tasks()) == 1
    await informer.stop()
    assert our_tasks() == []
    await until(lambda: not kube.open_watches(), "the server to see the stream closed")
    await informer.stop()  # idempotent


async def test_bookmarks_keep_the_resume_point_fresh(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    informer = nodes(api, clock, Changes())
    informer.start()
    try:
        await asyncio.wait_for(informer.has_synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        listed = informer.resource_version
        kube.put(pv("pv-1", DRIVER, "vol-1"))  # other kinds move the global version on
        kube.bookmark()
        await until(lambda: informer.resource_version != listed, "the bookmark")
        assert informer.resource_version == str(kube.resource_version)
        kube.drop_watches()
        kube.compact()  # no problem now: the resume point is current
        await until(lambda: informer.watches == 2, "the resumed watch")
        await kube.wait_watchers(1, "/api/v1/nodes")
        assert informer.lists == 1
    finally:
        await informer.stop()


async def test_watches_that_end_at_once_back_off(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("a"))
    informer = nodes(api, clock, Changes(), backoff=Backoff(1.0, 8.0, **NO_JITTER), min_watch_s=1.0)
    informer.start()
    try:
        await asyncio.wait_for(informer.has_synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.drop_watches()  # the first quick end: resumed at once
        await until(lambda: informer.watches == 2, "the immediate resume")
        await kube.wait_watchers(1, "/api/v1/nodes")
        kube.drop_watches()  # again with nothing delivered: now it waits
        await until(lambda: clock.pending() == [clock.monotonic() + 1.0], "a backoff")
        assert informer.watches == 2
        clock.advance(1.0)
        await until(lambda: informer.watches == 3, "the delayed resume")
        assert informer.lists == 1 and informer.failures == 0
    finally:
        await informer.stop()


async def test_attachments_and_volumes_of_this_driver_only(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(pv("pv-1", DRIVER, "vol-1"))
    kube.put(pv("pv-ebs", "ebs.csi.aws.com", "vol-ebs"))
    kube.put(volume_attachment("csi-1", DRIVER, "n1", "pv-1", created=1_700_000_000.0))
    kube.put(volume_attachment("csi-ebs", "ebs.csi.aws.com", "n1", "pv-ebs"))
    vas, pvs = Changes(), Changes()
    informers = [
        Informer(api, attachments_resource(DRIVER), clock, vas),
        Informer(api, volumes_resource(DRIVER), clock, pvs),
    ]
    for informer in informers:
        informer.start()
    try:
        for informer in informers:
            await asyncio.wait_for(informer.has_synced.wait(), 5)
        await vas.take(1)
        assert informers[0].store == {
            "csi-1": AttachmentView("csi-1", "n1", "pv-1", True, 1_700_000_000.0)
        }
        assert informers[1].store == {"pv-1": VolumeView("pv-1", "vol-1", False)}
        await kube.wait_watchers(1, "volumeattachments")
        kube.put(volume_attachment("csi-1", DRIVER, "n1", "pv-1", False, 1_700_000_000.0))
        key, old, new = await vas.next()
        assert (key, old.attached, new.attached) == ("csi-1", True, False)
        kube.remove("storage.k8s.io/v1", "VolumeAttachment", "csi-1")
        assert await vas.next() == ("csi-1", new, None)
        kube.remove("storage.k8s.io/v1", "VolumeAttachment", "csi-ebs")  # not ours: silent
        kube.put(volume_attachment("csi-2", DRIVER, "n2", "pv-1"))
        assert (await vas.next())[0] == "csi-2"
    finally:
        for informer in informers:
            await informer.stop()
