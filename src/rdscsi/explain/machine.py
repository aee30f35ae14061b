"""Machine-level explanations, the same for every machine: the diagram with its current
state, what an event would do now (every candidate, every guard, what each waits for), the
ways out of a state, and the flight recorder's history. Everything returned is JSON-ready."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from ..clock import Clock
from ..hooks.recorder import Entry, FlightRecorder
from ..machines import MACHINES, AttachmentMachine, ConnectionMachine, NodeMachine, compile_machine
from ..machines.diagrams import edges
from ..machines.engine import Candidate, MachineDef, Step, Transition, evaluate
from ..machines.guards import Part, doc_of, fill
from ..machines.orphan import OrphanMachine
from ..machines.volume import NodeVolumeMachine

JSON = dict[str, Any]

ATTACHMENT = compile_machine(AttachmentMachine)
CONNECTION = compile_machine(ConnectionMachine)
NODE = compile_machine(NodeMachine)
NODE_VOLUME = compile_machine(NodeVolumeMachine)
ORPHAN = compile_machine(OrphanMachine)


class Times:
    """Instants as the endpoint shows them: RFC 3339 UTC (milliseconds) and seconds from now.
    Machine times are on the monotonic clock; the wall clock dates them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.now_wall = clock.wall()
        self.now_mono = clock.monotonic()

    def wall_of(self, mono: float) -> float:
        return self.now_wall - (self.now_mono - mono)

    @staticmethod
    def iso(wall: float) -> str:
        stamp = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")

    def mono(self, mono: float | None) -> str | None:
        return None if mono is None else self.iso(self.wall_of(mono))

    def due(self, mono: float) -> JSON:
        """`at` and `in_s` (negative: that long ago)."""
        return {"at": self.mono(mono), "in_s": round(mono - self.now_mono, 1)}


def diagram(d: MachineDef, state: str | None) -> JSON:
    """The machine as drawn in specs/ (one edge per pair of states), its state marked."""
    return {
        "name": d.name,
        "spec": f"specs/{d.name}.md",
        "states": list(d.states),
        "initial": d.initial,
        "finals": sorted(d.finals),
        "current": state,
        "edges": [{"source": s, "target": t, "labels": labels} for s, t, labels in edges(d)],
    }


@functools.cache
def _fallbacks() -> dict[str, frozenset[int]]:
    """Per machine, the unguarded alternatives after guarded ones: shown `[else]`, as in
    specs/."""
    out = {}
    for cls in MACHINES:
        d = compile_machine(cls)
        seen: set[tuple[str, str]] = set()
        marked = set()
        for t in d.transitions:
            if (t.source, t.event) in seen and not t.conds:
                marked.add(t.index)
            seen.add((t.source, t.event))
        out[d.name] = frozenset(marked)
    return out


def text(t: Transition) -> str:
    """`source --event [guard]--> target`, an unguarded fallback as `[else]`."""
    if not t.conds and t.index in _fallbacks().get(t.machine, frozenset()):
        return f"{t.source} --{t.event} [else]--> {t.target}"
    return str(t)


def transition(t: Transition) -> JSON:
    return {
        "index": t.index,
        "text": text(t),
        "event": t.event,
        "source": t.source,
        "target": t.target,
        "hooks": list(t.hooks),
    }


def part(p: Part, model: Any, payload: Any, times: Times) -> JSON:
    out: JSON = {
        "kind": p.kind,
        "text": fill(p.text, model, payload),
        "met": p.holds(model, payload),
    }
    if p.remaining is not None:
        left = p.remaining(model, payload)
        if left is not None:
            out.update(times.due(times.now_mono + left))
    return out


