"""Probing, formatting, growing and measuring on real loop devices (root only)."""

from __future__ import annotations

import asyncio
import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from rdscsi.io.host import fs
from rdscsi.io.host.mounts import major_minor, make_dir_target, mount, top_mount, unmount

from .conftest import MiB, Node


def write_at(device: Path, offset: int, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def dos_partition_table() -> bytes:
    # One Linux partition from sector 2048, 8192 sectors; the 0x55AA boot signature.
    entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 8192)
    return bytes(446) + entry + bytes(48) + b"\x55\xaa"


def blkid_value(device: Path, key: str) -> str:
    out = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", key, str(device)], capture_output=True, text=True
    )
    return out.stdout.strip()


async def test_detect_blank_then_formatted(node: Node) -> None:
    ext4, xfs = node.loop(32 * MiB), node.loop(300 * MiB)
    assert await fs.detect(ext4.device) is None
    assert await fs.detect(xfs.device) is None
    await fs.make_fs(ext4.device, "ext4")
    await fs.make_fs(xfs.device, "xfs", "-m crc=1 -n ftype=1")
    assert await fs.detect(ext4.device) == "ext4"
    assert await fs.detect(xfs.device) == "xfs"


async def test_a_partition_table_is_not_blank(node: Node) -> None:
    loop = node.loop(32 * MiB)
    write_at(loop.device, 0, dos_partition_table())
    assert await fs.detect(loop.device) == "partition-table:dos"
    with pytest.raises(fs.FormatRefusedError, match="already has partition-table:dos"):
        await fs.make_fs(loop.device, "ext4")


async def test_data_without_a_signature_is_not_blank(node: Node) -> None:
    # A raw-block volume written by an application: blkid knows nothing, it is not blank.
    loop = node.loop(32 * MiB)
    write_at(loop.device, 300 * 1024, b"customer data")
    assert await fs.detect(loop.device) == fs.UNKNOWN_CONTENT
    with pytest.raises(fs.FormatRefusedError, match="already has unknown-content"):
        await fs.make_fs(loop.device, "xfs")


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
async def test_make_fs_never_formats_a_formatted_device(node: Node, fs_type: str) -> None:
    loop = node.loop(300 * MiB)
    await fs.make_fs(loop.device, "ext4", "-L first")
    uuid = blkid_value(loop.device, "UUID")
    with pytest.raises(fs.FormatRefusedError, match="already has ext4") as caught:
        await fs.make_fs(loop.device, fs_type)
    assert caught.value.device == loop.device
    assert blkid_value(loop.device, "UUID") == uuid
    assert blkid_value(loop.device, "LABEL") == "first"


async def test_make_fs_refuses_a_device_held_open(node: Node) -> None:
    loop = node.loop(32 * MiB)
    fd = os.open(loop.device, os.O_RDONLY)
    try:
        with pytest.raises(fs.DeviceInUseError, match=rf"open by .*pid {os.getpid()} \(\w"):
            await fs.make_fs(loop.device, "ext4")
    finally:
        os.close(fd)
    assert await fs.detect(loop.device) is None


async def test_make_fs_waits_out_a_short_lived_opener(node: Node) -> None:
    # udev's probe of a new device holds it open for a moment: not a reason to refuse.
    loop = node.loop(32 * MiB)
    fd = os.open(loop.device, os.O_RDONLY)
    asyncio.get_running_loop().call_later(0.3, os.close, fd)
    await fs.make_fs(loop.device, "ext4")
    assert await fs.detect(loop.device) == "ext4"


async def test_make_fs_options_reach_mkfs(node: Node) -> None:
    loop = node.loop(32 * MiB)
    await fs.make_fs(loop.device, "ext4", "-L data -m 0 -E lazy_itable_init=1")
    assert blkid_value(loop.device, "LABEL") == "data"


async def test_make_fs_refuses_before_running_anything(node: Node) -> None:
    loop = node.loop(32 * MiB)
    with pytest.raises(fs.UnsupportedFsError, match="'btrfs'"):
        await fs.make_fs(loop.device, "btrfs")
    with pytest.raises(fs.InvalidFsOptionError, match="'-n'"):
        await fs.make_fs(loop.device, "ext4", "-n")
    assert await fs.detect(loop.device) is None


