"""The scenario's voice: steps, what each one did, and every machine transition it caused.

A `Narrator` hands each process (the controller, each node plugin) a transition listener
(`listener(where)`): the machines themselves report what they did, tagged with the machine
they happened in, beside the transition log. Nothing is printed that was not observed: a
step's own claims are checked (`expect`, `until`, `saw`) before they are printed, and a
claim that does not hold ends the scenario with ✗ and what was seen instead.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..machines.engine import Step

Out = Callable[[str], None]

# Self-transitions worth a line: a refusal, and the evidence arriving. Other self-loops are
# idempotent repeats and waits.
NOTABLE_LOOPS = frozenset({"AttachmentConflict"})
NOTABLE_EVENTS = frozenset({"taint_out_of_service", "untaint_out_of_service"})
# The fence's steps on the appliance's allow-list: each names the node whose host it moves.
FENCE_EVENTS = frozenset({"fence", "unfence", "fence_out", "repair_fence", "repair_unfence"})
WHERE_WIDTH = 10
WIDTH = 96  # columns the narration is wrapped at


class ScenarioFailed(Exception):
    """A step's claim did not hold; it has been reported."""


@dataclass(frozen=True, slots=True)
class Seen:
    """One transition, as a machine reported it."""

    at: float  # seconds since the scenario started
    where: str  # "controller", "node-a", ...
    machine: str
    key: str
    source: str
    event: str
    target: str
    hooks: tuple[str, ...]
    node: str = ""  # a fence step: the node whose host NQN it put on or took off


def short(key: str) -> str:
    """`pvc-2c5e0d4b-…` for a volume id (the full id is printed once, when created)."""
    if key.startswith("pvc-") and len(key) > 16:
        return key[:13] + "…"
    return key


class MachineListener:
    """Transition listener of one process: records and prints what its machines do."""

    def __init__(self, narrator: Narrator, where: str) -> None:
        self.narrator = narrator
        self.where = where

    def after_transition(self, step: Step) -> None:
        hooks = step.transition.hooks
        changed = step.source != step.target
        fence = step.event in FENCE_EVENTS
        notable = NOTABLE_LOOPS & set(hooks) or step.event in NOTABLE_EVENTS or fence
        if not changed and not notable:
            return
        self.narrator.transition(
            Seen(
                self.narrator.elapsed(),
                self.where,
                step.machine,
                str(step.model.key),
                step.source,
                step.event,
                step.target,
                hooks,
                str(getattr(step.payload, "node", "") or "") if fence else "",
            )
        )


class Narrator:
    def __init__(self, out: Out = print, mute: tuple[str, ...] = ()) -> None:
        self.out = out
        self.started = time.monotonic()
        self.wall = time.time()
        self.seen: list[Seen] = []
        self.numbered = 0
        self.mute = mute  # machines whose transitions are recorded but not printed
        self.quiet = False  # set when the scenario is over: shutting down is not the story

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def since(self, wall: float) -> float:
        """A wall-clock instant (an object's timestamp) as seconds since the start."""
        return wall - self.wall

    def listener(self, where: str) -> MachineListener:
        return MachineListener(self, where)

    # --- lines --------------------------------------------------------------------------

    def transition(self, seen: Seen) -> None:
        self.seen.append(seen)
        if self.quiet or seen.machine in self.mute:
            return
        flags = [h for h in seen.hooks if h[:1].isupper()]  # the hooks that are events
        said = f"  ({', '.join(flags)})" if flags else ""
        if seen.node:
            said = f" [host of {seen.node}]{said}"
        self.out(
            f"    {seen.at:5.1f}s {seen.where:<{WHERE_WIDTH}} {seen.machine} "
            f"{short(seen.key)}: {seen.source} --{seen.event}--> {seen.target}{said}"
        )

    def title(self, text: str) -> None:
        self.out(text)

    def para(self, text: str) -> None:
        """A paragraph, wrapped (a leading newline is kept: a blank line before it)."""
        blank = text.startswith("\n")
        lines = textwrap.wrap(text.strip("\n"), WIDTH, break_on_hyphens=False)
        self.out(("\n" if blank else "") + "\n".join(lines))

    def step(self, text: str) -> None:
        self.numbered += 1
        self.out(f"\n{self.numbered}. {text}")

    def _wrapped(self, mark: str, text: str) -> None:
        self.out(
            "\n".join(
                textwrap.wrap(
                    text,
                    WIDTH,
                    initial_indent=f"  {mark} ",
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
        )

    def ok(self, text: str) -> None:
        self._wrapped("✓", text)

    def note(self, text: str) -> None:
        self._wrapped("·", text)

    def quote(self, text: str) -> None:
        """A command's output, as it printed it (indented)."""
        for line in text.rstrip("\n").splitlines():
            self.out(f"    │ {line}" if line else "    │")

    def event(self, at: float, text: str) -> None:
        lead = f"    {at:5.1f}s {'event':<{WHERE_WIDTH}} "
        self.out(
            "\n".join(
                textwrap.wrap(
                    text,
                    WIDTH,
                    initial_indent=lead,
                    subsequent_indent=" " * len(lead),
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
        )

    def fail(self, text: str) -> ScenarioFailed:
        self._wrapped("✗", text)
        return ScenarioFailed(text)

    # --- claims -------------------------------------------------------------------------

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            raise self.fail(what)

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        """Let everything run until `condition` holds; ✗ `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise self.fail(f"{what}: not after {timeout:g} s")
            await asyncio.sleep(0.02)

    def find(self, where: str, machine: str, key: str, target: str, since: int = 0) -> Seen | None:
        for seen in self.seen[since:]:
            if (seen.where, seen.machine, seen.key, seen.target) == (where, machine, key, target):
                return seen
        return None

    def fence_steps(self, key: str, since: int = 0) -> list[tuple[int, Seen]]:
        """The controller's fence steps for volume `key` (with their places in the record)."""
        return [
            (i, s)
            for i, s in enumerate(self.seen)
            if i >= since and s.where == "controller" and s.key == key and s.event in FENCE_EVENTS
        ]

    async def saw(
        self,
        where: str,
        machine: str,
        key: str,
        target: str,
        since: int = 0,
        timeout: float = 15.0,
    ) -> Seen:
        """Until `machine` `key` in `where` is seen entering `target` (after `since` records)."""
        await self.until(
            lambda: self.find(where, machine, key, target, since) is not None,
            f"{where}: {machine} {short(key)} never went to {target}",
            timeout,
        )
        found = self.find(where, machine, key, target, since)
        assert found is not None
        return found

    def mark(self) -> int:
        """A point in the record to wait from (`saw(..., since=mark)`)."""
        return len(self.seen)
