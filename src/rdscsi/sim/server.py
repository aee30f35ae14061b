"""asyncssh glue: public-key login, one RouterOS line per `exec` channel, faults applied.

Every channel runs its command in its own task, so commands on one connection overlap;
the latency sleep happens before the interpreter (and so outside the store lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import asyncssh

from rdscsi.sim.cli import Outcome

if TYPE_CHECKING:
    from rdscsi.sim.simulator import Simulator

logger = logging.getLogger(__name__)


class SimServer(asyncssh.SSHServer):
    """One per client connection."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._conn: asyncssh.SSHServerConnection | None = None
        self.sessions = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        if self._sim.faults.refuse:
            # Accepted at TCP level, then closed before the SSH handshake completes.
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        self._sim.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._sim.connections.discard(self._conn)

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
        if self._conn is None or self.sessions >= self._sim.config.max_sessions:
            return False  # like OpenSSH past MaxSessions: the channel open is refused
        self.sessions += 1
        return SimSession(self._sim, self, self._conn)


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

    def eof_received(self) -> bool:
        return True  # keep the channel open to write the answer after the client's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.sessions -= 1
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _write(self, text: str) -> None:
        assert self._chan is not None
        if text:
            self._chan.write(text.replace("\n", self._sim.config.line_ending))

    async def _run(self, line: str) -> None:
        sim = self._sim
        assert self._chan is not None
        sim.commands.append(line)
        plan = sim.faults.plan(line)
        if plan.latency > 0:
            await sim.config.clock.sleep(plan.latency)
        if plan.hang:
            await sim.faults.hang()
            if self._closed:
                return  # released while the connection was going away: never run it
        if plan.drop == "before":
            self._conn.abort()
            return
        if plan.fail_text is not None:
            outcome = Outcome(plan.fail_text + "\n", False)
        else:
            # Shielded: like the device, a command that started completes even when the
            # client goes away; the task is tracked so `stop()` waits for it.
            work = asyncio.ensure_future(sim.interpreter.run(line))
            sim.track(work)
            try:
                outcome = await asyncio.shield(work)
            except Exception:
                # A simulator bug must not leave the client waiting forever.
                logger.exception("rdscsi sim: command %r crashed", line)
                outcome = Outcome("failure: internal simulator error\n", False)
        if plan.drop == "after":
            self._conn.abort()
            return
        try:
            self._write(outcome.output if plan.malformed_text is None else plan.malformed_text)
            while outcome.stream is not None:
                await sim.config.clock.sleep(sim.config.monitor_interval)
                self._write(outcome.stream())
            self._chan.exit(0 if outcome.ok else sim.config.error_exit_status)
        except (OSError, asyncssh.Error):
            # The client left before its answer was written: nothing left to tell it.
            with contextlib.suppress(Exception):
                self._chan.close()