async def test_detect_needs_a_block_device(node: Node) -> None:
    with pytest.raises(fs.FsError, match="does not exist"):
        await fs.detect(node.work / "missing")
    with pytest.raises(fs.FsError, match="not a block device"):
        await fs.detect(node.work)


def has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    effective = int(status.split("CapEff:")[1].split()[0], 16)
    return bool(effective >> 24 & 1)  # CAP_SYS_RESOURCE


async def grown_fs(node: Node, fs_type: str, before: int, after: int) -> tuple[Path, int]:
    loop = node.loop(before)
    await fs.make_fs(loop.device, fs_type)
    staging = make_dir_target(node.work / "staging")
    await mount(loop.device, staging, fs_type)
    small = fs.stats(staging).total_bytes
    loop.resize(after)
    assert fs.block_size_bytes(loop.device) == after
    return staging, small


@pytest.mark.parametrize(
    ("fs_type", "before", "after"),
    [("ext4", 64 * MiB, 128 * MiB), ("xfs", 300 * MiB, 400 * MiB)],
)
async def test_grow_after_the_device_grew(
    node: Node, fs_type: str, before: int, after: int
) -> None:
    if fs_type == "ext4" and not has_cap_sys_resource():
        pytest.skip("online ext4 resize needs CAP_SYS_RESOURCE, which this machine lacks")
    staging, small = await grown_fs(node, fs_type, before, after)
    device = Path(top_source(staging))
    grown = await fs.grow_fs(device, staging, fs_type)
    assert grown.total_bytes > small
    assert grown.total_bytes > before
    assert grown.total_bytes == fs.stats(staging).total_bytes
    # Growing again is a harmless no-op (a retried NodeExpandVolume).
    again = await fs.grow_fs(device, staging, fs_type)
    assert again.total_bytes == grown.total_bytes
    assert await unmount(staging)


async def test_ext4_grow_without_cap_sys_resource_says_why(node: Node) -> None:
    if has_cap_sys_resource():
        pytest.skip("this machine has CAP_SYS_RESOURCE: the grow itself is tested")
    staging, small = await grown_fs(node, "ext4", 64 * MiB, 128 * MiB)
    with pytest.raises(fs.FsError, match="needs CAP_SYS_RESOURCE"):
        await fs.grow_fs(Path(top_source(staging)), staging, "ext4")
    assert fs.stats(staging).total_bytes == small


def top_source(path: Path) -> str:
    top = top_mount(path)
    assert top is not None
    return top.source


async def test_grow_refuses_a_mount_point_of_another_device(node: Node) -> None:
    one, other = node.loop(64 * MiB), node.loop(64 * MiB)
    await fs.make_fs(one.device, "ext4")
    await fs.make_fs(other.device, "ext4")
    staging = make_dir_target(node.work / "staging")
    await mount(other.device, staging, "ext4")
    with pytest.raises(fs.FsError, match="not a mount of this device"):
        await fs.grow_fs(one.device, staging, "ext4")
    with pytest.raises(fs.UnsupportedFsError):
        await fs.grow_fs(other.device, staging, "btrfs")


async def test_stats_are_consistent(node: Node) -> None:
    loop = node.loop(64 * MiB)
    await fs.make_fs(loop.device, "ext4")
    staging = make_dir_target(node.work / "staging")
    await mount(loop.device, staging, "ext4")
    before = fs.stats(staging)
    assert 0 < before.total_bytes <= 64 * MiB
    assert before.available_bytes <= before.total_bytes - before.used_bytes
    assert before.used_inodes + before.free_inodes == before.total_inodes
    (staging / "blob").write_bytes(os.urandom(4 * MiB))
    os.sync()
    after = fs.stats(staging)
    assert after.used_bytes >= before.used_bytes + 4 * MiB
    assert after.used_inodes == before.used_inodes + 1


def test_block_size_from_sysfs_and_from_the_ioctl(node: Node, tmp_path: Path) -> None:
    loop = node.loop(48 * MiB)
    assert fs.block_size_bytes(loop.device) == 48 * MiB
    # Without sysfs (some containers) the BLKGETSIZE64 ioctl answers.
    assert fs.block_size_bytes(loop.device, sysfs=tmp_path / "no-sysfs") == 48 * MiB


