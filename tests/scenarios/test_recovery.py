"""Recovery without a human: the acceptance scenarios of the Kubernetes integration."""

from __future__ import annotations

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.testing.kubeapi import objects as k8s

from .conftest import GRACE, STEP, World, tick, until

OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}


def states(r: object, vids: list[str]) -> list[str]:
    book = r.app.attachments  # type: ignore[attr-defined]
    return [book.models[v].state if v in book.models else "detached" for v in vids]


def cleared_events(world: World) -> list[dict[str, object]]:
    return [
        e
        for e in world.kube.list("events.k8s.io/v1", "Event")
        if e.get("reason") == "StaleAttachmentCleared"
    ]


async def leader(world: World, name: str = "replica-1"):  # type: ignore[no-untyped-def]
    r = await world.replica(name)
    await until(lambda: r.binding.elector.is_leader and r.binding.rebuilds == 1, "leadership")
    await r.app.reconciler.wait_idle()
    return r


async def test_deleted_node_releases_its_volumes_at_grace_expiry(world: World) -> None:
    world.add_nodes("n1", "n2")
    r = await leader(world)
    vids = [
        await world.attach(r, f"pvc-00000000-0000-4000-8000-00000000000{i}", "n1") for i in range(3)
    ]
    events = [
        e
        for e in world.kube.list("events.k8s.io/v1", "Event")
        if e.get("reason") == "StartupReconciliation"
    ]
    assert len(events) == 1 and events[0]["reportingController"] == "rds.csi.test/controller"
    world.kube.remove("v1", "Node", "n1")
    await until(lambda: states(r, vids) == ["stale"] * 3, "stale after the node is deleted")
    await tick(r, GRACE - STEP)
    assert states(r, vids) == ["stale"] * 3  # never before the grace period
    await tick(r, STEP)
    assert states(r, vids) == ["detached"] * 3
    await until(lambda: len(cleared_events(world)) == 3, "three StaleAttachmentCleared events")
    ev = cleared_events(world)[0]
    assert ev["regarding"]["kind"] == "PersistentVolumeClaim"  # type: ignore[index]
    assert ev["reportingInstance"] == "replica-1"
    assert r.registry.get_sample_value("rds_csi_attachment_stale_cleared_total") == 3
    # the volumes can now go to a healthy node
    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(
            mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
        ),
    )
    await r.controller.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(volume_id=vids[0], node_id="n2", volume_capability=cap)
    )


async def test_same_while_the_appliance_restarts(world: World) -> None:
    world.add_nodes("n1")
    r = await leader(world)
    vids = [
        await world.attach(r, f"pvc-00000000-0000-4000-8000-0000000000a{i}", "n1") for i in range(3)
    ]
    await world.sim.stop()
    await until(lambda: r.app.rds.state == "backoff", "appliance lost")
    world.kube.remove("v1", "Node", "n1")
    await until(lambda: states(r, vids) == ["stale"] * 3, "stale")
    passes_before = r.app.reconciler.passes
    await world.sim.start()
    await tick(r, r.app.rds.model.delay)
    await until(lambda: r.app.rds.connected, "reconnected")
    await r.app.reconciler.wait_idle()
    assert r.app.reconciler.passes == passes_before + 1  # exactly one pass after reconnect
    await tick(r, GRACE)
    assert states(r, vids) == ["detached"] * 3


async def test_controller_restart_half_way_reaches_the_same_outcome(world: World) -> None:
    world.add_nodes("n1")
    r1 = await leader(world)
    vids = [
        await world.attach(r1, f"pvc-00000000-0000-4000-8000-0000000000b{i}", "n1")
        for i in range(3)
    ]
    world.kube.remove("v1", "Node", "n1")
    await until(lambda: states(r1, vids) == ["stale"] * 3, "stale")
    await tick(r1, GRACE / 2)
    await r1.stop()  # crash half-way through the grace period (the Lease is released)
    r2 = await leader(world, "replica-2")  # a new process: rebuilds from VolumeAttachments
    assert states(r2, vids) == ["stale"] * 3  # n1 is gone from the Node listing
    await tick(r2, GRACE)
    assert states(r2, vids) == ["detached"] * 3
    try:
        await until(lambda: len(cleared_events(world)) == 3, "events from the new leader", 30.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; sink {r2.sink.stats}, pending {r2.sink.pending}") from None


async def test_node_back_within_grace_keeps_its_volumes(world: World) -> None:
    world.add_nodes("n1")
    r = await leader(world)
    vids = [
        await world.attach(r, f"pvc-00000000-0000-4000-8000-0000000000c{i}", "n1") for i in range(3)
    ]
    world.kube.put(k8s.node("n1", ready=False))
    await until(lambda: states(r, vids) == ["stale"] * 3, "stale when not ready")
    await tick(r, GRACE / 2)
    world.kube.put(k8s.node("n1", ready=True))
    await until(lambda: states(r, vids) == ["attached"] * 3, "back to attached")
    await tick(r, GRACE * 2)
    assert states(r, vids) == ["attached"] * 3
    assert cleared_events(world) == []


async def test_not_ready_without_evidence_is_never_cleared(world: World) -> None:
    world.add_nodes("n1")
    r = await leader(world)
    vid = await world.attach(r, "pvc-00000000-0000-4000-8000-0000000000d1", "n1")
    world.kube.put(k8s.node("n1", ready=False))
    await until(lambda: states(r, [vid]) == ["stale"], "stale")
    await tick(r, GRACE * 3)
    assert states(r, [vid]) == ["stale"]  # suspicion alone is not evidence
    world.kube.put(k8s.node("n1", ready=False, taints=[OUT_OF_SERVICE]))
    await until(lambda: states(r, [vid]) == ["detached"], "cleared on the taint")


async def test_two_replicas_only_the_lease_holder_acts(world: World) -> None:
    world.add_nodes("n1")
    r1 = await leader(world)
    r2 = await world.replica("replica-2")
    await tick(r2, 3 * STEP)
    assert r1.binding.elector.is_leader and not r2.binding.elector.is_leader
    assert not r2.app.reconciler.running
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await world.attach(r2, "pvc-00000000-0000-4000-8000-0000000000e1", "n1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    vid = await world.attach(r1, "pvc-00000000-0000-4000-8000-0000000000e2", "n1")
    # the leader dies without releasing: the other takes over after the lease duration
    await r1.binding.elector.stop(release=False)
    await r1.app.reconciler.stop()
    await tick(r2, r2.app.config.lease_duration + 3 * STEP)
    await until(lambda: r2.binding.elector.is_leader and r2.binding.rebuilds == 1, "takeover")
    assert states(r2, [vid]) == ["attached"]  # rebuilt before acting
