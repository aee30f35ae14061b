"""The flight recorder: the last transitions of every object of every machine.

A listener on each engine keeps, per machine and object key, a ring of the last `depth`
(16) transitions: when, which transition (so the event, source and target), the guard
results that decided it (which candidates were refused before it, by which guard), and the
input's `reason`. `rdscsi explain` prints them.

It is sized for 10k volumes (`bench/machines.py`: `recorder_10k_mb`, target <= 20 MB for 16
transitions each; `events_per_s_with_recorder` >= 100 000):
- a decision (a transition plus the guards that refused the candidates before it) is
  interned: the few that exist are shared by every record;
- reasons are interned too (the same text for every volume on one node is one string);
- a ring is two preallocated arrays of floats (first and last time) and counts, and one
  list of (decision, reason) pairs: no object per record;
- a repeat of the last record for a self-transition (`stale --reconcile--> stale` on every
  pass while waiting) counts up in place instead of pushing out the history.

Histories outlive their models: the controller restores an Attachment model for every
decision and forgets it after, so `forget` keeps the history; `Engine.retire` (the volume
deleted, the node gone) drops it, and each machine keeps at most `max_objects` histories,
the oldest dropped first.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..machines.engine import MachineDef, Step, Transition

DEPTH = 16
MAX_OBJECTS = 100_000  # per machine: a bound for objects nobody retires
_MAX_REASONS = 50_000  # interned reason texts kept for sharing (then started afresh)


@dataclass(frozen=True, slots=True)
class Decision:
    """A transition taken, and the candidates refused before it with the refusing guard."""

    transition: Transition
    refused: tuple[tuple[Transition, str, bool], ...]  # (candidate, guard, expected)


@dataclass(frozen=True, slots=True)
class Entry:
    """One record, as read back."""

    decision: Decision
    reason: str
    first: float  # engine clock (monotonic)
    last: float  # the last repeat (== first when it happened once)
    repeats: int

    @property
    def transition(self) -> Transition:
        return self.decision.transition


class History:
    """One object's ring."""

    __slots__ = ("counts", "head", "items", "size", "times")

    def __init__(self, depth: int) -> None:
        self.items: list[Any] = [None] * (2 * depth)  # decision, reason, ...
        self.times = array("d", [0.0]) * (2 * depth)  # first, last, ...
        self.counts = array("I", [0]) * depth
        self.head = 0  # next slot to write
        self.size = 0

    def entries(self) -> Iterator[Entry]:
        """Oldest first."""
        depth = len(self.counts)
        for k in range(self.size):
            i = (self.head - self.size + k) % depth
            yield Entry(
                self.items[2 * i],
                self.items[2 * i + 1],
                self.times[2 * i],
                self.times[2 * i + 1],
                self.counts[i],
            )


class FlightRecorder:
    """Listener for every engine; `history(machine, key)` reads an object's ring."""

    def __init__(self, depth: int = DEPTH, max_objects: int = MAX_OBJECTS) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self.max_objects = max_objects
        self._histories: dict[str, dict[str, History]] = {}
        self._plain: dict[str, list[Decision | None]] = {}  # machine -> by transition index
        self._decisions: dict[tuple[str, int, tuple[tuple[int, int], ...]], Decision] = {}
        self._reasons: dict[str, str] = {}
        self._defs: dict[str, MachineDef] = {}

    def bind(self, definition: MachineDef) -> None:
        """Know a machine (its transitions, to decode refusals)."""
        self._defs[definition.name] = definition
        self._plain.setdefault(definition.name, [None] * len(definition.transitions))
        self._histories.setdefault(definition.name, {})

    # --- recording (the hot path) ---------------------------------------------------------------

    def after_transition(self, step: Step) -> None:
        machine = step.machine
        tr = step.transition
        decision: Decision
        if step.refused:
            decision = self._decision(machine, tr, step.refused)
        else:
            plain = self._plain.get(machine)
            if plain is None:
                raise LookupError(f"flight recorder: machine {machine!r} was never bound")
            known = plain[tr.index]
            if known is None:
                known = plain[tr.index] = Decision(tr, ())
            decision = known
        reason = getattr(step.payload, "reason", "") or ""
        if reason:
            shared = self._reasons.get(reason)
            if shared is None:
                if len(self._reasons) >= _MAX_REASONS:
                    self._reasons.clear()
                self._reasons[reason] = shared = reason
            reason = shared
        histories = self._histories[machine]
        key = step.model.key
        h = histories.get(key)
        if h is None:
            if len(histories) >= self.max_objects:
                del histories[next(iter(histories))]
            h = histories[key] = History(self.depth)
        now = step.now
        depth = len(h.counts)
        if h.size and tr.source == tr.target:
            last = (h.head - 1) % depth
            items = h.items
            if items[2 * last] is decision and items[2 * last + 1] is reason:
                h.times[2 * last + 1] = now
                h.counts[last] += 1
                return
        i = h.head
        h.items[2 * i] = decision
        h.items[2 * i + 1] = reason
        h.times[2 * i] = h.times[2 * i + 1] = now
        h.counts[i] = 1
        h.head = (i + 1) % depth
        if h.size < depth:
            h.size += 1

    def _decision(
        self, machine: str, tr: Transition, refused: tuple[tuple[int, int], ...]
    ) -> Decision:
        key = (machine, tr.index, refused)
        decision = self._decisions.get(key)
        if decision is None:
            transitions = self._defs[machine].transitions
            decision = Decision(
                tr,
                tuple((transitions[i], *transitions[i].conds[pos]) for i, pos in refused),
            )
            self._decisions[key] = decision
        return decision

    # --- lifecycle ----------------------------------------------------------------------------

    def on_retire(self, machine: str, key: str) -> None:
        histories = self._histories.get(machine)
        if histories is not None:
            histories.pop(key, None)

    # --- reading ------------------------------------------------------------------------------

    def history(self, machine: str, key: str) -> list[Entry]:
        """The object's records, oldest first (empty when none)."""
        h = self._histories.get(machine, {}).get(key)
        return list(h.entries()) if h is not None else []

    def keys(self, machine: str) -> list[str]:
        return list(self._histories.get(machine, {}))

    def __len__(self) -> int:
        return sum(len(h) for h in self._histories.values())
