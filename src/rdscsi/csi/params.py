"""StorageClass parameters, capabilities and capacity ranges: validated before any work.

Every rejection names the parameter or field, for INVALID_ARGUMENT / OUT_OF_RANGE.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from . import csi_pb2 as pb
from .status import RPCError, invalid

GIB = 1 << 30
DEFAULT_SIZE = GIB
MAX_SIZE = (1 << 63) - 1

# Set by the external-provisioner (--extra-create-metadata) and its siblings: accepted, unused.
SIDECAR_PREFIX = "csi.storage.k8s.io/"

# NVMe/TCP connect options carried to the node in the volume context (nvme-cli -l/-c/-k).
_INT_PARAMS = {
    "nvmeCtrlLossTmo": (0, 86_400),  # never -1 (forever): unstage would hang for good
    "nvmeReconnectDelay": (1, 3_600),
    "nvmeKeepAliveTmo": (1, 3_600),
}
_MKFS_OPTIONS = re.compile(r"^[A-Za-z0-9 =,._:-]{0,200}$")

AccessMode = pb.VolumeCapability.AccessMode
SUPPORTED_MODES = {
    AccessMode.SINGLE_NODE_WRITER,
    AccessMode.SINGLE_NODE_READER_ONLY,
    AccessMode.SINGLE_NODE_SINGLE_WRITER,
    AccessMode.SINGLE_NODE_MULTI_WRITER,
    AccessMode.MULTI_NODE_MULTI_WRITER,  # block only: KubeVirt live migration
}
FS_TYPES = {"", "ext4", "xfs"}


def volume_parameters(params: Mapping[str, str]) -> dict[str, str]:
    """The node-relevant parameters, validated; unknown keys are refused by name."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if key.startswith(SIDECAR_PREFIX):
            continue
        if key in _INT_PARAMS:
            low, high = _INT_PARAMS[key]
            try:
                number = int(value)
            except ValueError:
                raise invalid(f"parameter {key}: {value!r} is not an integer") from None
            if not low <= number <= high:
                raise invalid(f"parameter {key}: {number} is outside {low}..{high}")
            out[key] = str(number)
        elif key == "mkfsOptions":
            if not _MKFS_OPTIONS.match(value):
                raise invalid(f"parameter mkfsOptions: {value!r} has characters not allowed")
            out[key] = value
        else:
            known = ", ".join(sorted([*_INT_PARAMS, "mkfsOptions"]))
            raise invalid(f"parameter {key}: unknown (known: {known}, and {SIDECAR_PREFIX}*)")
    return out


@dataclass(frozen=True)
class CapabilityCheck:
    block: bool
    multi_node: bool  # read-write-many block: may be attached to two nodes while migrating


def check_capability(cap: pb.VolumeCapability, where: str = "volume_capability") -> CapabilityCheck:
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise invalid(f"{where}: access_type (block or mount) is required")
    mode = cap.access_mode.mode
    if mode == AccessMode.UNKNOWN:
        raise invalid(f"{where}: access_mode is required")
    if mode not in SUPPORTED_MODES:
        raise invalid(f"{where}: access mode {AccessMode.Mode.Name(mode)} is not supported")
    block = kind == "block"
    if mode == AccessMode.MULTI_NODE_MULTI_WRITER and not block:
        raise invalid(
            f"{where}: MULTI_NODE_MULTI_WRITER needs a block volume (a filesystem mounted on "
            "two nodes at once would be corrupted)"
        )
    if block and mode == AccessMode.SINGLE_NODE_READER_ONLY:
        raise invalid(
            f"{where}: a read-only raw block volume is not supported: a read-only bind of a "
            "device node does not stop writes"
        )
    if not block and cap.mount.fs_type not in FS_TYPES:
        raise invalid(f"{where}: fs_type {cap.mount.fs_type!r} is not one of ext4, xfs")
    return CapabilityCheck(block=block, multi_node=mode == AccessMode.MULTI_NODE_MULTI_WRITER)


def validate_fs_type(fs_type: str) -> str:
    if fs_type not in FS_TYPES:
        raise invalid(f"volume_capability.mount.fs_type: {fs_type!r} is not one of ext4, xfs")
    return fs_type


def check_capabilities(caps: list[pb.VolumeCapability]) -> list[CapabilityCheck]:
    if not caps:
        raise invalid("volume_capabilities: at least one is required")
    return [check_capability(c, f"volume_capabilities[{i}]") for i, c in enumerate(caps)]


def out_of_range(message: str) -> RPCError:
    return RPCError(grpc.StatusCode.OUT_OF_RANGE, message)


def pick_size(rng: pb.CapacityRange | None, floor: int = 0, what: str = "volume") -> int:
    """Exactly the required bytes (or the floor, e.g. a snapshot's size); never above the
    limit; the default size when nothing is asked."""
    required = rng.required_bytes if rng is not None else 0
    limit = rng.limit_bytes if rng is not None else 0
    if required < 0 or limit < 0:
        raise out_of_range(f"{what}: capacity_range must not be negative")
    if limit and required > limit:
        raise out_of_range(f"{what}: required_bytes {required} exceeds limit_bytes {limit}")
    size = max(required, floor) if (required or floor) else DEFAULT_SIZE
    if limit and size > limit:
        if required or floor:
            raise out_of_range(f"{what}: needs {size} bytes, above limit_bytes {limit}")
        size = limit
    if size > MAX_SIZE:
        raise out_of_range(f"{what}: {size} bytes is too large")
    return size
