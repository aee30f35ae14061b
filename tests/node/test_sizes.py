"""Sizes the kernel honours: decimal and tiny sizes through create, expand and stage on real
loop devices, ext4 and xfs; copies into larger volumes come up at their new size."""

from __future__ import annotations

import os

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.io.host import fs

from .calls import (
    CAN_GROW_EXT4,
    fail,
    provision,
    publish,
    stage,
    unpublish,
    unstage,
)
from .conftest import Node, block_cap, mount_cap

Mode = pb.VolumeCapability.AccessMode
MIB = 1 << 20


def create(node: Node, cap: pb.VolumeCapability, required: int = 0, limit: int = 0) -> object:
    return node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=f"sized-{required}-{limit}-{cap.WhichOneof('access_type')}-{cap.mount.fs_type}",
            volume_capabilities=[cap],
            capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit),
        )
    )


def expand(node: Node, vid: str, required: int = 0, limit: int = 0, rng: bool = True) -> object:
    return node.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=vid,
            capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit)
            if rng
            else None,
        )
    )


async def capacity(call: object) -> int:
    reply = await call  # type: ignore[misc]
    return int(reply.volume.capacity_bytes)


async def test_create_rounds_up_to_blocks_and_filesystem_minimums(node: Node) -> None:
    block, ext4, xfs = block_cap(Mode.SINGLE_NODE_WRITER), mount_cap("ext4"), mount_cap("xfs")
    assert await capacity(create(node, block, 1)) == 4096
    assert await capacity(create(node, block, 511)) == 4096
    assert await capacity(create(node, block, 4097)) == 8192
    assert await capacity(create(node, ext4, 1)) == 16 * MIB
    assert await capacity(create(node, xfs, 1)) == 300 * MIB
    assert await capacity(create(node, xfs, 1_500_000_000)) == 1_500_000_256
    # nothing asked, a limit: the default size capped by it, in whole blocks
    assert await capacity(create(node, block, 0, 100_000_001)) == 99_999_744
    for cap, required, limit in (
        (block, 1, 4095),  # no whole block fits
        (block, 4097, 8000),  # rounding up passes the limit
        (xfs, 1, 200 * MIB),  # below xfs's minimum
        (ext4, 0, 10_000_001),  # the capped default is below ext4's minimum
    ):
        code, msg = await fail(create(node, cap, required, limit))
        assert code == grpc.StatusCode.OUT_OF_RANGE, (required, limit, msg)


