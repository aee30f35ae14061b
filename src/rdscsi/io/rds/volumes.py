"""Volumes and snapshots on the appliance: the operations the CSI controller calls.

The appliance prints neither a copy's source nor a snapshot's creation time, and it keeps a
disk's backing file after the disk is removed. So this store keeps what it needs to know in
the backing file's path (``print detail`` shows it as ``file-path=``), and the path also
marks a disk as the driver's own. With the default settings (``<dir>`` is
``/storage-pool/k8s``)::

    <dir>/vol/<slot>[.AS.<use>].img                          a volume
    <dir>/vol/<slot>.FROM.<kind>.<source>[.AS.<use>].img     a volume copied from a snapshot
                                                             or volume
    <dir>/snap/<slot>.OF.<source>.AT.<ms>[.AS.<use>].img     a snapshot of volume <source>,
                                                             taken at <ms> (unix ms, wall)

The markers ``FROM``, ``OF``, ``AT`` and ``AS`` are upper case because slots cannot be (the
slot allowlist is ``[a-z0-9._-]``), so a name splits in exactly one way whatever the slots
contain (``--from-`` would not do: ``pvc-a--from-volume-b`` is a valid slot). The scheme is
flat, one file per disk in two fixed directories, because the builders can only remove
``.img`` files: per-volume directories would be left behind empty.

``AS.<use>`` is the volume's kind (:class:`Kind`), recorded once when it is created and
never changed: ``block`` or the filesystem (``ext4``, ``xfs``), then the access modes it was
created for, e.g. ``pvc-1.AS.ext4.snmw-snro.img``. It lives in the path, not in the disk's
comment, because nobody can edit a disk's path afterwards and every ``print`` shows it; a
snapshot carries its source volume's kind so that a restore keeps it after the source is
gone. Volumes made before kinds were recorded have no ``AS`` part (kind None): they stay
ours and usable, and the CSI layer applies its documented rule for them.

The disk's comment carries, for people, which claim the volume belongs to (the PVC's
namespace and name, the PV name): written after the disk exists, best effort, and never
read back for a decision.

A disk is ours when its file path is exactly the path the scheme gives for its slot (the
disk's own slot, so a copy of a name is not enough). What is not ours is never changed:
lists skip it, and ``get_*``/``create_*``/``delete_*`` of its slot raise
:class:`ForeignDiskError` (an ALREADY_EXISTS conflict), so a create never adopts it and a
delete never removes it.

Every error raised names the volume or snapshot it concerns: adapter errors from below are
re-raised as a copy of the same type whose message starts with ``volume <id>:``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from rdscsi.io.rds.commands import (
    Command,
    CommandBuilder,
    validate_comment,
    validate_nqn,
    validate_port,
    validate_slot,
)
from rdscsi.io.rds.connection import RDSConnection
from rdscsi.io.rds.errors import (
    AlreadyExistsError,
    ApplianceFailureError,
    CommandSyntaxError,
    InvalidValueError,
    NotFoundError,
    RDSError,
    UnparseableOutputError,
)
from rdscsi.io.rds.fence import ALLOW_PROPERTY, OPEN, AllowList, parse_allow_list
from rdscsi.io.rds.parse import (
    ListingMemo,
    parse_ack,
    parse_disk,
    parse_disks,
    parse_files,
    parse_names,
    parse_nvme_connections,
    parse_pool,
)
from rdscsi.io.rds.records import DiskInfo, NvmeConnection, PoolInfo
from rdscsi.io.rds.sizes import validate_size

log = logging.getLogger("rdscsi.rds.volumes")

VOLUME_PREFIXES: Final = ("pvc-", "vol-")
SNAPSHOT_PREFIX: Final = "snap-"
_IMG: Final = ".img"
_FROM: Final = ".FROM."
_OF: Final = ".OF."
_AT: Final = ".AT."
_AS: Final = ".AS."
_KINDS: Final = ("snapshot", "volume")
# A kind's words: the access type and the access modes it was created for.
USES: Final = ("block", "ext4", "xfs")
MODES: Final = ("mnmw", "snmw", "snro", "snsw", "snw")


@dataclass(frozen=True, slots=True)
class Kind:
    """How a volume may be used, fixed when it is created: ``block`` or a filesystem, and
    the access modes (short tokens of the CSI names, see :data:`MODES`)."""

    use: str
    modes: frozenset[str]

    def __post_init__(self) -> None:
        if self.use not in USES:
            raise InvalidValueError("kind", self.use, f"must be one of {', '.join(USES)}")
        if not self.modes or not self.modes <= frozenset(MODES):
            raise InvalidValueError(
                "kind modes", sorted(self.modes), f"must be a non-empty subset of {MODES}"
            )

    def encode(self) -> str:
        return f"{self.use}.{'-'.join(sorted(self.modes))}"

    @classmethod
    def decode(cls, text: str) -> Kind | None:
        """The kind a path carries; None if ``text`` is not one (then the disk is not ours)."""
        return _decode_kind(text)


@functools.lru_cache(maxsize=256)
def _decode_kind(text: str) -> Kind | None:
    # A few kinds recur in every name: read each once (a sweep reads 10k names).
    use, dot, modes = text.partition(".")
    try:
        return Kind(use, frozenset(modes.split("-"))) if dot else None
    except InvalidValueError:
        return None


@dataclass(frozen=True, slots=True)
class VolumeSource:
    """What a volume was copied from: a snapshot (restore) or a volume (clone)."""

    kind: Literal["snapshot", "volume"]
    id: str


@dataclass(frozen=True, slots=True)
class Volume:
    """An exported volume as the appliance reports it.

    ``nqn``/``port`` are what the appliance prints ("" and 0 if it shows no export).
    """

    id: str  # the disk slot
    size: int  # exact bytes, from size=
    file_path: str
    nqn: str
    port: int
    source: VolumeSource | None
    kind: Kind | None = None  # None: made before kinds were recorded
    comment: str = ""  # for people: the claim it belongs to
    allow: AllowList = OPEN  # who may connect to the export (rdscsi.io.rds.fence)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A copy-on-write copy of a volume, not exported."""

    id: str  # the disk slot
    source_volume_id: str
    size: int  # exact bytes, from size=
    created_at: float  # unix seconds, wall clock, millisecond precision
    file_path: str
    kind: Kind | None = None  # the source volume's kind when the snapshot was taken


