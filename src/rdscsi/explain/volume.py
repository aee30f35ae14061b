"""A volume's explanation: its Attachment machine derived from its claims now, the events
the driver may send next and what each would do, the next step with the guards that block it,
and what the cluster and the appliance show."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..control.record import INFLIGHT_PREFIX, Observed
from ..machines import AttachmentModel
from ..machines.attachment import AttachInput
from . import machine as mx
from .appliance import ApplianceView, connection_blocker
from .machine import ATTACHMENT, JSON, NODE_VOLUME, Times
from .node import node_facts
from .steps import blocked_or_due, summary

if TYPE_CHECKING:
    from .service import Explainer


async def explain_volume(ex: Explainer, vid: str) -> JSON:
    times = Times(ex.clock)
    observed = ex.record.observe(vid)
    deriver = ex.deriver
    model = deriver.restore(deriver.silent, vid, observed.rwx_block, observed.holders())
    restored = {"state": model.state, "nodes": list(model.nodes)}
    appliance_name = ex.appliance_of(vid)
    view = ex.appliances.get(appliance_name)
    # Session evidence, read as the reconciler and ControllerPublish read it: a lost holder's
    # host without a session to the volume is evidence (the leader cleared on it too).
    sessions, unread = None, ""
    probe = getattr(view, "session_evidence", None)
    if probe is not None and deriver.wants_sessions(model.nodes):
        sessions, unread = await probe(ex.nodes)
    steps = deriver.settle(deriver.silent, model, sessions)
    derivation = [mx.step(s, times) for s in steps]
    # Since when: a stale holder from its loss; a state the derivation only now reached
    # (the objects imply it, no transition has dated it here) is left undated.
    since: float | None = model.entered_at
    if model.state == "stale":
        since = model.stale_since
    elif any(s.source != s.target for s in steps):
        since = None
    sessions_now = unread
    holder = model.node or ""
    if model.state == "stale" and sessions is not None:
        if ex.nodes.host_nqn(holder) is None:
            sessions_now = "its host NQN unknown, so no session evidence"
        elif sessions.absent(vid, holder):
            sessions_now = "its host has no session to the volume on the appliance"
        else:
            sessions_now = "its host has a session to the volume on the appliance"
    no_session = sessions is not None and model.state == "stale" and sessions.absent(vid, holder)
    events = _events(ex, model, observed, times, no_session)
    nxt = _next_step(ex, model, observed, events, times, view, sessions_now)
    body: JSON = {
        "kind": "volume",
        "object": {"volume_id": vid, "appliance": appliance_name},
        "replica": ex.replica_info(),
        "now": times.iso(times.now_wall),
        "machine": {
            **mx.diagram(ATTACHMENT, model.state),
            "since": times.mono(since),
            "for_s": None if since is None else round(times.now_mono - since, 1),
        },
        "model": {
            "node": model.node,
            "peer": model.peer,
            "rwx_block": model.rwx_block,
            "stale_since": times.mono(model.stale_since),
            "deadline": times.mono(model.deadline),
        },
        "restored": restored,
        "derivation": derivation,
        "next": nxt,
        "events": events,
        "history": mx.history(ex.recorder, "attachment", vid, times),
        "cluster": _cluster(ex, vid, observed, model, times),
        "appliance": await _appliance(view, vid),
    }
    if ex.node_side is not None:
        body["node_side"] = _node_side(ex, vid, times)
    pv = body["cluster"].get("pv")
    if pv:
        body["object"].update(pv=pv["name"], pvc=pv.get("claim"))
    return body


def _events(
    ex: Explainer,
    model: AttachmentModel,
    observed: Observed,
    times: Times,
    no_session: bool = False,
) -> list[JSON]:
    d, nodes = ATTACHMENT, ex.nodes
    holder = model.node or ""
    out = []
    if model.state == "stale":
        evidence = nodes.evidence(holder) or no_session
        reason = nodes.describe(holder)
        if no_session and not nodes.evidence(holder):
            reason += "; no NVMe/TCP session of its host to the volume on the appliance"
        p = ex.input(holder, evidence=evidence, reason=reason)
        out.append(mx.outcome(d, model, "reconcile", p, times))
        p = ex.input(holder, reason=f"if node {holder} is Ready again")
        out.append(mx.outcome(d, model, "node_ready", p, times))
    elif model.state == "migrating":
        p = ex.input(holder, reason="the reconciler's next pass")
        out.append(mx.outcome(d, model, "reconcile", p, times))
    for c in observed.claims:
        if c.node in model.nodes:
            if c.deleting:
                p = ex.input(c.node, reason=f"VolumeAttachment {c.key} is being deleted")
                out.append(mx.outcome(d, model, "unpublish", p, times))
            continue
        if c.deleting:
            continue
        since = None if c.key.startswith(INFLIGHT_PREFIX) else ex.deriver.mono(c.since)
        why = f"VolumeAttachment {c.key} for node {c.node}" + (
            " (attached per its status)" if c.attached else " (waiting for the attacher)"
        )
        p = ex.input(c.node, rwx_block=observed.rwx_block, since=since, reason=why)
        out.append(mx.outcome(d, model, "publish", p, times))
    return out


def _next_step(
    ex: Explainer,
    model: AttachmentModel,
    observed: Observed,
    events: list[JSON],
    times: Times,
    view: ApplianceView | None,
    sessions_now: str = "",
) -> JSON:
    state = model.state or ""
    holder = model.node or ""
    first = next(iter(events), None)
    publish = next((e for e in events if e["event"] == "publish"), None)

    def for_holder(t: Any) -> AttachInput:
        who = model.peer if "on_peer" in {n for n, _ in t.conds} else holder
        return ex.input(who or "")

    nxt: JSON
    if state in ("stale", "migrating") and first is not None and first["event"] == "reconcile":
        nxt = blocked_or_due(first, "reconcile")
        nxt["ways_out"] = mx.ways_out(ATTACHMENT, model, state, for_holder, times, skip="reconcile")
    elif publish is not None:
        nxt = blocked_or_due(publish, "publish")
        nxt["ways_out"] = mx.ways_out(ATTACHMENT, model, state, for_holder, times, skip="publish")
    else:
        nxt = {
            "status": "at rest",
            "event": None,
            "blocked_by": [],
            "ways_out": mx.ways_out(ATTACHMENT, model, state, for_holder, times),
        }
    nxt["summary"] = summary(model, nxt, ex.nodes, sessions_now)
    if view is not None and view.connection.state != "connected":
        blocker = connection_blocker(view, ex.clock, times)
        if publish is not None or nxt["status"] != "at rest":
            nxt["blocked_by"].append(blocker)
        nxt["appliance"] = blocker
        timer = blocker["waiting_for"][0] if blocker["waiting_for"] else None
        when = f", next dial in {max(0.0, timer['in_s']):g} s" if timer else ""
        nxt["summary"] += f"; appliance {view.name} is {blocker['state']}{when}"
    if ex.replica().get("leader") is False and nxt.get("event") == "reconcile":
        holder_id = ex.replica().get("lease_holder") or "no replica"
        nxt["by"] = f"the reconciler: {holder_id} (not this replica)"
    return nxt


def _cluster(
    ex: Explainer, vid: str, observed: Observed, model: AttachmentModel, times: Times
) -> JSON:
    pv = next((v for v in ex.pvs() if v.handle == vid), None)
    claims = []
    for c in observed.claims:
        claims.append(
            {
                "name": c.key,
                "node": c.node,
                "attached": c.attached,
                "deleting": c.deleting,
                "created": times.iso(c.since),
                "in_flight": c.key.startswith(INFLIGHT_PREFIX),
                "holds": c.node in model.nodes,
            }
        )
    names = list(dict.fromkeys([*model.nodes, *(c.node for c in observed.claims)]))
    return {
        "source": "informers" if ex.cluster else "standalone record",
        "pv": (
            {"name": pv.name, "claim": pv.claim or None, "rwx_block": pv.rwx_block}
            if pv is not None
            else None
        ),
        "rwx_block": observed.rwx_block,
        "volume_attachments" if ex.cluster else "publishes": claims,
        "nodes": [node_facts(ex, n, times) for n in names],
    }


async def _appliance(view: ApplianceView | None, vid: str) -> JSON:
    if view is None:
        return {"name": None, "read": False, "why": "no appliance known for this volume"}
    conn = view.connection
    return {
        "name": view.name,
        "connection": conn.state,
        **view.describe(),
        **await view.volume(vid),
    }


def _node_side(ex: Explainer, vid: str, times: Times) -> JSON:
    assert ex.node_side is not None
    node_id, service = ex.node_side
    model = service.models.get(vid)
    state = model.state if model is not None else "unstaged"
    return {
        "node": node_id,
        "machine": mx.diagram(NODE_VOLUME, state),
        "observed": model is not None,
        "reason": getattr(model, "reason", "") if model is not None else "",
        "history": mx.history(ex.recorder, "node_volume", vid, times),
    }
