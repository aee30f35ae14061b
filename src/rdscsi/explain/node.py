"""A node's explanation: the Node machine, its conditions and taints as the informer holds
them, the volumes with a claim on it, and, when some are stale, what their release waits
for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import machine as mx
from .machine import ATTACHMENT, JSON, NODE, Times
from .steps import blocked_or_due, summary

if TYPE_CHECKING:
    from .service import Explainer


def node_facts(ex: Explainer, name: str, times: Times) -> JSON:
    nodes = ex.nodes
    model = nodes.models.get(name)
    view = ex.node_views().get(name) if ex.node_views is not None else None
    lost = nodes.lost_since(name)
    out: JSON = {
        "name": name,
        "state": model.state if model is not None else None,
        "ready": nodes.ready(name),
        "lost_since": times.iso(lost) if lost is not None else None,
        "deleted": (model is not None and model.state == "deleted")
        or (model is None and nodes.synced and view is None),
        "out_of_service": bool(model is not None and model.out_of_service),
        "evidence": nodes.evidence(name),
        "source": "informer" if ex.cluster else "configured (standalone)",
    }
    if view is not None:
        out["conditions"] = [{"type": t, "status": s, "reason": r} for t, s, r in view.conditions]
        out["taints"] = list(view.taints)
        if view.since is not None:
            out["ready_since"] = times.iso(view.since)
    return out


def explain_node(ex: Explainer, name: str) -> JSON:
    times = Times(ex.clock)
    model = ex.nodes.models.get(name)
    state = model.state if model is not None else None
    holding = []
    for vid in list(ex.record.volume_ids()):
        observed = ex.record.observe(vid)
        if not any(c.node == name for c in observed.claims):
            continue
        derived = ex.deriver.current(observed)
        holding.append(
            {
                "volume_id": vid,
                "state": derived.state,
                "holds": name in derived.nodes,
                "pv": next((v.name for v in ex.pvs() if v.handle == vid), None),
            }
        )
    nxt: JSON = {"status": "at rest", "event": None, "blocked_by": []}
    stale = [v for v in holding if v["state"] == "stale" and v["holds"]]
    if stale:
        observed = ex.record.observe(str(stale[0]["volume_id"]))
        derived = ex.deriver.current(observed)
        p = ex.input(name, evidence=ex.nodes.evidence(name), reason=ex.nodes.describe(name))
        out = mx.outcome(ATTACHMENT, derived, "reconcile", p, times)
        nxt = blocked_or_due(out, "reconcile")
        nxt["summary"] = f"{len(stale)} volume(s) on node {name} are stale: " + summary(
            derived, nxt, ex.nodes
        )
    elif state in ("not_ready",):
        nxt["summary"] = f"node {name} is not Ready; no volume of this driver is on it"
    else:
        nxt["summary"] = f"node {name} is {state or 'not known'}"
    return {
        "kind": "node",
        "object": {"node": name},
        "replica": ex.replica_info(),
        "now": times.iso(times.now_wall),
        "machine": {
            **mx.diagram(NODE, state),
            "since": times.mono(model.entered_at) if model is not None else None,
        },
        "next": nxt,
        "history": mx.history(ex.recorder, "node", name, times),
        "cluster": {"node": node_facts(ex, name, times)},
        "volumes": holding,
    }