@dataclass(frozen=True)
class StoreSettings:
    pool_root: str = "/storage-pool/"
    volume_dir: str = "k8s"  # relative to pool_root
    nvme_port: int = 4420
    nqn_prefix: str = "nqn.2000-02.com.mikrotik:"


class ForeignDiskError(AlreadyExistsError):
    """The slot is taken by a disk the driver did not create: ALREADY_EXISTS, never adopted."""


@contextlib.contextmanager
def _about(what: str) -> Iterator[None]:
    """Make every adapter error raised inside name ``what`` (e.g. ``volume pvc-1``).

    The error is copied (same type and attributes, so callers still map it to its gRPC
    code) with the name put in front of its message.
    """
    try:
        yield
    except RDSError as exc:
        prefix = f"{what}: "
        if str(exc).startswith(prefix):
            raise
        named = copy.copy(exc)
        named.args = (prefix + str(exc),)
        raise named from exc


def _validate_volume_id(value: object, field: str = "volume id") -> str:
    slot = validate_slot(value, field)
    if not slot.startswith(VOLUME_PREFIXES):
        raise InvalidValueError(field, value, f"must start with {' or '.join(VOLUME_PREFIXES)}")
    return slot


def _validate_snapshot_id(value: object, field: str = "snapshot id") -> str:
    slot = validate_slot(value, field)
    if not slot.startswith(SNAPSHOT_PREFIX):
        raise InvalidValueError(field, value, f"must start with {SNAPSHOT_PREFIX}")
    return slot


def _is_slot(text: str) -> bool:
    try:
        validate_slot(text)
    except InvalidValueError:
        return False
    return True


@dataclass(frozen=True)
class _Copy:
    """What a volume's file name says about it: its source, if it is a copy, and its kind."""

    source: VolumeSource | None
    kind: Kind | None = None


