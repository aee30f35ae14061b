"""StorageClass parameters, capabilities and capacity ranges: validated before any work.

Every rejection names the parameter or field, for INVALID_ARGUMENT / OUT_OF_RANGE.

Sizes are what the kernel can honour: every capacity is a multiple of :data:`SECTOR`
(4096 bytes, the largest logical block size an NVMe namespace or a loop device uses, so a
device never comes out a few bytes short of what was reported), and at least the minimum
of the filesystem that will be made on it (:data:`rdscsi.io.host.mkfs.MINIMUM_SIZE`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from ..io.host.mkfs import (
    MINIMUM_SIZE,
    InvalidFsOptionError,
    UnsupportedFsError,
    validate_mkfs_options,
)
from . import csi_pb2 as pb
from .naming import APPLIANCE_NAME, APPLIANCE_NAME_MAX
from .status import RPCError, invalid, shown

GIB = 1 << 30
DEFAULT_SIZE = GIB
SECTOR = 4096
MAX_SIZE = ((1 << 63) - 1) // SECTOR * SECTOR
DEFAULT_FS = "ext4"

# Set by the external-provisioner and its siblings. With --extra-create-metadata it passes
# the claim's namespace and name and the PV name: recorded with the volume (its disk's
# comment) so that an operator on the appliance sees whose volume it is. Other keys under
# the prefix are accepted and not used.
SIDECAR_PREFIX = "csi.storage.k8s.io/"
PVC_NAME = SIDECAR_PREFIX + "pvc/name"
PVC_NAMESPACE = SIDECAR_PREFIX + "pvc/namespace"
PV_NAME = SIDECAR_PREFIX + "pv/name"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_CLAIM_KEYS = {PVC_NAME: _DNS_SUBDOMAIN, PVC_NAMESPACE: _DNS_LABEL, PV_NAME: _DNS_SUBDOMAIN}
MAX_COMMENT = 255

# NVMe/TCP connect options carried to the node in the volume context (nvme-cli -l/-c/-k).
_INT_PARAMS = {
    "nvmeCtrlLossTmo": (0, 86_400),  # never -1 (forever): unstage would hang for good
    "nvmeReconnectDelay": (1, 3_600),
    "nvmeKeepAliveTmo": (1, 3_600),
}
MKFS_OPTIONS = "mkfsOptions"

AccessMode = pb.VolumeCapability.AccessMode
SUPPORTED_MODES = {
    AccessMode.SINGLE_NODE_WRITER,
    AccessMode.SINGLE_NODE_READER_ONLY,
    AccessMode.SINGLE_NODE_SINGLE_WRITER,
    AccessMode.SINGLE_NODE_MULTI_WRITER,
    AccessMode.MULTI_NODE_MULTI_WRITER,  # block only: KubeVirt live migration
}
READ_ONLY_MODES = {AccessMode.SINGLE_NODE_READER_ONLY, AccessMode.MULTI_NODE_READER_ONLY}
FS_TYPES = {"", "ext4", "xfs"}


def mode_name(mode: int) -> str:
    """The access mode's CSI name, or its number when it is not one (never an exception)."""
    try:
        return str(AccessMode.Mode.Name(mode))
    except ValueError:
        return f"unknown access mode {mode}"


# The appliance a class's volumes go to (`rdscsi.csi.topology`); not in the volume context
# (the context names the volume's actual appliance).
APPLIANCE = "appliance"


@dataclass(frozen=True)
class Parameters:
    """The validated StorageClass parameters: what goes into the volume context, the
    comment the volume's disk carries (the claim it was made for; may be empty), and the
    appliance the class names ('': none)."""

    context: dict[str, str]
    comment: str
    appliance: str = ""


def volume_parameters(params: Mapping[str, str], fs_type: str | None = None) -> Parameters:
    """The parameters, validated; unknown keys are refused by name.

    ``fs_type``: the filesystem the volume will be made with, whose mkfs allowlist checks
    ``mkfsOptions`` (None for a block volume: the options are not used and not passed on).
    """
    out: dict[str, str] = {}
    claim: dict[str, str] = {}
    appliance = ""
    for key, value in params.items():
        if key == APPLIANCE:
            if APPLIANCE_NAME.fullmatch(value) is None:
                raise invalid(
                    f"parameter {APPLIANCE}: {shown(value)} is not an appliance name (lower-case "
                    f"letters, digits and '-', at most {APPLIANCE_NAME_MAX} characters)"
                )
            appliance = value
        elif key in _CLAIM_KEYS:
            if _CLAIM_KEYS[key].fullmatch(value) is None:
                raise invalid(f"parameter {key}: {shown(value)} is not a Kubernetes name")
            claim[key] = value
        elif key.startswith(SIDECAR_PREFIX):
            continue
        elif key in _INT_PARAMS:
            low, high = _INT_PARAMS[key]
            try:
                number = int(value)
            except ValueError:
                raise invalid(f"parameter {key}: {shown(value)} is not an integer") from None
            if not low <= number <= high:
                raise invalid(f"parameter {key}: {number} is outside {low}..{high}")
            out[key] = str(number)
        elif key == MKFS_OPTIONS:
            if fs_type is not None:
                check_mkfs_options(fs_type, value, f"parameter {MKFS_OPTIONS}")
                out[key] = value
        else:
            known = ", ".join(sorted([*_INT_PARAMS, MKFS_OPTIONS, APPLIANCE]))
            raise invalid(
                f"parameter {shown(key)}: unknown (known: {known}, and {SIDECAR_PREFIX}*)"
            )
    return Parameters(out, _comment(claim), appliance)


