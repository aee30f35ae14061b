"""Mounts on the node: reading ``/proc/self/mountinfo``, mounting, binding, unmounting.

The node plugin re-derives its state on every RPC (kubelet calls them out of order, twice,
or after a crash of ours), so nothing here caches: every query reads mountinfo afresh,
unless the caller passes the table it already read for this RPC (``mounts=``).

Safety rules that every caller gets:

- no stacking: :func:`mount` and :func:`bind` refuse a target that is already a mount point.
  Two mounts on one target are always a retry bug, and the lower one can never be
  unmounted cleanly once covered.
- :func:`unmount` is a plain ``umount``: never lazy (``-l`` hides a mount still in use) and
  never forced. A busy target raises :class:`TargetBusyError` naming the path.
- :func:`safe_remove_target` never removes recursively and never removes a mount point.
- mount options from a StorageClass or a PV pass an allowlist
  (:func:`validate_mount_options`) before they reach ``mount``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from rdscsi.io.host import proc

MOUNTINFO: Final = Path("/proc/self/mountinfo")

# mount may replay a journal of a big filesystem; umount flushes dirty pages first. Both are
# bounded (a hung command must not hang the RPC) but generous: killing a umount half way
# is worse than waiting for it.
MOUNT_TIMEOUT: Final = 120.0
UMOUNT_TIMEOUT: Final = 120.0

# Filesystems where device nodes live (devtmpfs; a container runtime's tmpfs /dev). A
# single-file bind from one of these may be a bind of a device node, and a stat of a path
# there touches only an in-memory inode: it cannot hang on a dead disk or server, so the
# device-matching helpers stat paths there and nowhere else.
DEVICE_NODE_FS: Final = frozenset({"devtmpfs", "tmpfs"})


class MountError(Exception):
    """A mount action failed or was refused; ``path`` is the target it was about."""

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class AlreadyMountedError(MountError):
    """The target is already a mount point: refusing to stack a second mount on it."""


class TargetBusyError(MountError):
    """``umount`` said EBUSY: something (an open file, a process cwd, a submount) uses it."""


class UnsafeTargetError(MountError):
    """:func:`safe_remove_target` refused: the path is not provably safe to remove."""


class ReadOnlyBlockBindError(MountError, ValueError):
    """A read-only bind of a block device was asked for: the kernel would not enforce it."""


class InvalidMountOptionError(ValueError):
    """A mount option outside the allowlist; ``option`` is the rejected text."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"mount option {option!r} rejected: {reason}")


# --------------------------------------------------------------------------- mountinfo


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo (see proc(5)).

    ``root`` is the path inside the filesystem that is mounted: ``/`` for a normal mount, the
    sub-path for a bind of a directory or file (``/loop3`` for a bind of ``/dev/loop3``,
    whose ``fs_type`` is then ``devtmpfs`` and ``major_minor`` that of devtmpfs, not of the
    loop device). ``options`` are the per-mount options (``ro`` here is what makes a read-only
    bind read-only); ``super_options`` are those of the filesystem.
    """

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: Path
    options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]
    # Propagation tags (``shared:3``, ``master:1``); empty for a private mount.
    optional_fields: tuple[str, ...] = field(default=())

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


_OCTAL: Final = re.compile(rb"\\([0-7]{3})")
# Commas inside double quotes do not separate (SELinux ``context="u:r:t:s0:c1,c2"``).
_OPTION: Final = re.compile(r'(?:[^,"]|"[^"]*")+')


def _unescape(text: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012`` newline,
    ``\\134`` backslash).

    Decoding happens on bytes with the filesystem encoding so a path with non-UTF-8 bytes
    round-trips to the same ``Path`` that ``os`` functions produce for it.
    """
    if "\\" not in text:
        return text
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), os.fsencode(text))
    return os.fsdecode(raw)


def _split_options(text: str) -> tuple[str, ...]:
    return tuple(_OPTION.findall(text))


