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
- a ring is one array of floats (first time, last time, repeats) and one list of
  (decision, reason) pairs, no object per record, grown up to the depth as it fills;
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
    """One object's ring: `items` holds (decision, reason) pairs, `data` (first time, last
    time, repeats) triples. It starts small and doubles up to `depth` before it first wraps
    (so its order is still linear when it grows): an object with one transition costs a
    quarter of a full ring."""

    __slots__ = ("data", "depth", "head", "items", "size")

    START = 2

    def __init__(self, depth: int) -> None:
        cap = min(self.START, depth)
        self.depth = depth
        self.items: list[Any] = [None] * (2 * cap)
        self.data = array("d", [0.0]) * (3 * cap)
        self.head = 0  # next slot to write
        self.size = 0

    @property
    def capacity(self) -> int:
        return len(self.items) // 2

    def _grow(self) -> None:
        cap = self.capacity
        more = min(cap, self.depth - cap)
        self.items.extend([None] * (2 * more))
        self.data.extend(array("d", [0.0]) * (3 * more))
        self.head = cap

    def push(self, decision: Decision, reason: str, now: float) -> None:
        if self.size:
            last = (self.head - 1) % self.capacity
            items = self.items
            if (
                items[2 * last] is decision
                and items[2 * last + 1] is reason
                and decision.transition.source == decision.transition.target
            ):
                self.data[3 * last + 1] = now
                self.data[3 * last + 2] += 1
                return
        if self.size == self.capacity < self.depth:
            self._grow()
        i = self.head
        self.items[2 * i] = decision
        self.items[2 * i + 1] = reason
        data = self.data
        data[3 * i] = data[3 * i + 1] = now
        data[3 * i + 2] = 1
        self.head = (i + 1) % self.capacity
        if self.size < self.capacity:
            self.size += 1

    def entries(self) -> Iterator[Entry]:
        """Oldest first."""
        cap = self.capacity
        for k in range(self.size):
            i = (self.head - self.size + k) % cap
            yield Entry(
                self.items[2 * i],
                self.items[2 * i + 1],
                self.data[3 * i],
                self.data[3 * i + 1],
                int(self.data[3 * i + 2]),
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

    def on_bind(self, definition: MachineDef) -> None:
        """Know a machine (its transitions, to decode refusals): each engine it listens to
        tells it when built."""
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
                raise LookupError(f"flight recorder: no engine of machine {machine!r} has it")
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
        h.push(decision, reason, step.now)

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
