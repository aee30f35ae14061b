"""The node's per-volume records: how to reach a staged volume's device, and what it did.

NodeStage learns from the volume context how to reach the device; later calls (which get no
context) read it back from ``<node state dir>/<volume id>.json``. A record is a hint for
reaching the device and the proof of what is the volume's own (its staging path, its publish
targets, its device number): the node's state itself is always observed afresh.

- Names: only ids the driver issues (:func:`rdscsi.csi.naming.is_volume_id`) become file
  names, so a record can never be written or removed outside the directory.
- Writes: a temporary file, fsync, rename, fsync of the directory: after a crash a record is
  the old one or the new one, never half.
- An unreadable record (truncated, not JSON, wrong fields) is moved aside into
  ``unreadable/`` with a log line and a Warning event, and the node goes on: one bad file
  must not keep the plugin from starting or other volumes from being served.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..io.host.transport import Target
from .naming import is_volume_id

log = logging.getLogger("rdscsi.node")

VERSION = 2
UNREADABLE = "unreadable"


@dataclass
class Published:
    """How one target was published: a second NodePublish there must ask the same."""

    block: bool
    mode: int
    read_only: bool
    flags: list[str] = field(default_factory=list)


@dataclass
class Record:
    volume_id: str
    transport: str
    staging_path: str  # resolved
    block: bool
    target: dict[str, Any]  # the Target, from the volume context
    fs_type: str = ""  # the filesystem mounted at the staging path
    read_only: bool = False  # staged read-only (a read-only attachment or access mode)
    device_ro: bool = False  # block: the device's read-only flag was set for a publish
    mode: int = 0  # the access mode it was staged with
    device: str = ""  # major:minor of the device when staged: proves binds are ours
    kind: dict[str, str] | None = None  # the volume context's kind keys; None: not recorded
    targets: dict[str, Published] = field(default_factory=dict)  # resolved target -> how
    version: int = VERSION

    def as_target(self) -> Target:
        return Target(**self.target)

    @classmethod
    def from_json(cls, raw: object) -> Record:
        """A record from its JSON; ValueError/TypeError when it is not one. Records of the
        first version (no kind, targets, device) read with those fields empty."""
        if not isinstance(raw, dict):
            raise TypeError(f"a record is a JSON object, not {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        targets = values.pop("targets", {}) or {}
        record = cls(**values)
        record.targets = {path: Published(**how) for path, how in dict(targets).items()}
        if not is_volume_id(record.volume_id) or not isinstance(record.target, dict):
            raise ValueError("volume_id or target is malformed")
        record.as_target()  # TypeError on unknown or missing target fields
        return record


Quarantined = Callable[[str, Path, Path, str], None]  # volume id, record, moved to, why


class RecordStore:
    """Records under one directory; see the module docstring for the guarantees."""

    def __init__(self, directory: Path, on_unreadable: Quarantined | None = None) -> None:
        self.directory = directory
        self._on_unreadable = on_unreadable
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, volume_id: str) -> Path:
        if not is_volume_id(volume_id):  # the RPC boundary refused it already
            raise ValueError(f"not a volume id: {volume_id!r}")
        return self.directory / f"{volume_id}.json"

    def load(self, volume_id: str) -> Record | None:
        path = self.path(volume_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            record = Record.from_json(json.loads(text))
            if record.volume_id != volume_id:
                raise ValueError(f"it names volume {record.volume_id}")
        except (ValueError, TypeError) as exc:
            self._quarantine(volume_id, path, exc)
            return None
        return record

    def save(self, record: Record) -> None:
        path = self.path(record.volume_id)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(asdict(record), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._sync_directory()

    def delete(self, volume_id: str) -> None:
        path = self.path(volume_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self._sync_directory()

    def volume_ids(self) -> list[str]:
        """Ids with a record file; files that are not records are moved aside too."""
        ids = []
        for path in sorted(self.directory.glob("*.json")):
            if is_volume_id(path.stem):
                ids.append(path.stem)
            else:
                self._quarantine(path.stem, path, ValueError("not named after a volume id"))
        return ids

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _quarantine(self, volume_id: str, path: Path, exc: Exception) -> None:
        aside = self.directory / UNREADABLE
        aside.mkdir(exist_ok=True)
        # Unique, so that nothing moved aside earlier is ever overwritten.
        moved = aside / f"{path.name}.{int(time.time() * 1000)}.{uuid.uuid4().hex[:8]}"
        why = f"{type(exc).__name__}: {exc}"[:200]
        with contextlib.suppress(FileNotFoundError):  # a concurrent call moved it first
            os.replace(path, moved)
        log.warning(
            "record %s of volume %r is unreadable (%s); moved to %s. The node no longer knows "
            "how this volume was staged: see docs/troubleshooting.md",
            path,
            volume_id,
            why,
            moved,
        )
        if self._on_unreadable is not None:
            self._on_unreadable(volume_id, path, moved, why)