def _parse_line(line: str, number: int) -> Mount:
    # Fields are separated by exactly one space; splitting on " " (not on runs of
    # whitespace) keeps an empty source field (possible with the new mount API) in place.
    fields = line.split(" ")
    try:
        separator = fields.index("-", 6)
    except ValueError:
        raise ValueError(f"mountinfo line {number}: no ' - ' separator: {line!r}") from None
    tail = fields[separator + 1 :]
    if len(tail) != 3:
        raise ValueError(f"mountinfo line {number}: expected 3 fields after ' - ': {line!r}")
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except ValueError:
        raise ValueError(f"mountinfo line {number}: bad mount ids: {line!r}") from None
    major_minor = fields[2]
    if not re.fullmatch(r"[0-9]+:[0-9]+", major_minor):
        raise ValueError(f"mountinfo line {number}: bad major:minor {major_minor!r}")
    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        major_minor=major_minor,
        root=_unescape(fields[3]),
        mount_point=Path(_unescape(fields[4])),
        options=_split_options(fields[5]),
        fs_type=_unescape(tail[0]),
        source=_unescape(tail[1]),
        super_options=_split_options(tail[2]),
        optional_fields=tuple(fields[6:separator]),
    )


def parse_mountinfo(text: str) -> list[Mount]:
    """All mounts of a mountinfo text, in file order.

    A malformed line raises ValueError: a table that could not be read must never be taken
    for "nothing is mounted there".
    """
    return [
        _parse_line(line, number)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]


def read_mounts(path: Path = MOUNTINFO) -> list[Mount]:
    """The mount table of this process's namespace, read now (never cached)."""
    return parse_mountinfo(os.fsdecode(path.read_bytes()))


# --------------------------------------------------------------------------- queries


def _canonical(path: Path | str) -> Path:
    # mountinfo shows resolved absolute paths; a target reached through a symlinked parent
    # (/var/lib/kubelet -> /data/kubelet) must compare equal to it.
    return Path(os.path.realpath(path))


def _table(mounts: Sequence[Mount] | None) -> Sequence[Mount]:
    return read_mounts() if mounts is None else mounts


def _stack_order(stack: list[Mount]) -> list[Mount]:
    """Mounts at one point, bottom first: a mount covering another has it as its parent."""
    ids = {m.mount_id for m in stack}
    covered_by = {m.parent_id: m for m in stack if m.parent_id in ids}
    bottoms = [m for m in stack if m.parent_id not in ids]
    if len(bottoms) != 1 or len(covered_by) != len(stack) - 1:
        # Not a simple chain (propagation can produce siblings): file order is mount order.
        return stack
    ordered = [bottoms[0]]
    while (above := covered_by.get(ordered[-1].mount_id)) is not None:
        ordered.append(above)
    return ordered


def mounts_at(path: Path | str, mounts: Sequence[Mount] | None = None) -> list[Mount]:
    """Every mount whose mount point is ``path``, bottom first: the last one is visible."""
    target = _canonical(path)
    return _stack_order([m for m in _table(mounts) if m.mount_point == target])


def top_mount(path: Path | str, mounts: Sequence[Mount] | None = None) -> Mount | None:
    """The visible mount at ``path``, or None when ``path`` is not a mount point."""
    stack = mounts_at(path, mounts)
    return stack[-1] if stack else None


def is_mount_point(path: Path | str, mounts: Sequence[Mount] | None = None) -> bool:
    return bool(mounts_at(path, mounts))


def major_minor(rdev: int) -> str:
    """``"259:1"`` for a device number."""
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _block_stat(dev: Path | str) -> os.stat_result:
    st = os.stat(dev)  # follows /dev/disk/by-id/... symlinks on purpose
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{dev} is not a block device")
    return st


def _path_in_fs(path: Path, fs_major_minor: str, mounts: Sequence[Mount]) -> str | None:
    """Where ``path`` (resolved) lies inside its filesystem, e.g. ``/loop3`` for /dev/loop3.

    The mount that serves ``path`` is the one with the longest mount point above it; that
    mount's root plus the rest of the path is the in-filesystem path that a bind of
    ``path`` shows as its ``root`` in mountinfo.
    """
    best: Mount | None = None
    for m in mounts:
        if (path == m.mount_point or m.mount_point in path.parents) and (
            best is None or len(m.mount_point.parts) >= len(best.mount_point.parts)
        ):
            best = m
    if best is None or best.major_minor != fs_major_minor:
        return None
    return str(PurePosixPath(best.root) / path.relative_to(best.mount_point))


