"""Prints an explanation as served by `/debug/explain`: text for a terminal, or Markdown with
the machine as a Mermaid block. Only the JSON is read, so what is printed is what the driver
that answered runs (its machines, its guards), whatever version this command is."""

from __future__ import annotations

from datetime import datetime
from typing import Any

JSON = dict[str, Any]
CURRENT = "▶"


# --- times ------------------------------------------------------------------------------------


def clock(iso: str | None) -> str:
    """HH:MM:SS in this machine's time zone."""
    if not iso:
        return "-"
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return iso
    return when.strftime("%H:%M:%S")


def span(seconds: float) -> str:
    s = abs(seconds)
    if s < 120:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 7200:
        return f"{s // 60:.0f} min {s % 60:.0f} s"
    return f"{s // 3600:.0f} h {s % 3600 // 60:.0f} min"


def relative(in_s: float | None) -> str:
    if in_s is None:
        return ""
    return f"in {span(in_s)}" if in_s > 0 else f"{span(in_s)} ago" if in_s < 0 else "now"


def when(item: JSON) -> str:
    """`at 12:01:37 (in 12 s)` for anything with `at` and `in_s`."""
    if not item.get("at"):
        return ""
    return f"{clock(item['at'])} ({relative(item.get('in_s'))})"


# --- the machine --------------------------------------------------------------------------------


def diagram_text(m: JSON) -> list[str]:
    """Each state with the transitions leaving it, one line per target; the current state
    marked."""
    width = max((len(s) for s in m["states"]), default=0)
    out = [f"machine {m['name']} ({m['spec']}):"]
    by_source: dict[str, list[JSON]] = {}
    for e in m["edges"]:
        by_source.setdefault(e["source"], []).append(e)
    for state in m["states"]:
        mark = CURRENT if state == m.get("current") else " "
        notes = []
        if state == m.get("initial"):
            notes.append("initial")
        if state in m.get("finals", []):
            notes.append("final")
        label = state + (f" ({', '.join(notes)})" if notes else "")
        edges = by_source.get(state, [])
        if not edges:
            out.append(f"  {mark} {label}")
            continue
        for i, e in enumerate(edges):
            head = f"  {mark} {label:<{width + 10}}" if i == 0 else " " * (width + 14)
            out.append(f"{head}→ {e['target']}: {', '.join(e['labels'])}")
    return out


def _mermaid_id(state: str) -> str:
    return state if state.isidentifier() else f'"{state}"'


