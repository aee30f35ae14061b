"""How a volume's block device appears on a node: the types every transport shares.

A :class:`Transport` turns a :class:`Target` (from the CSI volume context) into a local block
device and back. Two exist: ``nvme-tcp`` (:mod:`rdscsi.io.host.nvme`, production) and ``loop``
(:mod:`rdscsi.io.host.loop`, the built-in simulator's files attached as loop devices).

Contract, shared by both (the node service relies on it):

- ``connect`` is idempotent: a session that already exists is reused, never doubled.
- ``find`` re-derives the device from the system on every call and never caches: after a
  reconnect the kernel may renumber controllers (``/dev/nvme0n1`` becomes ``/dev/nvme2n1``).
- ``disconnect`` is idempotent and returns only once the session is verifiably gone
  (re-checked in sysfs); otherwise it raises. An unstage that reported success while the
  session lingered has corrupted filesystems in the field.
- ``disconnect`` refuses a device that is mounted or held by another block device
  (device-mapper, md), see :func:`device_in_use`: pulling it would lose written data.
- failures: a command that exits non-zero becomes :class:`TransportError` (naming the volume
  and its NQN or file; the :class:`~rdscsi.io.host.proc.CommandFailed` is its ``__cause__``); a
  command that times out raises :class:`~rdscsi.io.host.proc.CommandTimeout` (outcome unknown:
  retry) and a missing program :class:`~rdscsi.io.host.proc.NotInstalled`, both unchanged. Bad
  target values raise :class:`InvalidTarget` (also a ``ValueError``) before anything runs.
- every transport touches only its own sessions (our NQN prefix, our files root): orphan
  cleaners that matched too broadly have disconnected a host's own root disk.

NVMe/TCP connect options, when the volume context does not set them (``nvmeCtrlLossTmo``,
``nvmeReconnectDelay``, ``nvmeKeepAliveTmo``):

- ``ctrl_loss_tmo`` = :data:`DEFAULT_CTRL_LOSS_TMO` (60 s). How long the kernel keeps
  retrying a lost controller, with I/O queued, before failing it. ``-1`` (forever) makes
  every unmount/unstage hang for good once the appliance is gone, so it is refused; the
  kernel default (600 s) keeps pods stuck in Terminating for ten minutes. 60 s rides out a
  switch failover or a short network outage; a longer appliance reboot surfaces as I/O
  errors, which the filesystem handles (remount read-only), rather than as a hung node.
- ``reconnect_delay`` = :data:`DEFAULT_RECONNECT_DELAY` (5 s): twelve attempts within the
  60 s window (the kernel's default 10 s delay would leave six).
- ``keep_alive_tmo`` = :data:`DEFAULT_KEEP_ALIVE_TMO` (15 s). The kernel default (5 s) makes
  the target tear the association down on a brief stall of a busy link; 15 s tolerates that
  and still notices a dead path well inside ``ctrl_loss_tmo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar

from rdscsi.io.host.mounts import mounts_of_device, parse_mountinfo

DEFAULT_PORT: Final = 4420
DEFAULT_CTRL_LOSS_TMO: Final = 60
DEFAULT_RECONNECT_DELAY: Final = 5
DEFAULT_KEEP_ALIVE_TMO: Final = 15

# Accepted ranges (seconds). ctrl_loss_tmo 0 means "fail at once, never reconnect".
CTRL_LOSS_TMO_RANGE: Final = (0, 86_400)
RECONNECT_DELAY_RANGE: Final = (1, 3_600)
KEEP_ALIVE_TMO_RANGE: Final = (1, 3_600)
PORT_RANGE: Final = (1, 65_535)

MAX_NQN_BYTES: Final = 223  # the NVMe base specification's limit

# Lower-case NQNs only. The charset also keeps out ',' and '=': nvme-cli writes the values
# into one "key=value,key=value" string for /dev/nvme-fabrics, so a comma would let a
# volume context inject connect options.
_NQN_CHARS = re.compile(r"[a-z0-9.:-]+")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_SCOPE_ID = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # an interface name, for fe80::1%eth0
_INT = re.compile(r"-?[0-9]{1,10}")

Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a volume is exported: what the node needs to make its block device appear."""

    volume_id: str
    nqn: str  # NVMe qualified name of the export
    address: str = ""  # NVMe/TCP address (IPv4, IPv6 or host name)
    port: int = DEFAULT_PORT
    file_path: str = ""  # the appliance's backing-file path (loop transport only)
    ctrl_loss_tmo: int | None = None  # nvme connect -l; None: DEFAULT_CTRL_LOSS_TMO
    reconnect_delay: int | None = None  # -c; None: DEFAULT_RECONNECT_DELAY
    keep_alive_tmo: int | None = None  # -k; None: DEFAULT_KEEP_ALIVE_TMO


