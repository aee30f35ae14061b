"""The simulator's end of `relay`: commands that a real OpenSSH server received, answered by
the same interpreter, store and faults as the simulator's own SSH sessions, so both servers
share one appliance state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdscsi.sim.answer import answer

if TYPE_CHECKING:
    from rdscsi.sim.simulator import Simulator

RELAY_PROGRAM = Path(__file__).with_name("relay.py")
_MAX_UNIX_PATH = 107


def relay_command(socket_path: Path, python: str | None = None) -> str:
    """The `ForceCommand` that hands each session's command to the simulator at
    `socket_path` (isolated mode: the relay needs nothing but the standard library)."""
    return f"exec {python or sys.executable} -I {RELAY_PROGRAM} {socket_path}"


class _SocketReply:
    """A `Reply` written as JSON-line frames to one relay process."""

    def __init__(self, writer: asyncio.StreamWriter, closed: asyncio.Future[Any]) -> None:
        self._writer = writer
        self._closed = closed

    def _frame(self, frame: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(json.dumps(frame).encode() + b"\n")

    @property
    def gone(self) -> bool:
        return self._closed.done()

    def write(self, text: str) -> None:
        if text:
            self._frame({"out": text})

    def write_stderr(self, text: str) -> None:
        if text:
            self._frame({"err": text})

    def exit(self, status: int) -> None:
        self._frame({"exit": status})

    def kill(self, signal: str) -> None:
        self._frame({"kill": signal})

    def drop(self) -> None:
        self._frame({"drop": True})


class RelayServer:
    def __init__(self, sim: Simulator, path: Path) -> None:
        self.sim = sim
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if len(str(self.path)) > _MAX_UNIX_PATH:
            raise OSError(f"relay socket path too long for a unix socket: {self.path}")
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop accepting; relayed commands still waiting (hanging) never run."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        closed: asyncio.Future[Any] | None = None
        try:
            request = json.loads(await reader.readline() or b"{}")
            line = request.get("line")
            if not isinstance(line, str):
                return
            closed = asyncio.ensure_future(reader.read())  # done when the relay goes away
            await answer(self.sim, line, _SocketReply(writer, closed))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, ValueError):
            pass  # the relay died or spoke nonsense: nobody left to answer
        finally:
            self._tasks.discard(task)
            if closed is not None:
                closed.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
