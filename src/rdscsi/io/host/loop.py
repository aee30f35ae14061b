"""The loop transport: the built-in simulator's volume files attached as loop devices.

The simulator keeps each volume as a sparse file under its data directory, at the path the
appliance would use (``/storage-pool/k8s/vol/pvc-1.img`` lives at
``<files_root>/storage-pool/k8s/vol/pvc-1.img``). A node on the same machine "connects" a
volume by attaching that file to a loop device.

State is read from sysfs every time: ``/sys/block/loopN/loop/backing_file`` holds the path
of the attached file, with `` (deleted)`` appended by the kernel once the file was
unlinked. Such a device still serves the old, deleted file, so it is never handed out as
the device of a target (a new file at the same path is another volume); it is still ours
and still detached by :meth:`LoopTransport.disconnect` and listed by
:meth:`LoopTransport.sessions`.

Only files under ``files_root`` are ever attached, detached or listed.

Given an :class:`Admission` (``rdscsi run``: the simulator's, over its control socket), each
``connect`` first asks the appliance whether this host may connect to the export, as a real
``nvme connect`` would be admitted or refused by the export's allow-list, and each
``disconnect`` ends the host's session there. A refused host gets a :class:`TransportError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from rdscsi.io.host import proc
from rdscsi.io.host.fs import FsError, set_read_only
from rdscsi.io.host.transport import (
    InvalidTarget,
    KeyedLock,
    Session,
    Sleep,
    Target,
    TargetMissing,
    TransportError,
    device_in_use,
    poll,
    read_text,
)

log = logging.getLogger("rdscsi.loop")

_LOOP = re.compile(r"loop([0-9]+)")
_DELETED: Final = " (deleted)"
DEFAULT_ATTEMPTS: Final = 50  # sysfs re-checks after attach/detach ...
DEFAULT_INTERVAL: Final = 0.1  # ... this far apart


class Admission(Protocol):
    """The appliance's say on a connect (the allow-list) and its session listing."""

    async def admit(self, target: Target) -> None:
        """Raise :class:`TransportError` when the appliance refuses this host."""
        ...

    async def leave(self, target: Target) -> None:
        """This host's session to the export ended."""
        ...


@dataclass(frozen=True, slots=True)
class Attached:
    """One attached loop device, as sysfs shows it."""

    name: str  # "loop3"
    backing: str  # the file's path, without the kernel's " (deleted)"
    deleted: bool


