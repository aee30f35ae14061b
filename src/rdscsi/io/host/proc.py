"""Running node-side programs (``nvme``, ``losetup``, ``blockdev``...): one way, for everyone.

Rules every caller gets for free:

- argv only, never a shell: no value from a volume context is ever parsed by ``sh``.
- a hard per-command timeout: a hung ``nvme connect`` must not hang a gRPC call forever. On
  expiry the whole process group gets SIGKILL and is reaped before :class:`CommandTimeout`
  is raised, so no zombie and no straggling child is left behind. The same happens when the
  calling task is cancelled (a gRPC deadline).
- bounded output: at most :data:`MAX_OUTPUT` bytes per stream are kept (the rest is read and
  dropped so the child never blocks on a full pipe).
- ``LC_ALL=C``: error texts are matched by callers (``already connected``), so they must not
  be translated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAX_OUTPUT: Final = 4 << 20  # bytes kept per stream; list-subsys on a busy node is far smaller
_EXCERPT: Final = 300  # characters of stderr in an exception message (logs, gRPC details)
_CHUNK: Final = 64 << 10


def describe(argv: Sequence[str]) -> str:
    """The command as a copy-pasteable shell line (for messages only; never executed)."""
    return shlex.join(argv)


def excerpt(text: str, limit: int = _EXCERPT) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[:limit] + f"...(+{len(text) - limit} chars)"


@dataclass(frozen=True, slots=True)
class Completed:
    """A command that ran to its end (whatever its exit status, when ``check=False``)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class ProcError(Exception):
    """Base of the failures of :func:`run`."""

    def __init__(self, argv: Sequence[str], message: str) -> None:
        self.argv = tuple(argv)
        super().__init__(message)


class CommandFailed(ProcError):
    """The command exited non-zero (or was killed by a signal: negative ``returncode``)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdout: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        # nvme-cli prints some failures on stdout only: fall back to it so the message
        # always carries the program's own explanation.
        said = excerpt(stderr) or excerpt(stdout) or "no output"
        super().__init__(argv, f"`{describe(argv)}` exited with status {returncode}: {said}")


class CommandTimeout(ProcError):
    """No exit within the timeout; the process group was killed and reaped."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.timeout = timeout
        super().__init__(argv, f"`{describe(argv)}` did not finish within {timeout:g}s (killed)")


class NotInstalled(ProcError):
    """The executable does not exist (or cannot be executed) on this node."""

    def __init__(self, binary: str, detail: str = "not found") -> None:
        self.binary = binary
        super().__init__((binary,), f"`{binary}` is not installed on this node ({detail})")


async def _drain(stream: asyncio.StreamReader | None) -> bytes:
    """Read a pipe to its end, keeping only the first MAX_OUTPUT bytes."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(_CHUNK):
        if len(kept) < MAX_OUTPUT:
            kept += chunk[: MAX_OUTPUT - len(kept)]
    return bytes(kept)


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes | None) -> None:
    if stdin is None:
        return
    # The child may exit without reading its input: that is its business, not an error.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            stdin.write(data)
            await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The child leads its own session (start_new_session), so its pid is its group id and
    # killing the group also takes any grandchild (a wrapper script's `sleep`, say).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def run(
    argv: Sequence[str],
    timeout: float = 30.0,
    input: bytes | None = None,
    check: bool = True,
) -> Completed:
    """Run ``argv`` (no shell), wait at most ``timeout`` seconds, return its outcome.

    Raises :class:`NotInstalled` when ``argv[0]`` cannot be executed, :class:`CommandTimeout`
    when it outlives ``timeout`` (after killing and reaping it) and, with ``check``,
    :class:`CommandFailed` on a non-zero exit.
    """
    args = tuple(argv)
    if not args or not all(isinstance(a, str) for a in args):
        raise TypeError(f"run: argv must be a non-empty sequence of str, got {argv!r}")
    if timeout <= 0:
        raise ValueError(f"run: timeout must be > 0, got {timeout}")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
            start_new_session=True,
        )
    except FileNotFoundError:
        raise NotInstalled(args[0]) from None
    except PermissionError:
        raise NotInstalled(args[0], "not executable") from None

    io = asyncio.gather(_drain(proc.stdout), _drain(proc.stderr), _feed(proc.stdin, input))
    try:
        async with asyncio.timeout(timeout):
            out, err, _ = await io
            returncode = await proc.wait()
    except BaseException as exc:
        # Timeout or cancellation: never leave the child running or unreaped.
        _kill_group(proc)
        io.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await io
        await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise CommandTimeout(args, timeout) from None
        raise

    done = Completed(
        args,
        returncode,
        out.decode("utf-8", errors="replace"),
        err.decode("utf-8", errors="replace"),
    )
    if check and returncode != 0:
        raise CommandFailed(args, returncode, done.stderr, done.stdout)
    return done