def diagram_mermaid(m: JSON) -> list[str]:
    """A Markdown Mermaid block (stateDiagram-v2), the current state highlighted. Every pair
    of states is one edge with its labels on separate lines: Mermaid drops the labels of
    parallel self-loops."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {_mermaid_id(m['initial'])}"]
    for e in m["edges"]:
        label = "<br/>".join(e["labels"])
        lines.append(f"    {_mermaid_id(e['source'])} --> {_mermaid_id(e['target'])}: {label}")
    for final in m.get("finals", []):
        lines.append(f"    {_mermaid_id(final)} --> [*]")
    if m.get("current"):
        lines.append("    classDef current fill:#ffd54f,stroke:#e65100,stroke-width:3px")
        lines.append(f"    class {_mermaid_id(m['current'])} current")
    lines.append("```")
    return lines


# --- the parts ----------------------------------------------------------------------------------


def _mark(w: JSON) -> str:
    return "✓" if w.get("met") else "✗"


def _wait(w: JSON) -> str:
    text = w["text"]
    if w["kind"] == "after" and w.get("at"):
        verb = "over" if w.get("met") else "ends"
        return f"{text}: {verb} {when(w)}"
    if w["kind"] == "before" and w.get("at"):
        verb = "open until" if w.get("met") else "closed at"
        return f"{text}: {verb} {when(w)}"
    return str(text)


def blocker_lines(g: JSON, indent: str = "    ") -> list[str]:
    if g.get("guard") is None:  # the appliance connection, not a guard
        lines = [f"{indent}✗ {g['text']}"]
        lines += [f"{indent}    {_mark(w)} {_wait(w)}" for w in g.get("waiting_for", [])]
        return lines
    if not g.get("waiting_for"):
        return [f"{indent}✗ {g['guard']}: {g['text']}" + (" (holds)" if g.get("holds") else "")]
    lines = [f"{indent}✗ guard {g['guard']} ({g['machine']}): {g['text']}"]
    lines += [f"{indent}    {_mark(w)} {_wait(w)}" for w in g["waiting_for"]]
    return lines


def next_lines(n: JSON) -> list[str]:
    out = [f"next: {n.get('summary', n.get('status'))}"]
    t = n.get("transition")
    if n.get("status") == "blocked" and t:
        out.append(f"  waiting for {t['text']}" + (f", due {when(n)}" if n.get("at") else ""))
    elif n.get("status") == "due" and t:
        out.append(f"  due: {t['text']}")
    if n.get("by"):
        out.append(f"  by {n['by']}")
    for g in n.get("blocked_by", []):
        out += blocker_lines(g)
    then = n.get("then")
    if n.get("status") == "blocked" and then:
        out.append(f"  meanwhile {n.get('event')} takes {then['text']}")
    ways = n.get("ways_out") or []
    if ways:
        out.append("  other ways out:")
        for w in ways:
            needs = "; ".join(_wait(x) for x in w.get("needs", []))
            cond = f" (needs {needs})" if needs else ""
            out.append(f"    {w['transition']['text']}: {w['sent_by']}{cond}")
    return out


def event_lines(events: list[JSON]) -> list[str]:
    if not events:
        return []
    out = ["events now (from what this replica observes):"]
    for e in events:
        who = e["input"].get("reason") or e["sent_by"]
        takes = e["takes"]["text"] if e.get("takes") else "refused (no transition)"
        hooks = (
            f" / {', '.join(e['takes']['hooks'])}"
            if e.get("takes", {}) and e["takes"]["hooks"]
            else ""
        )
        out.append(f"  {e['event']} ({who}): {takes}{hooks}")
        for c in e.get("refused", []):
            refusing = [g for g in c["guards"] if g["refuses"]]
            names = ", ".join(g["guard"] for g in refusing)
            out.append(f"    not {c['transition']['text']}: {names} refuses")
    return out


def history_lines(history: list[JSON]) -> list[str]:
    if not history:
        return ["recent transitions: none recorded by this replica"]
    out = ["recent transitions (this replica, oldest first):"]
    for h in history:
        times = f"{h['repeats']} times, last {clock(h.get('last_at'))}" if h["repeats"] > 1 else ""
        refused = ", ".join(r["guard"] for r in h.get("refused", []))
        extra = [x for x in (times, f"refused: {refused}" if refused else "") if x]
        tail = f" [{'; '.join(extra)}]" if extra else ""
        reason = f"  {h['reason']}" if h.get("reason") else ""
        out.append(
            f"  {clock(h['at'])}  {h['event']:<12} {h['source']} → {h['target']}{tail}{reason}"
        )
    return out


def node_lines(n: JSON, indent: str = "  ") -> list[str]:
    state = "Ready" if n.get("ready") else "not Ready"
    if n.get("deleted"):
        state = "deleted"
    bits = [f"{indent}node {n['name']}: {state}"]
    if n.get("lost_since"):
        bits[0] += f" since {clock(n['lost_since'])}"
    for c in n.get("conditions", []):
        reason = f" ({c['reason']})" if c.get("reason") else ""
        bits.append(f"{indent}  condition {c['type']}={c['status']}{reason}")
    if "taints" in n:
        bits.append(f"{indent}  taints: {', '.join(n['taints']) or 'none'}")
    bits.append(
        f"{indent}  evidence it is gone: {'yes' if n.get('evidence') else 'no'}"
        f" ({n.get('source', '')})"
    )
    return bits


def cluster_lines(c: JSON) -> list[str]:
    out = [f"cluster ({c.get('source', '')}):"]
    pv = c.get("pv")
    if pv:
        claim = f", PVC {pv['claim']}" if pv.get("claim") else ""
        out.append(
            f"  PV {pv['name']}{claim}" + (" (read-write-many block)" if pv["rwx_block"] else "")
        )
    claims: list[JSON] = c.get("volume_attachments") or c.get("publishes") or []
    kind = "VolumeAttachment" if "volume_attachments" in c else "publish"
    if not claims:
        out.append(f"  no {kind} for it")
    for a in claims:
        flags = ["attached" if a["attached"] else "not attached"]
        if a.get("deleting"):
            flags.append("being deleted")
        if a.get("in_flight"):
            flags.append("published here, not yet in a VolumeAttachment")
        flags.append("holds it" if a.get("holds") else "does not hold it")
        out.append(
            f"  {kind} {a['name']}: node {a['node']}, {', '.join(flags)}, created "
            f"{clock(a['created'])}"
        )
    for n in c.get("nodes", []):
        out += node_lines(n)
    return out


def appliance_lines(a: JSON) -> list[str]:
    name = a.get("name") or "?"
    out = [f"appliance {name} ({a.get('connection')}, {a.get('address')}:{a.get('port')}):"]
    if not a.get("read", False):
        out.append(f"  not read: {a.get('why', '')}")
        return out
    skip = {"name", "connection", "address", "port", "user", "nvme_address", "read", "why"}
    for key, value in a.items():
        if key in skip:
            continue
        if value is None:
            out.append(f"  {key}: none")
        elif isinstance(value, dict):
            out.append(
                f"  {key}: "
                + ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
            )
        elif isinstance(value, list):
            out.append(f"  {key}:" + ("" if value else " none"))
            out += [f"    {v}" for v in value]
        else:
            out.append(f"  {key}: {value}")
    return out


# --- whole answers ------------------------------------------------------------------------------


def header(body: JSON) -> list[str]:
    obj = body.get("object", {})
    kind = body["kind"]
    if kind == "volume":
        names = [
            f"PV {obj['pv']}" if obj.get("pv") else "",
            f"PVC {obj['pvc']}" if obj.get("pvc") else "",
        ]
        extra = ", ".join(x for x in names if x)
        title = f"volume {obj['volume_id']}" + (f" ({extra})" if extra else "")
        title += f" on appliance {obj.get('appliance')}"
    elif kind == "node":
        title = f"node {obj['node']}"
    else:
        title = f"appliance {obj['appliance']} ({obj['connection']})"
    r = body["replica"]
    role = "reconciler leader" if r.get("leader") else "not the reconciler leader"
    who = f"{r['identity']} ({role})"
    lines = [title, f"answered by {who} at {clock(body['now'])}"]
    if not r.get("leader"):
        lines.append(f"  {r.get('note', '')}")
    m = body["machine"]
    since = f" since {clock(m.get('since'))}" if m.get("since") else ""
    dur = f" ({span(m['for_s'])})" if m.get("for_s") is not None else ""
    lines.append(f"state: {m['name']} {m.get('current')}{since}{dur}")
    return lines


def text(body: JSON, mermaid: bool = False) -> str:
    if body.get("kind") == "overview":
        return overview(body)
    out = header(body)
    model = body.get("model") or {}
    if body["kind"] == "volume":
        holders = [x for x in (model.get("node"), model.get("peer")) if x]
        if holders:
            out.append(f"  held by node {' and '.join(holders)}")
        for s in body.get("derivation", []):
            out.append(f"  from the objects: {s['transition']} ({s['reason']})")
    elif body["kind"] == "appliance":
        out.append(
            f"  attempt {model.get('attempt')}, backoff delay {model.get('delay_s')} s"
            + (f", lost at {clock(model['lost_at'])}" if model.get("lost_at") else "")
        )
    out.append("")
    out += next_lines(body["next"])
    events = body.get("events") or []
    if events:
        out.append("")
        out += event_lines(events)
    out.append("")
    out += history_lines(body.get("history", []))
    if body["kind"] == "volume":
        out.append("")
        out += cluster_lines(body["cluster"])
        out.append("")
        out += appliance_lines(body["appliance"])
        side = body.get("node_side")
        if side:
            out.append("")
            state = side["machine"]["current"]
            out.append(f"on node {side['node']} (this process's Node service): {state}")
            out += ["  " + x for x in history_lines(side.get("history", []))]
    elif body["kind"] == "node":
        out.append("")
        out += node_lines(body["cluster"]["node"], indent="")
        vols = body.get("volumes", [])
        out.append(f"volumes with a claim on it: {len(vols)}")
        for v in vols:
            held = "holds" if v["holds"] else "claims"
            out.append(f"  {v['volume_id']}: {v['state']} ({held})")
    else:
        out.append("")
        out += appliance_lines(body["appliance"])
    out.append("")
    out += diagram_mermaid(body["machine"]) if mermaid else diagram_text(body["machine"])
    return "\n".join(out) + "\n"


def overview(body: JSON) -> str:
    r = body["replica"]
    lead = "reconciler leader" if r.get("leader") else "not the reconciler leader"
    out = [f"answered by {r['identity']} ({lead}) at {clock(body['now'])}"]
    out.append(
        "appliances: " + ", ".join(f"{a['name']} {a['connection']}" for a in body["appliances"])
    )
    nodes = body["nodes_not_ready"]
    out.append(
        "nodes not Ready: " + (", ".join(f"{n['name']} ({n['state']})" for n in nodes) or "none")
    )
    vols = body["volumes_not_at_rest"]
    out.append("volumes not at rest: " + ("none" if not vols else str(len(vols))))
    for v in vols:
        pending = f", pending for {', '.join(v['pending'])}" if v["pending"] else ""
        out.append(
            f"  {v['volume_id']}: {v['state']} on {', '.join(v['nodes']) or 'no node'}{pending}"
        )
    out.append("`rdscsi explain KIND NAME` explains one (pvc, pv, volume, node, appliance)")
    return "\n".join(out) + "\n"