@dataclass(frozen=True, slots=True)
class Session:
    """One session of ours on this node.

    ``key`` is what :meth:`Transport.key` returns for its target: the NQN for nvme-tcp, the
    appliance-side file path (``/storage-pool/k8s/vol/pvc-1.img``) for loop. ``device`` is
    None when the session exists but has no usable block device (yet, or any more)."""

    key: str
    device: Path | None


class TransportError(Exception):
    """A transport operation failed; the message names the volume, its NQN (or file) and
    what failed."""

    def __init__(self, detail: str, target: Target | None = None, key: str | None = None) -> None:
        self.detail = detail
        self.target = target
        self.key = key if key is not None else (target.nqn if target is not None else "")
        where = []
        if target is not None and target.volume_id:
            where.append(f"volume {target.volume_id}")
        if self.key:
            where.append(f"({self.key})" if where else self.key)
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {detail}" if prefix else detail)


class TargetMissing(TransportError):
    """The appliance has no such export (the loop transport: no such backing file): the
    volume does not exist, rather than being out of reach."""


class InvalidTarget(TransportError, ValueError):
    """A target value failed validation; ``field`` names it. Nothing was run."""

    def __init__(
        self,
        field: str,
        value: object,
        reason: str,
        target: Target | None = None,
        key: str | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:120] + "..."
        super().__init__(f"invalid {field} {shown}: {reason}", target, key)

    def about(self, target: Target) -> InvalidTarget:
        """The same rejection, its message naming ``target``'s volume."""
        return InvalidTarget(self.field, self.value, self.reason, target)


class Transport(Protocol):
    """Makes a target's block device appear on (and disappear from) this node."""

    name: str  # "nvme-tcp" or "loop", as in the driver's `transport` setting

    def key(self, target: Target) -> str:
        """The :attr:`Session.key` this target's session has (to match sessions to volumes)."""
        ...

    def check(self, target: Target) -> None:
        """Raise :class:`InvalidTarget` if this transport could not use ``target`` (every
        value it would act on validated); runs nothing. The RPC boundary calls it first."""
        ...

    async def connect(self, target: Target) -> Path:
        """The target's block device, attaching it if needed (an existing session is reused)."""
        ...

    async def find(self, target: Target) -> Path | None:
        """The target's block device right now, re-derived from the system (never cached)."""
        ...

    async def disconnect(self, target: Target) -> None:
        """Detach; returns only once the session is verifiably gone (absent: no-op)."""
        ...

    async def refresh(self, target: Target) -> Path:
        """Make the kernel re-read the device's capacity after the volume grew."""
        ...

    async def sessions(self) -> list[Session]:
        """Every session of ours present on this node (orphan cleanup at start-up)."""
        ...

    async def disconnect_session(self, session: Session) -> None:
        """:meth:`disconnect` for a session from :meth:`sessions`, with no volume context
        (an orphan): same checks, same verification, still only ours."""
        ...


# --- validation -----------------------------------------------------------------------


