"""asyncssh glue: public-key login, one RouterOS line per `exec` channel, faults applied.

Every channel runs its command in its own task, so commands on one connection overlap; the
latency sleep happens before the interpreter (and so outside the store lock).

Sessions are counted like OpenSSH counts them: at most `max_sessions` per connection (one
more channel open is refused, "open failed"), and a session whose client closed the channel
stays counted until its command finishes, as OpenSSH keeps a session while its process runs.
Only the loss of the whole connection stops commands still waiting (hanging) to run.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import asyncssh

from rdscsi.sim.answer import answer

if TYPE_CHECKING:
    from rdscsi.sim.simulator import Simulator


class SimServer(asyncssh.SSHServer):
    """One per client connection."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._conn: asyncssh.SSHServerConnection | None = None
        self.sessions = 0
        self._live: set[SimSession] = set()
        self.lost = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        if self._sim.faults.refuse:
            # Accepted at TCP level, then closed before the SSH handshake completes.
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        self._sim.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._conn is not None:
            self._sim.connections.discard(self._conn)
        for session in list(self._live):
            session.cancel()  # commands still waiting never run; running ones finish

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self._sim.is_authorized(key)

    def session_requested(self) -> SimSession | bool:
        if self._conn is None or self._sim.faults.take_channel_refusal():
            return False
        if self.sessions >= self._sim.config.max_sessions:
            return False  # like OpenSSH past MaxSessions: the channel open is refused
        self.sessions += 1
        session = SimSession(self._sim, self, self._conn)
        self._live.add(session)
        return session

    def release(self, session: SimSession) -> None:
        if session in self._live:
            self._live.discard(session)
            self.sessions -= 1


class SimSession(asyncssh.SSHServerSession[str]):
    """One `exec` channel: one command, its output, its exit status."""

    def __init__(
        self, sim: Simulator, server: SimServer, conn: asyncssh.SSHServerConnection
    ) -> None:
        self._sim = sim
        self._server = server
        self._conn = conn
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._command: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def connection_made(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        self._chan = chan

    def shell_requested(self) -> bool:
        return False  # no interactive shell: exec only

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        if self._command is None or self._chan is None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(self._command))
        self._sim.track(self._task)
        self._task.add_done_callback(lambda _: self._finished())

    def eof_received(self) -> bool:
        return True  # keep the channel open to write the answer after the client's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._task is None or self._task.done():
            self._server.release(self)
        # else: the command goes on and holds its session until it finishes

    def _finished(self) -> None:
        if self._closed:
            self._server.release(self)

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._server.release(self)

    # --- the Reply the answer is written to -----------------------------------------------

    @property
    def gone(self) -> bool:
        return self._server.lost

    def write(self, text: str) -> None:
        if text and self._chan is not None:
            self._chan.write(text)

    def write_stderr(self, text: str) -> None:
        if text and self._chan is not None:
            self._chan.write_stderr(text)

    def exit(self, status: int) -> None:
        if self._chan is not None:
            self._chan.exit(status)

    def kill(self, signal: str) -> None:
        if self._chan is not None:
            self._chan.exit_with_signal(signal)

    def drop(self) -> None:
        self._conn.abort()

    async def _run(self, line: str) -> None:
        try:
            await answer(self._sim, line, self)
        except (OSError, asyncssh.Error):
            # The client left before its answer was written: nothing left to tell it.
            if self._chan is not None:
                with contextlib.suppress(Exception):
                    self._chan.close()
