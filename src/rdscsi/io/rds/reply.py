"""One command on one exec channel: its reply as it arrives, and the rules that make a reply
whole or an error. Nothing here knows about connections, slots or time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from .commands import Command
from .errors import (
    ApplianceFailureError,
    IncompleteReplyError,
    TransportLostError,
    UnparseableOutputError,
    classify,
)


class Reply(asyncssh.SSHClientSession[bytes]):
    """One command's reply: stdout and stderr apart, how the process ended, and the moment
    the channel closed (only then has the server freed the session)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.overflow = False
        self.opened = False  # the channel was open, so the command may have been sent
        self.lost: Exception | None = None  # the connection died before the channel closed
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan
        self.opened = True

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.overflow:
            return
        if len(self.stdout) + len(self.stderr) + len(data) > self.limit:
            self.overflow = True
            if self._chan is not None:
                self._chan.close()
            return
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr.extend(data)
        else:
            self.stdout.extend(data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        if not self.closed.done():
            self.closed.set_result(None)


class Refused(Exception):
    """The server refused the channel open: nothing was sent."""


def accept(reply: Reply, command: Command, on_stderr: Callable[[str], None]) -> str:
    """The reply's stdout if it is provably whole and reports no error; else the error.

    Whole means the channel closed with exit status 0 and no exit signal: a reply cut short
    is never parsed. stderr goes to `on_stderr` (logged and classified, never parsed as
    data); a device error line there still fails the command."""
    stdout = reply.stdout.decode("utf-8", "replace")
    stderr = reply.stderr.decode("utf-8", "replace")
    if reply.overflow:
        raise UnparseableOutputError(
            f"reply longer than {reply.limit} bytes", stdout[:200], command=command
        )
    if reply.lost is not None:
        raise TransportLostError(
            f"connection lost before the reply ended: {why(reply.lost)}", command=command
        )
    if stderr.strip():
        on_stderr(stderr)
    if reply.exit_signal is not None:
        raise IncompleteReplyError(
            f"reply cut short: the appliance-side process died of signal "
            f"{reply.exit_signal} after {len(reply.stdout)} bytes",
            command=command,
        )
    if reply.exit_status is None:
        raise IncompleteReplyError(
            "the channel closed without an exit status (reply incomplete)", command=command
        )
    error = classify(stdout, command)
    if error is None and reply.exit_status != 0:
        error = classify(stderr, command) or ApplianceFailureError(
            f"exit status {reply.exit_status}"
            + (f": {stderr.strip()[:200]}" if stderr.strip() else ""),
            command=command,
        )
    if error is None:
        error = classify(stderr, command)  # a device error printed on stderr
    if error is not None:
        raise error
    return stdout


def why(exc: BaseException | None) -> str:
    """An exception as a log or error message names it."""
    if exc is None:
        return "closed"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text
