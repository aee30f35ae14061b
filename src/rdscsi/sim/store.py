"""The simulated appliance's state: file-backed disks, the pool, host sessions.

Disks and sessions live in memory and are saved to `<data>/state.json` (temp file +
rename) after every change; files are real sparse files under `<data>/files/`, so the
file listing and the pool usage are read from the filesystem itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rdscsi.sim.errors import (
    DISK_IN_USE,
    FILE_EXISTS,
    INVALID_PARAMETER,
    NO_SUCH_ITEM,
    NOT_ENOUGH_SPACE,
    failure,
)
from rdscsi.sim.sparse import sparse_copy
from rdscsi.sim.units import TIB

STATE_VERSION = 1
DEFAULT_POOL = "storage-pool"


@dataclass
class Traffic:
    """What `monitor-traffic` reports; rates in bit/s, times in ms. Set by tests."""

    read_ops_per_second: int = 0
    write_ops_per_second: int = 0
    read_rate: int = 0
    write_rate: int = 0
    read_time: int = 0
    write_time: int = 0
    in_flight_ops: int = 0


@dataclass
class Disk:
    slot: str
    file_path: str  # "/storage-pool/k8s/pvc-x.img", as printed
    size: int
    nvme_tcp_export: bool = False
    nvme_tcp_server_port: int = 4420
    nvme_tcp_server_nqn: str = ""
    nvme_tcp_server_allow_host_name: str = ""
    traffic: Traffic = field(default_factory=Traffic)
    comment: str = ""  # printed as a `;;;` line above the item


@dataclass
class HostConnection:
    """An NVMe/TCP session of a host on an exported disk."""

    id: int
    slot: str
    nqn: str
    host_nqn: str
    remote_address: str
    remote_port: int
    local_port: int


@dataclass(frozen=True)
class FileInfo:
    name: str  # relative, no leading slash: "storage-pool/k8s/pvc-x.img"
    kind: str  # "disk" (the pool root), "directory" or "file"
    size: int
    mtime: float


def _load_disk(raw: dict[str, Any]) -> Disk:
    traffic = Traffic(
        **{f.name: int(raw.get("traffic", {}).get(f.name, 0)) for f in fields(Traffic)}
    )
    return Disk(
        slot=str(raw["slot"]),
        file_path=str(raw["file_path"]),
        size=int(raw["size"]),
        nvme_tcp_export=bool(raw.get("nvme_tcp_export", False)),
        nvme_tcp_server_port=int(raw.get("nvme_tcp_server_port", 4420)),
        nvme_tcp_server_nqn=str(raw.get("nvme_tcp_server_nqn", "")),
        nvme_tcp_server_allow_host_name=str(raw.get("nvme_tcp_server_allow_host_name", "")),
        traffic=traffic,
        comment=str(raw.get("comment", "")),
    )


class Store:
    def __init__(
        self,
        data_dir: Path,
        pool_name: str = DEFAULT_POOL,
        pool_size: int = TIB,
        files_root: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.pool_name = pool_name
        self.pool_size = pool_size
        # Several simulators may share one (`rdscsi run --appliances N`), each its own pool.
        self.files_root = files_root or data_dir / "files"
        self.tmp_dir = data_dir / "tmp"
        self.state_path = data_dir / "state.json"
        self.disks: dict[str, Disk] = {}
        self.connections: list[HostConnection] = []
        self.next_connection_id = 1
        self._used: int | None = None  # see used_bytes
        # Serialises mutations; the copy of a disk awaits a thread while holding it.
        self.lock = asyncio.Lock()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        pool_name: str = DEFAULT_POOL,
        pool_size: int = TIB,
        files_root: Path | None = None,
    ) -> Store:
        store = cls(data_dir, pool_name, pool_size, files_root)
        (store.files_root / pool_name).mkdir(parents=True, exist_ok=True)
        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        if store.state_path.exists():
            store._load(json.loads(store.state_path.read_text()))
        return store

    def discard_partial_copies(self) -> None:
        """Half-done copies of a run that stopped mid-copy (call with the data dir locked)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def _load(self, raw: dict[str, Any]) -> None:
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_path}: unsupported state version {raw.get('version')!r}")
        self.disks = {}
        for item in raw.get("disks", []):
            disk = _load_disk(item)
            self.disks[disk.slot] = disk
        self.connections = [HostConnection(**item) for item in raw.get("connections", [])]
        self.next_connection_id = int(raw.get("next_connection_id", 1))

    def save(self) -> None:
        state = {
            "version": STATE_VERSION,
            # Shallow copies: `asdict` deep-copies every field and dominated each save.
            "disks": [
                {**vars(disk), "traffic": vars(disk.traffic)} for disk in self.disks.values()
            ],
            "connections": [vars(conn) for conn in self.connections],
            "next_connection_id": self.next_connection_id,
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        # Compact: the whole state is rewritten on every change, so its size is its cost.
        tmp.write_text(json.dumps(state, separators=(",", ":")) + "\n")
        # Rename is atomic: a reader (or a restart) sees the old or the new state, never half.
        os.replace(tmp, self.state_path)

    # --- paths -------------------------------------------------------------------------

    def normalize_file_path(self, text: str) -> str:
        """`/storage-pool/k8s/x.img` (leading slash optional) or `invalid parameter`."""
        parts = text.removeprefix("/").split("/")
        if (
            len(parts) < 2
            or parts[0] != self.pool_name
            or any(part in ("", ".", "..") or "\x00" in part for part in parts)
        ):
            raise failure(INVALID_PARAMETER)
        return "/" + "/".join(parts)

    def real_path(self, name: str) -> Path:
        """Where a device path (with or without leading slash) lives under the data dir."""
        return self.files_root / name.removeprefix("/")

    def backing_path(self, slot: str) -> Path:
        disk = self.disks.get(slot)
        if disk is None:
            raise KeyError(slot)
        return self.real_path(disk.file_path)

    # --- pool --------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Logical size of every file in the pool: holes count, as the device reserves them.

        Counted from the files once, then kept up to date by the store's own changes (a
        walk per allocation made the simulator slow with hundreds of volumes)."""
        if self._used is None:
            self._used = self._walk_used()
        return self._used

    def invalidate_usage(self) -> None:
        """Files changed behind the store's back: count them again next time."""
        self._used = None

    def _account(self, delta: int) -> None:
        if self._used is not None:
            self._used += delta

    def _walk_used(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.files_root / self.pool_name):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue
        return total

    def free_bytes(self) -> int:
        return max(0, self.pool_size - self.used_bytes())

    def check_space(self, extra: int, pool_full: bool) -> None:
        if pool_full or self.used_bytes() + extra > self.pool_size:
            raise failure(NOT_ENOUGH_SPACE)

    # --- disks -------------------------------------------------------------------------

    def _check_new(self, disk: Disk, pool_full: bool) -> Path:
        # A taken slot answers like a taken path: the driver needs one "exists" case only.
        if disk.slot in self.disks:
            raise failure(FILE_EXISTS)
        target = self.real_path(disk.file_path)
        if target.exists() or target.is_symlink():
            raise failure(FILE_EXISTS)
        for parent in target.relative_to(self.files_root).parents:
            if (self.files_root / parent).is_file():
                raise failure(INVALID_PARAMETER)
        self.check_space(disk.size, pool_full)
        return target

    def add_disk(self, disk: Disk, pool_full: bool = False) -> None:
        target = self._check_new(disk, pool_full)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as handle:
            handle.truncate(disk.size)  # sparse: no blocks allocated
        self._account(disk.size)
        self.disks[disk.slot] = disk
        self.save()

    async def copy_disk(self, disk: Disk, source: Disk, pool_full: bool = False) -> None:
        """Copy-on-write copy of `source` into the new `disk` (size >= source size)."""
        if disk.size < source.size:
            raise failure(INVALID_PARAMETER)
        target = self._check_new(disk, pool_full)
        part = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            await asyncio.to_thread(sparse_copy, self.real_path(source.file_path), part, disk.size)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        self._account(disk.size)
        self.disks[disk.slot] = disk
        self.save()

    def grow(self, slot: str, size: int, pool_full: bool = False) -> None:
        disk = self.disks[slot]
        if size < disk.size:
            raise failure(INVALID_PARAMETER)
        if size == disk.size:
            return
        self.check_space(size - disk.size, pool_full)
        os.truncate(self.real_path(disk.file_path), size)
        self._account(size - disk.size)
        disk.size = size
        self.save()

    def update(self, slot: str, **changes: Any) -> None:
        disk = self.disks[slot]
        for key, value in changes.items():
            setattr(disk, key, value)
        self.save()

    def rename_disk(self, slot: str, new_slot: str) -> None:
        """`/disk set ... slot=`: the disk keeps its file; its sessions follow it."""
        if new_slot == slot:
            return
        if new_slot in self.disks or new_slot == self.pool_name:
            raise failure(INVALID_PARAMETER)
        disk = self.disks.pop(slot)
        disk.slot = new_slot
        self.disks[new_slot] = disk
        for conn in self.connections:
            if conn.slot == slot:
                conn.slot = new_slot
        self.save()

    def remove_disk(self, slot: str, refuse_in_use: bool = False) -> None:
        """The disk goes; its backing file stays (as on the device)."""
        if refuse_in_use and any(conn.slot == slot for conn in self.connections):
            raise failure(DISK_IN_USE)
        del self.disks[slot]
        # The device drops the sessions of an export that no longer exists.
        self.connections = [conn for conn in self.connections if conn.slot != slot]
        self.save()

    # --- files -------------------------------------------------------------------------

    def list_files(self) -> list[FileInfo]:
        root = self.files_root / self.pool_name
        infos = [FileInfo(self.pool_name, "disk", 0, root.stat().st_mtime)]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath).relative_to(self.files_root)
            for name in dirnames:
                stat = (Path(dirpath) / name).lstat()
                infos.append(FileInfo(f"{base}/{name}", "directory", 0, stat.st_mtime))
            for name in filenames:
                stat = (Path(dirpath) / name).lstat()
                infos.append(FileInfo(f"{base}/{name}", "file", stat.st_size, stat.st_mtime))
        infos.sort(key=lambda info: info.name)
        return infos

    def remove_file(self, name: str) -> None:
        name = name.removeprefix("/")
        path = self.real_path(name)
        if name == self.pool_name:
            raise failure(INVALID_PARAMETER)
        parts = name.split("/")
        if parts[0] != self.pool_name or any(p in ("", ".", "..") for p in parts):
            raise failure(NO_SUCH_ITEM)
        if not (path.exists() or path.is_symlink()):
            raise failure(NO_SUCH_ITEM)
        backed = {self.real_path(disk.file_path) for disk in self.disks.values()}
        if path in backed or (path.is_dir() and any(b.is_relative_to(path) for b in backed)):
            raise failure(DISK_IN_USE)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            self.invalidate_usage()
        else:
            self._account(-path.lstat().st_size)
            path.unlink()

    def rename_file(self, name: str, new_name: str) -> None:
        """`/file set ... name=`: within the pool; a file that backs a disk cannot be renamed."""
        name, new_name = name.removeprefix("/"), new_name.removeprefix("/")
        for text in (name, new_name):
            parts = text.split("/")
            if parts[0] != self.pool_name or any(p in ("", ".", "..") for p in parts[1:]):
                raise failure(INVALID_PARAMETER)
        path, target = self.real_path(name), self.real_path(new_name)
        if not path.is_file():
            raise failure(NO_SUCH_ITEM)
        if any(self.real_path(d.file_path) == path for d in self.disks.values()):
            raise failure(DISK_IN_USE)
        if target.exists() or target.is_symlink():
            raise failure(FILE_EXISTS)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)

    # --- host sessions -----------------------------------------------------------------

    def admit_host(self, export_nqn: str, host_nqn: str, remote_address: str) -> HostConnection:
        """A host connects to an export: refused unless the export is on and the disk's
        allow-list is empty (every host) or names the host (the driver's assumption about
        the device, docs/fencing.md). Connecting twice is one session."""
        disk = next((d for d in self.disks.values() if d.nvme_tcp_server_nqn == export_nqn), None)
        if disk is None or not disk.nvme_tcp_export:
            raise failure(NO_SUCH_ITEM)  # no such export: nothing to connect to
        allowed = {h.strip() for h in disk.nvme_tcp_server_allow_host_name.split(",") if h.strip()}
        if allowed and host_nqn not in allowed:
            raise failure(f"host {host_nqn} is not allowed to connect to {export_nqn}")
        for conn in self.connections:
            if conn.slot == disk.slot and conn.host_nqn == host_nqn:
                return conn
        return self.add_connection(disk.slot, host_nqn, remote_address, 0)

    def add_connection(
        self, slot: str, host_nqn: str, remote_address: str, remote_port: int
    ) -> HostConnection:
        disk = self.disks.get(slot)
        if disk is None:
            raise KeyError(slot)
        conn = HostConnection(
            id=self.next_connection_id,
            slot=slot,
            nqn=disk.nvme_tcp_server_nqn,
            host_nqn=host_nqn,
            remote_address=remote_address,
            remote_port=remote_port,
            local_port=disk.nvme_tcp_server_port,
        )
        self.next_connection_id += 1
        self.connections.append(conn)
        self.save()
        return conn

    def remove_connections(
        self, conn_id: int | None = None, slot: str | None = None, host_nqn: str | None = None
    ) -> int:
        def matches(conn: HostConnection) -> bool:
            return (
                (conn_id is None or conn.id == conn_id)
                and (slot is None or conn.slot == slot)
                and (host_nqn is None or conn.host_nqn == host_nqn)
            )

        kept = [conn for conn in self.connections if not matches(conn)]
        removed = len(self.connections) - len(kept)
        if removed:
            self.connections = kept
            self.save()
        return removed
