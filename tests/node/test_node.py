"""The node service on real loop devices, ext4 and xfs, through a real gRPC client."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb

from .calls import (
    CAN_GROW_EXT4,
    fail,
    mounted,
    provision,
    publish,
    stage,
    unpublish,
    unstage,
)
from .conftest import GIB, NODE, Node, block_cap, loops_for, mount_cap


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
async def test_mount_lifecycle_keeps_data_through_expand_and_restage(node: Node, fs: str) -> None:
    cap = mount_cap(fs, flags=("noatime", "discard"))
    vol = await provision(node, cap, size=GIB)
    await stage(node, vol, cap)
    await stage(node, vol, cap)  # kubelet repeats: fine
    await publish(node, vol, cap)
    await publish(node, vol, cap)  # repeat: fine
    target = node.target(vol.volume_id)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (target / "data.bin").write_bytes(payload)
    stats = await node.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert stats.usage[0].total > 0.8 * GIB and not stats.volume_condition.abnormal
    # expand: controller grows the file, the node rescans and grows the filesystem online
    if fs == "ext4" and not CAN_GROW_EXT4:
        print("skipping online ext4 growth: this process lacks CAP_SYS_RESOURCE")
        await _finish(node, vol, cap, target, payload)
        return
    resp = await node.controller.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id,
            capacity_range=pb.CapacityRange(required_bytes=2 * GIB),
            volume_capability=cap,
        )
    )
    assert resp.node_expansion_required
    grown = await node.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id,
            volume_path=str(target),
            staging_target_path=str(node.staging(vol.volume_id)),
            capacity_range=pb.CapacityRange(required_bytes=2 * GIB),
            volume_capability=cap,
        )
    )
    assert grown.capacity_bytes == 2 * GIB
    after = await node.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert after.usage[0].total > 1.6 * GIB
    await _finish(node, vol, cap, target, payload)


async def _finish(
    node: Node, vol: pb.Volume, cap: pb.VolumeCapability, target: Path, payload: bytes
) -> None:
    await unpublish(node, vol.volume_id)
    await unpublish(node, vol.volume_id)  # repeat
    assert not target.exists()
    await unstage(node, vol.volume_id)
    await unstage(node, vol.volume_id)  # repeat
    assert loops_for(node.sim.store.files_root) == []  # verifiably gone
    # stage again: the filesystem is found, not reformatted; the data is byte-for-byte there
    await stage(node, vol, cap)
    await publish(node, vol, cap, pod="pod-2")
    assert (node.target(vol.volume_id, "pod-2") / "data.bin").read_bytes() == payload
    await unpublish(node, vol.volume_id, "pod-2")
    await unstage(node, vol.volume_id)


async def test_block_lifecycle(node: Node) -> None:
    cap = block_cap()
    vol = await provision(node, cap, size=64 << 20)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    target = node.target(vol.volume_id)
    with open(target, "r+b") as dev:
        dev.write(b"rdscsi-block" * 100)
    stats = await node.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert stats.usage[0].total == 64 << 20
    code, msg = await fail(unstage(node, vol.volume_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "published" in msg
    await unpublish(node, vol.volume_id)
    assert not target.exists()
    await unstage(node, vol.volume_id)
    with open(node.sim.backing_path(vol.volume_id), "rb") as f:
        assert f.read(12) == b"rdscsi-block"


async def test_publish_without_stage_is_refused_cleanly(node: Node) -> None:
    cap = mount_cap()
    vol = await provision(node, cap)
    code, msg = await fail(publish(node, vol, cap))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "stage" in msg
    assert not node.target(vol.volume_id).exists()  # never half-done


async def test_unstage_while_published_and_device_open(node: Node) -> None:
    cap = mount_cap()
    vol = await provision(node, cap)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    code, msg = await fail(unstage(node, vol.volume_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and str(node.target(vol.volume_id)) in msg
    await unpublish(node, vol.volume_id)
    dev = loops_for(node.sim.store.files_root)[0]
    fd = os.open(dev, os.O_RDONLY)
    try:
        code, msg = await fail(unstage(node, vol.volume_id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "open by" in msg
        assert loops_for(node.sim.store.files_root) == [dev]  # never disconnected in use
    finally:
        os.close(fd)
    await unstage(node, vol.volume_id)  # the next call finishes the job
    assert loops_for(node.sim.store.files_root) == []


async def test_read_only_publish_cannot_write(node: Node) -> None:
    cap = mount_cap()
    vol = await provision(node, cap)
    await stage(node, vol, cap)
    await publish(node, vol, cap, readonly=True)
    with pytest.raises(OSError) as err:
        (node.target(vol.volume_id) / "x").write_text("no")
    assert err.value.errno == errno.EROFS
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)


async def test_stale_mount_is_detected_and_repaired(node: Node) -> None:
    cap = mount_cap()
    vol = await provision(node, cap)
    await stage(node, vol, cap)
    staging = node.staging(vol.volume_id)
    # the device under the staging mount is replaced by another one
    subprocess.run(["umount", str(staging)], check=True)
    other = node.tmp / "other.img"
    subprocess.run(["truncate", "-s", "64M", str(other)], check=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(other)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", loop], check=True)
        subprocess.run(["mount", loop, str(staging)], check=True)
        stats = await node.node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(staging))
        )
        assert stats.volume_condition.abnormal and "stale" in stats.volume_condition.message
        await stage(node, vol, cap)  # repairs: the stale mount goes, the volume comes back
        assert mounted(staging)
        stats = await node.node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(staging))
        )
        assert not stats.volume_condition.abnormal
        repairs = node.registry.get_sample_value("rds_csi_node_volume_repairs_total")
        assert repairs == 1
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    await unstage(node, vol.volume_id)


async def test_bad_node_requests(node: Node) -> None:
    cap = mount_cap()
    vol = await provision(node, cap)
    cases = [
        (
            node.node.NodeStageVolume(
                pb.NodeStageVolumeRequest(staging_target_path="/x", volume_capability=cap)
            ),
            "volume_id",
        ),
        (
            node.node.NodeStageVolume(
                pb.NodeStageVolumeRequest(volume_id=vol.volume_id, volume_capability=cap)
            ),
            "staging_target_path",
        ),
        (
            node.node.NodeStageVolume(
                pb.NodeStageVolumeRequest(
                    volume_id=vol.volume_id,
                    staging_target_path=str(node.staging(vol.volume_id)),
                    volume_capability=mount_cap(flags=("suid",)),
                    volume_context=vol.volume_context,
                )
            ),
            "suid",
        ),
        (
            node.node.NodeStageVolume(
                pb.NodeStageVolumeRequest(
                    volume_id=vol.volume_id,
                    staging_target_path=str(node.staging(vol.volume_id)),
                    volume_capability=cap,
                    volume_context={"transport": "loop"},
                )
            ),
            "nqn",
        ),
        (
            node.node.NodePublishVolume(
                pb.NodePublishVolumeRequest(
                    volume_id=vol.volume_id, staging_target_path="/s", volume_capability=cap
                )
            ),
            "target_path",
        ),
        (
            node.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id)),
            "target_path",
        ),
        (
            node.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id)),
            "volume_path",
        ),
    ]
    for call, needle in cases:
        code, msg = await fail(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in msg, (needle, msg)
    code, _ = await fail(
        node.node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(
                volume_id=vol.volume_id, volume_path=str(node.tmp / "nowhere")
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_info_and_capabilities(node: Node) -> None:
    info = await node.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == NODE
    assert dict(info.accessible_topology.segments) == {"rds.csi.test/appliance": "sim"}
    caps = await node.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest())
    T = pb.NodeServiceCapability.RPC.Type
    assert {c.rpc.type for c in caps.capabilities} == {
        T.STAGE_UNSTAGE_VOLUME,
        T.GET_VOLUME_STATS,
        T.EXPAND_VOLUME,
        T.VOLUME_CONDITION,
        T.SINGLE_NODE_MULTI_WRITER,
    }


async def test_orphan_loop_sessions_are_cleaned_at_start(node: Node) -> None:
    cap = mount_cap()
    vol = await provision(node, cap)
    backing = node.sim.backing_path(vol.volume_id)
    orphan = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    foreign_file = node.tmp / "foreign.img"
    subprocess.run(["truncate", "-s", "16M", str(foreign_file)], check=True)
    foreign = subprocess.run(
        ["losetup", "--find", "--show", str(foreign_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        assert node.app.server.node is not None
        report = await node.app.server.node.cleanup_orphans()
        assert any("disconnected orphaned" in line for line in report), report
        assert loops_for(node.sim.store.files_root) == []
        assert loops_for(foreign_file) == [foreign]  # not ours: untouched
    finally:
        subprocess.run(["losetup", "-d", foreign], capture_output=True)
        subprocess.run(["losetup", "-d", orphan], capture_output=True)


async def test_delete_before_unstage_still_unstages_cleanly(node: Node) -> None:
    # kubelet misorder: the volume is deleted on the appliance while still staged here
    cap = mount_cap()
    vol = await provision(node, cap)
    await stage(node, vol, cap)
    await node.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE)
    )
    await node.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    stats = await node.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(
            volume_id=vol.volume_id, volume_path=str(node.staging(vol.volume_id))
        )
    )
    assert stats.volume_condition.abnormal and "gone" in stats.volume_condition.message
    await unstage(node, vol.volume_id)
    assert not mounted(node.staging(vol.volume_id))
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(node.sim.store.files_root) not in out  # the deleted file's loop is gone too


async def test_read_only_block_publish_sets_the_device_read_only(node: Node) -> None:
    # A read-only bind of a device node would not stop writes: the device's own flag does.
    cap = block_cap()
    vol = await provision(node, cap, size=16 << 20)
    await stage(node, vol, cap)
    await publish(node, vol, cap, readonly=True)
    target = node.target(vol.volume_id)
    with pytest.raises(OSError) as err, open(target, "r+b") as dev:
        dev.write(b"no")
        dev.flush()
    assert err.value.errno in (errno.EPERM, errno.EROFS)
    # every user on the node shares the flag: a writable publish beside it is refused
    code, msg = await fail(publish(node, vol, cap, pod="pod-2"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "read-only" in msg
    assert not node.target(vol.volume_id, "pod-2").exists()
    await unpublish(node, vol.volume_id)
    await publish(node, vol, cap, pod="pod-2")  # the flag went with the last reader
    with open(node.target(vol.volume_id, "pod-2"), "r+b") as dev:
        dev.write(b"yes")
    await unpublish(node, vol.volume_id, "pod-2")
    await unstage(node, vol.volume_id)
