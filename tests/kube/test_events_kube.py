"""KubeEventSink against FakeKube: where events land, what they carry, pacing and failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes.aio.client import ApiClient

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import NORMAL, WARNING, ClusterEvent, ObjectRef
from rdscsi.io.kube.events import KubeEventSink, KubeRef
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi.objects import node, pv

from .conftest import DEAD_URL, new_client, our_tasks, until

DRIVER = "rds.csi.mikrotik.com"
CONTROLLER = "rds.csi.mikrotik.com/controller"


def events(kube: FakeKube, namespace: str | None = None) -> list[dict[str, Any]]:
    return kube.list("events.k8s.io/v1", "Event", namespace)


def attached(volume: str, node_name: str = "n1", reason: str = "VolumeAttached") -> ClusterEvent:
    return ClusterEvent(
        reason,
        NORMAL,
        ObjectRef("PersistentVolume", volume),
        f"volume {volume} attached to node {node_name}",
        "Attach",
        ObjectRef("Node", node_name),
    )


def sink_for(api: ApiClient, clock: ManualClock, **kw: Any) -> KubeEventSink:
    return KubeEventSink(api, CONTROLLER, "ctl-0", "default", clock, **kw)


async def test_pv_event_lands_on_the_bound_claim(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    claim_uid = "1f0c8d8e-0000-4000-8000-000000000001"
    volume = pv("pvc-123", DRIVER, "vol-1", claim=("apps", "data"))
    volume["spec"]["claimRef"]["uid"] = claim_uid
    kube.put(volume)
    kube.put(node("n1"))
    sink = sink_for(api, clock)
    sink.start()
    try:
        sink.emit(attached("pvc-123"))
        await until(lambda: sink.stats.posted == 1, "the event to be posted")
        [ev] = events(kube, "apps")
        assert ev["regarding"] == {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": "apps",
            "name": "data",
            "uid": claim_uid,
        }
        assert ev["related"]["kind"] == "Node" and ev["related"]["name"] == "n1"
        assert ev["reason"] == "VolumeAttached"
        assert ev["type"] == "Normal"
        assert ev["action"] == "Attach"
        assert ev["note"] == "volume pvc-123 attached to node n1"
        assert ev["reportingController"] == CONTROLLER
        assert ev["reportingInstance"] == "ctl-0"
        assert ev["eventTime"] == "2023-11-14T22:13:20.000000Z"  # the ManualClock's wall time
        assert ev["metadata"]["name"].startswith("data.")
    finally:
        await sink.stop()


async def test_unbound_or_missing_pv_and_nodes_are_cluster_scoped(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(pv("pv-free", DRIVER, "vol-2"))
    kube.put(node("n1"))
    sink = sink_for(api, clock)
    sink.start()
    try:
        sink.emit(attached("pv-free"))
        sink.emit(attached("pv-gone"))  # not readable: still reported, on the PV itself
        sink.emit(
            ClusterEvent(
                "StaleAttachmentCleared",
                WARNING,
                ObjectRef("Node", "n1"),
                "released",
                "Detach",
            )
        )
        await until(lambda: sink.stats.posted == 3, "three events")
        by_name = {e["regarding"]["name"]: e for e in events(kube)}
        assert set(by_name) == {"pv-free", "pv-gone", "n1"}
        assert all(e["metadata"]["namespace"] == "default" for e in by_name.values())
        pv_uid = kube.get("v1", "PersistentVolume", "pv-free")["metadata"]["uid"]  # type: ignore[index]
        node_uid = kube.get("v1", "Node", "n1")["metadata"]["uid"]  # type: ignore[index]
        assert by_name["pv-free"]["regarding"]["kind"] == "PersistentVolume"
        assert by_name["pv-free"]["regarding"]["uid"] == pv_uid
        assert "uid" not in by_name["pv-gone"]["regarding"]
        # kubectl describe matches events on the uid: Node events carry it.
        assert by_name["n1"]["regarding"] == {
            "apiVersion": "v1",
            "kind": "Node",
            "name": "n1",
            "uid": node_uid,
        }
        assert by_name["n1"]["type"] == "Warning"
    finally:
        await sink.stop()


async def test_appliance_events_go_to_the_driver_pod(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    pod = KubeRef("Pod", "rds-csi-controller-0", "rds-csi", "pod-uid-1")
    sink = sink_for(api, clock, appliance_ref=pod)
    appliance = ClusterEvent(
        "RDSDisconnected",
        WARNING,
        ObjectRef("Appliance", "10.0.0.5"),
        "RDS 10.0.0.5: down",
        "Connect",
    )
    sink.start()
    try:
        sink.emit(appliance)
        await until(lambda: sink.stats.posted == 1, "the appliance event")
        [ev] = events(kube, "rds-csi")
        assert ev["regarding"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": "rds-csi",
            "name": "rds-csi-controller-0",
            "uid": "pod-uid-1",
        }
    finally:
        await sink.stop()
    # Without a Pod reference there is nothing honest to attach them to: counted, not posted.
    bare = sink_for(api, clock)
    bare.start()
    try:
        bare.emit(appliance)
        await until(lambda: bare.stats.unroutable == 1, "the unroutable count")
        assert bare.stats.posted == 0 and len(events(kube)) == 1
    finally:
        await bare.stop()


async def test_long_notes_are_cut_to_the_api_limit(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    sink = sink_for(api, clock)
    sink.start()
    try:
        sink.emit(ClusterEvent("X", NORMAL, ObjectRef("Node", "n1"), "ü" * 2000, "Act"))
        await until(lambda: sink.stats.posted == 1, "the event")
        [ev] = events(kube)
        assert len(ev["note"].encode()) <= 1024
    finally:
        await sink.stop()


async def test_per_object_and_reason_limit(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(pv("pv-1", DRIVER, "vol-1", claim=("apps", "data")))
    sink = sink_for(api, clock, key_burst=3, key_per_second=1 / 60)
    sink.start()
    try:
        for _ in range(10):
            sink.emit(attached("pv-1"))
        sink.emit(attached("pv-1", reason="VolumeDetached"))  # another reason: its own bucket
        assert sink.stats.rate_limited == 7
        await until(lambda: sink.stats.posted == 4, "the admitted events")
        clock.advance(30)
        sink.emit(attached("pv-1"))
        assert sink.stats.rate_limited == 8  # half a token: still limited
        clock.advance(30)
        sink.emit(attached("pv-1"))
        await until(lambda: sink.stats.posted == 5, "one more after a minute")
        assert len(events(kube, "apps")) == 5
    finally:
        await sink.stop()


async def test_global_rate_paces_on_the_clock(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    for i in range(6):
        kube.put(node(f"n{i}"))
    sink = sink_for(api, clock, burst=3, per_second=0.5)
    sink.start()
    try:
        for i in range(6):
            sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", f"n{i}"), "x", "A"))
        await until(lambda: sink.stats.posted == 3 and clock.pending() != [], "the burst")
        assert sink.pending == 2  # one is waiting for its token, two are queued
        clock.advance(1.9)
        await asyncio.sleep(0)
        assert sink.stats.posted == 3
        clock.advance(0.1)
        await until(lambda: sink.stats.posted == 4, "one token later")
        clock.advance(2.0)
        await until(lambda: sink.stats.posted == 5, "another")
        clock.advance(2.0)
        await until(lambda: sink.stats.posted == 6, "the last")
        assert sink.stats.rate_limited == 0 and sink.stats.dropped_full == 0
    finally:
        await sink.stop()


async def test_emit_is_bounded_and_makes_no_tasks(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    sink = sink_for(api, clock, queue_size=100, burst=10, per_second=1.0)
    sink.start()
    try:
        await asyncio.sleep(0)
        tasks = len(asyncio.all_tasks())
        mine = len(our_tasks())
        for i in range(1000):
            sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", f"node-{i}"), "x", "A"))
            assert len(asyncio.all_tasks()) == tasks
        assert sink.stats.dropped_full == 900
        assert sink.pending == 100
        # The worker posts the burst and then waits for tokens: still one task of ours.
        await until(lambda: sink.stats.posted + sink.stats.failed == 10, "the burst")
        assert len(our_tasks()) == mine == 1
    finally:
        await sink.stop(drain_s=0)
    assert our_tasks() == []


async def test_failures_are_counted_never_raised(kube: FakeKube, clock: ManualClock) -> None:
    dead = await new_client(DEAD_URL)
    sink = sink_for(dead, clock)
    sink.start()
    try:
        for i in range(5):
            sink.emit(attached(f"pv-{i}"))  # the PV look-up fails too: falls back to the PV
        await until(lambda: sink.stats.failed == 5, "five failed posts")
        assert sink.stats.posted == 0
    finally:
        await sink.stop()
        await dead.close()


async def test_rejected_events_are_counted(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    sink = sink_for(api, clock)
    sink.start()
    try:
        # type must be Normal or Warning: the API server answers 422.
        sink.emit(ClusterEvent("R", "Odd", ObjectRef("Node", "n1"), "x", "A"))
        await until(lambda: sink.stats.failed == 1, "the rejected post")
        assert events(kube) == []
    finally:
        await sink.stop()


async def test_stop_drains_what_is_queued(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    sink = sink_for(api, clock)
    for i in range(5):  # emitted before the worker runs: kept in the queue
        sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", "n1"), f"m{i}", "A", None))
    sink.start()
    await sink.stop(drain_s=5.0)
    assert sink.stats.posted == 5
    assert len(events(kube)) == 5


def test_constructor_rejects_what_the_api_server_would() -> None:
    clock = ManualClock()
    api: Any = None
    with pytest.raises(ValueError, match="default"):
        KubeEventSink(api, CONTROLLER, "i", "rds-csi", clock)
    with pytest.raises(ValueError, match="qualified name"):
        KubeEventSink(api, "not a name", "i", "default", clock)
    with pytest.raises(ValueError, match="reporting_instance"):
        KubeEventSink(api, CONTROLLER, "x" * 129, "default", clock)