def test_open_by_finds_this_process(node: Node) -> None:
    loop = node.loop(16 * MiB)
    assert os.getpid() not in fs.open_by(loop.device)
    fd = os.open(loop.device, os.O_RDONLY)
    try:
        assert os.getpid() in fs.open_by(loop.device)
    finally:
        os.close(fd)
    assert os.getpid() not in fs.open_by(loop.device)


async def test_open_by_sees_the_device_under_another_name(node: Node) -> None:
    # A pod opens the published bind, or a container its own node: same st_rdev.
    loop = node.loop(16 * MiB)
    devs = make_dir_target(node.work / "container-dev")
    await mount("tmpfs", devs, "tmpfs")
    other = devs / "xvda"
    os.mknod(other, 0o600 | stat.S_IFBLK, os.stat(loop.device).st_rdev)
    fd = os.open(other, os.O_RDONLY)
    try:
        assert os.getpid() in fs.open_by(loop.device)
        # ...and asked by that other name, an open of /dev/loopN is found too.
        assert os.getpid() in fs.open_by(other)
    finally:
        os.close(fd)


def test_open_by_in_another_process(node: Node) -> None:
    loop = node.loop(16 * MiB)
    holder = subprocess.Popen(
        ["sh", "-c", f"exec 3<{loop.device}; read line"], stdin=subprocess.PIPE
    )
    try:
        for _ in range(200):
            if holder.pid in fs.open_by(loop.device):
                break
            os.sched_yield()
        assert holder.pid in fs.open_by(loop.device)
    finally:
        holder.kill()
        holder.wait()


def test_holders_of_a_plain_loop_device(node: Node) -> None:
    loop = node.loop(16 * MiB)
    assert fs.holders(loop.device) == []


def test_holders_from_sysfs(node: Node, tmp_path: Path) -> None:
    loop = node.loop(16 * MiB)
    number = major_minor(os.stat(loop.device).st_rdev)
    holders = tmp_path / "sys" / "dev" / "block" / number / "holders"
    holders.mkdir(parents=True)
    (holders / "dm-3").touch()
    (holders / "md0").touch()
    assert fs.holders(loop.device, sysfs=tmp_path / "sys") == ["dm-3", "md0"]
    # No sysfs entry: not "no holders" but "cannot tell".
    with pytest.raises(fs.FsError, match="cannot tell"):
        fs.holders(loop.device, sysfs=tmp_path / "empty")


def test_open_by_on_a_recorded_proc_tree(node: Node, tmp_path: Path) -> None:
    # A fake /proc: fd links are symlinks, fdinfo and mountinfo are files.
    loop = node.loop(16 * MiB)
    devs = tmp_path / "devs"
    devs.mkdir()
    other = devs / "xvda"
    os.mknod(other, 0o600 | stat.S_IFBLK, os.stat(loop.device).st_rdev)
    fake = tmp_path / "proc"
    mountinfo = (
        "70 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n"
        "77 1 0:60 / /mnt/nfs rw - nfs4 server:/export rw\n"
    )

    def process(pid: int, links: dict[int, str], mnt_ids: dict[int, int]) -> None:
        (fake / str(pid) / "fd").mkdir(parents=True)
        (fake / str(pid) / "fdinfo").mkdir()
        (fake / str(pid) / "mountinfo").write_text(mountinfo)
        for fd, target in links.items():
            (fake / str(pid) / "fd" / str(fd)).symlink_to(target)
            mnt_id = mnt_ids.get(fd, 70)
            (fake / str(pid) / "fdinfo" / str(fd)).write_text(f"pos:\t0\nmnt_id:\t{mnt_id}\n")

    process(101, {0: "/dev/null", 3: str(loop.device)}, {})  # by path
    process(102, {0: "socket:[123]", 4: str(other)}, {})  # another node, same st_rdev
    process(103, {5: str(other)}, {5: 77})  # on an nfs mount: never stat-ed, not counted
    process(104, {6: str(devs)}, {})  # something else entirely
    (fake / "105").mkdir()  # exited between listing and reading: no fd directory
    (fake / "self").mkdir()  # not a pid
    assert fs.open_by(loop.device, proc_root=fake) == [101, 102]
    with pytest.raises(fs.FsError, match="cannot list"):
        fs.open_by(loop.device, proc_root=tmp_path / "no-proc")
