"""A volume's kind: block or a filesystem, and the access modes it was created for.

CreateVolume records the kind with the volume on the appliance (the adapter keeps it in
the disk's backing file path, see :mod:`rdscsi.io.rds.volumes`), and the volume context
carries it to the node, so a volume keeps its kind for its whole life:

- a block volume is never staged as a filesystem (no mkfs over a database's raw data), a
  filesystem volume never published as a raw device, ext4 never mounted as xfs;
- a single-node volume is never published to two nodes;
- restores and clones keep their source's kind (a block source cannot become a filesystem
  volume: its data would look blank to a formatter).

Volumes created before kinds were recorded have none: every supported capability is
allowed for them, as before, and the node formats one only when blkid knows no signature on
it and it reads as zeros at both ends and at evenly spaced samples between (see
``docs/troubleshooting.md``).

Which requested access modes a recorded mode permits: reading is within every mode;
SINGLE_NODE_SINGLE_WRITER permits one writer; SINGLE_NODE_WRITER and _MULTI_WRITER any
single-node use; MULTI_NODE_MULTI_WRITER (block, live migration) everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..io.rds.volumes import Kind
from .params import (
    DEFAULT_FS,
    AccessMode,
    CapabilityCheck,
    minimum_size,
    mode_name,
)
from .status import invalid, shown

ACCESS_TYPE = "accessType"  # volume context keys
FS_TYPE = "fsType"
ACCESS_MODES = "accessModes"
COPY_OF = "copyOf"

TOKENS: dict[int, str] = {
    AccessMode.SINGLE_NODE_WRITER: "snw",
    AccessMode.SINGLE_NODE_READER_ONLY: "snro",
    AccessMode.SINGLE_NODE_SINGLE_WRITER: "snsw",
    AccessMode.SINGLE_NODE_MULTI_WRITER: "snmw",
    AccessMode.MULTI_NODE_MULTI_WRITER: "mnmw",
}
_BY_TOKEN: dict[str, int] = {token: mode for mode, token in TOKENS.items()}
_BY_NAME: dict[str, int] = {mode_name(mode): mode for mode in TOKENS}
_SINGLE_NODE = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
PERMITS: dict[int, frozenset[int]] = {
    AccessMode.SINGLE_NODE_READER_ONLY: frozenset({AccessMode.SINGLE_NODE_READER_ONLY}),
    AccessMode.SINGLE_NODE_SINGLE_WRITER: frozenset(
        {AccessMode.SINGLE_NODE_SINGLE_WRITER, AccessMode.SINGLE_NODE_READER_ONLY}
    ),
    AccessMode.SINGLE_NODE_WRITER: _SINGLE_NODE,
    AccessMode.SINGLE_NODE_MULTI_WRITER: _SINGLE_NODE,
    AccessMode.MULTI_NODE_MULTI_WRITER: _SINGLE_NODE | {AccessMode.MULTI_NODE_MULTI_WRITER},
}


@dataclass(frozen=True)
class VolumeKind:
    block: bool
    fs: str  # "ext4" or "xfs"; "" for block
    modes: frozenset[int]

    def describe(self) -> str:
        use = "block" if self.block else f"a {self.fs} filesystem"
        return f"{use}, {', '.join(sorted(mode_name(m) for m in self.modes))}"

    @property
    def minimum_size(self) -> int:
        return minimum_size(self.fs)

    def refusal(self, cap: CapabilityCheck) -> str | None:
        """Why ``cap`` asks for more than this volume was created for, or None."""
        if cap.block and not self.block:
            return "it was created for a filesystem, not for raw block access"
        if self.block and not cap.block:
            return "it was created for raw block access; it is never formatted"
        if cap.fs_type and cap.fs_type != self.fs:
            return f"it was created for {self.fs}, not {cap.fs_type}"
        allowed = frozenset().union(*(PERMITS[m] for m in self.modes))
        if cap.mode not in allowed:
            return f"it was created for {self.describe()}; {mode_name(cap.mode)} exceeds that"
        return None

    def context(self) -> dict[str, str]:
        ctx = {
            ACCESS_TYPE: "block" if self.block else "mount",
            ACCESS_MODES: ",".join(sorted(mode_name(m) for m in self.modes)),
        }
        if not self.block:
            ctx[FS_TYPE] = self.fs
        return ctx

    def to_store(self) -> Kind:
        return Kind("block" if self.block else self.fs, frozenset(TOKENS[m] for m in self.modes))

    @classmethod
    def from_store(cls, kind: Kind | None) -> VolumeKind | None:
        if kind is None:
            return None
        block = kind.use == "block"
        return cls(block, "" if block else kind.use, frozenset(_BY_TOKEN[t] for t in kind.modes))


def kind_of(caps: Iterable[CapabilityCheck]) -> VolumeKind:
    """The one kind a CreateVolume's capabilities describe (a volume has one access type
    and one filesystem; an empty fs_type takes the other capabilities' or the default)."""
    checks = list(caps)
    blocks = {c.block for c in checks}
    if len(blocks) > 1:
        raise invalid("volume_capabilities: mix block and mount; a volume has one access type")
    fs_types = {c.fs_type for c in checks if c.fs_type}
    if len(fs_types) > 1:
        raise invalid(f"volume_capabilities: fs_type {' and '.join(sorted(fs_types))} at once")
    block = blocks.pop()
    fs = "" if block else (fs_types.pop() if fs_types else DEFAULT_FS)
    return VolumeKind(block, fs, frozenset(c.mode for c in checks))


def from_context(ctx: Mapping[str, str]) -> VolumeKind | None:
    """The kind the volume context carries; None for a volume created before kinds were
    recorded (no ``accessType``); INVALID_ARGUMENT when it is malformed."""
    access = ctx.get(ACCESS_TYPE)
    if access is None:
        return None
    if access not in ("block", "mount"):
        raise invalid(f"volume_context {ACCESS_TYPE}: {shown(access)} is not block or mount")
    block = access == "block"
    fs = ctx.get(FS_TYPE, "")
    if block and fs:
        raise invalid(f"volume_context {FS_TYPE}: a block volume has no filesystem")
    if not block and fs not in ("ext4", "xfs"):
        raise invalid(f"volume_context {FS_TYPE}: {shown(fs)} is not ext4 or xfs")
    modes: set[int] = set()
    for name in ctx.get(ACCESS_MODES, "").split(","):
        mode = _BY_NAME.get(name)
        if mode is None:
            raise invalid(f"volume_context {ACCESS_MODES}: {shown(name)} is not a supported mode")
        modes.add(mode)
    return VolumeKind(block, fs, frozenset(modes))