class LoopTransport:
    """Loop devices for files under ``files_root`` (the simulator's file tree).

    ``sysfs``/``dev`` are roots (tests may point them at fake trees; the real-device tests
    use the real ones); ``losetup`` is the util-linux executable; ``timeout`` bounds each
    command; ``attempts``/``interval``/``sleep`` bound the sysfs re-checks after attaching
    and detaching; ``mountinfo`` is read to refuse detaching a mounted device.
    """

    name = "loop"

    def __init__(
        self,
        files_root: Path,
        timeout: float = 30.0,
        *,
        sysfs: Path = Path("/sys"),
        dev: Path = Path("/dev"),
        losetup: str = "losetup",
        attempts: int = DEFAULT_ATTEMPTS,
        interval: float = DEFAULT_INTERVAL,
        sleep: Sleep | None = None,
        mountinfo: Path = Path("/proc/self/mountinfo"),
        admission: Admission | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        # Resolved once: the kernel reports backing files by their real path.
        self.files_root = Path(files_root).resolve()
        self.timeout = timeout
        self.sysfs = sysfs
        self.dev = dev
        self.losetup = losetup
        self.attempts = attempts
        self.interval = interval
        self._sleep = sleep
        self.mountinfo = mountinfo
        self.admission = admission
        self._locks = KeyedLock()

    # --- paths -------------------------------------------------------------------------

    def _relative(self, target: Target) -> str:
        """The target's file path relative to files_root ("storage-pool/k8s/vol/x.img")."""
        raw = target.file_path
        if not isinstance(raw, str) or not raw.strip("/"):
            raise InvalidTarget("file_path", raw, "required for the loop transport", target)
        if any(ord(c) < 32 or c == "\x7f" for c in raw):
            raise InvalidTarget("file_path", raw, "control characters are not allowed", target)
        parts = raw.lstrip("/").split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise InvalidTarget(
                "file_path", raw, "empty, '.' and '..' segments are not allowed", target
            )
        return "/".join(parts)

    def key(self, target: Target) -> str:
        """The appliance-side path, always with one leading slash."""
        return "/" + self._relative(target)

    def backing_path(self, target: Target) -> Path:
        """Where the target's file is on this machine; never outside files_root (a symlink
        pointing out of it is refused too)."""
        path = (self.files_root / self._relative(target)).resolve()
        if not path.is_relative_to(self.files_root):
            raise InvalidTarget(
                "file_path", target.file_path, f"escapes the files root {self.files_root}", target
            )
        return path

    # --- sysfs -------------------------------------------------------------------------

    def attached(self) -> list[Attached]:
        """Every attached loop device on the node (ours or not), by device number."""
        found: list[tuple[int, Attached]] = []
        try:
            entries = list((self.sysfs / "block").iterdir())
        except OSError:
            return []
        for entry in entries:
            m = _LOOP.fullmatch(entry.name)
            if m is None:
                continue
            text = read_text(entry / "loop" / "backing_file")
            if not text:  # not attached (the "loop" directory only exists while attached)
                continue
            deleted = text.endswith(_DELETED)
            backing = text.removesuffix(_DELETED) if deleted else text
            found.append((int(m[1]), Attached(entry.name, backing, deleted)))
        return [a for _, a in sorted(found, key=lambda item: item[0])]

    def _matches(self, path: Path, *, live_only: bool) -> list[Attached]:
        wanted = str(path)
        return [a for a in self.attached() if a.backing == wanted and not (live_only and a.deleted)]

    def _device(self, path: Path) -> Path | None:
        for a in self._matches(path, live_only=True):
            device = self.dev / a.name
            if device.exists():
                return device
        return None

    def _none_left(self, path: Path) -> bool | None:
        return None if self._matches(path, live_only=False) else True

    # --- commands ----------------------------------------------------------------------

    async def _run(self, argv: Sequence[str], target: Target) -> proc.Completed:
        # Same failure contract as the nvme transport: non-zero exit -> TransportError;
        # CommandTimeout and NotInstalled pass through.
        try:
            return await proc.run(argv, timeout=self.timeout)
        except proc.CommandFailed as exc:
            raise TransportError(str(exc), target, self.key(target)) from exc

    async def _wait(self, delay: float) -> None:
        await (self._sleep or asyncio.sleep)(delay)

    async def _detach(self, target: Target, path: Path) -> None:
        """Detach every loop device of ``path`` and verify (caller holds the lock)."""
        key = self.key(target)
        matches = self._matches(path, live_only=False)
        for a in matches:
            busy = device_in_use(self.sysfs, a.name, self.mountinfo, self.dev / a.name)
            if busy:
                raise TransportError(f"not detaching: {busy}", target, key)
        failure: TransportError | None = None
        for a in matches:
            # A loop device keeps its read-only flag (BLKROSET) across detach and attach:
            # give it back to the pool writable, or the next user of the number cannot write.
            with contextlib.suppress(OSError, FsError, ValueError):
                set_read_only(self.dev / a.name, False)
            try:
                await self._run([self.losetup, "--detach", str(self.dev / a.name)], target)
            except TransportError as exc:
                failure = exc  # already detached by someone else is fine: sysfs decides
        if await poll(lambda: self._none_left(path), self.attempts, self.interval, self._wait):
            return
        left = ", ".join(f"/dev/{a.name}" for a in self._matches(path, live_only=False))
        # `losetup -d` on a device that is still open succeeds but only marks it for
        # auto-clear on last close: the device is still there and still serving the file.
        detail = f"{left} still attached after `losetup --detach` (still open?)"
        if failure is not None:
            raise TransportError(f"{detail}; {failure.detail}", target, key) from failure
        raise TransportError(detail, target, key)

    # --- the Transport protocol ----------------------------------------------------------

    def check(self, target: Target) -> None:
        self.backing_path(target)

    async def find(self, target: Target) -> Path | None:
        return self._device(self.backing_path(target))

    async def connect(self, target: Target) -> Path:
        path = self.backing_path(target)
        key = self.key(target)
        async with self._locks.hold(key):
            if self.admission is not None and target.nqn:
                await self.admission.admit(target)  # a refused host attaches nothing
            device = self._device(path)
            if device is not None:
                return device
            if not path.is_file():
                raise TargetMissing(f"backing file {path} does not exist", target, key)
            done = await self._run(
                [self.losetup, "--find", "--show", "--direct-io=off", str(path)], target
            )
            device = await poll(
                lambda: self._device(path), self.attempts, self.interval, self._wait
            )
            if device is not None:
                return device
            shown = done.stdout.strip() or "nothing"
            detail = f"`losetup` printed {shown}, but no loop device shows {path} in sysfs"
            try:
                await self._detach(target, path)
            except TransportError as exc:
                detail += f"; cleaning up failed too: {exc.detail}"
            raise TransportError(detail, target, key)

    async def disconnect(self, target: Target) -> None:
        path = self.backing_path(target)
        async with self._locks.hold(self.key(target)):
            if self._matches(path, live_only=False):
                await self._detach(target, path)
            if self.admission is not None and target.nqn:
                try:
                    await self.admission.leave(target)
                except TransportError as exc:  # the session ends with the device anyway
                    log.warning("%s", exc)

    async def refresh(self, target: Target) -> Path:
        """``losetup --set-capacity``: the loop device takes the file's new size."""
        path = self.backing_path(target)
        key = self.key(target)
        async with self._locks.hold(key):
            device = self._device(path)
            if device is None:
                raise TransportError("not attached: nothing to refresh", target, key)
            await self._run([self.losetup, "--set-capacity", str(device)], target)
            return device

    async def sessions(self) -> list[Session]:
        result: list[Session] = []
        for a in self.attached():
            backing = Path(a.backing)
            if not backing.is_relative_to(self.files_root) or backing == self.files_root:
                continue
            device = self.dev / a.name
            usable = not a.deleted and device.exists()
            key = "/" + backing.relative_to(self.files_root).as_posix()
            result.append(Session(key, device if usable else None))
        return result

    async def disconnect_session(self, session: Session) -> None:
        # The key is the appliance-side path, exactly what a target's file_path holds.
        await self.disconnect(Target(volume_id="", nqn="", file_path=session.key))
