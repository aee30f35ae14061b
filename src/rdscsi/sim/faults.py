"""Faults a test (or `rdscsi sim-fault`) switches on while the simulator runs.

They apply alike to commands arriving over the simulator's own SSH server and to those
relayed from a real OpenSSH server (`rdscsi.sim.relay`), except channel refusal, which only
the simulator's SSH server can inject (OpenSSH refuses by itself past `MaxSessions`).

Counted faults ("the next N commands") are taken in the order commands arrive; each
command takes its whole plan when it starts, so concurrent commands never share one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_MALFORMED = '\x1b[7m?? 0x7f3a <<garbage>> size===\n=== [[[ unterminated "quote\n%%%\n'

Drop = Literal["before", "after"]


@dataclass(frozen=True)
class Plan:
    """What the faults do to one command."""

    latency: float = 0.0
    hang: bool = False
    drop: Drop | None = None  # close the connection before or after running it, no output
    fail_text: str | None = None  # answer this instead of running the command
    malformed_text: str | None = None  # run it, but answer this instead of its output
    kill: bool = False  # run it, print part of the answer, then the process dies (KILL)
    stderr: str | None = None  # printed on stderr before anything else (login noise)


def _failure_line(text: str) -> str:
    return text if text.startswith("failure:") else f"failure: {text}"


class Faults:
    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency  # seconds added to every command, outside any lock
        self.pool_full = False  # every allocation fails with `not enough space`
        self.refuse = False  # new connections are closed as soon as they are accepted
        self.hang_match: str | None = None  # commands containing this never answer
        self.stderr_noise: str | None = None  # printed on stderr by every command
        self._hang_next = 0
        self._fail_next = 0
        self._fail_text = ""
        self._malformed_next = 0
        self._malformed_text = DEFAULT_MALFORMED
        self._drop_next = 0
        self._drop_apply = True
        self._kill_next = 0
        self._refuse_channels_next = 0
        self._release: asyncio.Future[None] | None = None
        self._hanging = 0
        self._changed = asyncio.Event()
        self._drop_hook: Callable[[], int] | None = None

    # --- switches ----------------------------------------------------------------------

    def hang_next(self, count: int = 1) -> None:
        """The next `count` commands never answer (until released or disconnected)."""
        self._hang_next = count

    def fail_next(self, count: int = 1, text: str = "not enough space") -> None:
        """The next `count` commands answer `failure: <text>` without running."""
        self._fail_next = count
        self._fail_text = _failure_line(text)

    def malformed_next(self, count: int = 1, text: str | None = None) -> None:
        """The next `count` commands run but answer garbage instead of their output."""
        self._malformed_next = count
        self._malformed_text = DEFAULT_MALFORMED if text is None else text

    def drop_mid_next(self, count: int = 1, *, apply: bool = True) -> None:
        """The next `count` commands lose their connection before any output.

        With `apply` the command takes effect first (the nasty case: it happened, but the
        client cannot know); without, the connection drops before it runs.
        """
        self._drop_next = count
        self._drop_apply = apply

    def kill_mid_next(self, count: int = 1) -> None:
        """The next `count` commands run, print part of their answer, then their process is
        killed: the reply ends with exit signal KILL instead of an exit status (the command
        took effect, the client cannot know what else it would have printed)."""
        self._kill_next = count

    def refuse_channels_next(self, count: int = 1) -> None:
        """The next `count` channel opens are refused, as OpenSSH refuses one past
        MaxSessions: nothing runs, the connection stays up."""
        self._refuse_channels_next = count

    def take_channel_refusal(self) -> bool:
        """Whether this channel open is refused (consumes one `refuse_channels_next`)."""
        if self._refuse_channels_next > 0:
            self._refuse_channels_next -= 1
            return True
        return False

    def drop_connections(self) -> int:
        """Close every client connection now; returns how many were open."""
        return self._drop_hook() if self._drop_hook is not None else 0

    def release_hangs(self) -> None:
        """Let the hanging commands go on (they then run normally)."""
        if self._release is not None and not self._release.done():
            self._release.set_result(None)
        self._release = None

    def clear(self) -> None:
        """Every fault off, latency back to zero, hanging commands released."""
        self.latency = 0.0
        self.pool_full = False
        self.refuse = False
        self.hang_match = None
        self.stderr_noise = None
        self._hang_next = self._fail_next = self._malformed_next = self._drop_next = 0
        self._kill_next = self._refuse_channels_next = 0
        self.release_hangs()

    def set_drop_hook(self, hook: Callable[[], int]) -> None:
        self._drop_hook = hook

    # --- per command -------------------------------------------------------------------

    def plan(self, command: str) -> Plan:
        hang = False
        if self._hang_next > 0:
            self._hang_next -= 1
            hang = True
        elif self.hang_match is not None and self.hang_match in command:
            hang = True
        drop: Drop | None = None
        if self._drop_next > 0:
            self._drop_next -= 1
            drop = "after" if self._drop_apply else "before"
        fail_text = None
        if self._fail_next > 0:
            self._fail_next -= 1
            fail_text = self._fail_text
        malformed_text = None
        if self._malformed_next > 0:
            self._malformed_next -= 1
            malformed_text = self._malformed_text
        kill = False
        if self._kill_next > 0:
            self._kill_next -= 1
            kill = True
        return Plan(self.latency, hang, drop, fail_text, malformed_text, kill, self.stderr_noise)

    async def hang(self) -> None:
        """Block until released; cancelled (with its session) when the connection closes."""
        if self._release is None or self._release.done():
            self._release = asyncio.get_running_loop().create_future()
        release = self._release
        self._hanging += 1
        self._changed.set()
        try:
            await asyncio.shield(release)
        finally:
            self._hanging -= 1
            self._changed.set()

    @property
    def hanging(self) -> int:
        """How many commands are hanging right now."""
        return self._hanging

    async def wait_hanging(self, count: int = 1) -> None:
        """Wait until at least `count` commands hang (tests await this instead of sleeping)."""
        while self._hanging < count:
            self._changed.clear()
            await self._changed.wait()

    async def wait_not_hanging(self) -> None:
        while self._hanging > 0:
            self._changed.clear()
            await self._changed.wait()

    def status(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "pool_full": self.pool_full,
            "refuse": self.refuse,
            "hang_match": self.hang_match,
            "hang_next": self._hang_next,
            "fail_next": self._fail_next,
            "fail_text": self._fail_text,
            "malformed_next": self._malformed_next,
            "drop_mid_next": self._drop_next,
            "drop_mid_apply": self._drop_apply,
            "kill_mid_next": self._kill_next,
            "refuse_channels_next": self._refuse_channels_next,
            "stderr_noise": self.stderr_noise,
            "hanging": self._hanging,
        }
