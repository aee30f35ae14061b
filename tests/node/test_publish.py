"""Publishing as the spec says: read-only attachments, single-writer volumes, mount flags
that are applied, no privilege from a volume's content, no unstage under a bind, and a
kubelet directory reached through a symlink."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.io.host import fs
from rdscsi.io.host.mounts import top_mount

from .calls import attach, fail, provision, publish, stage, unpublish, unstage
from .conftest import Node, block_cap, loops_for, mount_cap

Mode = pb.VolumeCapability.AccessMode
MIB = 1 << 20


async def test_a_read_only_attachment_mounts_read_only(node: Node) -> None:
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=64 * MIB, readonly=True)
    assert node.publish_context[vol.volume_id]["readonly"] == "true"
    code, msg = await fail(stage(node, vol, cap))  # blank and read-only: nothing to mount
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "read-only" in msg, msg
    # format it through a writable attachment first, as a pod writing data would
    await node.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="node-a")
    )
    await attach(node, vol, cap)
    await stage(node, vol, cap)
    await unstage(node, vol.volume_id)
    await node.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="node-a")
    )
    await attach(node, vol, cap, readonly=True)
    await stage(node, vol, cap)
    assert top_mount(node.staging(vol.volume_id)).read_only  # type: ignore[union-attr]
    await publish(node, vol, cap)  # a writable publish of a read-only attachment: read-only
    with pytest.raises(OSError) as err:
        (node.target(vol.volume_id) / "x").write_text("no")
    assert err.value.errno == errno.EROFS
    # the same stage, but writable, is another stage: incompatible with the one there
    writable = dict(node.publish_context[vol.volume_id], readonly="false")
    code, _ = await fail(
        node.node.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=vol.volume_id,
                staging_target_path=str(node.staging(vol.volume_id)),
                volume_capability=cap,
                volume_context=vol.volume_context,
                publish_context=writable,
            )
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)
    # the controller answers a second publish with the other flag ALREADY_EXISTS
    code, _ = await fail(attach(node, vol, cap, readonly=False))
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_read_only_block_attachment_is_a_read_only_device(node: Node) -> None:
    cap = block_cap(Mode.SINGLE_NODE_WRITER)
    vol = await provision(node, cap, size=16 * MIB, readonly=True)
    await stage(node, vol, cap)
    device = node.loop_of(vol.volume_id)
    assert fs.is_read_only(device)
    await publish(node, vol, cap)
    with pytest.raises(OSError) as err, open(node.target(vol.volume_id), "r+b") as dev:
        dev.write(b"no")
        dev.flush()
    assert err.value.errno in (errno.EPERM, errno.EROFS)
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)
    assert not fs.is_read_only(device)  # the loop device goes back to the pool writable


async def test_single_writer_volumes_have_one_target(node: Node) -> None:
    for mode, second in (
        (Mode.SINGLE_NODE_SINGLE_WRITER, grpc.StatusCode.FAILED_PRECONDITION),
        (Mode.SINGLE_NODE_MULTI_WRITER, grpc.StatusCode.OK),
    ):
        cap = mount_cap("ext4", mode)
        vol = await provision(node, cap, size=16 * MIB, name=f"writers-{mode}")
        await stage(node, vol, cap)
        await publish(node, vol, cap)
        code, msg = await fail_or_ok(publish(node, vol, cap, pod="pod-2"))
        assert code == second, msg
        # the same target with other arguments: the spec's "published but incompatible"
        code, msg = await fail_or_ok(publish(node, vol, cap, readonly=True))
        assert code == grpc.StatusCode.ALREADY_EXISTS, msg
        for pod in ("pod-1", "pod-2"):
            await unpublish(node, vol.volume_id, pod)
        assert not node.target(vol.volume_id, "pod-2").exists()
        await unstage(node, vol.volume_id)


async def fail_or_ok(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def test_mount_flags_are_applied_and_volumes_carry_no_privilege(node: Node) -> None:
    cap = mount_cap("ext4", flags=("noatime",))
    vol = await provision(node, cap, size=16 * MIB)
    await stage(node, vol, cap)
    staged = top_mount(node.staging(vol.volume_id))
    assert staged is not None and {"nosuid", "nodev", "noatime"} <= set(staged.options)
    flagged = mount_cap("ext4", flags=("noatime", "noexec"))
    await publish(node, vol, flagged)
    bound = top_mount(node.target(vol.volume_id))
    assert bound is not None and {"nosuid", "nodev", "noexec", "noatime"} <= set(bound.options)
    tool = node.target(vol.volume_id) / "tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o4755)
    with pytest.raises(PermissionError):
        subprocess.run([str(tool)], check=True)  # noexec, as asked
    await unpublish(node, vol.volume_id)
    code, msg = await fail(publish(node, vol, mount_cap("ext4", flags=("suid",))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "suid" in msg
    await unstage(node, vol.volume_id)


async def test_no_unstage_while_a_bind_of_the_device_remains(node: Node) -> None:
    # The out-of-order teardown: the volume is deleted on the appliance while a pod still
    # has its raw device; the loop device's file is gone, its bind is not.
    cap = block_cap(Mode.SINGLE_NODE_WRITER)
    vol = await provision(node, cap, size=16 * MIB)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    device = node.loop_of(vol.volume_id)
    await node.controller.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="node-a")
    )
    await node.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    code, msg = await fail(unstage(node, vol.volume_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "published" in msg, msg
    assert Path(device).exists() and loops_for(node.sim.store.files_root)  # not freed
    await unpublish(node, vol.volume_id)
    assert not node.target(vol.volume_id).exists()
    await unstage(node, vol.volume_id)
    assert loops_for(node.sim.store.files_root) == []  # now it goes


async def test_a_symlinked_kubelet_directory_does_not_wedge_a_volume(node: Node) -> None:
    # Kubelet's directory reached through a symlink: requests name the link, mountinfo
    # shows the real path; every call still finds the volume and nothing leaks.
    link = node.tmp / "kubelet-link"
    os.symlink(node.tmp / "kubelet", link)
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=16 * MIB)
    staging = link / "staging" / vol.volume_id
    target = link / "pods" / "pod-1" / vol.volume_id
    await node.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            volume_capability=cap,
            volume_context=vol.volume_context,
        )
    )
    await node.node.NodeStageVolume(  # a repeat: staged, not "uncertain"
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            volume_capability=cap,
            volume_context=vol.volume_context,
        )
    )
    await node.node.NodePublishVolume(
        pb.NodePublishVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=cap,
            volume_context=vol.volume_context,
        )
    )
    stats = await node.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target))
    )
    assert not stats.volume_condition.abnormal
    await node.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target))
    )
    await node.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging))
    )
    assert top_mount(node.staging(vol.volume_id)) is None
    assert loops_for(node.sim.store.files_root) == []
