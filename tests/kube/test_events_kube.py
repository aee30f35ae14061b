"""KubeEventSink against FakeKube: where events land, what they carry, series of repeats,
pacing, retries and failures, and the outcome series."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import NORMAL, WARNING, ClusterEvent, ObjectRef, bind_metrics
from rdscsi.io.kube.events import (
    FINISH_S,
    HOUSEKEEPING_S,
    MAX_TRIES,
    REFRESH_S,
    KubeEventSink,
    KubeRef,
)
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
        await until(lambda: sink.stats.sent == 1, "the event to be posted")
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
        await until(lambda: sink.stats.sent == 3, "three events")
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
        await until(lambda: sink.stats.sent == 1, "the appliance event")
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
        assert bare.stats.sent == 0 and len(events(kube)) == 1
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
        await until(lambda: sink.stats.sent == 1, "the event")
        [ev] = events(kube)
        assert len(ev["note"].encode()) <= 1024
    finally:
        await sink.stop()


async def test_repeats_are_aggregated_into_a_series_as_client_go_does(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    assert (FINISH_S, REFRESH_S, MAX_TRIES) == (360.0, 1800.0, 12)
    kube.put(pv("pv-1", DRIVER, "vol-1", claim=("apps", "data")))
    registry = CollectorRegistry()
    sink = sink_for(api, clock)
    bind_metrics(sink, registry)
    sink.start()

    def outcome(name: str) -> float | None:
        return registry.get_sample_value("rds_csi_events_total", {"outcome": name})

    try:
        sink.emit(attached("pv-1"))
        await until(lambda: sink.stats.sent == 1, "the first occurrence")
        [ev] = events(kube, "apps")
        assert "series" not in ev
        clock.advance(10)
        sink.emit(attached("pv-1"))  # the second occurrence makes it a series at once
        await until(lambda: sink.stats.series_patches == 1, "the series")
        [ev] = events(kube, "apps")
        assert ev["series"]["count"] == 2
        assert ev["series"]["lastObservedTime"] == "2023-11-14T22:13:30.000000Z"
        for _ in range(8):  # later ones only count, until the next refresh
            clock.advance(1)
            sink.emit(attached("pv-1"))
        await asyncio.sleep(0.05)
        assert sink.stats.series_patches == 1 and sink.stats.aggregated == 9
        # another reason, or another related node, is another event
        sink.emit(attached("pv-1", reason="VolumeDetached"))
        sink.emit(attached("pv-1", node_name="n2"))
        await until(lambda: sink.stats.sent == 3, "two more events")
        # quiet for the finish time: the series ends with its last count written
        clock.advance(FINISH_S + HOUSEKEEPING_S)  # noticed at the next housekeeping
        await until(lambda: sink.stats.series_patches == 2, "the final count")
        series = [e for e in events(kube, "apps") if "series" in e]
        assert [e["series"]["count"] for e in series] == [10]
        sink.emit(attached("pv-1"))  # a new series, in a new Event
        await until(lambda: sink.stats.sent == 4, "a new event")
        assert len(events(kube, "apps")) == 4
        assert (outcome("sent"), outcome("aggregated"), outcome("dropped")) == (4, 9, 0)
    finally:
        await sink.stop()


async def test_open_series_are_refreshed(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    sink = sink_for(api, clock)
    sink.start()
    event = ClusterEvent("R", NORMAL, ObjectRef("Node", "n1"), "x", "A")
    try:
        sink.emit(event)
        sink.emit(event)  # before the create went out: created with its series
        await until(lambda: sink.stats.sent == 1, "the create")
        [ev] = events(kube)
        assert ev["series"]["count"] == 2
        for _ in range(40):  # one a minute: the series never ends
            clock.advance(60)
            sink.emit(event)
        await until(lambda: sink.stats.series_patches >= 1, "a refresh")
        [ev] = events(kube)
        assert ev["series"]["count"] > 2
    finally:
        await sink.stop()


async def test_transient_failures_are_retried_with_retry_after(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    kube.throttle(2, retry_after=9, resource="events", verb="create")
    sink = sink_for(api, clock)
    sink.start()
    try:
        sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", "n1"), "x", "A"))
        await until(lambda: sink.stats.failed == 1, "the throttled create")
        assert clock.monotonic() + 9.0 in clock.pending()
        clock.advance(9.0)
        await until(lambda: sink.stats.failed == 2, "throttled again")
        clock.advance(9.0)
        await until(lambda: sink.stats.sent == 1, "the third try")
        assert sink.stats.dropped == 0 and len(events(kube)) == 1
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
        await until(lambda: sink.stats.sent == 3 and clock.pending() != [], "the burst")
        assert sink.pending == 2  # one is waiting for its token, two are queued
        clock.advance(1.9)
        await asyncio.sleep(0)
        assert sink.stats.sent == 3
        clock.advance(0.1)
        await until(lambda: sink.stats.sent == 4, "one token later")
        clock.advance(2.0)
        await until(lambda: sink.stats.sent == 5, "another")
        clock.advance(2.0)
        await until(lambda: sink.stats.sent == 6, "the last")
        assert sink.stats.dropped == 0
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
        await until(lambda: sink.stats.sent == 10, "the burst")
        assert len(our_tasks()) == mine == 1
    finally:
        await sink.stop(drain_s=0)
    assert our_tasks() == []


async def test_failures_are_retried_then_dropped_never_raised(
    kube: FakeKube, clock: ManualClock
) -> None:
    dead = await new_client(DEAD_URL)
    sink = sink_for(dead, clock)
    sink.start()
    try:
        for i in range(5):
            sink.emit(attached(f"pv-{i}"))  # the PV look-up fails too: falls back to the PV
        await until(lambda: sink.stats.failed == 5, "five failed posts")
        for tries in range(2, MAX_TRIES + 1):
            clock.advance(60.0)  # past every retry delay
            await until(lambda t=tries: sink.stats.failed == 5 * t, f"try {tries}")  # type: ignore[misc]
        assert sink.stats.exhausted == 5 and sink.stats.dropped == 5 and sink.stats.sent == 0
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
        await until(lambda: sink.stats.rejected == 1, "the rejected post")
        assert events(kube) == [] and sink.stats.dropped == 1
        assert clock.pending() == [clock.monotonic() + 60.0]  # housekeeping only: no retry
    finally:
        await sink.stop()


async def test_stop_drains_what_is_queued(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    kube.put(node("n2"))
    sink = sink_for(api, clock)
    for i in range(5):  # emitted before the worker runs: kept in the queue
        sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", "n1"), f"m{i}", "A", None))
        sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", "n2"), f"m{i}", "A", None))
    sink.start()
    await sink.stop(drain_s=5.0)
    assert sink.stats.sent == 2 and sink.stats.aggregated == 8
    assert sorted(e["series"]["count"] for e in events(kube)) == [5, 5]


def test_constructor_rejects_what_the_api_server_would() -> None:
    clock = ManualClock()
    api: Any = None
    with pytest.raises(ValueError, match="default"):
        KubeEventSink(api, CONTROLLER, "i", "rds-csi", clock)
    with pytest.raises(ValueError, match="qualified name"):
        KubeEventSink(api, "not a name", "i", "default", clock)
    with pytest.raises(ValueError, match="reporting_instance"):
        KubeEventSink(api, CONTROLLER, "x" * 129, "default", clock)