def check_mkfs_options(fs_type: str, options: str, where: str) -> list[str]:
    """The options as argv, by the one allowlist the node applies too; INVALID_ARGUMENT."""
    try:
        return validate_mkfs_options(fs_type or DEFAULT_FS, options)
    except (InvalidFsOptionError, UnsupportedFsError) as exc:
        raise invalid(f"{where}: {exc}") from None


def _comment(claim: Mapping[str, str]) -> str:
    parts = []
    if PVC_NAME in claim:
        namespace = claim.get(PVC_NAMESPACE, "")
        parts.append(f"pvc={namespace + '/' if namespace else ''}{claim[PVC_NAME]}")
    if PV_NAME in claim:
        parts.append(f"pv={claim[PV_NAME]}")
    text = " ".join(parts)
    return text if len(text) <= MAX_COMMENT else text[: MAX_COMMENT - 3] + "..."


@dataclass(frozen=True)
class CapabilityCheck:
    block: bool
    multi_node: bool  # read-write-many block: may be attached to two nodes while migrating
    fs_type: str  # "" for block, or when the capability leaves it to the volume
    mode: int


def check_capability(cap: pb.VolumeCapability, where: str = "volume_capability") -> CapabilityCheck:
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise invalid(f"{where}: access_type (block or mount) is required")
    mode = cap.access_mode.mode
    if mode == AccessMode.UNKNOWN:
        raise invalid(f"{where}: access_mode is required")
    if mode not in SUPPORTED_MODES:
        raise invalid(f"{where}: access mode {mode_name(mode)} is not supported")
    block = kind == "block"
    if mode == AccessMode.MULTI_NODE_MULTI_WRITER and not block:
        raise invalid(
            f"{where}: MULTI_NODE_MULTI_WRITER needs a block volume (a filesystem mounted on "
            "two nodes at once would be corrupted)"
        )
    fs_type = "" if block else cap.mount.fs_type
    if fs_type not in FS_TYPES:
        raise invalid(f"{where}: fs_type {shown(fs_type)} is not one of ext4, xfs")
    return CapabilityCheck(
        block=block,
        multi_node=mode == AccessMode.MULTI_NODE_MULTI_WRITER,
        fs_type=fs_type,
        mode=mode,
    )


def check_capabilities(caps: list[pb.VolumeCapability]) -> list[CapabilityCheck]:
    if not caps:
        raise invalid("volume_capabilities: at least one is required")
    return [check_capability(c, f"volume_capabilities[{i}]") for i, c in enumerate(caps)]


# --- sizes ------------------------------------------------------------------------------------


def out_of_range(message: str) -> RPCError:
    return RPCError(grpc.StatusCode.OUT_OF_RANGE, message)


def round_up(size: int) -> int:
    return -(-size // SECTOR) * SECTOR


def round_down(size: int) -> int:
    return size // SECTOR * SECTOR


def minimum_size(fs_type: str) -> int:
    """The smallest volume for ``fs_type`` ("" for block)."""
    return round_up(MINIMUM_SIZE.get(fs_type, SECTOR))


def _range(rng: pb.CapacityRange | None, what: str) -> tuple[int, int]:
    required = rng.required_bytes if rng is not None else 0
    limit = rng.limit_bytes if rng is not None else 0
    if required < 0 or limit < 0:
        raise out_of_range(f"{what}: capacity_range must not be negative")
    if limit and required > limit:
        raise out_of_range(f"{what}: required_bytes {required} exceeds limit_bytes {limit}")
    return required, limit


def pick_size(
    rng: pb.CapacityRange | None, floor: int = 0, what: str = "volume", minimum: int = SECTOR
) -> int:
    """The size to create: the required bytes (or ``floor``, e.g. a snapshot's size), at
    least ``minimum``, rounded up to :data:`SECTOR`; the default size when nothing is asked.
    Never above the limit: a limit the rounding or the minimum cannot meet is OUT_OF_RANGE."""
    required, limit = _range(rng, what)
    asked = max(required, floor)
    size = round_up(max(asked or DEFAULT_SIZE, minimum))
    if limit and size > limit:
        if asked:
            raise out_of_range(
                f"{what}: needs {size} bytes (at least {max(asked, minimum)}, in whole "
                f"{SECTOR}-byte blocks), above limit_bytes {limit}"
            )
        size = round_down(limit)  # nothing asked: the default, capped by the limit
        if size < minimum:
            raise out_of_range(f"{what}: limit_bytes {limit} is below the minimum {minimum}")
    if size > MAX_SIZE:
        raise out_of_range(f"{what}: {size} bytes is too large")
    return size


def size_fits(size: int, rng: pb.CapacityRange | None, what: str) -> bool:
    """Whether an existing volume of ``size`` bytes satisfies the range (CreateVolume retry)."""
    required, limit = _range(rng, what)
    return size >= required and (not limit or size <= limit)


def expand_size(rng: pb.CapacityRange | None, current: int, what: str) -> int:
    """The size to grow to: required bytes rounded up to :data:`SECTOR`, never smaller than
    ``current``. No required size is INVALID_ARGUMENT (growing to a default would be a
    guess); a limit below the current size, or one the rounding cannot meet, OUT_OF_RANGE."""
    if rng is None or rng.required_bytes == 0:
        raise invalid(f"{what}: capacity_range.required_bytes is required to expand")
    required, limit = _range(rng, what)
    if limit and limit < current:
        raise out_of_range(
            f"{what}: limit_bytes {limit} is below the current size {current}; volumes never shrink"
        )
    size = round_up(required)
    if limit and size > limit:
        raise out_of_range(
            f"{what}: {required} bytes rounds up to {size} ({SECTOR}-byte blocks), above "
            f"limit_bytes {limit}"
        )
    if size > MAX_SIZE:
        raise out_of_range(f"{what}: {size} bytes is too large")
    return max(size, current)