def validate_nqn(value: object, field: str = "nqn", prefix: str | None = None) -> str:
    """``value`` if it is an allowed NQN (and, given ``prefix``, strictly under it)."""
    if not isinstance(value, str) or not value:
        raise InvalidTarget(field, value, "required (a non-empty string)")
    if len(value.encode()) > MAX_NQN_BYTES:
        raise InvalidTarget(field, value, f"longer than {MAX_NQN_BYTES} bytes")
    if not value.startswith("nqn.") or _NQN_CHARS.fullmatch(value) is None:
        raise InvalidTarget(field, value, "must start with 'nqn.' and use only [a-z0-9.:-]")
    if prefix is not None and (not value.startswith(prefix) or value == prefix):
        raise InvalidTarget(
            field, value, f"not under this driver's NQN prefix {prefix!r}: refusing to touch it"
        )
    return value


def validate_nqn_prefix(value: object, field: str = "nqn_prefix") -> str:
    """A driver's NQN prefix: it must fix at least the naming authority (``nqn.…:``), so it
    cannot match other vendors' NQNs, let alone every NQN on the host."""
    if (
        not isinstance(value, str)
        or not value.startswith("nqn.")
        or ":" not in value
        or len(value.encode()) >= MAX_NQN_BYTES
        or _NQN_CHARS.fullmatch(value) is None
    ):
        raise InvalidTarget(
            field, value, "must look like 'nqn.YYYY-MM.domain:...' using [a-z0-9.:-]"
        )
    return value


def validate_address(value: object, field: str = "address") -> str:
    """``value`` if it is an IPv4/IPv6 address or a host name; IPv6 brackets are dropped."""
    if not isinstance(value, str) or not value:
        raise InvalidTarget(field, value, "required (an IP address or host name)")
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    addr, _, scope = text.partition("%")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        ip = None
    if ip is not None:
        if not scope:
            return addr
        if ip.version == 6 and _SCOPE_ID.fullmatch(scope):
            return text
        raise InvalidTarget(field, value, "bad IPv6 scope (an interface name is expected)")
    if len(text) <= 253 and _HOSTNAME.fullmatch(text) and not text.replace(".", "").isdigit():
        return text
    raise InvalidTarget(field, value, "not an IPv4/IPv6 address or host name")