async def test_expand_needs_a_range_and_never_shrinks(node: Node) -> None:
    vol = (await create(node, block_cap(Mode.SINGLE_NODE_WRITER), 64 * MIB)).volume  # type: ignore[attr-defined]
    vid = vol.volume_id
    # one at a time: a gRPC call starts when it is made, and a second one for the same
    # volume meanwhile would get ABORTED
    for args, kwargs, code in (
        ((), {"rng": False}, grpc.StatusCode.INVALID_ARGUMENT),
        ((0, 0), {}, grpc.StatusCode.INVALID_ARGUMENT),  # an empty range
        ((0, 128 * MIB), {}, grpc.StatusCode.INVALID_ARGUMENT),
        ((16 * MIB, 32 * MIB), {}, grpc.StatusCode.OUT_OF_RANGE),  # would shrink
        ((100_000_001, 100_000_100), {}, grpc.StatusCode.OUT_OF_RANGE),  # rounding passes it
    ):
        got, msg = await fail(expand(node, vid, *args, **kwargs))  # type: ignore[arg-type]
        assert got == code, (args, msg)
    assert node.sim.store.disks[vid].size == 64 * MIB  # untouched by any of them
    grown = await expand(node, vid, 100_000_001)  # type: ignore[misc]
    assert grown.capacity_bytes == 100_003_840 == node.sim.store.disks[vid].size
    again = await expand(node, vid, 16 * MIB)  # type: ignore[misc]
    assert again.capacity_bytes == 100_003_840  # grow only: already satisfied


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
async def test_decimal_sizes_stage_and_expand_on_real_devices(node: Node, fs_type: str) -> None:
    cap = mount_cap(fs_type)
    vol = await provision(node, cap, size=1_500_000_000)
    assert vol.capacity_bytes == 1_500_000_256
    await stage(node, vol, cap)
    device = node.loop_of(vol.volume_id)
    assert fs.block_size_bytes(device) == vol.capacity_bytes  # not a byte short
    await publish(node, vol, cap)
    grown = await node.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id,
            capacity_range=pb.CapacityRange(required_bytes=2_000_000_001),
            volume_capability=cap,
        )
    )
    assert grown.capacity_bytes == 2_000_003_072 and grown.node_expansion_required
    if fs_type == "xfs" or CAN_GROW_EXT4:  # online ext4 growth needs CAP_SYS_RESOURCE
        reply = await node.node.NodeExpandVolume(
            pb.NodeExpandVolumeRequest(
                volume_id=vol.volume_id,
                volume_path=str(node.target(vol.volume_id)),
                capacity_range=pb.CapacityRange(required_bytes=2_000_000_001),
            )
        )
        assert reply.capacity_bytes == 2_000_003_072 == fs.block_size_bytes(device)
        assert fs.stats(node.target(vol.volume_id)).total_bytes > 1_800_000_000
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)
    # grown while unstaged: the next stage grows the filesystem (ext4 offline: no
    # CAP_SYS_RESOURCE needed)
    await node.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=2_500_000_000)
        )
    )
    await stage(node, vol, cap)
    assert fs.block_size_bytes(node.loop_of(vol.volume_id)) == 2_500_001_792
    # statvfs, not the superblock: a mounted filesystem's own view is the current one
    assert fs.stats(node.staging(vol.volume_id)).total_bytes > 2_200_000_000
    await unstage(node, vol.volume_id)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
async def test_tiny_requests_stage(node: Node, fs_type: str) -> None:
    cap = mount_cap(fs_type)
    vol = await provision(node, cap, size=1)
    assert vol.capacity_bytes == (16 if fs_type == "ext4" else 300) * MIB
    await stage(node, vol, cap)
    await unstage(node, vol.volume_id)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
async def test_restore_and_clone_into_larger_volumes(node: Node, fs_type: str) -> None:
    cap = mount_cap(fs_type)
    small = 300 * MIB
    vol = await provision(node, cap, size=small)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    payload = os.urandom(1 << 16)
    (node.target(vol.volume_id) / "data").write_bytes(payload)
    os.sync()
    snap = (
        await node.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name=f"snap-{fs_type}", source_volume_id=vol.volume_id)
        )
    ).snapshot
    sources = {
        "restored": pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
        ),
        "cloned": pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=vol.volume_id)
        ),
    }
    for name, source in sources.items():
        copy = await provision(node, cap, size=2 * small, name=f"{name}-{fs_type}", source=source)
        # staged beside its source (xfs: the same UUID twice), grown to the new size
        await stage(node, copy, cap)
        await publish(node, copy, cap)
        target = node.target(copy.volume_id)
        assert fs.stats(target).total_bytes > 1.5 * small, name
        assert (target / "data").read_bytes() == payload
        await unpublish(node, copy.volume_id)
        await unstage(node, copy.volume_id)
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)


async def test_a_copy_retry_finds_its_volume_after_the_source_is_gone(node: Node) -> None:
    vol = await provision(node, block_cap(Mode.SINGLE_NODE_WRITER), size=16 * MIB)
    snap = (
        await node.controller.CreateSnapshot(
            pb.CreateSnapshotRequest(name="short-lived", source_volume_id=vol.volume_id)
        )
    ).snapshot
    request = pb.CreateVolumeRequest(
        name="restored-then-retried",
        volume_capabilities=[block_cap(Mode.SINGLE_NODE_WRITER)],
        volume_content_source=pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
        ),
    )
    first = await node.controller.CreateVolume(request)
    await node.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    retried = await node.controller.CreateVolume(request)  # the sidecar retries
    assert retried.volume.volume_id == first.volume.volume_id
    assert retried.volume.capacity_bytes == first.volume.capacity_bytes
