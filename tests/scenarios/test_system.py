"""Two controller replicas and the four sidecars of each pod, every sidecar kind electing its
own leader: real CSI over the pods' unix sockets, the simulator over SSH, the API server
with the shipped RBAC. PVCs are provisioned, attached, expanded and snapshotted under every
leader alignment (16 sidecar alignments times 2 reconciler leaders), then through container
restarts, crashes and Lease moves."""

from __future__ import annotations

import itertools

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb

from .conftest import World, until
from .sidecars import KINDS, Sidecars

PODS = ("ctl-a", "ctl-b")


async def lifecycle(world: World, sidecars: Sidecars, tag: str) -> None:
    """One PVC's life through whichever sidecar leads each step."""
    pvc = f"pvc-00000000-0000-4000-8000-{tag:0>12}"
    vid = await sidecars.provision(pvc)
    await sidecars.attach(vid, pvc, "n1")
    # a single-node volume is refused to a second node, whoever leads
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sidecars.attach(vid, pvc, "n2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    world.kube.remove("storage.k8s.io/v1", "VolumeAttachment", _va(vid, "n2"))
    assert await sidecars.expand(vid, 2 << 20) >= 2 << 20
    snap = await sidecars.snapshot(vid, f"snapshot-{tag}")
    await sidecars.delete_snapshot(snap)
    await sidecars.detach(vid, "n1")
    await sidecars.delete(vid, pvc)


def _va(vid: str, node: str) -> str:
    from .sidecars import attachment_name

    return attachment_name(vid, node)


async def start(world: World) -> Sidecars:
    world.node("n1")
    world.node("n2")
    for pod in PODS:
        await world.replica(pod)
    sidecars = Sidecars(world, PODS)
    await sidecars.start()
    return sidecars


async def test_every_leader_alignment(world: World) -> None:
    sidecars = await start(world)
    runs = 0
    for reconciler in PODS:
        await world.elect(reconciler)
        for combo in itertools.product(PODS, repeat=len(KINDS)):
            alignment = dict(zip(KINDS, combo, strict=True))
            await sidecars.align(alignment)
            first = len(sidecars.calls)
            await lifecycle(world, sidecars, f"{runs:03d}")
            # every call went to the driver in the pod of the sidecar that made it
            for kind, pod, _rpc in sidecars.calls[first:]:
                assert pod == alignment[kind], (kind, pod, alignment)
            assert world.leader() is world.replicas[reconciler]
            runs += 1
    assert runs == 32
    assert sorted(world.sim.store.disks) == []  # no disk leaked
    assert {pod for _, pod, _ in sidecars.calls} == set(PODS)
    # one StartupReconciliation per leadership term, each from the replica that led
    terms = sum(r.app.leadership.terms for r in world.live())
    await until(lambda: _startups(world) == terms, "one StartupReconciliation per term")


def _startups(world: World) -> int:
    return sum(e.get("series", {}).get("count", 1) for e in world.events("StartupReconciliation"))


async def test_container_restarts_crashes_and_lease_moves(world: World) -> None:
    sidecars = await start(world)
    await world.elect("ctl-a")
    await sidecars.align(dict.fromkeys(KINDS, "ctl-a"))
    pvc = "pvc-00000000-0000-4000-8000-0000000000f1"
    vid = await sidecars.provision(pvc)
    await sidecars.attach(vid, pvc, "n1")

    # The driver container of ctl-a restarts while its sidecars lead: their calls get
    # UNAVAILABLE until it is back (its socket opens only once it has synced), then pass.
    await world.replicas["ctl-a"].stop()
    restarted = await world.replica("ctl-a", wait=False)
    await lifecycle(world, sidecars, "restart1")
    assert restarted.binding.synced.is_set()

    # The reconciler's leader crashes (no release): ctl-b takes over after the lease runs out,
    # and derives the attachment from the objects: still on n1, still refused elsewhere.
    await world.elect("ctl-a")
    await world.replicas["ctl-a"].stop(release=False)
    config = world.replicas["ctl-b"].app.config
    await world.tick(config.lease_duration + 2 * config.retry_period + 1)
    await until(lambda: world.replicas["ctl-b"].leads, "ctl-b leads")
    assert world.replicas["ctl-b"].app.passes.models[vid].nodes == ("n1",)
    for kind in KINDS:
        await sidecars.move(kind, "ctl-b")  # ctl-a's sidecars went with their pod... or not
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sidecars.attach(vid, pvc, "n2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    world.kube.remove("storage.k8s.io/v1", "VolumeAttachment", _va(vid, "n2"))

    # ctl-a comes back; the sidecar leaders scatter over both pods; all still works.
    await world.replica("ctl-a")
    await sidecars.align(
        {"provisioner": "ctl-a", "attacher": "ctl-b", "resizer": "ctl-a", "snapshotter": "ctl-b"}
    )
    await lifecycle(world, sidecars, "restart2")
    await sidecars.detach(vid, "n1")
    await sidecars.delete(vid, pvc)
    assert sorted(world.sim.store.disks) == []
    listed = await world.replicas["ctl-a"].controller.ListVolumes(pb.ListVolumesRequest())
    assert list(listed.entries) == []
