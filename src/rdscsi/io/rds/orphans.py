"""The appliance side of the orphan sweep: what of the driver's is there, and the three
things the sweep ever does to an orphan (quarantine, restore, delete).

`inventory` lists, in five commands whatever the count (the disks of each slot prefix,
quarantined ones included, and the files under the driver's directory; one short line per
object, `print terse proplist=`, or the full listing on a device that refuses it), every disk and
backing file that is the driver's by the path scheme of `rdscsi.io.rds.volumes`. Nothing
else is ever listed as an object: a disk whose file path is not the scheme's for its slot,
or a file in the driver's directory whose name is not, is someone else's and is left alone.
Each object is a `Stored`:

- a volume, a copy (a volume cloned or restored) or a snapshot: a disk and its file;
- `disk`: a disk of the driver whose backing file is gone;
- `file`: a volume's backing file without its disk (the rest of an interrupted delete);
- `half-made copy`: a copy's or a snapshot's file without its disk (a clone, restore or
  snapshot cut short on the appliance, or the rest of an interrupted delete).

Quarantine renames, it never deletes, and the new name carries the time (`q<unix ms>.`
before the original, kept whole so a restore renames it back exactly): a disk gets the
slot `q<ms>.<slot>` with its export disabled (its file stays where it is), a file without a
disk the name `q<ms>.<name>` in its own directory.
`Stored.allow` carries each exported volume's allow-list, so the fence's convergence needs no
command of its own. Renaming a disk's slot and a file are the
two appliance behaviours the sweep assumes beyond the reference (docs/fencing.md):
`disk_rename` and `file_rename` in `rdscsi.io.rds.commands` are their only senders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rdscsi.io.rds.commands import Command
from rdscsi.io.rds.fence import ALLOW_PROPERTY, AllowList, parse_allow_list
from rdscsi.io.rds.parse import parse_ack
from rdscsi.io.rds.records import DiskInfo
from rdscsi.io.rds.volumes import SNAPSHOT_PREFIX, VOLUME_PREFIXES, VolumeStore

QUARANTINE_PREFIX: Final = "q"
_QUARANTINED = re.compile(r"q([0-9]{1,16})\.(.+)")
_FILE_SLOT = re.compile(r"([a-z0-9][a-z0-9._-]*?)(?=\.[A-Z]|\.img$)")
EXPORTED_KINDS: Final = frozenset({"volume", "copy"})  # a restore exports these again


@dataclass(frozen=True, slots=True)
class Stored:
    """One object of the driver's on the appliance."""

    ident: str  # "disk:<slot>" or "file:<path>", with the original names: stable in quarantine
    key: str  # "disk pvc-1" or "file storage-pool/k8s/vol/pvc-1.img": its name in reports
    kind: str  # volume, copy, snapshot, disk, file, half-made copy
    slot: str  # the volume or snapshot id it belongs to: what claims name
    disk: str | None  # the disk's slot as listed now (a quarantine slot if quarantined)
    path: str  # its backing file, absolute, as named now
    quarantined_at: float | None = None  # wall seconds, from the quarantine name
    exported: bool = False  # a restore turns the export back on
    allow: AllowList | None = None  # a volume disk's allow-list (the fence's convergence)

    @property
    def structural(self) -> bool:
        """Half of a pair (a disk without its file, a file without its disk): nothing on the
        appliance can use it, whatever claims its slot."""
        return self.kind in ("disk", "file", "half-made copy")


def _quarantined(name: str) -> tuple[float | None, str]:
    m = _QUARANTINED.fullmatch(name)
    if m is None:
        return None, name
    return int(m.group(1)) / 1000.0, m.group(2)


def _quarantine_name(at: float, name: str) -> str:
    return f"{QUARANTINE_PREFIX}{round(at * 1000)}.{name}"


