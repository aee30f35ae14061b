"""Every Identity and Controller RPC through a real gRPC client, appliance = simulator."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi.naming import snapshot_id

from .conftest import Cluster, block_cap, host_nqn, mount_cap

GIB = 1 << 30
PVC = "pvc-0a1b2c3d-0000-4000-8000-000000000001"
PVC2 = "pvc-0a1b2c3d-0000-4000-8000-000000000002"
Mode = pb.VolumeCapability.AccessMode


async def create(c: Cluster, name: str = PVC, size: int = GIB, **kw: object) -> pb.Volume:
    req = pb.CreateVolumeRequest(
        name=name,
        capacity_range=pb.CapacityRange(required_bytes=size),
        volume_capabilities=kw.pop("caps", [mount_cap()]),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return (await c.controller.CreateVolume(req)).volume


async def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


# --- Identity -------------------------------------------------------------------------------


async def test_identity(cluster: Cluster) -> None:
    info = await cluster.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "rds.csi.test" and info.vendor_version
    caps = await cluster.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest())
    kinds = {c.WhichOneof("type") for c in caps.capabilities}
    services = {c.service.type for c in caps.capabilities if c.HasField("service")}
    assert kinds == {"service", "volume_expansion"}
    assert services == {
        pb.PluginCapability.Service.CONTROLLER_SERVICE,
        pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS,
    }


async def test_probe_follows_the_connection(cluster: Cluster) -> None:
    probe = await cluster.identity.Probe(pb.ProbeRequest())
    assert probe.ready.value is True
    await cluster.sim.stop()
    await asyncio.wait_for(cluster.app.rds.wait_for("backoff"), 10)
    probe = await cluster.identity.Probe(pb.ProbeRequest())
    assert probe.HasField("ready") and probe.ready.value is False
    await cluster.sim.start()
    cluster.clock.advance(cluster.app.rds.model.delay)
    await cluster.connected()
    assert (await cluster.identity.Probe(pb.ProbeRequest())).ready.value is True


async def test_capabilities_cover_the_issue(cluster: Cluster) -> None:
    resp = await cluster.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest())
    got = {c.rpc.type for c in resp.capabilities}
    T = pb.ControllerServiceCapability.RPC.Type
    assert got == {
        T.CREATE_DELETE_VOLUME,
        T.PUBLISH_UNPUBLISH_VOLUME,
        T.LIST_VOLUMES,
        T.LIST_VOLUMES_PUBLISHED_NODES,
        T.GET_CAPACITY,
        T.EXPAND_VOLUME,
        T.CREATE_DELETE_SNAPSHOT,
        T.LIST_SNAPSHOTS,
        T.GET_SNAPSHOT,
        T.CLONE_VOLUME,
        T.GET_VOLUME,
        T.VOLUME_CONDITION,
        T.SINGLE_NODE_MULTI_WRITER,
        T.PUBLISH_READONLY,
    }


# --- CreateVolume / DeleteVolume -------------------------------------------------------------


async def test_create_is_exact_and_idempotent(cluster: Cluster) -> None:
    size = 3 * GIB + 4097
    vol = await create(
        cluster,
        size=size,
        parameters={"nvmeCtrlLossTmo": "30", "csi.storage.k8s.io/pvc/name": "data"},
    )
    rounded = 3 * GIB + 8192  # whole 4096-byte blocks: what every device can honour
    assert vol.volume_id == PVC and vol.capacity_bytes == rounded
    assert cluster.sim.store.disks[PVC].size == rounded
    ctx = dict(vol.volume_context)
    assert ctx["nqn"].endswith(PVC) and ctx["nvmePort"] == "4420"
    assert ctx["nvmeCtrlLossTmo"] == "30" and ctx["nvmeAddress"] == "127.0.0.1"
    assert dict(vol.accessible_topology[0].segments) == {"rds.csi.test/appliance": "sim-1"}
    again = await create(cluster, size=size)
    assert again.volume_id == vol.volume_id and cluster.disks() == [PVC]
    code, msg = await code_of(create(cluster, size=rounded + 1))
    assert code == grpc.StatusCode.ALREADY_EXISTS and PVC in msg


async def test_capacity_range_rules(cluster: Cluster) -> None:
    req = pb.CreateVolumeRequest(
        name=PVC,
        volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(limit_bytes=GIB // 2),
    )
    vol = (await cluster.controller.CreateVolume(req)).volume
    assert vol.capacity_bytes == GIB // 2  # the default would exceed the limit: use the limit
    req = pb.CreateVolumeRequest(
        name=PVC2,
        volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(required_bytes=2 * GIB, limit_bytes=GIB),
    )
    code, msg = await code_of(cluster.controller.CreateVolume(req))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "limit_bytes" in msg


BAD_CREATES = [
    (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    (dict(caps=[]), grpc.StatusCode.INVALID_ARGUMENT, "volume_capabilities"),
    (
        dict(caps=[mount_cap(Mode.MULTI_NODE_MULTI_WRITER)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MULTI_NODE_MULTI_WRITER needs a block",
    ),
    (
        dict(caps=[mount_cap(Mode.MULTI_NODE_READER_ONLY)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MULTI_NODE_READER_ONLY",
    ),
    (dict(caps=[mount_cap(fs="btrfs")]), grpc.StatusCode.INVALID_ARGUMENT, "btrfs"),
    (
        dict(caps=[pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume())]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "access_mode",
    ),
    (dict(parameters={"colour": "blue"}), grpc.StatusCode.INVALID_ARGUMENT, "parameter colour"),
    (
        dict(parameters={"nvmeKeepAliveTmo": "soon"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "nvmeKeepAliveTmo",
    ),
    (dict(size=-5), grpc.StatusCode.OUT_OF_RANGE, "negative"),
    (
        dict(
            volume_content_source=pb.VolumeContentSource(
                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id="snap-nope")
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "snap-nope",
    ),
    (
        dict(
            volume_content_source=pb.VolumeContentSource(
                volume=pb.VolumeContentSource.VolumeSource(volume_id=PVC2)
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        PVC2,
    ),
    (
        dict(
            accessibility_requirements=pb.TopologyRequirement(
                requisite=[pb.Topology(segments={"rds.csi.test/appliance": "other"})]
            )
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "sim-1",
    ),
]


@pytest.mark.parametrize(("kw", "code", "needle"), BAD_CREATES)
async def test_bad_create_requests(
    cluster: Cluster, kw: dict[str, object], code: grpc.StatusCode, needle: str
) -> None:
    got, msg = await code_of(create(cluster, **kw))  # type: ignore[arg-type]
    assert got == code and needle in msg, msg
    assert cluster.disks() == []


async def test_pool_full_and_appliance_down(cluster: Cluster) -> None:
    cluster.sim.faults.pool_full = True
    code, msg = await code_of(create(cluster))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and PVC in msg
    cluster.sim.faults.pool_full = False
    await cluster.sim.stop()
    await asyncio.wait_for(cluster.app.rds.wait_for("backoff"), 10)
    code, msg = await code_of(create(cluster))
    assert code == grpc.StatusCode.UNAVAILABLE and PVC in msg
    code, _ = await code_of(cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC)))
    assert code == grpc.StatusCode.UNAVAILABLE  # never "it is gone" on a failed lookup
    await cluster.sim.start()
    cluster.clock.advance(cluster.app.rds.model.delay)
    await cluster.connected()
    assert (await create(cluster)).volume_id == PVC


async def test_drop_mid_create_and_delete_converge(cluster: Cluster) -> None:
    cluster.sim.faults.drop_mid_next(1)  # the add happens, its reply is lost
    code, _ = await code_of(create(cluster, size=2 * GIB))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    await cluster.connected()
    vol = await create(cluster, size=2 * GIB)  # the retry finds it: no duplicate, no error
    assert vol.capacity_bytes == 2 * GIB and cluster.disks() == [PVC]
    cluster.sim.faults.drop_mid_next(1)
    code, _ = await code_of(cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC)))
    assert code == grpc.StatusCode.UNAVAILABLE
    await cluster.connected()
    await cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC))
    assert cluster.disks() == [] and cluster.files() == []


async def test_delete_is_idempotent_and_refused_while_published(cluster: Cluster) -> None:
    await create(cluster)
    await cluster.controller.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=PVC, node_id="node-a", volume_capability=mount_cap()
        )
    )
    code, msg = await code_of(
        cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "node-a" in msg
    await cluster.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=PVC, node_id="node-a")
    )
    for _ in range(2):
        await cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC))
    assert cluster.disks() == [] and cluster.files() == []
    await cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="not-ours"))
    code, _ = await code_of(cluster.controller.DeleteVolume(pb.DeleteVolumeRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_calls_for_one_volume_abort(cluster: Cluster) -> None:
    cluster.sim.faults.latency = 0.05
    results = await asyncio.gather(create(cluster), create(cluster), return_exceptions=True)
    cluster.sim.faults.latency = 0.0
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.ABORTED
    assert PVC in (errors[0].details() or "")
    assert cluster.disks() == [PVC]


# --- publish ---------------------------------------------------------------------------------


def publish(
    c: Cluster, node: str, cap: pb.VolumeCapability | None = None, vid: str = PVC
) -> object:
    return c.controller.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=node, volume_capability=cap or mount_cap()
        )
    )


def unpublish(c: Cluster, node: str, vid: str = PVC) -> object:
    return c.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node)
    )


async def test_single_node_fencing(cluster: Cluster) -> None:
    await create(cluster)
    resp = await publish(cluster, "node-a")
    assert resp.publish_context["nqn"].endswith(PVC)  # type: ignore[attr-defined]
    await publish(cluster, "node-a")  # idempotent
    code, msg = await code_of(publish(cluster, "node-b"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "node-a" in msg and PVC in msg
    assert "AttachmentConflict" in cluster.sink.reasons()
    await unpublish(cluster, "node-b")  # not attached there: fine
    await unpublish(cluster, "node-a")
    await unpublish(cluster, "node-a")
    await publish(cluster, "node-b")
    assert cluster.app.attachments.nodes(PVC) == ("node-b",)


async def test_rwx_block_migration(cluster: Cluster) -> None:
    await create(cluster, caps=[block_cap()])
    await publish(cluster, "node-a", block_cap())
    await publish(cluster, "node-b", block_cap())  # KubeVirt target
    assert cluster.app.attachments.nodes(PVC) == ("node-a", "node-b")
    code, msg = await code_of(publish(cluster, "node-c", block_cap()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "node-a" in msg
    await unpublish(cluster, "node-a")  # source lets go: migration completed
    assert cluster.app.attachments.nodes(PVC) == ("node-b",)
    assert [r for r in cluster.sink.reasons() if r.startswith("Migration")] == [
        "MigrationStarted",
        "MigrationCompleted",
    ]


async def test_migration_deadline_falls_back_to_source(cluster: Cluster) -> None:
    await create(cluster, caps=[block_cap()])
    await publish(cluster, "node-a", block_cap())
    await publish(cluster, "node-b", block_cap())
    cluster.clock.advance(cluster.app.config.migration_timeout)
    await cluster.app.reconciler.wait_idle()
    assert cluster.app.attachments.nodes(PVC) == ("node-a",)
    # the target is let go, then taken off the disk's allow-list (rds.fence allow-host)
    assert cluster.sink.reasons()[-2:] == ["MigrationFailed", "NodeFenced"]
    assert cluster.sim.store.disks[PVC].nvme_tcp_server_allow_host_name == host_nqn("node-a")
    expired = cluster.registry.get_sample_value(
        "rds_csi_attachment_reconcile_total", {"action": "expire_migration"}
    )
    assert expired == 1


BAD_PUBLISH = [
    (dict(volume_id="", node_id="node-a"), grpc.StatusCode.INVALID_ARGUMENT, "volume_id"),
    (dict(volume_id=PVC, node_id=""), grpc.StatusCode.INVALID_ARGUMENT, "node_id"),
    (
        dict(volume_id=PVC, node_id="node-a", cap=None),
        grpc.StatusCode.INVALID_ARGUMENT,
        "volume_capability",
    ),
    (dict(volume_id=PVC2, node_id="node-a"), grpc.StatusCode.NOT_FOUND, PVC2),
    (dict(volume_id=PVC, node_id="node-z"), grpc.StatusCode.NOT_FOUND, "node-z"),
]


@pytest.mark.parametrize(("kw", "code", "needle"), BAD_PUBLISH)
async def test_bad_publish(
    cluster: Cluster, kw: dict[str, object], code: grpc.StatusCode, needle: str
) -> None:
    await create(cluster)
    req = pb.ControllerPublishVolumeRequest(volume_id=kw["volume_id"], node_id=kw["node_id"])
    if kw.get("cap", mount_cap()) is not None:
        req.volume_capability.CopyFrom(mount_cap())
    got, msg = await code_of(cluster.controller.ControllerPublishVolume(req))
    assert got == code and needle in msg


# --- listing, capacity, expansion ------------------------------------------------------------


async def test_list_get_validate(cluster: Cluster) -> None:
    names = [f"pvc-0a1b2c3d-0000-4000-8000-00000000001{i}" for i in range(5)]
    for n in names:
        await create(cluster, name=n)
    await publish(cluster, "node-a", vid=names[2])
    seen, token = [], ""
    while True:
        page = await cluster.controller.ListVolumes(
            pb.ListVolumesRequest(max_entries=2, starting_token=token)
        )
        seen += [(e.volume.volume_id, list(e.status.published_node_ids)) for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert [v for v, _ in seen] == sorted(names)
    assert dict(seen)[names[2]] == ["node-a"]
    code, _ = await code_of(
        cluster.controller.ListVolumes(pb.ListVolumesRequest(starting_token="garbage!"))
    )
    assert code == grpc.StatusCode.ABORTED
    got = await cluster.controller.ControllerGetVolume(
        pb.ControllerGetVolumeRequest(volume_id=names[2])
    )
    assert list(got.status.published_node_ids) == ["node-a"]
    assert got.status.volume_condition.abnormal is False
    code, _ = await code_of(
        cluster.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=PVC2))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    ok = await cluster.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(volume_id=names[0], volume_capabilities=[mount_cap()])
    )
    assert ok.HasField("confirmed")
    no = await cluster.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=names[0], volume_capabilities=[mount_cap(Mode.MULTI_NODE_MULTI_WRITER)]
        )
    )
    assert not no.HasField("confirmed") and "block" in no.message


async def test_capacity_and_expand(cluster: Cluster) -> None:
    before = (await cluster.controller.GetCapacity(pb.GetCapacityRequest())).available_capacity
    await create(cluster, size=GIB)
    after = (await cluster.controller.GetCapacity(pb.GetCapacityRequest())).available_capacity
    assert before - after == GIB
    other = await cluster.controller.GetCapacity(
        pb.GetCapacityRequest(
            accessible_topology=pb.Topology(segments={"rds.csi.test/appliance": "elsewhere"})
        )
    )
    assert other.available_capacity == 0
    resp = await cluster.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=PVC,
            capacity_range=pb.CapacityRange(required_bytes=5 * GIB + 1),
            volume_capability=mount_cap(),
        )
    )
    assert resp.capacity_bytes == 5 * GIB + 4096 and resp.node_expansion_required
    assert cluster.sim.store.disks[PVC].size == 5 * GIB + 4096
    resp = await cluster.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=PVC, capacity_range=pb.CapacityRange(required_bytes=GIB)
        )
    )
    assert resp.capacity_bytes == 5 * GIB + 4096  # never shrinks
    code, _ = await code_of(
        cluster.controller.ControllerExpandVolume(
            pb.ControllerExpandVolumeRequest(
                volume_id=PVC2, capacity_range=pb.CapacityRange(required_bytes=GIB)
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


# --- snapshots, restore, clone ---------------------------------------------------------------


async def test_snapshot_lifecycle_and_restore(cluster: Cluster) -> None:
    await create(cluster, size=2 * GIB)
    name = "snapshot-11111111-2222-4333-8444-555555555555"
    snap = (
        await cluster.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name=name, source_volume_id=PVC)
        )
    ).snapshot
    assert snap.snapshot_id == snapshot_id(name) and snap.source_volume_id == PVC
    assert snap.ready_to_use and snap.size_bytes == 2 * GIB and snap.creation_time.seconds > 0
    again = (
        await cluster.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name=name, source_volume_id=PVC)
        )
    ).snapshot
    assert again == snap
    await create(cluster, name=PVC2, size=3 * GIB)
    code, msg = await code_of(
        cluster.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name=name, source_volume_id=PVC2)
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and PVC in msg
    listed = await cluster.controller.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=PVC))
    assert [e.snapshot.snapshot_id for e in listed.entries] == [snap.snapshot_id]
    none = await cluster.controller.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=PVC2))
    assert list(none.entries) == []
    got = await cluster.controller.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert got.snapshot == snap
    restored = await create(
        cluster,
        name="pvc-0a1b2c3d-0000-4000-8000-000000000003",
        size=0,
        volume_content_source=pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
        ),
    )
    assert restored.capacity_bytes == 2 * GIB
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    clone = await create(
        cluster,
        name="pvc-0a1b2c3d-0000-4000-8000-000000000004",
        size=4 * GIB,
        volume_content_source=pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=PVC)
        ),
    )
    assert clone.capacity_bytes == 4 * GIB and clone.content_source.volume.volume_id == PVC
    for _ in range(2):
        await cluster.controller.DeleteSnapshot(
            pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)
        )
    code, _ = await code_of(
        cluster.controller.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=snap.snapshot_id))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await code_of(
        cluster.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(
                name="s2", source_volume_id="pvc-0a1b2c3d-0000-4000-8000-00000000000f"
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_list_snapshots_paginates(cluster: Cluster) -> None:
    await create(cluster)
    ids = []
    for i in range(5):
        s = await cluster.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name=f"snap-name-{i}", source_volume_id=PVC)
        )
        ids.append(s.snapshot.snapshot_id)
    seen, token = [], ""
    while True:
        page = await cluster.controller.ListSnapshots(
            pb.ListSnapshotsRequest(max_entries=2, starting_token=token)
        )
        seen += [e.snapshot.snapshot_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert seen == sorted(ids)
    one = await cluster.controller.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=ids[3]))
    assert [e.snapshot.snapshot_id for e in one.entries] == [ids[3]]
    code, _ = await code_of(
        cluster.controller.ListSnapshots(pb.ListSnapshotsRequest(starting_token="??"))
    )
    assert code == grpc.StatusCode.ABORTED


async def test_condition_reports_an_unexported_volume(cluster: Cluster) -> None:
    await create(cluster)
    cluster.sim.store.update(PVC, nvme_tcp_export=False)
    got = await cluster.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=PVC))
    assert got.status.volume_condition.abnormal
    assert "not exported" in got.status.volume_condition.message


C = pb
BAD_REQUESTS = [
    ("DeleteVolume", C.DeleteVolumeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "volume_id"),
    (
        "ControllerUnpublishVolume",
        C.ControllerUnpublishVolumeRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "volume_id",
    ),
    (
        "ValidateVolumeCapabilities",
        C.ValidateVolumeCapabilitiesRequest(volume_id=PVC),
        grpc.StatusCode.INVALID_ARGUMENT,
        "volume_capabilities",
    ),
    (
        "ValidateVolumeCapabilities",
        C.ValidateVolumeCapabilitiesRequest(volume_id=PVC2, volume_capabilities=[mount_cap()]),
        grpc.StatusCode.NOT_FOUND,
        PVC2,
    ),
    (
        "ListVolumes",
        C.ListVolumesRequest(max_entries=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_entries",
    ),
    (
        "ListVolumes",
        C.ListVolumesRequest(starting_token="pvc-x"),
        grpc.StatusCode.ABORTED,
        "starting_token",
    ),
    (
        "ControllerGetVolume",
        C.ControllerGetVolumeRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "volume_id",
    ),
    (
        "ControllerExpandVolume",
        C.ControllerExpandVolumeRequest(volume_id=PVC),
        grpc.StatusCode.INVALID_ARGUMENT,
        "capacity_range",
    ),
    (
        "ControllerExpandVolume",
        C.ControllerExpandVolumeRequest(
            volume_id=PVC, capacity_range=C.CapacityRange(required_bytes=2 * GIB, limit_bytes=GIB)
        ),
        grpc.StatusCode.OUT_OF_RANGE,
        "limit_bytes",
    ),
    (
        "GetCapacity",
        C.GetCapacityRequest(parameters={"bogus": "1"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameter bogus",
    ),
    (
        "CreateSnapshot",
        C.CreateSnapshotRequest(source_volume_id=PVC),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name",
    ),
    (
        "CreateSnapshot",
        C.CreateSnapshotRequest(name="s"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source_volume_id",
    ),
    (
        "CreateSnapshot",
        C.CreateSnapshotRequest(name="s", source_volume_id="elsewhere"),
        grpc.StatusCode.NOT_FOUND,
        "elsewhere",
    ),
    ("DeleteSnapshot", C.DeleteSnapshotRequest(), grpc.StatusCode.INVALID_ARGUMENT, "snapshot_id"),
    (
        "ListSnapshots",
        C.ListSnapshotsRequest(max_entries=-3),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_entries",
    ),
    ("GetSnapshot", C.GetSnapshotRequest(), grpc.StatusCode.INVALID_ARGUMENT, "snapshot_id"),
    (
        "GetSnapshot",
        C.GetSnapshotRequest(snapshot_id="snap-zz"),
        grpc.StatusCode.NOT_FOUND,
        "snap-zz",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "needle"),
    BAD_REQUESTS,
    ids=[f"{m}-{i}" for i, (m, *_rest) in enumerate(BAD_REQUESTS)],
)
async def test_bad_requests_per_rpc(
    cluster: Cluster, method: str, request_: object, code: grpc.StatusCode, needle: str
) -> None:
    await create(cluster)
    got, msg = await code_of(getattr(cluster.controller, method)(request_))
    assert got == code and needle in msg, (got, msg)


async def test_a_replica_that_does_not_lead_serves_every_call(cluster: Cluster) -> None:
    # Leadership picks the reconciler only: no CSI call asks who leads.
    await create(cluster)
    await cluster.app.leadership.lost()
    assert not cluster.app.reconciler.running
    assert cluster.registry.get_sample_value("rds_csi_leader") == 0
    await create(cluster, name=PVC2)
    await publish(cluster, "node-a")
    snap = await cluster.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(name="s", source_volume_id=PVC)
    )
    await cluster.controller.DeleteSnapshot(
        pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot.snapshot_id)
    )
    listed = await cluster.controller.ListVolumes(pb.ListVolumesRequest())
    published = {e.volume.volume_id: list(e.status.published_node_ids) for e in listed.entries}
    assert published == {PVC: ["node-a"], PVC2: []}
    await unpublish(cluster, "node-a")
    await cluster.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC2))
    assert cluster.disks() == [PVC]


async def test_leadership_terms_and_the_startup_event(cluster: Cluster) -> None:
    # Standalone the process leads from the start: one StartupReconciliation per term.
    assert cluster.app.leadership.terms == 1
    assert cluster.sink.reasons().count("StartupReconciliation") == 1
    assert cluster.registry.get_sample_value("rds_csi_leader") == 1
    await cluster.app.leadership.lost()
    await cluster.app.leadership.lost()  # idempotent
    await cluster.app.leadership.acquired()
    assert cluster.sink.reasons().count("StartupReconciliation") == 2
    samples = {
        e: cluster.registry.get_sample_value("rds_csi_lease_transitions_total", {"event": e})
        for e in ("acquired", "lost", "released")
    }
    assert samples == {"acquired": 2, "lost": 1, "released": 0}


async def test_pool_capacity_is_recorded(cluster: Cluster) -> None:
    got = await cluster.controller.GetCapacity(pb.GetCapacityRequest())
    on = {"appliance": "sim-1"}
    free = cluster.registry.get_sample_value("rds_csi_pool_bytes", {**on, "kind": "free"})
    size = cluster.registry.get_sample_value("rds_csi_pool_bytes", {**on, "kind": "size"})
    assert free == got.available_capacity and size == 64 << 30
    await create(cluster, size=GIB)
    cluster.app.reconciler.trigger("test")  # each pass refreshes the figures too
    await cluster.app.reconciler.wait_idle()
    assert cluster.app.pool is not None
    await cluster.app.pool.wait()  # each appliance's read is a task of its own
    left = cluster.registry.get_sample_value("rds_csi_pool_bytes", {**on, "kind": "free"})
    assert left == free - GIB


async def test_a_deposed_leader_sends_no_more_appliance_commands(cluster: Cluster) -> None:
    app = cluster.app
    await app.reconciler.wait_idle()
    before = len(cluster.sim.commands)
    app.leadership.lease_held = lambda: False  # the Lease ran out under the pass
    app.reconciler.trigger("test")
    await app.reconciler.wait_idle()
    assert len(cluster.sim.commands) == before  # stopped before its pool read
    assert app.reconciler.failures == 0  # not a failure: no retry storm either
    app.leadership.lease_held = lambda: True
    app.reconciler.trigger("test")
    await app.reconciler.wait_idle()
    assert app.pool is not None
    await app.pool.wait()
    assert len(cluster.sim.commands) > before