class VolumeStore:
    """Idempotent volume and snapshot operations over one appliance connection.

    Concurrent calls for the same id are safe without a lock here: the appliance refuses a
    second disk with the same slot or path, and a create that loses that race re-reads and
    answers like a retry.
    """

    def __init__(
        self,
        conn: RDSConnection,
        settings: StoreSettings = StoreSettings(),  # frozen: one shared default is safe
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._settings = settings
        self._wall = wall
        # Our own builder, so file paths and the capacity query follow these settings.
        self._b = CommandBuilder(pool_root=settings.pool_root)
        base = f"{self._b.pool_root}{settings.volume_dir}"
        # Fail at start-up on bad settings rather than on the first create.
        self._vol_dir = self._b.validate_path_prefix(f"{base}/vol/", "volume dir")
        self._snap_dir = self._b.validate_path_prefix(f"{base}/snap/", "volume dir")
        self._terse: bool | None = None  # the device takes `print terse proplist=` (None: untried)
        # The sweep's listings, by command: each keeps its last reading (`ListingMemo`).
        self._memos: dict[str, ListingMemo] = {}
        validate_port(settings.nvme_port, "nvme port")
        validate_nqn(f"{settings.nqn_prefix}x", "nqn prefix")

    # --- volumes -------------------------------------------------------------------------

    async def get_volume(self, volume_id: str) -> Volume | None:
        """The volume, None if no disk has this slot, ForeignDiskError if it is not ours."""
        volume_id = _validate_volume_id(volume_id)
        with _about(f"volume {volume_id}"):
            return await self._get_volume(volume_id)

    async def create_volume(
        self,
        volume_id: str,
        size: int,
        source: VolumeSource | None = None,
        kind: Kind | None = None,
        *,
        comment: str = "",
        lookup: bool = True,
    ) -> Volume:
        """Create (or find, if an earlier call created it) an exported volume of ``size`` bytes.

        A copy must be at least as large as its source. An existing volume is returned if it
        has the same size, source and kind (one without a recorded kind, made by an older
        driver, matches any kind); otherwise AlreadyExistsError says what differs.
        ``lookup=False``: the caller has just looked the slot up and found nothing, so the
        store does not ask again (a concurrent create is still caught: the appliance
        refuses the second disk). ``comment`` is set afterwards, best effort.
        """
        volume_id = _validate_volume_id(volume_id)
        size = validate_size(size)
        if source is not None:
            _validate_source(source)
        comment = validate_comment(comment)
        nqn = validate_nqn(self._settings.nqn_prefix + volume_id, "nvme nqn")
        path = self._volume_path(volume_id, source, kind)
        with _about(f"volume {volume_id}"):
            # "Could not look it up" is not "absent": a failed lookup propagates.
            existing = await self._get_volume(volume_id) if lookup else None
            if existing is not None:
                return _check_same_volume(existing, size, source, kind)
            # Looked up after the target, so a retry succeeds even if the source is gone.
            if source is None:
                command = self._b.disk_add(
                    slot=volume_id,
                    file_path=path,
                    file_size=size,
                    nvme_port=self._settings.nvme_port,
                    nvme_nqn=nqn,
                )
            else:
                source_size = (await self._source(source)).size
                if size < source_size:
                    raise InvalidValueError(
                        "size", size, f"smaller than {source.kind} {source.id} ({source_size})"
                    )
                command = self._b.disk_add_copy(
                    source_slot=source.id,
                    slot=volume_id,
                    file_path=path,
                    file_size=size,
                    nvme_port=self._settings.nvme_port,
                    nvme_nqn=nqn,
                )
            try:
                parse_ack(await self._conn.run(command), command)
            except AlreadyExistsError:
                # A concurrent create of the same volume won; answer as a retry would.
                existing = await self._get_volume(volume_id)
                if existing is None:
                    raise AlreadyExistsError(
                        f"backing file {path} exists without a disk (left by an "
                        f"interrupted delete? delete_volume({volume_id}) removes it)"
                    ) from None
                return _check_same_volume(existing, size, source, kind)
            if comment:
                await self._comment(volume_id, comment)
            # The appliance took exactly `size` bytes (sent as a plain byte count); every later
            # lookup (a retry, ControllerGetVolume, ListVolumes) reads its size= back and a
            # retry compares it, so a third round trip here would only slow every create.
            return Volume(
                volume_id, size, path, nqn, self._settings.nvme_port, source, kind, comment
            )

    async def _comment(self, slot: str, comment: str) -> None:
        """Best effort: a comment is for people, so failing to write one fails nothing."""
        command = self._b.disk_comment(slot, comment)
        try:
            parse_ack(await self._conn.run(command), command)
        except RDSError as exc:
            log.warning("disk %s: comment not set (%s); the volume is fine", slot, exc)

    async def get_source(self, source: VolumeSource) -> Volume | Snapshot:
        """The volume or snapshot a copy would be made from; NotFoundError unless it is ours."""
        _validate_source(source)
        with _about(f"{source.kind} {source.id}"):
            return await self._source(source)

    async def delete_volume(self, volume_id: str) -> None:
        """Remove the volume and its backing file; succeeds if neither exists.

        Snapshots of the volume stay valid: they are copy-on-write copies on btrfs (reflinks)
        sharing extents, not references to the volume's file, so removing the volume frees
        only what no copy shares. A disk the appliance reports in use raises InUseError.
        """
        volume_id = _validate_volume_id(volume_id)
        with _about(f"volume {volume_id}"):
            await self._delete(volume_id, self._vol_dir)

    async def expand_volume(self, volume_id: str, size: int) -> Volume:
        """Grow the volume to exactly ``size`` bytes; a size not above the current is a no-op."""
        volume_id = _validate_volume_id(volume_id)
        size = validate_size(size)
        with _about(f"volume {volume_id}"):
            volume = await self._get_volume(volume_id)
            if volume is None:
                raise NotFoundError("no such volume")
            if size <= volume.size:
                return volume  # never shrink; an equal size is a retried expand
            command = self._b.disk_grow(volume_id, size)
            parse_ack(await self._conn.run(command), command)
            grown = await self._reread_volume(volume_id)
            if grown.size < size:
                raise ApplianceFailureError(
                    f"grown to {size} bytes, but the appliance reports {grown.size}",
                    command=command,
                )
            return grown

    async def list_volumes(self) -> list[Volume]:
        """Every volume of ours, sorted by id; disks not ours are skipped."""
        volumes: list[Volume] = []
        for prefix in VOLUME_PREFIXES:
            for disk in await self._read_prefix(prefix):
                volume = self._volume(disk)
                if volume is not None:
                    volumes.append(volume)
        return sorted(volumes, key=lambda v: v.id)

    async def set_allow_list(self, volume_id: str, hosts: frozenset[str]) -> None:
        """Let exactly ``hosts`` (host NQNs) connect to the volume's export; none: nobody."""
        volume_id = _validate_volume_id(volume_id)
        command = self._b.disk_allow_hosts(volume_id, sorted(hosts))
        with _about(f"volume {volume_id}"):
            parse_ack(await self._conn.run(command), command)

    async def sessions(self) -> list[NvmeConnection]:
        """The appliance's NVMe/TCP connections, as listed (one command for all exports: one
        line each, or the full listing on a device that refuses `terse`)."""
        if self._terse is not False:
            command = self._b.nvme_connections(terse=True)
            try:
                output = await self._conn.run(command)
                listed = parse_nvme_connections(output, command, self._memo(command))
            except CommandSyntaxError as exc:
                self._refused_terse(exc)
            else:
                self._terse = True
                return listed
        command = self._b.nvme_connections()
        return parse_nvme_connections(await self._conn.run(command), command)

    async def capacity(self) -> PoolInfo:
        """The pool's size and free bytes; NotFoundError if the appliance shows no pool."""
        command = self._b.pool_print()
        pool = parse_pool(await self._conn.run(command), command)
        if pool is None:
            raise NotFoundError(f"storage pool {self._b.mount_point} not found", command=command)
        return pool

    # --- snapshots -----------------------------------------------------------------------

    async def create_snapshot(self, snapshot_id: str, source_volume_id: str) -> Snapshot:
        """Create (or find, if an earlier call created it) a snapshot of the volume.

        Its creation time is taken once and kept in its path, so a retry reports the first.
        """
        snapshot_id = _validate_snapshot_id(snapshot_id)
        source_volume_id = _validate_volume_id(source_volume_id, "source volume id")
        with _about(f"snapshot {snapshot_id}"):
            existing = await self._get_snapshot(snapshot_id)
            if existing is not None:
                return _check_same_snapshot(existing, source_volume_id)
            source = await self._source(VolumeSource("volume", source_volume_id))
            created_ms = round(self._wall() * 1000)
            path = self._snapshot_path(snapshot_id, source_volume_id, created_ms, source.kind)
            # Not exported: a snapshot is only ever read by copying it.
            command = self._b.disk_add_copy(
                source_slot=source_volume_id, slot=snapshot_id, file_path=path
            )
            try:
                parse_ack(await self._conn.run(command), command)
            except AlreadyExistsError:
                # A concurrent create of the same snapshot won; answer as a retry would.
                existing = await self._get_snapshot(snapshot_id)
                if existing is None:
                    raise AlreadyExistsError(f"backing file {path} exists without a disk") from None
                return _check_same_snapshot(existing, source_volume_id)
            snapshot = await self._get_snapshot(snapshot_id)
            if snapshot is None:
                raise ApplianceFailureError("added, but the appliance shows no such disk")
            return snapshot

    async def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot, None if no disk has this slot, ForeignDiskError if it is not ours."""
        snapshot_id = _validate_snapshot_id(snapshot_id)
        with _about(f"snapshot {snapshot_id}"):
            return await self._get_snapshot(snapshot_id)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove the snapshot and its backing file; succeeds if neither exists.

        Volumes restored from it stay valid (independent copy-on-write copies).
        """
        snapshot_id = _validate_snapshot_id(snapshot_id)
        with _about(f"snapshot {snapshot_id}"):
            await self._delete(snapshot_id, self._snap_dir)

    async def list_snapshots(self, source_volume_id: str | None = None) -> list[Snapshot]:
        """Every snapshot of ours (of one volume, if given), sorted by id."""
        if source_volume_id is not None:
            source_volume_id = _validate_volume_id(source_volume_id, "source volume id")
        snapshots = [
            snapshot
            for disk in await self._read_prefix(SNAPSHOT_PREFIX)
            if (snapshot := self._snapshot(disk)) is not None
            and source_volume_id in (None, snapshot.source_volume_id)
        ]
        return sorted(snapshots, key=lambda s: s.id)

    # --- the scheme, for the orphan sweep (rdscsi.io.rds.orphans) --------------------------

    @property
    def connection(self) -> RDSConnection:
        return self._conn

    @property
    def builder(self) -> CommandBuilder:
        return self._b

    @property
    def directories(self) -> tuple[str, str]:
        """Where volumes' and snapshots' backing files live (absolute, ending in ``/``)."""
        return self._vol_dir, self._snap_dir

    def scheme_kind(self, slot: str, path: str | None) -> str | None:
        """``volume``, ``copy`` or ``snapshot`` when ``path`` is the scheme's backing file for
        ``slot`` (by the slot's prefix); None when the pair is not the driver's."""
        if path is None or not _is_slot(slot):
            return None
        if slot.startswith(VOLUME_PREFIXES):
            found = self._volume_copy_of(slot, path)
            if found is None:
                return None
            return "volume" if found.source is None else "copy"
        if slot.startswith(SNAPSHOT_PREFIX) and self._is_snapshot_file(slot, path):
            return "snapshot"
        return None

    async def read_disks(self, prefix: str) -> list[DiskInfo]:
        """Every disk whose slot starts with ``prefix``, with what the sweep reads (one
        command: the short form, or the full one on a device that refuses it)."""
        if self._terse is not False:
            command = self._b.disk_inventory(prefix)
            try:
                output = await self._conn.run(command)
                disks = parse_disks(output, command, self._memo(command))
            except CommandSyntaxError as exc:
                self._refused_terse(exc)
            else:
                self._terse = True
                return disks
        return await self._read_prefix(prefix)

    async def read_file_names(self, path_prefix: str) -> list[str]:
        """The names (no leading ``/``) of the files under ``path_prefix`` (one command, as
        :meth:`read_disks`)."""
        if self._terse is not False:
            command = self._b.file_inventory(path_prefix)
            try:
                output = await self._conn.run(command)
                names = parse_names(output, command, self._memo(command))
            except CommandSyntaxError as exc:
                self._refused_terse(exc)
            else:
                self._terse = True
                return [name for name in names if name]
        command = self._b.file_print_prefix(path_prefix)
        return [f.name for f in parse_files(await self._conn.run(command), command)]

    def _memo(self, command: Command) -> ListingMemo:
        return self._memos.setdefault(command.line, ListingMemo())

    def _refused_terse(self, exc: CommandSyntaxError) -> None:
        log.warning(
            "the appliance refused `print terse proplist=` (%s): the sweep reads whole "
            "listings from now on",
            exc,
        )
        self._terse = False

    # --- reading -------------------------------------------------------------------------

    async def _read_disk(self, slot: str) -> DiskInfo | None:
        command = self._b.disk_print(slot)
        return parse_disk(await self._conn.run(command), command)

    async def _read_prefix(self, prefix: str) -> list[DiskInfo]:
        command = self._b.disk_print_prefix(prefix)
        return parse_disks(await self._conn.run(command), command)

    async def _get_volume(self, volume_id: str) -> Volume | None:
        disk = await self._read_disk(volume_id)
        if disk is None:
            return None
        volume = self._volume(disk)
        if volume is None:
            raise _foreign(disk)
        return volume

    async def _reread_volume(self, volume_id: str) -> Volume:
        # What the appliance reports (its exact size=), not what was asked for.
        volume = await self._get_volume(volume_id)
        if volume is None:
            raise ApplianceFailureError("changed, but the appliance shows no such disk")
        return volume

    async def _get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        disk = await self._read_disk(snapshot_id)
        if disk is None:
            return None
        snapshot = self._snapshot(disk)
        if snapshot is None:
            raise _foreign(disk)
        return snapshot

    async def _source(self, source: VolumeSource) -> Volume | Snapshot:
        """The volume or snapshot to copy; NotFoundError unless it is ours."""
        found: Volume | Snapshot | None
        try:
            if source.kind == "snapshot":
                found = await self._get_snapshot(source.id)
            else:
                found = await self._get_volume(source.id)
        except ForeignDiskError as exc:
            # Not a volume or snapshot of this driver, so for CSI it does not exist.
            raise NotFoundError(
                f"source {source.kind} {source.id} is a disk the driver did not create"
            ) from exc
        if found is None:
            raise NotFoundError(f"source {source.kind} {source.id} does not exist")
        return found

    # --- deleting ------------------------------------------------------------------------

    async def _delete(self, slot: str, directory: str) -> None:
        """Remove disk ``slot`` and its backing file, in two commands and no lookup.

        Both commands match only our naming scheme, so a disk or file the driver did not
        create is never touched (it stays, and the delete succeeds: it was never ours).
        Each is a silent success when nothing matches, so a retry after a lost reply
        finishes the job: the disk first, as the appliance refuses to remove a file in use.
        """
        for command in (
            self._b.disk_remove_owned(slot, directory),
            self._b.file_remove_owned(slot, directory),
        ):
            parse_ack(await self._conn.run(command), command)

    # --- the path scheme -----------------------------------------------------------------

    def _volume_path(self, slot: str, source: VolumeSource | None, kind: Kind | None) -> str:
        copied = "" if source is None else f"{_FROM}{source.kind}.{source.id}"
        return f"{self._vol_dir}{slot}{copied}{_kind_part(kind)}{_IMG}"

    def _snapshot_path(
        self, slot: str, source_volume_id: str, created_ms: int, kind: Kind | None
    ) -> str:
        return (
            f"{self._snap_dir}{slot}{_OF}{source_volume_id}{_AT}{created_ms}"
            f"{_kind_part(kind)}{_IMG}"
        )

    def _volume_copy_of(self, slot: str, path: str) -> _Copy | None:
        """None unless ``path`` is the scheme's path for volume ``slot``."""
        name = path.removeprefix(self._vol_dir)
        if name == path or not name.endswith(_IMG):
            return None
        split = _split_kind(name.removesuffix(_IMG))
        if split is None:
            return None
        stem, kind = split
        if stem == slot:
            return _Copy(None, kind)
        if not stem.startswith(slot + _FROM):
            return None
        source_kind, _, source_id = stem.removeprefix(slot + _FROM).partition(".")
        if not _is_slot(source_id):
            return None
        if source_kind == "snapshot" and source_id.startswith(SNAPSHOT_PREFIX):
            return _Copy(VolumeSource("snapshot", source_id), kind)
        if source_kind == "volume" and source_id.startswith(VOLUME_PREFIXES):
            return _Copy(VolumeSource("volume", source_id), kind)
        return None

    def _is_volume_file(self, slot: str, path: str) -> bool:
        return self._volume_copy_of(slot, path) is not None

    def _volume_copy(self, disk: DiskInfo) -> _Copy | None:
        return None if disk.file_path is None else self._volume_copy_of(disk.slot, disk.file_path)

    def _snapshot_origin(self, slot: str, path: str | None) -> tuple[str, int, Kind | None] | None:
        """(source volume id, creation unix ms, kind) if ``path`` is the scheme's for
        ``slot``."""
        if path is None:
            return None
        name = path.removeprefix(self._snap_dir)
        if name == path or not name.startswith(slot + _OF) or not name.endswith(_IMG):
            return None
        split = _split_kind(name[len(slot + _OF) : -len(_IMG)])
        if split is None:
            return None
        rest, kind = split
        source_id, at, created_ms = rest.partition(_AT)
        if not at or not created_ms.isascii() or not created_ms.isdigit():
            return None
        if not source_id.startswith(VOLUME_PREFIXES) or not _is_slot(source_id):
            return None
        return source_id, int(created_ms), kind

    def _is_snapshot_file(self, slot: str, path: str) -> bool:
        return self._snapshot_origin(slot, path) is not None

    # --- records -------------------------------------------------------------------------

    def _volume(self, disk: DiskInfo) -> Volume | None:
        """The volume ``disk`` is, or None if it is not ours."""
        origin = self._volume_copy(disk)
        if origin is None or disk.file_path is None:
            return None
        return Volume(
            id=disk.slot,
            size=_exact_size(disk),
            file_path=disk.file_path,
            nqn=(disk.nvme_nqn or "") if disk.nvme_export else "",
            port=(disk.nvme_port or 0) if disk.nvme_export else 0,
            source=origin.source,
            kind=origin.kind,
            comment=disk.comment or "",
            allow=parse_allow_list(disk.raw.get(ALLOW_PROPERTY)),
        )

    def _snapshot(self, disk: DiskInfo) -> Snapshot | None:
        """The snapshot ``disk`` is, or None if it is not ours."""
        origin = self._snapshot_origin(disk.slot, disk.file_path)
        if origin is None or disk.file_path is None:
            return None
        source_volume_id, created_ms, kind = origin
        return Snapshot(
            id=disk.slot,
            source_volume_id=source_volume_id,
            size=_exact_size(disk),
            created_at=created_ms / 1000,
            file_path=disk.file_path,
            kind=kind,
        )


def _validate_source(source: VolumeSource) -> None:
    if source.kind == "snapshot":
        _validate_snapshot_id(source.id, "source snapshot id")
    elif source.kind == "volume":
        _validate_volume_id(source.id, "source volume id")
    else:
        raise InvalidValueError("source kind", source.kind, f"must be one of {_KINDS}")


def _kind_part(kind: Kind | None) -> str:
    return "" if kind is None else f"{_AS}{kind.encode()}"


def _split_kind(stem: str) -> tuple[str, Kind | None] | None:
    """``stem`` without its ``.AS.<use>`` part, and the kind; None if that part is bad."""
    rest, marker, text = stem.partition(_AS)
    if not marker:
        return stem, None
    kind = Kind.decode(text)
    return None if kind is None else (rest, kind)


def _check_same_volume(
    existing: Volume, size: int, source: VolumeSource | None, kind: Kind | None
) -> Volume:
    """``existing`` if it is what a create of (size, source, kind) makes, else AlreadyExists."""
    differences: list[str] = []
    if existing.size != size:
        differences.append(f"size {existing.size} bytes, not {size}")
    if existing.source != source:
        differences.append(f"source {_describe(existing.source)}, not {_describe(source)}")
    if existing.kind is not None and existing.kind != kind:
        shown = "none" if kind is None else kind.encode()
        differences.append(f"kind {existing.kind.encode()}, not {shown}")
    if not existing.nqn or not existing.port:
        differences.append("no NVMe/TCP export")
    if differences:
        raise AlreadyExistsError("already exists, but with " + "; ".join(differences))
    return existing


def _check_same_snapshot(existing: Snapshot, source_volume_id: str) -> Snapshot:
    if existing.source_volume_id != source_volume_id:
        raise AlreadyExistsError(
            f"already exists as a snapshot of volume {existing.source_volume_id}, "
            f"not {source_volume_id}"
        )
    return existing


def _foreign(disk: DiskInfo) -> ForeignDiskError:
    return ForeignDiskError(
        f"slot {disk.slot} is taken by a disk the driver did not create "
        f"(file-path={disk.file_path or '-'}); it is left untouched"
    )


def _describe(source: VolumeSource | None) -> str:
    return "none" if source is None else f"{source.kind} {source.id}"


def _exact_size(disk: DiskInfo) -> int:
    # Only ever an exact byte count: the humanised file-size is lossy.
    if disk.size is None:
        raise UnparseableOutputError(
            f"disk {disk.slot} printed no exact size=",
            " ".join(f"{key}={value}" for key, value in disk.raw.items()),
        )
    return disk.size