def guard(
    d: MachineDef, name: str, want: bool, got: bool, model: Any, payload: Any, times: Times
) -> JSON:
    """One guard's result, with what it checks and (refusing) what would change it."""
    doc = doc_of(d.cls, name)
    holds = fill(doc.holds, model, payload) if doc is not None else name
    parts = [part(p, model, payload, times) for p in doc.parts] if doc is not None else []
    out: JSON = {
        "machine": d.name,
        "guard": name if want else f"not {name}",
        "holds": got,
        "refuses": got is not want,
        "text": holds,
        "waiting_for": parts if want else [],
    }
    if got is not want:
        unmet = [p for p in parts if not p["met"]] if want else []
        # Only evidence and time can come; a fact or a closed window cannot change.
        out["can_unblock"] = bool(unmet) and all(p["kind"] in ("evidence", "after") for p in unmet)
        times_left = [p["in_s"] for p in unmet if p["kind"] == "after" and "in_s" in p]
        if out["can_unblock"] and not any(p["kind"] == "evidence" for p in unmet) and times_left:
            out["unblocks_in_s"] = max(times_left)
    return out


def candidate(c: Candidate, d: MachineDef, model: Any, payload: Any, times: Times) -> JSON:
    return {
        "transition": transition(c.transition),
        "guards": [
            guard(d, name, want, got, model, payload, times) for name, want, got in c.results
        ],
        "passes": c.passes,
    }


def outcome(d: MachineDef, model: Any, event: str, payload: Any, times: Times) -> JSON:
    """What `event` with `payload` would do from the model's state now: the transition it
    takes (None: refused) and every candidate refused before it, with its guards."""
    found = evaluate(d, model, event, payload)
    taken = found[-1] if found and found[-1].passes else None
    sent_by = getattr(d.cls, "sent_by", {}).get(event, "")
    return {
        "event": event,
        "sent_by": fill(sent_by, model, payload),
        "input": _input(payload),
        "takes": transition(taken.transition) if taken is not None else None,
        "refused": [candidate(c, d, model, payload, times) for c in found if not c.passes],
    }


def _input(payload: Any) -> JSON:
    """The hypothetical input's fields that say who and what (not the clock's)."""
    out: JSON = {}
    for name in ("node", "rwx_block", "evidence", "reason"):
        value = getattr(payload, name, None)
        if value not in (None, ""):
            out[name] = value
    return out


def ways_out(
    d: MachineDef,
    model: Any,
    state: str,
    payload_for: Any,
    times: Times,
    skip: str = "",
) -> list[JSON]:
    """The transitions that leave `state` for another state, by an event other than `skip`,
    each with who would send it (as for the holder: `payload_for(transition)`) and what it
    would still need (its guards' unmet evidence and times). Transitions that a fact refuses
    for that input (the holder cannot migrate to itself) are left out."""
    out = []
    sent_by: dict[str, str] = getattr(d.cls, "sent_by", {})
    for t in d.transitions:
        if t.source != state or t.target == state or t.event == skip:
            continue
        p = payload_for(t)
        needs: list[JSON] = []
        refused = False
        for name, want in t.conds:
            doc = doc_of(d.cls, name)
            if doc is None or not want:
                continue
            for x in doc.parts:
                if x.holds(model, p):
                    continue
                if x.kind in ("fact", "before"):
                    refused = True
                needs.append(part(x, model, p, times))
        if refused:
            continue
        out.append(
            {
                "transition": transition(t),
                "sent_by": fill(sent_by.get(t.event, ""), model, p),
                "needs": needs,
            }
        )
    return out


def history(recorder: FlightRecorder | None, machine: str, key: str, times: Times) -> list[JSON]:
    if recorder is None:
        return []
    return [entry(e, times) for e in recorder.history(machine, key)]


def entry(e: Entry, times: Times) -> JSON:
    t = e.transition
    out: JSON = {
        "at": times.mono(e.first),
        "event": t.event,
        "source": t.source,
        "target": t.target,
        "transition": text(t),
        "hooks": list(t.hooks),
        "refused": [
            {"transition": text(c), "guard": g if want else f"not {g}"}
            for c, g, want in e.decision.refused
        ],
        "reason": e.reason,
        "repeats": e.repeats,
    }
    if e.repeats > 1:
        out["last_at"] = times.mono(e.last)
    return out


def step(s: Step, times: Times) -> JSON:
    """A transition of a derivation (the silent settle): how the state follows from now."""
    return {
        "event": s.event,
        "source": s.source,
        "target": s.target,
        "transition": text(s.transition),
        "reason": getattr(s.payload, "reason", ""),
        "at": times.mono(s.now),
    }
