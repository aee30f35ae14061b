"""The next step of a volume, from an event's outcome: blocked (and by which guards, waiting
for what) or due; and the one line that says it."""

from __future__ import annotations

from ..control.nodes import NodeBook
from ..machines import AttachmentModel
from .machine import JSON


def blocked_or_due(outcome: JSON, event: str) -> JSON:
    """The next step from an event's outcome: the first refused candidate is what the driver
    waits for (blocked), unless nothing was refused (the event takes its first choice)."""
    refused = outcome["refused"]
    takes = outcome["takes"]
    if not refused:
        return {
            "status": "due",
            "event": event,
            "transition": takes,
            "then": takes,
            "blocked_by": [],
            "input": outcome["input"],
        }
    wanted = refused[0]
    # Every refused candidate's refusing guards: a publish refused for a second node is
    # refused both as a repeat for the holder (on_node) and as a migration (can_migrate).
    blocked_by = [g for c in refused for g in c["guards"] if g["refuses"]]
    waits = [w for g in blocked_by for w in g["waiting_for"] if not w["met"]]
    at = [w for w in waits if w["kind"] == "after" and "at" in w]
    only_time = waits and all(w["kind"] == "after" for w in waits)
    latest = max(at, key=lambda w: w["in_s"]) if at else None
    return {
        "status": "blocked",
        "event": event,
        "transition": wanted["transition"],
        "then": takes,
        "blocked_by": blocked_by,
        "at": latest["at"] if latest and only_time else None,
        "in_s": latest["in_s"] if latest and only_time else None,
        "input": outcome["input"],
    }


def summary(model: AttachmentModel, nxt: JSON, nodes: NodeBook, sessions_now: str = "") -> str:
    """One line: where the volume is, what the next step waits for (naming the guard), and
    the evidence or time that would let it through."""
    state, holder = model.state, model.node
    head = {
        "stale": f"stale on node {holder}",
        "migrating": f"migrating from node {holder} to node {model.peer}",
        "attached": f"attached to node {holder}",
        "detached": "detached",
    }.get(state or "", state or "")
    if nxt["status"] == "at rest":
        return f"{head}; nothing is pending"
    t = (nxt.get("transition") or {}).get("text", nxt["event"])
    if nxt["status"] == "due":
        return f"{head}; {t} is due at the next {nxt['event']}"
    waits = []
    for g in nxt["blocked_by"]:
        if g.get("guard") is None:
            continue
        unmet = [w for w in g["waiting_for"] if not w["met"]]
        if not unmet:
            waits.append(f"{g['guard']} holds: {g['text']}" if g["holds"] else g["guard"])
        for w in unmet:
            if w["kind"] == "evidence":
                waits.append(f"waiting for {w['text']} ({_node_now(holder, nodes, sessions_now)})")
            elif w["kind"] == "after" and "in_s" in w:
                waits.append(f"{w['text']} ends in {max(0.0, w['in_s']):g} s")
            elif w["kind"] == "before":
                waits.append(f"{w['text']} has closed")
            else:
                waits.append(f"not so: {w['text']}")
    guards = ", ".join(dict.fromkeys(g["guard"] for g in nxt["blocked_by"] if g.get("guard")))
    return f"{head}; {t} blocked by {guards}: " + "; ".join(waits)


def _node_now(name: str | None, nodes: NodeBook, sessions_now: str = "") -> str:
    """What the driver sees of a node now, against the evidence it needs."""
    if not name:
        return "no node"
    model = nodes.models.get(name)
    if model is None:
        return f"node {name} never seen"
    deleted = "deleted" if model.state == "deleted" else "not deleted"
    taint = "tainted out-of-service" if model.out_of_service else "no out-of-service taint"
    return f"now: {deleted}, {taint}" + (f", {sessions_now}" if sessions_now else "")
