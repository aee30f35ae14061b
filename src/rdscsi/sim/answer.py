"""One command line in, its answer out, faults applied: shared by the simulator's own SSH
sessions and by commands relayed from a real OpenSSH server (`relay_server`).

A `Reply` is where the answer goes: stdout, stderr, then exactly one ending (an exit status,
a killing signal, or the whole connection dropped).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from rdscsi.sim.cli import Outcome

if TYPE_CHECKING:
    from rdscsi.sim.simulator import Simulator

logger = logging.getLogger(__name__)


class Reply(Protocol):
    def write(self, text: str) -> None:
        """Standard output."""

    def write_stderr(self, text: str) -> None:
        """Standard error (notices, never data)."""

    def exit(self, status: int) -> None:
        """The process ended with `status`: the reply is complete."""

    def kill(self, signal: str) -> None:
        """The process was killed by `signal` (e.g. "KILL"): the reply is cut short."""

    def drop(self) -> None:
        """The whole SSH connection goes away now."""

    @property
    def gone(self) -> bool:
        """The client's connection is gone: a command still waiting must never run."""


async def answer(sim: Simulator, line: str, reply: Reply) -> None:
    """Run `line` as the appliance would, under the faults planned for it."""
    sim.commands.append(line)
    plan = sim.faults.plan(line)
    eol = sim.config.line_ending

    def text(out: str) -> str:
        return out.replace("\n", eol)

    if plan.stderr:
        reply.write_stderr(text(plan.stderr.rstrip("\n") + "\n"))
    if plan.latency > 0:
        await sim.config.clock.sleep(plan.latency)
    if plan.hang:
        await sim.faults.hang()
        if reply.gone:
            return  # released while the connection was going away: never run it
    if plan.drop == "before":
        reply.drop()
        return
    if plan.fail_text is not None:
        outcome = Outcome(plan.fail_text + "\n", False)
    else:
        # Shielded: like the device, a command that started completes even when the client
        # goes away; the task is tracked so `stop()` waits for it.
        work = asyncio.ensure_future(sim.interpreter.run(line))
        sim.track(work)
        try:
            outcome = await asyncio.shield(work)
        except Exception:
            # A simulator bug must not leave the client waiting forever.
            logger.exception("rdscsi sim: command %r crashed", line)
            outcome = Outcome("failure: internal simulator error\n", False)
    if plan.drop == "after":
        reply.drop()
        return
    output = outcome.output if plan.malformed_text is None else plan.malformed_text
    if plan.kill:
        # The process dies part-way through printing: the first half reaches the client.
        reply.write(text(output[: len(output) // 2]))
        reply.kill("KILL")
        return
    reply.write(text(output))
    while outcome.stream is not None:
        await sim.config.clock.sleep(sim.config.monitor_interval)
        reply.write(text(outcome.stream()))
    reply.exit(0 if outcome.ok else sim.config.error_exit_status)
