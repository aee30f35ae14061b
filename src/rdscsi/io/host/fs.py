"""Filesystems and block devices on the node: probe, format, grow, measure, find users.

The rule that matters most: a device is formatted only when a low-level probe positively
says it is blank, and :func:`make_fs` probes again itself right before formatting. "Could
not probe" is never taken for "blank" (a transient I/O error on a freshly connected
NVMe-oF device must not end in mkfs over a customer's data).
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rdscsi.io.host import proc
from rdscsi.io.host.mkfs import InvalidFsOptionError as InvalidFsOptionError
from rdscsi.io.host.mkfs import UnsupportedFsError as UnsupportedFsError
from rdscsi.io.host.mkfs import (
    XfsFeatures,
    ext4_compat_argv,
    validate_mkfs_options,
    xfs_compat_argv,
)
from rdscsi.io.host.mounts import (
    DEVICE_NODE_FS,
    major_minor,
    mounts_of_device,
    parse_mountinfo,
)

SUPPORTED: Final = ("ext4", "xfs")

PROBE_TIMEOUT: Final = 30.0
# mkfs with lazy init is quick, but discard of a large thin device can take minutes.
MKFS_TIMEOUT: Final = 600.0
GROW_TIMEOUT: Final = 600.0
# How long make_fs waits for short-lived openers (udev's probe) to go before refusing.
OPENER_SETTLE: Final = 2.0

# detect() results that are not a filesystem type but still mean "do not format".
PARTITION_TABLE_PREFIX: Final = "partition-table:"
AMBIVALENT: Final = "ambivalent"
UNKNOWN_CONTENT: Final = "unknown-content"

_SYSFS: Final = Path("/sys")
_PROC: Final = Path("/proc")
_BLKGETSIZE64: Final = 0x80081272
# How much of each end of the device detect() reads itself: to prove it is readable, and to
# see that it holds nothing at all (a raw-block volume's data carries no signature blkid
# knows). A device is never read whole: a thin 1 TiB volume would take hours over NVMe/TCP.
_HEAD_BYTES: Final = 1 << 20
_SAMPLES: Final = 14
_BLKROGET: Final = 0x125E
_BLKROSET: Final = 0x125D


class FsError(Exception):
    """A filesystem operation failed, or a probe could not give a trustworthy answer."""

    def __init__(self, device: Path | str, detail: str) -> None:
        self.device = Path(device)
        self.detail = detail
        super().__init__(f"{device}: {detail}")


class FormatRefusedError(FsError):
    """make_fs refused: the device is not provably blank, or is in use."""


class DeviceInUseError(FormatRefusedError):
    """make_fs refused because something uses the device now (a mount, a process, a holder).

    Often transient (udev's own probe of a device that just appeared holds it open for a
    moment): worth a retry, unlike "already has ext4".
    """


def _block_device(device: Path | str) -> os.stat_result:
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise FsError(device, "does not exist") from None
    if not stat.S_ISBLK(st.st_mode):
        raise FsError(device, "is not a block device")
    return st


# --------------------------------------------------------------------------- probing


def _parse_export(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _reads_as_zero(device: Path) -> bool:
    """The first and last MiB, and one MiB at each of :data:`_SAMPLES` even steps between,
    read as zeros. A device is never read whole (a thin 1 TiB volume would take hours over
    NVMe/TCP); the samples catch data written anywhere in bulk, which no signature marks."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        last = max(0, size - _HEAD_BYTES)
        offsets = {0, last, *(last * i // (_SAMPLES + 1) for i in range(1, _SAMPLES + 1))}
        for offset in sorted(offsets):
            chunk = os.pread(fd, _HEAD_BYTES, offset - offset % 4096)
            if chunk.count(0) != len(chunk):
                return False
    finally:
        os.close(fd)
    return True


async def detect(device: Path | str, *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """What the device holds: None when blank, else a non-empty marker.

    A filesystem or other signature gives its ``TYPE`` (``ext4``, ``xfs``, ``swap``,
    ``LVM2_member``...); a partition table gives ``"partition-table:<PTTYPE>"``; several
    conflicting signatures give :data:`AMBIVALENT`; anything else blkid reports gives
    :data:`UNKNOWN_CONTENT`, and so does data without any known signature (see below).
    Callers must not format unless this is None.

    Uses ``blkid -p`` (a low-level probe of the device itself, no cache: every signature
    blkid knows, at the start and at the end of the device). blkid exits 2 both for
    "nothing found" and for "could not open", so None needs more: blkid printed no error,
    and the device reads here as all zeros at both ends and at evenly spaced samples
    between (:func:`_reads_as_zero`). A new volume is zeroed (thin), so this costs little.
    Data without any signature between the samples (a raw-block volume's) can still look
    blank: callers must also know the volume was created for a filesystem before they
    format it. Unreadable: FsError.
    """
    device = Path(device)
    _block_device(device)
    argv = ["blkid", "-p", "-o", "export", "--", str(device)]
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode == 0:
        found = _parse_export(done.stdout)
        if found.get("TYPE"):
            return found["TYPE"]
        if found.get("PTTYPE"):
            return PARTITION_TABLE_PREFIX + found["PTTYPE"]
        return UNKNOWN_CONTENT
    if done.returncode == 8:  # blkid's "ambivalent result": several signatures
        return AMBIVALENT
    if done.returncode == 2 and not done.stderr.strip():
        try:
            blank = await asyncio.to_thread(_reads_as_zero, device)
        except OSError as exc:
            raise FsError(
                device, f"probe found nothing but the device is unreadable: {exc}"
            ) from exc
        return None if blank else UNKNOWN_CONTENT
    said = proc.excerpt(done.stderr) or proc.excerpt(done.stdout) or "no output"
    raise FsError(device, f"`{proc.describe(argv)}` exited with status {done.returncode}: {said}")


# --------------------------------------------------------------------------- formatting


async def make_fs(
    device: Path | str,
    fs_type: str,
    options: str = "",
    *,
    timeout: float = MKFS_TIMEOUT,
) -> None:
    """Create ``fs_type`` on a blank ``device``.

    Refuses (FormatRefusedError) when :func:`detect` finds anything, when the device is
    mounted, open by a process, or when something is stacked on it; the probe is repeated
    here whatever the caller checked before. ext4: ``mkfs.ext4 -F -q``; xfs:
    ``mkfs.xfs -f -q`` (the force flags only skip prompts and mkfs's own weaker checks:
    ours ran first), then the options that keep it mountable by the oldest supported kernel
    (:func:`compat_argv`), then the validated ``options``.
    """
    if fs_type not in SUPPORTED:
        raise UnsupportedFsError(fs_type)
    tokens = validate_mkfs_options(fs_type, options)
    device = Path(device)
    if not device.is_absolute():
        raise FsError(device, "device path must be absolute")
    existing = await detect(device)
    if existing is not None:
        raise FormatRefusedError(device, f"refusing to format: already has {existing}")
    stacked = holders(device)
    if stacked:
        raise DeviceInUseError(device, f"refusing to format: held by {', '.join(stacked)}")
    mounted = mounts_of_device(device)
    if mounted:
        raise DeviceInUseError(device, f"refusing to format: mounted at {mounted[0].mount_point}")
    # mkfs's O_EXCL only stops kernel users; a process using the device raw does not.
    users = await _openers_after_settling(device)
    if users:
        raise DeviceInUseError(device, f"refusing to format: open by {_describe_pids(users)}")
    compat = await compat_argv(fs_type)
    if fs_type == "ext4":
        argv = ["mkfs.ext4", "-F", "-q", *compat, *tokens, str(device)]
    else:
        argv = ["mkfs.xfs", "-f", "-q", *compat, *tokens, str(device)]
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode != 0:
        said = proc.excerpt(done.stderr) or proc.excerpt(done.stdout) or "no output"
        raise FsError(
            device, f"`{proc.describe(argv)}` exited with status {done.returncode}: {said}"
        )


_COMPAT: dict[str, list[str]] = {}


async def compat_argv(fs_type: str) -> list[str]:
    """The options that keep a new ``fs_type`` mountable by Linux
    :data:`~rdscsi.io.host.mkfs.KERNEL_FLOOR`, for the mkfs installed here (asked once per
    process: ``mkfs.xfs`` with no argument prints its usage, ``mkfs.ext4 -V`` its version)."""
    if fs_type not in _COMPAT:
        if fs_type == "xfs":
            done = await proc.run(["mkfs.xfs"], timeout=PROBE_TIMEOUT, check=False)
            argv = xfs_compat_argv(XfsFeatures.from_usage(done.stderr + done.stdout))
        else:
            done = await proc.run(["mkfs.ext4", "-V"], timeout=PROBE_TIMEOUT, check=False)
            argv = ext4_compat_argv(done.stderr + done.stdout)
        _COMPAT[fs_type] = argv
    return list(_COMPAT[fs_type])


async def _openers_after_settling(device: Path) -> list[int]:
    """Openers of ``device`` that are still there after a short wait.

    A device that just appeared is probed by udev (blkid) and similar scanners for a few
    milliseconds; those must not turn into a refusal. A real user stays open.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OPENER_SETTLE
    while True:
        users = await asyncio.to_thread(open_by, device)
        if not users or loop.time() >= deadline:
            return users
        await asyncio.sleep(0.1)


def _describe_pids(pids: list[int], proc_root: Path = _PROC) -> str:
    named = []
    for pid in pids:
        try:
            comm = (proc_root / str(pid) / "comm").read_text().strip()
        except OSError:
            comm = "?"
        named.append(f"pid {pid} ({comm})")
    return ", ".join(named)


# --------------------------------------------------------------------------- growing


@dataclass(frozen=True, slots=True)
class FsStats:
    total_bytes: int
    available_bytes: int  # what an unprivileged writer can still use (f_bavail)
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int


def stats(path: Path | str) -> FsStats:
    """Capacity and inode counts of the filesystem holding ``path`` (``os.statvfs``)."""
    st = os.statvfs(path)
    return FsStats(
        total_bytes=st.f_blocks * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
        total_inodes=st.f_files,
        free_inodes=st.f_ffree,
        used_inodes=st.f_files - st.f_ffree,
    )


async def grow_fs(
    device: Path | str,
    mount_point: Path | str,
    fs_type: str,
    *,
    timeout: float = GROW_TIMEOUT,
) -> FsStats:
    """Grow the mounted filesystem on ``device`` to the device's size; return new stats.

    ext4: ``resize2fs <device>`` (online). xfs: ``xfs_growfs -d <mount_point>`` (xfs grows
    only through a mount point). ``mount_point`` must be a mount of ``device``: xfs_growfs on
    the wrong path would grow some other filesystem.
    """
    if fs_type not in SUPPORTED:
        raise UnsupportedFsError(fs_type)
    device = Path(device)
    mount_point = Path(os.path.realpath(mount_point))
    wanted = major_minor(_block_device(device).st_rdev)
    if not any(
        m.mount_point == mount_point and m.major_minor == wanted for m in mounts_of_device(device)
    ):
        raise FsError(device, f"{mount_point} is not a mount of this device; not growing")
    if fs_type == "ext4":
        argv = ["resize2fs", str(device)]
    else:
        argv = ["xfs_growfs", "-d", str(mount_point)]
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode != 0:
        said = proc.excerpt(done.stderr) or proc.excerpt(done.stdout) or "no output"
        if "Permission denied to resize" in said:
            # EXT4_IOC_RESIZE_FS wants CAP_SYS_RESOURCE, which root in a container without
            # `privileged: true` may lack: say so, the message alone misleads.
            said += " (online ext4 resize needs CAP_SYS_RESOURCE in the node plugin)"
        raise FsError(
            device, f"`{proc.describe(argv)}` exited with status {done.returncode}: {said}"
        )
    return stats(mount_point)


_EXT4_MAGIC: Final = 0xEF53
_EXT4_INCOMPAT_64BIT: Final = 0x80


def _read_head(device: Path) -> bytes:
    """The device's first 4 KiB, read past the page cache (O_DIRECT): xfs writes its
    metadata around it, so a buffered read can return a superblock from before a growth."""
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    try:
        got = os.preadv(fd, [buf], 0)
        return bytes(buf[:got])
    finally:
        os.close(fd)
        buf.close()


def filesystem_bytes(device: Path | str, fs_type: str) -> int:
    """How many bytes of ``device`` the filesystem on it spans, from its superblock.

    ext4: blocks count (with the 64bit high word) times block size; xfs: data blocks times
    block size. A filesystem smaller than its device is one copied from a smaller volume
    (restore, clone) or one whose volume grew while nobody had it staged.
    """
    device = Path(device)
    _block_device(device)
    if fs_type == "ext4":
        sb = _read_head(device)[1024:2048]
        if len(sb) < 0x154 or struct.unpack_from("<H", sb, 0x38)[0] != _EXT4_MAGIC:
            raise FsError(device, "no ext4 superblock")
        lo: int = struct.unpack_from("<I", sb, 0x04)[0]
        log_size: int = struct.unpack_from("<I", sb, 0x18)[0]
        incompat: int = struct.unpack_from("<I", sb, 0x60)[0]
        hi: int = struct.unpack_from("<I", sb, 0x150)[0] if incompat & _EXT4_INCOMPAT_64BIT else 0
        return ((hi << 32) | lo) * (1024 << log_size)
    if fs_type == "xfs":
        sb = _read_head(device)[:16]
        if len(sb) < 16 or sb[:4] != b"XFSB":
            raise FsError(device, "no xfs superblock")
        block, blocks = struct.unpack_from(">IQ", sb, 4)
        return int(block) * int(blocks)
    raise UnsupportedFsError(fs_type)


async def grow_offline(device: Path | str, fs_type: str, *, timeout: float = GROW_TIMEOUT) -> None:
    """Grow an unmounted ext4 to its device: ``e2fsck -f -p`` (resize2fs insists on a
    checked filesystem; preen mode also replays a journal left by a snapshot of a mounted
    volume and fixes only what is safe), then ``resize2fs``.

    Offline, because online growth (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which a
    node plugin may lack. xfs grows only while mounted: use :func:`grow_fs` for it.
    """
    if fs_type != "ext4":
        raise UnsupportedFsError(fs_type)
    device = Path(device)
    if mounts_of_device(device):
        raise FsError(device, "is mounted; offline growth needs it unmounted")
    argv = ["e2fsck", "-f", "-p", str(device)]
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode not in (0, 1):  # 1: errors corrected; >= 4: left uncorrected
        said = proc.excerpt(done.stdout) or proc.excerpt(done.stderr) or "no output"
        raise FsError(
            device,
            f"`{proc.describe(argv)}` exited with status {done.returncode}: {said} "
            "(the filesystem needs a manual fsck before it can be grown)",
        )
    argv = ["resize2fs", str(device)]
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode != 0:
        said = proc.excerpt(done.stderr) or proc.excerpt(done.stdout) or "no output"
        raise FsError(
            device, f"`{proc.describe(argv)}` exited with status {done.returncode}: {said}"
        )


def is_read_only(device: Path | str) -> bool:
    """Whether the kernel refuses writes to the block device (BLKROGET)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, _BLKROGET, b"\0" * 4)
    finally:
        os.close(fd)
    return bool(struct.unpack("i", buf)[0])


def set_read_only(device: Path | str, read_only: bool) -> None:
    """Make the kernel refuse (or allow) writes to the whole block device (BLKROSET, as
    ``blockdev --setro``): the only read-only a raw block volume can have, since a
    read-only bind of a device node does not stop writes. Every user of the device on
    this node is affected, so the node sets it per attachment, never per pod."""
    _block_device(device)
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _BLKROSET, struct.pack("i", 1 if read_only else 0))
    finally:
        os.close(fd)
    if is_read_only(device) != read_only:
        wanted = "read-only" if read_only else "writable"
        raise FsError(device, f"BLKROSET did not make it {wanted}")


# --------------------------------------------------------------------------- block devices


def _sysfs_dir(device: Path | str, sysfs: Path) -> Path:
    # By device number rather than by name: a node made by a container runtime can be called
    # anything, the number is what the kernel knows it by.
    return sysfs / "dev" / "block" / major_minor(_block_device(device).st_rdev)


def block_size_bytes(device: Path | str, *, sysfs: Path = _SYSFS) -> int:
    """Size of the block device in bytes.

    sysfs ``size`` counts 512-byte sectors whatever the logical block size. Falls back to
    the BLKGETSIZE64 ioctl where sysfs is not mounted (some containers).
    """
    size_file = _sysfs_dir(device, sysfs) / "size"
    try:
        return int(size_file.read_text().strip()) * 512
    except FileNotFoundError:
        pass
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
    finally:
        os.close(fd)
    size: int = struct.unpack("Q", buf)[0]
    return size


def holders(device: Path | str, *, sysfs: Path = _SYSFS) -> list[str]:
    """Kernel names of devices stacked on ``device`` (device-mapper, md): sorted.

    Raises FsError when sysfs has no entry for the device: "could not look" is not "none".
    """
    directory = _sysfs_dir(device, sysfs) / "holders"
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        raise FsError(device, f"no {directory} in sysfs; cannot tell what holds it") from None


def _fd_mount_id(fdinfo: Path) -> int | None:
    try:
        text = fdinfo.read_text()
    except OSError:
        return None
    match = re.search(r"^mnt_id:\s*([0-9]+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


class _MountTypes:
    """mount id -> fs type, per mount namespace, read lazily once per scan."""

    def __init__(self, proc_root: Path) -> None:
        self._proc_root = proc_root
        self._by_namespace: dict[str, dict[int, str]] = {}

    def fs_type(self, pid: str, mount_id: int) -> str | None:
        try:
            namespace = os.readlink(self._proc_root / pid / "ns" / "mnt")
        except OSError:
            namespace = f"pid:{pid}"
        table = self._by_namespace.get(namespace)
        if table is None:
            try:
                text = os.fsdecode((self._proc_root / pid / "mountinfo").read_bytes())
                table = {m.mount_id: m.fs_type for m in parse_mountinfo(text)}
            except (OSError, ValueError):
                table = {}
            self._by_namespace[namespace] = table
        return table.get(mount_id)


def open_by(device: Path | str, *, proc_root: Path = _PROC) -> list[int]:
    """Pids of processes holding ``device`` open (through any name of it): sorted.

    Each ``/proc/<pid>/fd/<n>`` matches when its link text is the device's resolved path, or
    when it is a block device with the same ``st_rdev`` (a pod opening the published bind,
    a container's own node). Processes and fds that vanish mid-scan, and ones we may not
    look at, are skipped. Only fds on devtmpfs/tmpfs (found through ``fdinfo``'s
    ``mnt_id``) are stat-ed: elsewhere a stat could hang on a dead disk (maybe the very
    device being checked) or server, and device nodes do not live there. When the mount
    cannot be told, the fd is stat-ed: finding a user beats a fast answer.

    Kernel-held references (a mount, a loop device backed by the node, device-mapper) do
    not show here: see :func:`mounts_of_device` and :func:`holders`.
    """
    device = Path(device)
    rdev = _block_device(device).st_rdev
    real = os.path.realpath(device)
    types = _MountTypes(proc_root)
    found: list[int] = []
    try:
        entries = os.listdir(proc_root)
    except OSError as exc:
        raise FsError(device, f"cannot list {proc_root}: {exc}") from None
    for pid in entries:
        if not pid.isdigit():
            continue
        fd_dir = proc_root / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or not ours to look at
        for fd in fds:
            if _fd_holds(fd_dir / fd, real, rdev, pid, types):
                found.append(int(pid))
                break
    return sorted(found)


def _fd_holds(link: Path, real: str, rdev: int, pid: str, types: _MountTypes) -> bool:
    try:
        target = os.readlink(link)
    except OSError:
        return False
    if target == real:
        return True
    if not target.startswith("/"):
        return False  # socket:[...], pipe:[...], anon_inode:...
    mount_id = _fd_mount_id(link.parent.parent / "fdinfo" / link.name)
    if mount_id is not None:
        fs_type = types.fs_type(pid, mount_id)
        if fs_type is not None and fs_type not in DEVICE_NODE_FS:
            return False  # a file on a disk or a server: not a device node, never stat it
    try:
        st = os.stat(link)
    except OSError:
        return False  # the fd or the process went away, or is not ours to look at
    return stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev
