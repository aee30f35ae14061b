"""The NVMe/TCP transport: ``nvme connect`` to the appliance's export, device from sysfs.

Everything about the current state is read from sysfs on every call, never remembered:

- controllers: ``/sys/class/nvme/nvmeN/subsysnqn`` names the subsystem each one talks to;
- without native multipath a controller's namespaces are its children ``nvmeNnM`` and the
  block device is ``/dev/nvmeNnM``;
- with native multipath (the default on most distributions) the controller's children are
  hidden path devices ``nvmeXcYnZ`` and the usable device is the subsystem's head
  ``/dev/nvmeXnZ`` (also listed under ``/sys/class/nvme-subsystem/nvme-subsysX/``).

A reconnect can renumber controllers (nvme0 becomes nvme2), so a device path learnt earlier
can go stale: :meth:`NvmeTransport.find` always derives it afresh.

Only NQNs under the driver's own prefix are ever connected, disconnected or listed: an
orphan cleaner that matched too broadly once disconnected a host's own NVMe root disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rdscsi.io.host import proc
from rdscsi.io.host.transport import (
    DEFAULT_CTRL_LOSS_TMO,
    DEFAULT_KEEP_ALIVE_TMO,
    DEFAULT_RECONNECT_DELAY,
    InvalidTarget,
    KeyedLock,
    Session,
    Sleep,
    Target,
    TransportError,
    device_in_use,
    poll,
    read_text,
    validate_address,
    validate_ctrl_loss_tmo,
    validate_keep_alive_tmo,
    validate_nqn,
    validate_nqn_prefix,
    validate_port,
    validate_reconnect_delay,
)

_CTRL = re.compile(r"nvme([0-9]+)")
_SUBSYS = re.compile(r"nvme-subsys([0-9]+)")
_NAMESPACE = re.compile(r"nvme([0-9]+)n([0-9]+)")
_PATH_NAMESPACE = re.compile(r"nvme([0-9]+)c([0-9]+)n([0-9]+)")
# nvme-cli 2.x (libnvme) says "already connected"; 1.x passes the kernel's EALREADY on:
# "Failed to write to /dev/nvme-fabrics: Operation already in progress".
_ALREADY = re.compile(r"already connected|already in progress|EALREADY", re.IGNORECASE)

DEFAULT_ATTEMPTS: Final = 50  # sysfs re-checks after connect/disconnect ...
DEFAULT_INTERVAL: Final = 0.1  # ... this far apart: 5 s for the kernel to settle


# --- nvme list-subsys -o json ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NvmePath:
    """One controller (path) of a subsystem, as ``nvme list-subsys`` shows it."""

    name: str  # controller, "nvme0"
    transport: str = ""  # "tcp"
    address: str = ""  # "traddr=10.0.0.5,trsvcid=4420[,src_addr=...]"
    state: str = ""  # "live", "connecting", ...
    ana_state: str = ""  # "optimized" (nvme-cli 2.x, multipath only)


@dataclass(frozen=True, slots=True)
class NvmeSubsystem:
    name: str  # "nvme-subsys0"
    nqn: str
    paths: tuple[NvmePath, ...] = ()
    host_nqn: str = ""  # nvme-cli 2.x groups subsystems by host


def _field(obj: dict[str, object], *names: str) -> object:
    """A key looked up case-insensitively (the shapes differ in case between versions)."""
    for name in names:
        if name in obj:
            return obj[name]
    lowered = {k.lower(): v for k, v in obj.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _text(obj: dict[str, object], *names: str) -> str:
    value = _field(obj, *names)
    return value if isinstance(value, str) else ""


def _dicts(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _paths(subsys: dict[str, object]) -> list[NvmePath]:
    raw = _dicts(_field(subsys, "Paths"))
    # Some 2.x releases nest paths under each namespace instead.
    for ns in _dicts(_field(subsys, "Namespaces")):
        raw.extend(_dicts(_field(ns, "Paths")))
    paths: dict[str, NvmePath] = {}
    for item in raw:
        name = _text(item, "Name")
        if name and name not in paths:
            paths[name] = NvmePath(
                name=name,
                transport=_text(item, "Transport"),
                address=_text(item, "Address"),
                state=_text(item, "State"),
                ana_state=_text(item, "ANAState"),
            )
    return list(paths.values())


def parse_list_subsys(json_text: str) -> list[NvmeSubsystem]:
    """Subsystems from ``nvme list-subsys -o json``, for both nvme-cli generations.

    - 1.x: ``{"Subsystems": [{"Name", "NQN", "Paths": [...]}, ...]}``; releases before mid
      2019 emitted each ``{"Paths": [...]}`` as a separate array entry after its subsystem.
    - 2.x: ``[{"HostNQN", "HostID", "Subsystems": [{"Name", "NQN", "IOPolicy", "Paths"}]}]``,
      one entry per host NQN; paths may carry ``ANAState`` or sit under ``Namespaces``.

    No subsystem prints nothing, ``{}`` or ``[]``: all give ``[]``. Anything that is not
    JSON of one of these shapes raises ``ValueError``.
    """
    if not json_text.strip():
        return []
    try:
        doc = json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"nvme list-subsys: output is not JSON ({exc})") from None
    groups: list[tuple[str, list[dict[str, object]]]] = []
    if isinstance(doc, dict):
        groups.append(("", _dicts(_field(doc, "Subsystems"))))
    elif isinstance(doc, list):
        for host in _dicts(doc):
            if _field(host, "Subsystems") is not None:
                groups.append((_text(host, "HostNQN"), _dicts(_field(host, "Subsystems"))))
            elif _field(host, "NQN") is not None:  # a bare list of subsystems
                groups.append(("", [host]))
    else:
        raise ValueError(f"nvme list-subsys: unexpected JSON {type(doc).__name__}")
    result: list[NvmeSubsystem] = []
    for host_nqn, entries in groups:
        for entry in entries:
            nqn = _text(entry, "NQN", "SubsystemNQN")
            if not nqn:
                orphan_paths = _paths(entry)
                if orphan_paths and result:  # the pre-2019 split entry: belongs above
                    last = result[-1]
                    result[-1] = NvmeSubsystem(
                        last.name, last.nqn, last.paths + tuple(orphan_paths), last.host_nqn
                    )
                continue
            result.append(NvmeSubsystem(_text(entry, "Name"), nqn, tuple(_paths(entry)), host_nqn))
    return result


# --- the transport ---------------------------------------------------------------------


class NvmeTransport:
    """NVMe/TCP sessions through nvme-cli; devices and state read from sysfs.

    ``sysfs``/``dev`` are roots (tests point them at fake trees); ``nvme`` is the nvme-cli
    executable; ``timeout`` bounds each command. After a connect the device is looked for
    ``attempts`` times ``interval`` seconds apart (device nodes appear asynchronously), and
    after a disconnect the NQN's absence likewise; ``sleep`` waits between those checks (tests
    inject one that does not sleep). ``mountinfo`` is read to refuse pulling a mounted device.
    """

    name = "nvme-tcp"

    def __init__(
        self,
        nqn_prefix: str | Sequence[str],
        sysfs: Path = Path("/sys"),
        dev: Path = Path("/dev"),
        nvme: str = "nvme",
        timeout: float = 30.0,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        interval: float = DEFAULT_INTERVAL,
        sleep: Sleep | None = None,
        mountinfo: Path = Path("/proc/self/mountinfo"),
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        # One per appliance of the fleet (usually all alike); a session is ours under any.
        given = [nqn_prefix] if isinstance(nqn_prefix, str) else list(nqn_prefix)
        self.nqn_prefixes = tuple(validate_nqn_prefix(p) for p in given) or (
            validate_nqn_prefix(""),
        )
        self.nqn_prefix = self.nqn_prefixes[0]
        self.sysfs = sysfs
        self.dev = dev
        self.nvme = nvme
        self.timeout = timeout
        self.attempts = attempts
        self.interval = interval
        self._sleep = sleep
        self.mountinfo = mountinfo
        self._locks = KeyedLock()

    # --- validation --------------------------------------------------------------------

    def key(self, target: Target) -> str:
        return target.nqn

    def _nqn(self, target: Target) -> str:
        try:
            return self._under_prefix(target.nqn)
        except InvalidTarget as exc:
            raise exc.about(target) from None

    def _under_prefix(self, nqn: object) -> str:
        """`nqn` if it is well-formed and under one of our prefixes, else InvalidTarget."""
        for prefix in self.nqn_prefixes[1:]:
            with contextlib.suppress(InvalidTarget):
                return validate_nqn(nqn, "nqn", prefix)
        return validate_nqn(nqn, "nqn", self.nqn_prefix)

    def connect_argv(self, target: Target) -> list[str]:
        """The ``nvme connect`` command for ``target``, every value validated (defaults for
        the options it leaves unset: see :mod:`rdscsi.io.host.transport`)."""
        nqn = self._nqn(target)
        try:
            address = validate_address(target.address, "address")
            port = validate_port(target.port, "port")
            loss = validate_ctrl_loss_tmo(
                DEFAULT_CTRL_LOSS_TMO if target.ctrl_loss_tmo is None else target.ctrl_loss_tmo
            )
            delay = validate_reconnect_delay(
                DEFAULT_RECONNECT_DELAY
                if target.reconnect_delay is None
                else target.reconnect_delay
            )
            keep = validate_keep_alive_tmo(
                DEFAULT_KEEP_ALIVE_TMO if target.keep_alive_tmo is None else target.keep_alive_tmo
            )
        except InvalidTarget as exc:
            raise exc.about(target) from None
        return [
            self.nvme, "connect", "-t", "tcp", "-a", address, "-s", str(port), "-n", nqn,
            "-l", str(loss), "-c", str(delay), "-k", str(keep),
        ]  # fmt: skip

    # --- sysfs -------------------------------------------------------------------------

    def _entries(self, directory: Path, pattern: re.Pattern[str]) -> Iterator[Path]:
        try:
            names = sorted(p.name for p in directory.iterdir())
        except OSError:  # absent (no nvme module loaded) or vanishing under us
            return
        for name in names:
            if pattern.fullmatch(name):
                yield directory / name

    def _controllers(self, nqn: str | None = None) -> Iterator[tuple[Path, str]]:
        """(controller dir, its subsystem NQN), only those with ``nqn`` if given."""
        for ctrl in self._entries(self.sysfs / "class" / "nvme", _CTRL):
            found = read_text(ctrl / "subsysnqn")
            if found and (nqn is None or found == nqn):
                yield ctrl, found

    def _subsystems(self, nqn: str | None = None) -> Iterator[tuple[Path, str]]:
        for subsys in self._entries(self.sysfs / "class" / "nvme-subsystem", _SUBSYS):
            found = read_text(subsys / "subsysnqn")
            if found and (nqn is None or found == nqn):
                yield subsys, found

    def _namespaces(self, nqn: str) -> list[str]:
        """Block device names of the NQN's namespaces, lowest namespace first."""
        names: dict[str, tuple[int, int]] = {}
        for ctrl, _ in self._controllers(nqn):
            for child in self._entries(ctrl, _NAMESPACE):
                m = _NAMESPACE.fullmatch(child.name)
                assert m is not None
                names.setdefault(child.name, (int(m[2]), int(m[1])))
            for child in self._entries(ctrl, _PATH_NAMESPACE):
                # nvmeXcYnZ is a hidden path of the multipath head nvmeXnZ.
                m = _PATH_NAMESPACE.fullmatch(child.name)
                assert m is not None
                names.setdefault(f"nvme{m[1]}n{m[3]}", (int(m[3]), int(m[1])))
        for subsys, _ in self._subsystems(nqn):
            for child in self._entries(subsys, _NAMESPACE):
                m = _NAMESPACE.fullmatch(child.name)
                assert m is not None
                names.setdefault(child.name, (int(m[2]), int(m[1])))
        return sorted(names, key=names.__getitem__)

    def _device(self, nqn: str) -> Path | None:
        for name in self._namespaces(nqn):
            path = self.dev / name
            if path.exists():
                return path
        return None

    def _present(self, nqn: str) -> bool:
        return any(True for _ in self._controllers(nqn)) or any(True for _ in self._subsystems(nqn))

    def _gone(self, nqn: str) -> bool | None:
        return None if self._present(nqn) else True

    # --- commands ----------------------------------------------------------------------

    async def _run(self, argv: Sequence[str], target: Target | None, key: str) -> proc.Completed:
        """Run nvme-cli. A non-zero exit becomes a TransportError naming the volume (its
        cause keeps the exit status and output); CommandTimeout and NotInstalled pass
        through unchanged: "outcome unknown, retry" and "node misconfigured" are answered
        differently by the node service."""
        try:
            return await proc.run(argv, timeout=self.timeout)
        except proc.CommandFailed as exc:
            raise TransportError(str(exc), target, key) from exc

    async def _wait(self, delay: float) -> None:
        await (self._sleep or asyncio.sleep)(delay)

    async def _poll_device(self, nqn: str) -> Path | None:
        return await poll(lambda: self._device(nqn), self.attempts, self.interval, self._wait)

    async def _disconnect(self, target: Target, nqn: str) -> None:
        """Disconnect a present NQN and verify it is gone (caller holds the lock)."""
        for name in self._namespaces(nqn):
            busy = device_in_use(self.sysfs, name, self.mountinfo, self.dev / name)
            if busy:
                raise TransportError(f"not disconnecting: {busy}", target)
        failure: TransportError | proc.CommandTimeout | None = None
        try:
            await self._run([self.nvme, "disconnect", "-n", nqn], target, nqn)
        except (TransportError, proc.CommandTimeout) as exc:
            failure = exc  # it may have gone all the same (or been gone already): sysfs decides
        if await poll(lambda: self._gone(nqn), self.attempts, self.interval, self._wait):
            return
        if isinstance(failure, proc.CommandTimeout):
            raise failure  # outcome unknown: the caller retries the idempotent disconnect
        waited = self.interval * (self.attempts - 1)
        detail = f"still connected {waited:g}s after `nvme disconnect`"
        if failure is not None:
            raise TransportError(f"{detail}; {failure.detail}", target) from failure
        raise TransportError(detail, target)

    # --- the Transport protocol ----------------------------------------------------------

    def check(self, target: Target) -> None:
        self.connect_argv(target)

    async def find(self, target: Target) -> Path | None:
        return self._device(self._nqn(target))

    async def connect(self, target: Target) -> Path:
        argv = self.connect_argv(target)  # validates everything before anything runs
        nqn = self._nqn(target)
        async with self._locks.hold(nqn):
            device = self._device(nqn)
            if device is not None:
                return device
            if self._present(nqn):
                # A session without a device: still scanning (a previous call timed out),
                # or broken. Give it the usual time, then start over: nvme-cli 1.x would
                # otherwise add a duplicate controller next to it.
                device = await self._poll_device(nqn)
                if device is not None:
                    return device
                await self._disconnect(target, nqn)
            already = False
            try:
                await self._run(argv, target, nqn)
            except TransportError as exc:
                cause = exc.__cause__
                said = f"{getattr(cause, 'stderr', '')} {getattr(cause, 'stdout', '')}"
                if not isinstance(cause, proc.CommandFailed) or not _ALREADY.search(said):
                    raise
                already = True
            device = await self._poll_device(nqn)
            if device is not None:
                return device
            waited = self.interval * (self.attempts - 1)
            detail = f"connected, but no block device appeared within {waited:g}s"
            if already:
                raise TransportError(f"{detail} (nvme-cli: already connected)", target)
            # Leave nothing half-made behind: the next attempt starts from a clean slate.
            try:
                await self._disconnect(target, nqn)
            except TransportError as exc:
                detail += f"; cleaning up failed too: {exc.detail}"
            raise TransportError(detail, target)

    async def disconnect(self, target: Target) -> None:
        nqn = self._nqn(target)
        async with self._locks.hold(nqn):
            if not self._present(nqn):
                return
            await self._disconnect(target, nqn)

    async def refresh(self, target: Target) -> Path:
        """``nvme ns-rescan /dev/nvmeN`` on each controller of the target, then its device.

        The appliance normally announces a resize (namespace-changed event) and the kernel
        re-reads the size by itself; the rescan makes the new size certain before the node
        grows the filesystem."""
        nqn = self._nqn(target)
        async with self._locks.hold(nqn):
            controllers = [ctrl.name for ctrl, _ in self._controllers(nqn)]
            if not controllers:
                raise TransportError("not connected: nothing to rescan", target)
            for ctrl in controllers:
                await self._run([self.nvme, "ns-rescan", str(self.dev / ctrl)], target, nqn)
            device = self._device(nqn)
            if device is None:
                raise TransportError("no block device after the namespace rescan", target)
            return device

    def _ours(self, nqn: str) -> bool:
        """Under our prefix and well-formed: the only NQNs this driver can have connected."""
        try:
            self._under_prefix(nqn)
        except InvalidTarget:
            return False
        return True

    async def sessions(self) -> list[Session]:
        nqns = {nqn for _, nqn in self._controllers()} | {nqn for _, nqn in self._subsystems()}
        return [Session(nqn, self._device(nqn)) for nqn in sorted(filter(self._ours, nqns))]

    async def disconnect_session(self, session: Session) -> None:
        await self.disconnect(Target(volume_id="", nqn=session.key))

    async def list_subsys(self) -> list[NvmeSubsystem]:
        """Our subsystems as nvme-cli reports them (diagnostics; sysfs is what decides)."""
        done = await self._run([self.nvme, "list-subsys", "-o", "json"], None, self.nqn_prefix)
        try:
            found = parse_list_subsys(done.stdout)
        except ValueError as exc:
            raise TransportError(str(exc), key=self.nqn_prefix) from exc
        return [s for s in found if self._ours(s.nqn)]