def _is_node_of(path: Path, rdev: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev


def mounts_of_device(dev: Path | str, mounts: Sequence[Mount] | None = None) -> list[Mount]:
    """Every mount that uses block device ``dev``, whatever path or source string it shows.

    Two kinds are found:

    - filesystem mounts of the device and binds of directories in it: their major:minor is
      the device's ``st_rdev`` (the source string is not trusted: it says ``/dev/loop3``,
      ``/dev/disk/by-id/...`` or anything a bind inherited).
    - binds of the device node itself (block-volume publish): these show the filesystem
      holding the node (devtmpfs), so they are matched by the node's path inside that
      filesystem (``root`` ``/loop3``), and, for another node of the same device (one a
      container runtime made in its own tmpfs ``/dev``), by stat-ing the mount point.
      That stat is done only for binds from :data:`DEVICE_NODE_FS`: in-memory inodes, so
      it cannot block on a dead disk.

    Raises ValueError if ``dev`` is not a block device, OSError if it does not exist.
    """
    table = _table(mounts)
    st = _block_stat(dev)
    wanted = major_minor(st.st_rdev)
    node_fs = major_minor(st.st_dev)
    node_root = _path_in_fs(_canonical(dev), node_fs, table)

    def binds_node(m: Mount) -> bool:
        if m.root == "/":
            return False  # a whole filesystem, not a bind of one file
        # Textual match first; the stat only for what the text cannot decide.
        if m.major_minor == node_fs and m.root == node_root:
            return True
        return m.fs_type in DEVICE_NODE_FS and _is_node_of(m.mount_point, st.st_rdev)

    return [m for m in table if m.major_minor == wanted or binds_node(m)]


def device_of_mount(path: Path | str, mounts: Sequence[Mount] | None = None) -> str | None:
    """major:minor of the device behind the visible mount at ``path``; None if not mounted.

    For a bind of a device node (block publish) this is the device's own number, not the
    devtmpfs number mountinfo shows for it.
    """
    top = top_mount(path, mounts)
    if top is None:
        return None
    # Only a single-file bind from where device nodes live can be one; the stat is then of
    # an in-memory inode (never of a disk-backed or remote mount that could hang).
    if top.root != "/" and top.fs_type in DEVICE_NODE_FS and _is_block(path):
        return major_minor(os.stat(path).st_rdev)
    return top.major_minor


def _is_block(path: Path | str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- options

# Options that only tune behaviour inside the volume. Everything else is refused.
_FLAGS: Final = frozenset(
    {
        # generic VFS
        "ro",
        "rw",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "lazytime",
        "nolazytime",
        "sync",
        "async",
        "dirsync",
        "noexec",
        "nosuid",
        "nodev",
        "nosymfollow",
        # ext4 and xfs
        "discard",
        "nodiscard",
        "nobarrier",
        "barrier",
        "noquota",
        "quota",
        "usrquota",
        "grpquota",
        "prjquota",
        # ext4
        "delalloc",
        "nodelalloc",
        "auto_da_alloc",
        "noauto_da_alloc",
        "journal_checksum",
        "nojournal_checksum",
        "dioread_nolock",
        "dioread_lock",
        "block_validity",
        "noblock_validity",
        "init_itable",
        "noinit_itable",
        # xfs
        "inode64",
        "inode32",
        "largeio",
        "nolargeio",
        "uquota",
        "gquota",
        "pquota",
        "uqnoenforce",
        "gqnoenforce",
        "pqnoenforce",
        "swalloc",
        "wsync",
        # A clone or snapshot of an xfs volume carries its origin's UUID; without this the
        # second one cannot be mounted on the same node.
        "nouuid",
    }
)

_DIGITS: Final = re.compile(r"[0-9]{1,9}")
_SIZE: Final = re.compile(r"[0-9]{1,9}[kKmMgG]?")
_VALUED: Final[dict[str, re.Pattern[str]]] = {
    "errors": re.compile(r"continue|remount-ro"),
    "data": re.compile(r"ordered|journal|writeback"),
    "barrier": re.compile(r"[01]"),
    "commit": _DIGITS,
    "stripe": _DIGITS,
    "init_itable": _DIGITS,
    "inode_readahead_blks": _DIGITS,
    "max_batch_time": _DIGITS,
    "min_batch_time": _DIGITS,
    "journal_ioprio": re.compile(r"[0-7]"),
    "logbsize": _SIZE,
    "logbufs": _DIGITS,
    "allocsize": _SIZE,
    "sunit": _DIGITS,
    "swidth": _DIGITS,
}

_PRIVILEGE = "could let the volume's content gain privilege on the node"
_OPERATION = "mount operations are chosen by the driver, never passed as options"
_PROPAGATION = "mount propagation is set by the driver and the CO, not by volume options"
_SELINUX = "SELinux labels are set by the CO, not by volume options"
# Known-bad options with the reason they are refused (exact option, or its key before '=').
_REFUSED: Final[dict[str, str]] = {
    "suid": _PRIVILEGE + " (set-user-ID binaries)",
    "dev": _PRIVILEGE + " (device nodes on the volume reach host devices)",
    # exec is the default on a fresh mount, so refusing it costs nothing; its only possible
    # effect is undoing a noexec, which widens what the volume may do on the node.
    "exec": _PRIVILEGE + " (undoes noexec; exec is already the default)",
    "defaults": "implies suid, dev and exec",
    "user": "user mounts are not for a CSI driver",
    "users": "user mounts are not for a CSI driver",
    "owner": "user mounts are not for a CSI driver",
    "group": "user mounts are not for a CSI driver",
    "bind": _OPERATION,
    "rbind": _OPERATION,
    "remount": _OPERATION,
    "move": _OPERATION,
    "shared": _PROPAGATION,
    "rshared": _PROPAGATION,
    "slave": _PROPAGATION,
    "rslave": _PROPAGATION,
    "private": _PROPAGATION,
    "rprivate": _PROPAGATION,
    "unbindable": _PROPAGATION,
    "runbindable": _PROPAGATION,
    "loop": "would attach a loop device to a path",
    "offset": "loop-device option, reaches outside the volume",
    "sizelimit": "loop-device option, reaches outside the volume",
    "uid": "ownership options are for filesystems without owners (vfat...), not ext4/xfs",
    "gid": "ownership options are for filesystems without owners (vfat...), not ext4/xfs",
    "context": _SELINUX,
    "fscontext": _SELINUX,
    "defcontext": _SELINUX,
    "rootcontext": _SELINUX,
    "seclabel": _SELINUX,
    # A single volume's I/O error would crash the whole node and every other pod on it.
    "errors=panic": "turns an error on one volume into a kernel panic of the node",
    "usrjquota": "names a quota file path inside the volume",
    "grpjquota": "names a quota file path inside the volume",
    "journal_path": "names a device path outside the volume",
    "journal_dev": "names a device outside the volume",
    "logdev": "names a device outside the volume",
    "rtdev": "names a device outside the volume",
    "dax": "direct access maps device memory into processes",
}

_SAFE_TEXT: Final = re.compile(r"[a-z0-9_=.-]+")


def _check_option(option: object) -> str:
    if not isinstance(option, str):
        raise InvalidMountOptionError(repr(option), "not a string")
    if not option:
        raise InvalidMountOptionError(option, "empty option")
    if not option.isascii() or not option.isprintable():
        raise InvalidMountOptionError(option, "non-ASCII or control characters")
    if any(c.isspace() for c in option):
        raise InvalidMountOptionError(option, "contains whitespace")
    if "," in option:
        raise InvalidMountOptionError(option, "contains ',' (one option per entry)")
    if option[:2].lower() == "x-":
        raise InvalidMountOptionError(option, "userspace mount-helper options are not allowed")
    key, has_value, value = option.partition("=")
    reason = _REFUSED.get(option) or _REFUSED.get(key)
    if reason is not None:
        raise InvalidMountOptionError(option, reason)
    if not _SAFE_TEXT.fullmatch(option):
        # Quotes, slashes (paths), colons, uppercase: nothing in the allowlist needs them.
        raise InvalidMountOptionError(option, "unexpected characters")
    if has_value:
        pattern = _VALUED.get(key)
        if pattern is None:
            raise InvalidMountOptionError(option, f"unknown option {key!r}")
        if not pattern.fullmatch(value):
            raise InvalidMountOptionError(option, f"bad value for {key!r}")
    elif option not in _FLAGS:
        raise InvalidMountOptionError(option, "unknown option")
    return option


def validate_mount_options(options: Sequence[str]) -> list[str]:
    """The options, checked against the allowlist, exact duplicates dropped, order kept.

    Raises :class:`InvalidMountOptionError` (a ValueError) naming the first rejected option.
    ``ro`` together with ``rw`` is rejected: mount takes the last one, so their order would
    silently decide whether a read-only volume is writable.
    """
    if isinstance(options, str):
        # A bare string is a sequence of characters; that is always a caller's mistake.
        raise TypeError("validate_mount_options takes a sequence of options, not a str")
    result: list[str] = []
    for option in options:
        checked = _check_option(option)
        if checked not in result:
            result.append(checked)
    if "ro" in result and "rw" in result:
        raise InvalidMountOptionError("rw", "conflicts with 'ro'")
    return result


# --------------------------------------------------------------------------- actions

_FS_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


async def _mount_command(argv: Sequence[str], target: Path, timeout: float) -> None:
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode != 0:
        said = proc.excerpt(done.stderr) or proc.excerpt(done.stdout) or "no output"
        raise MountError(
            target, f"`{proc.describe(argv)}` exited with status {done.returncode}: {said}"
        )


def _refuse_stacking(target: Path) -> None:
    top = top_mount(target)
    if top is not None:
        raise AlreadyMountedError(
            target, f"already a mount point ({top.fs_type} from {top.source}); not stacking"
        )


async def mount(
    source: Path | str,
    target: Path | str,
    fs_type: str,
    options: Sequence[str] = (),
    *,
    timeout: float = MOUNT_TIMEOUT,
) -> None:
    """``mount -t fs_type -o options source target``; options pass the allowlist first.

    Raises AlreadyMountedError if ``target`` is a mount point, MountError if mount fails,
    InvalidMountOptionError / ValueError on bad options or fs type; ``proc.CommandTimeout``
    and ``proc.NotInstalled`` pass through.
    """
    target = Path(target)
    if not _FS_TYPE.fullmatch(fs_type):
        raise ValueError(f"bad filesystem type {fs_type!r}")
    checked = validate_mount_options(options)
    _refuse_stacking(target)
    argv = ["mount", "-t", fs_type]
    if checked:
        argv += ["-o", ",".join(checked)]
    # "--": neither path can then be taken for an option, whatever it starts with.
    argv += ["--", str(source), str(target)]
    await _mount_command(argv, target, timeout)


# Per-mount flags a bind mount can carry (the rest of a filesystem's options belong to the
# filesystem, set once when it is mounted at the staging path).
BIND_FLAGS: Final = frozenset(
    {
        "ro",
        "rw",
        "noatime",
        "atime",
        "nodiratime",
        "diratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nosuid",
        "nodev",
        "noexec",
    }
)
# What every filesystem the driver mounts carries, binds included: a volume's content must
# never gain privilege on the node (set-user-ID binaries, device files reaching host devices).
CONFINED: Final = ("nosuid", "nodev")


def bind_flags(options: Sequence[str]) -> list[str]:
    """The per-mount flags among (already validated) ``options``, in order."""
    return [option for option in options if option in BIND_FLAGS]


async def bind(
    source: Path | str,
    target: Path | str,
    read_only: bool = False,
    flags: Sequence[str] = (),
    *,
    timeout: float = MOUNT_TIMEOUT,
) -> None:
    """Bind ``source`` (a directory, or a block device file onto a regular file) at ``target``.

    A bind starts with the flags of the mount it comes from; ``flags`` (per-mount options,
    see :data:`BIND_FLAGS`) and ``read_only`` need a second step, ``mount -o
    remount,bind,...``, which sets the bind's flags to exactly those given: so it always
    names ``nosuid,nodev`` as well, which a filesystem bind must keep. If that step fails,
    or a read-only bind comes out writable, the bind is undone: a writable bind where
    read-only was asked for must not survive.

    ``read_only`` or ``flags`` with a block device source raise ReadOnlyBlockBindError (a
    MountError and a ValueError) before anything is mounted: the kernel ignores a
    read-only mount for device nodes (open(O_WRONLY) and write() on the bind still work),
    so such a bind would only look protected. Read-only raw block is the device's own
    read-only flag (:func:`rdscsi.io.host.fs.set_read_only`), affecting every user of it.
    """
    target = Path(target)
    flags = [flag for flag in flags if flag not in ("ro", "rw")]
    if (read_only or flags) and stat.S_ISBLK(os.stat(source).st_mode):
        raise ReadOnlyBlockBindError(
            target,
            f"a read-only bind of block device {source} would not stop writes "
            "(the kernel ignores ro mounts for device nodes); refusing",
        )
    unknown = [flag for flag in flags if flag not in BIND_FLAGS]
    if unknown:
        raise InvalidMountOptionError(unknown[0], "not a per-mount flag a bind can carry")
    _refuse_stacking(target)
    await _mount_command(["mount", "--bind", "--", str(source), str(target)], target, timeout)
    if not (read_only or flags):
        return
    wanted = ["remount", "bind", *CONFINED, *flags, "ro" if read_only else "rw"]
    try:
        await _mount_command(["mount", "-o", ",".join(wanted), "--", str(target)], target, timeout)
        top = top_mount(target)
        if top is None or top.read_only != read_only:
            raise MountError(target, "remount left the bind with the wrong read-only flag")
    except BaseException:
        await unmount(target, timeout=timeout)
        raise


async def unmount(target: Path | str, *, timeout: float = UMOUNT_TIMEOUT) -> bool:
    """Unmount the visible mount at ``target``: True if it did, False if nothing was there.

    Plain ``umount`` (no ``-l``, no ``-f``). Only the top of a stack is removed; callers
    loop if they mean all of it. Raises TargetBusyError on EBUSY, MountError otherwise.
    """
    target = Path(target)
    if not is_mount_point(target):
        return False
    argv = ["umount", "--", str(target)]
    done = await proc.run(argv, timeout=timeout, check=False)
    if done.returncode == 0:
        return True
    said = proc.excerpt(done.stderr) or proc.excerpt(done.stdout) or "no output"
    # proc.run sets LC_ALL=C, so util-linux's texts are the English ones.
    if "busy" in said:
        raise TargetBusyError(
            target, f"cannot unmount: in use (open files, a cwd or a submount): {said}"
        )
    if "not mounted" in said and not is_mount_point(target):
        return False  # another caller unmounted it between our check and umount
    raise MountError(
        target, f"`{proc.describe(argv)}` exited with status {done.returncode}: {said}"
    )


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def make_dir_target(path: Path | str) -> Path:
    """Ensure ``path`` is a directory to mount on (creating parents); return it.

    An existing directory is fine (a retry); a symlink or anything else is refused, since
    mounting through a symlink would land somewhere else.
    """
    path = Path(path)
    st = _lstat_or_none(path)
    if st is None:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o750)
            return path
        except FileExistsError:
            st = path.lstat()  # created concurrently: judge what is there now
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeTargetError(path, f"exists and is not a directory ({_kind(st)})")
    return path


def make_file_target(path: Path | str) -> Path:
    """Ensure ``path`` is a file to bind a block device onto (block publish); return it.

    Creates an empty regular file (never truncates an existing one). An existing regular
    file, or the device already bound there, is fine; anything else is refused.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        fd = os.open(
            path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640
        )
    except FileExistsError:
        st = path.lstat()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise UnsafeTargetError(
                path, f"exists and is not a regular file ({_kind(st)})"
            ) from None
        return path
    os.close(fd)
    return path


def describe_kind(st: os.stat_result) -> str:
    """``"a regular file"``, ``"a symlink"``...: what a path is, for messages."""
    name = _kind(st)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISREG, "regular file"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown file type"


Removed = Literal["absent", "removed-directory", "removed-file"]


def safe_remove_target(path: Path | str, mounts: Sequence[Mount] | None = None) -> Removed:
    """Remove a publish/stage target only if provably safe; say what was done.

    Removes an empty directory or a regular file that is not a mount point; never
    recursive. ``"absent"`` if there was nothing (idempotent retry). Anything else — a mount
    point, a non-empty directory, a symlink, a device node — raises UnsafeTargetError naming
    the path. The kernel backs the mount-point check in this mount namespace (rmdir/unlink
    of a mount point fail with EBUSY, also reported as a refusal, e.g. when ``mounts`` is
    stale). It does not in another namespace: there, removing the path silently detaches
    the mount, so the node plugin must see kubelet's mounts (Bidirectional propagation).
    """
    path = Path(path)
    st = _lstat_or_none(path)
    if st is None:
        return "absent"
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeTargetError(path, "is a symlink; refusing to remove")
    if is_mount_point(path, mounts):
        raise UnsafeTargetError(path, "is a mount point; refusing to remove")
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
            return "removed-directory"
        if stat.S_ISREG(st.st_mode):
            os.unlink(path)
            return "removed-file"
    except FileNotFoundError:
        return "absent"  # removed concurrently by a retry
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise UnsafeTargetError(path, "directory is not empty; refusing to remove") from None
        if exc.errno == errno.EBUSY:
            raise UnsafeTargetError(
                path, "is in use as a mount point; refusing to remove"
            ) from None
        raise
    raise UnsafeTargetError(path, f"is a {_kind(st)}; refusing to remove")