class OrphanStore:
    """The sweep's appliance operations, over one volume store (one appliance)."""

    def __init__(self, store: VolumeStore) -> None:
        self.store = store
        # The last inventory's disks as classified, by the disk read: a disk whose listing
        # line did not change is the same object (`ListingMemo`), so it is not classified
        # again. The disk is kept beside its item so that its id cannot be reused.
        self._classified: dict[tuple[int, bool], tuple[DiskInfo, Stored | None]] = {}

    async def inventory(self) -> list[Stored]:
        store = self.store
        disks: list[DiskInfo] = []
        for prefix in (*VOLUME_PREFIXES, SNAPSHOT_PREFIX, QUARANTINE_PREFIX):
            disks.extend(await store.read_disks(prefix))
        vol_dir, snap_dir = store.directories
        base = vol_dir[: vol_dir.rstrip("/").rfind("/") + 1]  # the driver's directory
        files = {"/" + name for name in await store.read_file_names(base) if name.endswith(".img")}
        out: list[Stored] = []
        backed: set[str] = set()
        last, classified = self._classified, {}
        for disk in disks:
            key = (id(disk), disk.file_path in files)
            seen = last.get(key)
            item = seen[1] if seen is not None and seen[0] is disk else self._disk(*key[1:], disk)
            classified[key] = (disk, item)
            if item is not None:
                backed.add(item.path)
                out.append(item)
        self._classified = classified
        for path in sorted(files - backed):
            directory, _, name = path.rpartition("/")
            directory += "/"
            if directory not in (vol_dir, snap_dir):
                continue  # a subdirectory: not the scheme's
            at, original = _quarantined(name)
            m = _FILE_SLOT.match(original)
            if m is None:
                continue
            slot = m.group(1)
            kind = store.scheme_kind(slot, directory + original)
            if kind is None:
                continue
            shown = "file" if kind == "volume" else "half-made copy"
            ident = f"file:{directory}{original}"
            out.append(Stored(ident, f"file {path[1:]}", shown, slot, None, path, at))
        return out

    def _disk(self, has_file: bool, disk: DiskInfo) -> Stored | None:
        """The sweep's view of a disk; None when it is not the driver's."""
        at, slot = _quarantined(disk.slot)
        kind = self.store.scheme_kind(slot, disk.file_path)
        if kind is None or disk.file_path is None:
            return None
        return Stored(
            f"disk:{slot}",
            f"disk {disk.slot}",
            kind if has_file else "disk",
            slot,
            disk.slot,
            disk.file_path,
            at,
            kind in EXPORTED_KINDS,
            parse_allow_list(disk.raw.get(ALLOW_PROPERTY)) if disk.nvme_export else None,
        )

    async def quarantine(self, item: Stored, at: float) -> Stored:
        """Rename into quarantine with the time `at` (wall seconds), export off."""
        b = self.store.builder
        if item.disk is not None:
            new = _quarantine_name(at, item.disk)
            command = b.disk_rename(item.disk, item.path, new, export=False)
            await self._ack(command)
            return Stored(
                item.ident, f"disk {new}", item.kind, item.slot, new, item.path, at, item.exported
            )
        directory, _, name = item.path.rpartition("/")
        new_path = f"{directory}/{_quarantine_name(at, name)}"
        await self._ack(b.file_rename(item.path, new_path))
        return Stored(item.ident, f"file {new_path[1:]}", item.kind, item.slot, None, new_path, at)

    async def restore(self, item: Stored) -> None:
        """Rename out of quarantine to the original name; a volume is exported again."""
        b = self.store.builder
        if item.disk is not None:
            _, original = _quarantined(item.disk)
            await self._ack(b.disk_rename(item.disk, item.path, original, export=item.exported))
            return
        directory, _, name = item.path.rpartition("/")
        _, original = _quarantined(name)
        await self._ack(b.file_rename(item.path, f"{directory}/{original}"))

    async def delete(self, item: Stored) -> None:
        """Remove a quarantined object: the disk (only with this file path), then the file."""
        b = self.store.builder
        if item.disk is not None:
            await self._ack(b.disk_remove_exact(item.disk, item.path))
        await self._ack(b.file_remove(item.path))

    async def _ack(self, command: Command) -> None:
        parse_ack(await self.store.connection.run(command), command)
