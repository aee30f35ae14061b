"""A volume keeps its kind: block or a filesystem, and its access modes, for its whole life.

Recorded on the appliance at CreateVolume (in the disk's backing file path), carried to the
node in the volume context; every later use that asks for more is refused with the code the
CSI spec names, and a raw block volume's data is never formatted over.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import grpc

from rdscsi.csi import csi_pb2 as pb
from rdscsi.io.rds.volumes import Kind

from .calls import PVC, attach, fail, provision, publish, stage, unpublish, unstage
from .conftest import Node, block_cap, mount_cap

Mode = pb.VolumeCapability.AccessMode
MIB = 1 << 20
KIND_KEYS = ("accessType", "fsType", "accessModes")


def _past_first_mib(device: Path | str, size: int) -> str:
    with open(device, "rb") as f:
        f.seek(MIB)
        return hashlib.sha256(f.read(size - MIB)).hexdigest()


def _legacy(vol: pb.Volume) -> pb.Volume:
    """The same volume as an older driver described it: no kind in its context."""
    ctx = {k: v for k, v in vol.volume_context.items() if k not in KIND_KEYS}
    return pb.Volume(volume_id=vol.volume_id, capacity_bytes=vol.capacity_bytes, volume_context=ctx)


async def test_block_data_is_never_formatted(node: Node) -> None:
    cap = block_cap(Mode.SINGLE_NODE_WRITER)
    size = 96 * MIB
    vol = await provision(node, cap, size=size)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    target = node.target(vol.volume_id)
    data = os.urandom(64 * MIB)
    with open(target, "r+b") as dev:
        dev.seek(2 * MIB)
        dev.write(data)
    before = _past_first_mib(target, size)
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)

    ext4 = mount_cap("ext4")
    code, msg = await fail(stage(node, vol, ext4))  # the kind says block
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "raw block" in msg, msg
    # Even a context without the kind (an older driver's) never formats data: the
    # device is not blank where it is sampled, whatever blkid finds at its ends.
    code, msg = await fail(stage(node, _legacy(vol), ext4))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "unknown-content" in msg, msg
    assert not (node.tmp / "node-state" / f"{vol.volume_id}.json").exists()

    backing = node.sim.backing_path(vol.volume_id)
    assert _past_first_mib(backing, size) == before
    probe = subprocess.run(["blkid", "-p", str(backing)], capture_output=True, text=True)
    assert "TYPE=" not in probe.stdout  # no filesystem was made


async def test_filesystem_volume_is_never_published_as_block(node: Node) -> None:
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=64 * MIB)
    await stage(node, vol, cap)
    for shown in (vol, _legacy(vol)):  # the kind says so, and so does how it is staged
        code, msg = await fail(publish(node, shown, block_cap(Mode.SINGLE_NODE_WRITER)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
        assert not node.target(vol.volume_id).exists()
    await unstage(node, vol.volume_id)


async def test_restaging_with_another_filesystem_is_refused(node: Node) -> None:
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=64 * MIB)
    await stage(node, vol, cap)
    code, msg = await fail(stage(node, vol, mount_cap("xfs")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "xfs" in msg, msg
    # Without the kind in the context, the staged volume itself answers: incompatible.
    code, msg = await fail(stage(node, _legacy(vol), mount_cap("xfs")))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "ext4" in msg, msg
    code, msg = await fail(stage(node, _legacy(vol), block_cap(Mode.SINGLE_NODE_WRITER)))
    assert code == grpc.StatusCode.ALREADY_EXISTS, msg
    await stage(node, vol, cap)  # the same stage again is fine
    await unstage(node, vol.volume_id)


async def test_single_node_volumes_never_go_multi_node(node: Node) -> None:
    single = await provision(node, block_cap(Mode.SINGLE_NODE_WRITER), size=16 * MIB)
    code, msg = await fail(attach(node, single, block_cap(Mode.MULTI_NODE_MULTI_WRITER)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "MULTI_NODE_MULTI_WRITER" in msg, msg
    reply = await node.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=single.volume_id,
            volume_capabilities=[block_cap(Mode.MULTI_NODE_MULTI_WRITER)],
        )
    )
    assert not reply.HasField("confirmed") and "exceeds" in reply.message
    reply = await node.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=single.volume_id, volume_capabilities=[mount_cap("ext4")]
        )
    )
    assert not reply.HasField("confirmed") and "raw block" in reply.message
    # the node refuses it too, from the context
    code, msg = await fail(stage(node, single, block_cap(Mode.MULTI_NODE_MULTI_WRITER)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, msg


async def test_kind_and_claim_are_recorded_with_the_volume(node: Node) -> None:
    reply = await node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=PVC,
            volume_capabilities=[mount_cap("xfs", Mode.SINGLE_NODE_MULTI_WRITER)],
            capacity_range=pb.CapacityRange(required_bytes=300 * MIB),
            parameters={
                "csi.storage.k8s.io/pvc/name": "data-db-0",
                "csi.storage.k8s.io/pvc/namespace": "shop",
                "csi.storage.k8s.io/pv/name": PVC,
            },
        )
    )
    ctx = dict(reply.volume.volume_context)
    assert (ctx["accessType"], ctx["fsType"], ctx["accessModes"]) == (
        "mount",
        "xfs",
        "SINGLE_NODE_MULTI_WRITER",
    )
    disk = node.sim.store.disks[PVC]
    assert disk.file_path.endswith(f"/vol/{PVC}.AS.xfs.snmw.img")
    assert disk.comment == f"pvc=shop/data-db-0 pv={PVC}"
    # read back from the appliance, not from memory
    got = await node.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=PVC))
    assert {k: got.volume.volume_context[k] for k in KIND_KEYS} == {k: ctx[k] for k in KIND_KEYS}
    assert (await node.app.store.get_volume(PVC)).kind == Kind("xfs", frozenset({"snmw"}))  # type: ignore[union-attr]
    # the same request again is the same volume; another kind is another volume
    again = await node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=PVC,
            volume_capabilities=[mount_cap("xfs", Mode.SINGLE_NODE_MULTI_WRITER)],
            capacity_range=pb.CapacityRange(required_bytes=300 * MIB),
        )
    )
    assert again.volume.volume_id == PVC
    code, msg = await fail(
        node.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name=PVC,
                volume_capabilities=[block_cap(Mode.SINGLE_NODE_WRITER)],
                capacity_range=pb.CapacityRange(required_bytes=300 * MIB),
            )
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "xfs" in msg, msg


async def test_volumes_made_before_kinds_were_recorded_keep_working(node: Node) -> None:
    # An older driver's volume: no kind in its path, none in its context.
    await node.app.store.create_volume(PVC, 64 * MIB)
    assert node.sim.store.disks[PVC].file_path.endswith(f"/vol/{PVC}.img")
    got = await node.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=PVC))
    assert "accessType" not in got.volume.volume_context
    for cap in (mount_cap("ext4"), block_cap(Mode.MULTI_NODE_MULTI_WRITER)):
        reply = await node.controller.ValidateVolumeCapabilities(
            pb.ValidateVolumeCapabilitiesRequest(volume_id=PVC, volume_capabilities=[cap])
        )
        assert reply.HasField("confirmed"), reply.message
    cap = mount_cap("ext4")
    await attach(node, got.volume, cap)
    await stage(node, got.volume, cap)  # blank everywhere it is sampled: formatted
    await publish(node, got.volume, cap)
    (node.target(PVC) / "kept").write_text("yes")
    await unpublish(node, PVC)
    await unstage(node, PVC)
    await stage(node, got.volume, cap)  # found again, never reformatted
    await publish(node, got.volume, cap)
    assert (node.target(PVC) / "kept").read_text() == "yes"
    await unpublish(node, PVC)
    await unstage(node, PVC)
    # a retry of its CreateVolume (by the older driver's request) finds it
    again = await node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=PVC,
            volume_capabilities=[cap],
            capacity_range=pb.CapacityRange(required_bytes=64 * MIB),
        )
    )
    assert again.volume.volume_id == PVC


async def test_copies_keep_their_source_kind(node: Node) -> None:
    vol = await provision(node, block_cap(Mode.SINGLE_NODE_WRITER), size=16 * MIB)
    snap = (
        await node.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name="snap-of-block", source_volume_id=vol.volume_id)
        )
    ).snapshot
    source = pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
    )
    code, msg = await fail(
        node.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name="restored-as-fs",
                volume_capabilities=[mount_cap("ext4")],
                volume_content_source=source,
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "block" in msg, msg
    restored = await node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name="restored-as-block",
            volume_capabilities=[block_cap(Mode.SINGLE_NODE_WRITER)],
            volume_content_source=source,
        )
    )
    assert restored.volume.volume_context["accessType"] == "block"
    assert restored.volume.volume_context["copyOf"] == f"snapshot/{snap.snapshot_id}"
    fs_vol = await node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name="an-ext4-volume",
            volume_capabilities=[mount_cap("ext4")],
            capacity_range=pb.CapacityRange(required_bytes=16 * MIB),
        )
    )
    code, msg = await fail(
        node.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name="clone-as-xfs",
                volume_capabilities=[mount_cap("xfs")],
                capacity_range=pb.CapacityRange(required_bytes=300 * MIB),
                volume_content_source=pb.VolumeContentSource(
                    volume=pb.VolumeContentSource.VolumeSource(volume_id=fs_vol.volume.volume_id)
                ),
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ext4" in msg, msg
