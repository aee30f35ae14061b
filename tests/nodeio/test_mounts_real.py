"""mount / bind / unmount on real loop devices (root only; see conftest)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rdscsi.io.host import fs, proc
from rdscsi.io.host.mounts import (
    AlreadyMountedError,
    InvalidMountOptionError,
    MountError,
    ReadOnlyBlockBindError,
    TargetBusyError,
    UnsafeTargetError,
    bind,
    device_of_mount,
    is_mount_point,
    major_minor,
    make_dir_target,
    make_file_target,
    mount,
    mounts_at,
    mounts_of_device,
    parse_mountinfo,
    read_mounts,
    safe_remove_target,
    top_mount,
    unmount,
)

from .conftest import Loop, MiB, Node

SIZES = {"ext4": 64 * MiB, "xfs": 300 * MiB}


async def formatted(node: Node, fs_type: str) -> Loop:
    loop = node.loop(SIZES[fs_type])
    await fs.make_fs(loop.device, fs_type)
    return loop


async def staged(node: Node, fs_type: str = "ext4") -> tuple[Loop, Path]:
    loop = await formatted(node, fs_type)
    staging = make_dir_target(node.work / "staging")
    await mount(loop.device, staging, fs_type, ["noatime"])
    return loop, staging


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
async def test_mount_bind_unmount_round_trip(node: Node, fs_type: str) -> None:
    loop, staging = await staged(node, fs_type)
    number = major_minor(os.stat(loop.device).st_rdev)
    (staging / "hello").write_text("from staging")

    publish = make_dir_target(node.work / "pods" / "uid" / "mount")
    await bind(staging, publish)
    assert (publish / "hello").read_text() == "from staging"

    top = top_mount(publish)
    assert top is not None
    assert (top.fs_type, top.major_minor, top.root) == (fs_type, number, "/")
    assert "noatime" in top.options
    assert device_of_mount(staging) == device_of_mount(publish) == number
    assert {m.mount_point for m in mounts_of_device(loop.device)} == {staging, publish}

    assert await unmount(publish) is True
    assert await unmount(publish) is False  # a retry finds nothing to do
    assert not is_mount_point(publish)
    assert await unmount(staging) is True
    assert mounts_of_device(loop.device) == []


async def test_read_only_bind_refuses_writes(node: Node) -> None:
    _, staging = await staged(node)
    publish = make_dir_target(node.work / "ro")
    await bind(staging, publish, read_only=True)
    top = top_mount(publish)
    assert top is not None and top.read_only
    with pytest.raises(OSError) as caught:
        (publish / "new").write_text("x")
    assert caught.value.errno == errno.EROFS
    # Only the bind is read-only, the staging mount is not.
    (staging / "new").write_text("x")
    assert (publish / "new").read_text() == "x"


async def test_failed_read_only_step_undoes_the_bind(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writable bind where read-only was asked for must not survive a failed remount.
    _, staging = await staged(node)
    real_run = proc.run

    async def remount_fails(argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        if any(a.startswith("remount,bind,") and "ro" in a.split(",") for a in argv):
            return proc.Completed(tuple(argv), 32, "", "mount: permission denied (test)")
        return await real_run(argv, **kwargs)

    monkeypatch.setattr(proc, "run", remount_fails)
    publish = make_dir_target(node.work / "ro")
    with pytest.raises(MountError, match="permission denied"):
        await bind(staging, publish, read_only=True)
    assert not is_mount_point(publish)
    assert is_mount_point(staging)


async def test_block_bind_is_seen_through_devtmpfs(node: Node) -> None:
    loop = node.loop(16 * MiB)
    target = make_file_target(node.work / "block" / "pvc")
    assert make_file_target(target) == target  # idempotent
    await bind(loop.device, target)

    (bound,) = mounts_at(target)
    dev_stat = os.stat(loop.device)
    # The bind shows the filesystem the node lives in, not the loop device.
    assert bound.fs_type == "devtmpfs"
    assert bound.major_minor == major_minor(dev_stat.st_dev)
    assert bound.root == "/" + loop.device.name
    assert stat.S_ISBLK(os.stat(target).st_mode)
    assert mounts_of_device(loop.device) == [bound]
    assert device_of_mount(target) == major_minor(dev_stat.st_rdev)
    # Whatever name the caller knows the device by.
    alias = node.work / "by-id-link"
    alias.symlink_to(loop.device)
    assert mounts_of_device(alias) == [bound]
    assert await unmount(target)


async def test_block_bind_of_another_node_of_the_device(node: Node) -> None:
    # A container runtime makes its own node in a tmpfs /dev; a bind of that node must
    # still count as a use of the device.
    loop = node.loop(16 * MiB)
    devs = make_dir_target(node.work / "container-dev")
    await mount("tmpfs", devs, "tmpfs", ["nosuid"])
    rdev = os.stat(loop.device).st_rdev
    other = devs / "xvda"
    os.mknod(other, 0o600 | stat.S_IFBLK, rdev)
    target = make_file_target(node.work / "pod-block")
    await bind(other, target)
    uses = mounts_of_device(loop.device)
    assert [m.mount_point for m in uses] == [target]
    assert uses[0].fs_type == "tmpfs"
    # And the other way round: asked by the container's node, a devtmpfs bind is found.
    target2 = make_file_target(node.work / "pod-block-2")
    await bind(loop.device, target2)
    assert {m.mount_point for m in mounts_of_device(other)} == {target, target2}


async def test_mounts_of_device_matches_a_recorded_bind_by_its_root(node: Node) -> None:
    # mountinfo text alone decides for a bind whose path cannot be stat-ed (another
    # namespace's path): devtmpfs number + the node's path inside devtmpfs.
    loop = node.loop(16 * MiB)
    dev_stat = os.stat(loop.device)
    table = [
        *read_mounts(),
        *parse_mountinfo(
            f"9001 1 {major_minor(dev_stat.st_dev)} /{loop.device.name} /elsewhere/pod ro"
            " - devtmpfs devtmpfs rw\n"
            f"9002 1 {major_minor(dev_stat.st_dev)} /loop-unrelated /elsewhere/other ro"
            " - devtmpfs devtmpfs rw\n"
        ),
    ]
    assert [m.mount_id for m in mounts_of_device(loop.device, table)] == [9001]


async def test_read_only_bind_of_a_block_device_is_refused(node: Node) -> None:
    # The kernel lets writes through a read-only bind of a device node: refusing is
    # better than a bind that only looks protected.
    loop = node.loop(16 * MiB)
    target = make_file_target(node.work / "ro-block")
    with pytest.raises(ReadOnlyBlockBindError, match="would not stop writes") as caught:
        await bind(loop.device, target, read_only=True)
    assert isinstance(caught.value, ValueError) and caught.value.path == target
    assert not is_mount_point(target)


async def test_busy_unmount_names_the_path(node: Node) -> None:
    _, staging = await staged(node)
    with (staging / "open-file").open("w"):
        with pytest.raises(TargetBusyError) as caught:
            await unmount(staging)
        assert caught.value.path == staging
        assert str(staging) in str(caught.value)
        assert is_mount_point(staging)  # nothing lazy happened behind our back
    assert await unmount(staging)


async def test_no_stacking(node: Node) -> None:
    loop, staging = await staged(node)
    with pytest.raises(AlreadyMountedError, match="already a mount point"):
        await mount(loop.device, staging, "ext4")
    other = make_dir_target(node.work / "other")
    with pytest.raises(AlreadyMountedError):
        await bind(other, staging)
    assert len(mounts_at(staging)) == 1


async def test_options_are_checked_before_anything_runs(node: Node) -> None:
    loop = await formatted(node, "ext4")
    staging = make_dir_target(node.work / "staging")
    with pytest.raises(InvalidMountOptionError, match="'suid'"):
        await mount(loop.device, staging, "ext4", ["noatime", "suid"])
    with pytest.raises(ValueError, match="bad filesystem type"):
        await mount(loop.device, staging, "ext4 -o suid")
    assert not is_mount_point(staging)


async def test_failed_mount_is_a_mount_error(node: Node) -> None:
    loop = node.loop(16 * MiB)  # blank: nothing to mount
    staging = make_dir_target(node.work / "staging")
    with pytest.raises(MountError) as caught:
        await mount(loop.device, staging, "ext4")
    assert caught.value.path == staging
    assert "mount -t ext4" in str(caught.value)


def test_make_targets_refuse_the_wrong_kind(node: Node) -> None:
    directory = make_dir_target(node.work / "a" / "b")
    assert directory.is_dir() and make_dir_target(directory) == directory
    file_target = make_file_target(node.work / "f")
    assert file_target.is_file() and file_target.stat().st_size == 0
    with pytest.raises(UnsafeTargetError, match="not a directory"):
        make_dir_target(file_target)
    with pytest.raises(UnsafeTargetError, match="not a regular file"):
        make_file_target(directory)
    link = node.work / "link"
    link.symlink_to(directory)
    with pytest.raises(UnsafeTargetError, match="symlink"):
        make_dir_target(link)
    with pytest.raises(UnsafeTargetError, match="symlink"):
        make_file_target(link)


async def test_safe_remove_target(node: Node) -> None:
    work = node.work
    assert safe_remove_target(work / "missing") == "absent"
    assert safe_remove_target(make_dir_target(work / "empty")) == "removed-directory"
    assert safe_remove_target(make_file_target(work / "file")) == "removed-file"

    full = make_dir_target(work / "full")
    (full / "data").write_text("keep me")
    with pytest.raises(UnsafeTargetError, match="not empty") as caught:
        safe_remove_target(full)
    assert caught.value.path == full and str(full) in str(caught.value)
    assert (full / "data").read_text() == "keep me"

    link = work / "link"
    link.symlink_to(full)
    with pytest.raises(UnsafeTargetError, match="symlink"):
        safe_remove_target(link)
    assert link.is_symlink() and (full / "data").exists()

    fifo = work / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeTargetError, match="fifo"):
        safe_remove_target(fifo)


async def test_safe_remove_target_never_removes_a_mount_point(node: Node) -> None:
    loop, staging = await staged(node)
    with pytest.raises(UnsafeTargetError, match="mount point"):
        safe_remove_target(staging)
    # Even an empty-looking bind of a regular file is left alone.
    (staging / "f").write_text("x")
    file_target = make_file_target(node.work / "file-bind")
    await bind(staging / "f", file_target)
    with pytest.raises(UnsafeTargetError, match="mount point"):
        safe_remove_target(file_target)
    assert await unmount(file_target)
    assert safe_remove_target(file_target) == "removed-file"
    assert await unmount(staging)
    assert safe_remove_target(staging) == "removed-directory"
    del loop


async def test_the_kernel_backs_the_mount_point_check(node: Node) -> None:
    # With a stale table (mounted after it was read) rmdir/unlink meet EBUSY: still refused.
    _, staging = await staged(node)
    with pytest.raises(UnsafeTargetError, match="in use as a mount point"):
        safe_remove_target(staging, mounts=[])
    (staging / "f").write_text("x")
    file_target = make_file_target(node.work / "file-bind")
    await bind(staging / "f", file_target)
    with pytest.raises(UnsafeTargetError, match="in use as a mount point"):
        safe_remove_target(file_target, mounts=[])
    assert is_mount_point(staging) and is_mount_point(file_target)