def validate_int(value: object, field: str, bounds: tuple[int, int], hint: str = "") -> int:
    """``value`` if it is an int (not bool) within ``bounds`` (inclusive)."""
    low, high = bounds
    if type(value) is not int:
        raise InvalidTarget(field, value, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidTarget(field, value, f"must be between {low} and {high}{hint}")
    return value


_CTRL_LOSS_HINT: Final = " (-1, retry forever, is refused: unmount would hang for good)"


def validate_port(value: object, field: str = "port") -> int:
    return validate_int(value, field, PORT_RANGE)


def validate_ctrl_loss_tmo(value: object, field: str = "ctrl_loss_tmo") -> int:
    return validate_int(value, field, CTRL_LOSS_TMO_RANGE, _CTRL_LOSS_HINT)


def validate_reconnect_delay(value: object, field: str = "reconnect_delay") -> int:
    return validate_int(value, field, RECONNECT_DELAY_RANGE)


def validate_keep_alive_tmo(value: object, field: str = "keep_alive_tmo") -> int:
    return validate_int(value, field, KEEP_ALIVE_TMO_RANGE)


def _context_int(
    ctx: Mapping[str, str], key: str, check: Callable[[object, str], int]
) -> int | None:
    raw = ctx.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or _INT.fullmatch(raw.strip()) is None:
        raise InvalidTarget(key, raw, "must be a decimal integer")
    return check(int(raw.strip()), key)


def target_from_context(volume_id: str, ctx: Mapping[str, str]) -> Target:
    """The target described by a CSI volume (or publish) context.

    Keys: ``nqn`` (required), ``nvmeAddress``, ``nvmePort`` (default 4420), ``filePath``,
    ``nvmeCtrlLossTmo``, ``nvmeReconnectDelay``, ``nvmeKeepAliveTmo``. A missing or invalid
    value raises :class:`InvalidTarget` (a ``ValueError``) naming the context key. Whether the
    address or file path is needed depends on the transport, which checks it on connect.
    """
    if not isinstance(volume_id, str) or not volume_id:
        raise InvalidTarget("volume_id", volume_id, "required (a non-empty string)")
    nqn = validate_nqn(ctx.get("nqn"), "nqn")
    address = ctx.get("nvmeAddress") or ""
    if address:
        address = validate_address(address, "nvmeAddress")
    port = _context_int(ctx, "nvmePort", validate_port)
    file_path = ctx.get("filePath") or ""
    if not isinstance(file_path, str) or "\x00" in file_path:
        raise InvalidTarget("filePath", file_path, "must be a path string")
    return Target(
        volume_id=volume_id,
        nqn=nqn,
        address=address,
        port=DEFAULT_PORT if port is None else port,
        file_path=file_path,
        ctrl_loss_tmo=_context_int(ctx, "nvmeCtrlLossTmo", validate_ctrl_loss_tmo),
        reconnect_delay=_context_int(ctx, "nvmeReconnectDelay", validate_reconnect_delay),
        keep_alive_tmo=_context_int(ctx, "nvmeKeepAliveTmo", validate_keep_alive_tmo),
    )


# --- helpers shared by the transports ----------------------------------------------------


class KeyedLock:
    """One asyncio lock per key (NQN, file), dropped when nobody holds or waits for it.

    Two concurrent connects of one target would both see "no session" and attach twice;
    callers lock per volume, and this makes the transport safe on its own as well."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


async def poll(
    probe: Callable[[], _T | None], attempts: int, interval: float, sleep: Sleep
) -> _T | None:
    """``probe()`` until it returns something not None, at most ``attempts`` times."""
    for attempt in range(attempts):
        found = probe()
        if found is not None:
            return found
        if attempt + 1 < attempts:
            await sleep(interval)
    return None


def read_text(path: Path) -> str | None:
    """A sysfs attribute's value (stripped), or None when it vanished or cannot be read:
    sysfs entries come and go under us while controllers connect and disconnect."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def device_in_use(sysfs: Path, name: str, mountinfo: Path, node: Path | None = None) -> str | None:
    """Why block device ``name`` (``nvme0n1``, ``loop3``) must not be pulled, or None.

    In use means: it (or one of its partitions) is mounted in our mount namespace, its
    device node ``node`` is bind-mounted somewhere (a raw block volume published to a pod:
    such a bind shows the major:minor of devtmpfs, not the device's, and would outlive the
    device and then reach whatever reuses its number), or another block device
    (device-mapper, md) holds it. An open file descriptor without a mount is not visible
    here; the node service owns the mounts and unmounts first.
    """
    block = sysfs / "class" / "block" / name
    numbers: dict[str, str] = {}
    dev = read_text(block / "dev")
    if dev:
        numbers[dev] = name
    try:
        children = sorted(block.iterdir()) if block.is_dir() else []
    except OSError:
        children = []
    for child in children:
        if child.name.startswith(name) and (child / "partition").exists():
            part = read_text(child / "dev")
            if part:
                numbers[part] = child.name
    holders = block / "holders"
    try:
        held = sorted(h.name for h in holders.iterdir()) if holders.is_dir() else []
    except OSError:
        held = []
    if held:
        return f"/dev/{name} is held by {', '.join(held)}"
    if not numbers:
        return None
    try:
        lines = mountinfo.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # mountinfo: id parent major:minor root mount-point ...
        if len(fields) > 4 and fields[2] in numbers:
            return f"/dev/{numbers[fields[2]]} is mounted at {fields[4]}"
    if node is not None:
        try:
            binds = mounts_of_device(node, parse_mountinfo("\n".join(lines)))
        except (OSError, ValueError):
            binds = []  # no such node here (or not a block device): nothing bound through it
        if binds:
            return f"/dev/{name} is bound at {binds[0].mount_point}"
    return None
