"""`GET /debug/explain`: what the driver knows about one object, and why it waits.

Answers are computed from what this replica observes now, the way its decisions are: a
volume's Attachment machine is derived from its claims (`control.derive`, on the silent
engine: nothing is emitted, nothing changes), then each event the driver may send next is
evaluated with the input it would carry (`engine.evaluate`), and each refusing guard says
what evidence or time would change it (`machines.guards`). The cluster part comes from the
informers' caches (no API call is made), the appliance part from `ApplianceView`s (one read
command, bounded in time), the history from the flight recorder.

Every replica derives the same state and next step from the same objects. The history is
this replica's own: a follower records the CSI calls it answered; the reconciler's
transitions (stale marking, clearing, migration expiry) are on the leader, which the answer
names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from ..control.derive import Deriver
from ..control.nodes import NodeBook, NodeView
from ..control.record import INFLIGHT_PREFIX, AttachmentRecord, ClusterRecord, Observed
from ..csi.naming import is_volume_id
from ..csi.naming import volume_id as volume_id_of
from ..hooks.recorder import FlightRecorder
from ..machines import AttachmentModel, ConnInput, compile_machine
from ..machines.attachment import AttachInput, AttachmentMachine
from ..machines.connection import ConnectionMachine
from ..machines.guards import Part, fill
from ..machines.node import NodeMachine
from ..machines.volume import NodeVolumeMachine
from . import machine as mx
from .appliance import ApplianceView, StoreView
from .machine import JSON, Times

if TYPE_CHECKING:
    from ..app import ControllerApp
    from ..cluster import ClusterBinding

KINDS = ("pvc", "pv", "volume", "node", "appliance")
NAME_LIMIT = 253  # a Kubernetes name (a PVC "namespace/name" fits twice over)
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")

ATTACHMENT = compile_machine(AttachmentMachine)
CONNECTION = compile_machine(ConnectionMachine)
NODE = compile_machine(NodeMachine)
NODE_VOLUME = compile_machine(NodeVolumeMachine)


class Refused(Exception):
    """An answer that is not an explanation: (HTTP status, one line)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Replica(Protocol):
    """Who answers: the reconciler leader sees its own reconcile transitions."""

    def __call__(self) -> JSON: ...


class NodeSide(Protocol):
    """A Node service in this process (`rdscsi run`): the volumes it last observed."""

    models: Mapping[str, Any]


@dataclass
class Explainer:
    deriver: Deriver
    record: AttachmentRecord
    nodes: NodeBook
    recorder: FlightRecorder | None
    clock: Clock
    appliances: Mapping[str, ApplianceView]
    appliance_of: Callable[[str], str]  # volume id -> the name of the appliance it is on
    replica: Callable[[], JSON]
    node_views: Callable[[], Mapping[str, NodeView]] | None = None  # the Node informer's cache
    node_side: tuple[str, NodeSide] | None = None  # (this node's id, its Node service)
    cluster: bool = False  # views from informers (else: standalone, configured nodes)
    extra: dict[str, Any] = field(default_factory=dict)

    # --- the endpoint ---------------------------------------------------------------------

    async def answer(self, query: Mapping[str, str]) -> tuple[int, JSON]:
        """(HTTP status, body) for `?kind=&name=`; hostile input gets 400 and one line."""
        try:
            kind, name = _validated(query)
            if not name:
                if kind:
                    raise Refused(400, f"name: required with kind={kind}")
                return 200, await self.overview()
            return 200, await self.explain(kind, name)
        except Refused as exc:
            return exc.status, {"error": str(exc)}

    async def explain(self, kind: str, name: str) -> JSON:
        found_kind, key, asked = self.resolve(kind, name)
        if found_kind == "appliance":
            body = await self.appliance(key)
        elif found_kind == "node":
            body = self.node(key)
        else:
            body = await self.volume(key)
        return {"asked": asked, **body}

    # --- names ------------------------------------------------------------------------------

    def _pvs(self) -> Iterable[Any]:
        return self.record.volumes.values() if isinstance(self.record, ClusterRecord) else ()

    def _known_nodes(self) -> set[str]:
        names = {n for n, m in self.nodes.models.items() if m.state != "deleted"}
        if self.node_views is not None:
            names |= set(self.node_views())
        return names

    def _appliance_named(self, name: str) -> str | None:
        for key, view in self.appliances.items():
            if name in (key, view.connection.key):
                return key
        return None

    def resolve(self, kind: str, name: str) -> tuple[str, str, JSON]:
        """(volume | node | appliance, its key, what was asked and what it named)."""
        asked: JSON = {"kind": kind or None, "name": name}
        if kind in ("", "appliance"):
            found = self._appliance_named(name)
            if found is not None:
                return "appliance", found, asked
            if kind:
                known = ", ".join(sorted(self.appliances)) or "none"
                raise Refused(404, f"no appliance named {name} (this driver has: {known})")
        if kind in ("", "node"):
            if name in self._known_nodes() or name in self.nodes.models:
                return "node", name, asked
            if kind:
                raise Refused(404, f"no node {name} in this replica's view")
        if kind in ("", "pvc"):
            pvc = name if "/" in name else ""
            for pv in self._pvs():
                if pv.claim and pv.claim == pvc:
                    return "volume", pv.handle, {**asked, "pv": pv.name, "pvc": pv.claim}
            if kind:
                if not self.cluster:
                    raise Refused(
                        404,
                        "no cluster here (standalone): PVCs are unknown; explain the volume by "
                        "its id or PV name",
                    )
                if "/" not in name:
                    raise Refused(400, f"pvc {name}: give it as NAMESPACE/NAME")
                raise Refused(404, f"no PV of this driver is bound to PVC {name}")
        if kind in ("", "pv"):
            for pv in self._pvs():
                if pv.name == name:
                    return "volume", pv.handle, {**asked, "pv": pv.name, "pvc": pv.claim or None}
            if kind == "pv":
                if self.cluster:
                    raise Refused(404, f"no PV {name} of this driver in this replica's view")
                # Standalone: the PV's name is the name CreateVolume was given.
                return "volume", volume_id_of(name), asked
        if kind in ("", "volume"):
            if is_volume_id(name) or list(self.record.observe(name).claims):
                return "volume", name, asked
            if kind:
                raise Refused(404, f"volume {name}: not a volume id this driver issues")
        raise Refused(
            404,
            f"{name}: no appliance, node, PVC (NAMESPACE/NAME), PV or volume id of this "
            "driver by that name",
        )

    # --- who answers --------------------------------------------------------------------------

    def _replica(self) -> JSON:
        out = self.replica()
        if out.get("leader"):
            out["note"] = (
                "this replica runs the reconciler: its history holds the reconciler's "
                "transitions and the CSI calls it answered"
            )
        else:
            holder = out.get("lease_holder") or "none"
            out["note"] = (
                f"this replica does not run the reconciler (the leader is {holder}): the state "
                "and the next step are derived from the same cluster objects; its history holds "
                "only the CSI calls it answered"
            )
        return out

    # --- a volume -----------------------------------------------------------------------------

    async def volume(self, vid: str) -> JSON:
        times = Times(self.clock)
        observed = self.record.observe(vid)
        deriver = self.deriver
        model = deriver.restore(deriver.silent, vid, observed.rwx_block, observed.holders())
        restored = {"state": model.state, "nodes": list(model.nodes)}
        steps = deriver.settle(deriver.silent, model)
        derivation = [mx.step(s, times) for s in steps]
        # Since when: a stale holder from its loss; a state the derivation only now reached
        # (the objects imply it, no transition has dated it here) is left undated.
        since: float | None = model.entered_at
        if model.state == "stale":
            since = model.stale_since
        elif any(s.source != s.target for s in steps):
            since = None
        appliance_name = self.appliance_of(vid)
        view = self.appliances.get(appliance_name)
        events = self._volume_events(model, observed, times)
        nxt = self._volume_next(model, observed, events, times, view)
        body: JSON = {
            "kind": "volume",
            "object": {"volume_id": vid, "appliance": appliance_name},
            "replica": self._replica(),
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
            "history": mx.history(self.recorder, "attachment", vid, times),
            "cluster": self._volume_cluster(vid, observed, model, times),
            "appliance": await self._appliance_part(view, vid),
        }
        if self.node_side is not None:
            body["node_side"] = self._node_side(vid, times)
        pv = body["cluster"].get("pv")
        if pv:
            body["object"].update(pv=pv["name"], pvc=pv.get("claim"))
        return body

    def _input(self, node: str, **kw: Any) -> AttachInput:
        return self.deriver.input(node, **kw)

    def _volume_events(
        self, model: AttachmentModel, observed: Observed, times: Times
    ) -> list[JSON]:
        d, nodes = ATTACHMENT, self.nodes
        holder = model.node or ""
        out = []
        if model.state == "stale":
            evidence = nodes.evidence(holder)
            p = self._input(holder, evidence=evidence, reason=nodes.describe(holder))
            out.append(mx.outcome(d, model, "reconcile", p, times))
            p = self._input(holder, reason=f"if node {holder} is Ready again")
            out.append(mx.outcome(d, model, "node_ready", p, times))
        elif model.state == "migrating":
            p = self._input(holder, reason="the reconciler's next pass")
            out.append(mx.outcome(d, model, "reconcile", p, times))
        for c in observed.claims:
            if c.node in model.nodes:
                if c.deleting:
                    p = self._input(c.node, reason=f"VolumeAttachment {c.key} is being deleted")
                    out.append(mx.outcome(d, model, "unpublish", p, times))
                continue
            if c.deleting:
                continue
            since = None if c.key.startswith(INFLIGHT_PREFIX) else self.deriver.mono(c.since)
            why = f"VolumeAttachment {c.key} for node {c.node}" + (
                " (attached per its status)" if c.attached else " (waiting for the attacher)"
            )
            p = self._input(c.node, rwx_block=observed.rwx_block, since=since, reason=why)
            out.append(mx.outcome(d, model, "publish", p, times))
        return out

    def _volume_next(
        self,
        model: AttachmentModel,
        observed: Observed,
        events: list[JSON],
        times: Times,
        view: ApplianceView | None,
    ) -> JSON:
        state = model.state or ""
        holder = model.node or ""
        first = next(iter(events), None)
        publish = next((e for e in events if e["event"] == "publish"), None)

        def for_holder(t: Any) -> AttachInput:
            who = model.peer if "on_peer" in {n for n, _ in t.conds} else holder
            return self._input(who or "")

        nxt: JSON
        if state in ("stale", "migrating") and first is not None and first["event"] == "reconcile":
            nxt = _blocked_or_due(first, "reconcile")
            nxt["ways_out"] = mx.ways_out(
                ATTACHMENT, model, state, for_holder, times, skip="reconcile"
            )
        elif publish is not None:
            nxt = _blocked_or_due(publish, "publish")
            nxt["ways_out"] = mx.ways_out(
                ATTACHMENT, model, state, for_holder, times, skip="publish"
            )
        else:
            nxt = {
                "status": "at rest",
                "event": None,
                "blocked_by": [],
                "ways_out": mx.ways_out(ATTACHMENT, model, state, for_holder, times),
            }
        nxt["summary"] = _volume_summary(model, nxt, self.nodes)
        if view is not None and not _connected(view):
            blocker = self._appliance_blocker(view, times)
            if publish is not None or nxt["status"] != "at rest":
                nxt["blocked_by"].append(blocker)
            nxt["appliance"] = blocker
            timer = blocker["waiting_for"][0] if blocker["waiting_for"] else None
            when = f", next dial in {max(0.0, timer['in_s']):g} s" if timer else ""
            nxt["summary"] += f"; appliance {view.name} is {blocker['state']}{when}"
        if self.replica().get("leader") is False and nxt.get("event") == "reconcile":
            holder_id = self.replica().get("lease_holder") or "no replica"
            nxt["by"] = f"the reconciler: {holder_id} (not this replica)"
        return nxt

    def _appliance_blocker(self, view: ApplianceView, times: Times) -> JSON:
        conn = view.connection
        state = conn.state or "starting"
        out: JSON = {
            "machine": "connection",
            "object": view.name,
            "guard": None,
            "state": state,
            "text": (
                f"appliance {view.name} is {state}: every CSI call that reads or changes it "
                "(ControllerPublishVolume, CreateVolume, DeleteVolume...) answers UNAVAILABLE "
                "until it reconnects"
            ),
            "waiting_for": [],
        }
        timer = _timer(conn, self.clock)
        if timer is not None:
            _, wait = timer
            out["waiting_for"].append(mx.part(wait, conn, ConnInput(self.clock.monotonic()), times))
        return out

    def _volume_cluster(
        self, vid: str, observed: Observed, model: AttachmentModel, times: Times
    ) -> JSON:
        pv = next((v for v in self._pvs() if v.handle == vid), None)
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
            "source": "informers" if self.cluster else "standalone record",
            "pv": (
                {"name": pv.name, "claim": pv.claim or None, "rwx_block": pv.rwx_block}
                if pv is not None
                else None
            ),
            "rwx_block": observed.rwx_block,
            "volume_attachments" if self.cluster else "publishes": claims,
            "nodes": [self._node_facts(n, times) for n in names],
        }

    async def _appliance_part(self, view: ApplianceView | None, vid: str) -> JSON:
        if view is None:
            return {"name": None, "read": False, "why": "no appliance known for this volume"}
        conn = view.connection
        return {
            "name": view.name,
            "connection": conn.state,
            **view.describe(),
            **await view.volume(vid),
        }

    def _node_side(self, vid: str, times: Times) -> JSON:
        assert self.node_side is not None
        node_id, service = self.node_side
        model = service.models.get(vid)
        state = model.state if model is not None else "unstaged"
        return {
            "node": node_id,
            "machine": mx.diagram(NODE_VOLUME, state),
            "observed": model is not None,
            "reason": getattr(model, "reason", "") if model is not None else "",
            "history": mx.history(self.recorder, "node_volume", vid, times),
        }

    # --- a node -------------------------------------------------------------------------------

    def _node_facts(self, name: str, times: Times) -> JSON:
        nodes = self.nodes
        model = nodes.models.get(name)
        view = self.node_views().get(name) if self.node_views is not None else None
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
            "source": "informer" if self.cluster else "configured (standalone)",
        }
        if view is not None:
            out["conditions"] = [
                {"type": t, "status": s, "reason": r} for t, s, r in view.conditions
            ]
            out["taints"] = list(view.taints)
            if view.since is not None:
                out["ready_since"] = times.iso(view.since)
        return out

    def node(self, name: str) -> JSON:
        times = Times(self.clock)
        model = self.nodes.models.get(name)
        state = model.state if model is not None else None
        holding = []
        for vid in list(self.record.volume_ids()):
            observed = self.record.observe(vid)
            if not any(c.node == name for c in observed.claims):
                continue
            derived = self.deriver.current(observed)
            holding.append(
                {
                    "volume_id": vid,
                    "state": derived.state,
                    "holds": name in derived.nodes,
                    "pv": next((v.name for v in self._pvs() if v.handle == vid), None),
                }
            )
        nxt: JSON = {"status": "at rest", "event": None, "blocked_by": []}
        stale = [v for v in holding if v["state"] == "stale" and v["holds"]]
        if stale:
            observed = self.record.observe(str(stale[0]["volume_id"]))
            derived = self.deriver.current(observed)
            p = self._input(
                name, evidence=self.nodes.evidence(name), reason=self.nodes.describe(name)
            )
            out = mx.outcome(ATTACHMENT, derived, "reconcile", p, times)
            nxt = _blocked_or_due(out, "reconcile")
            nxt["summary"] = f"{len(stale)} volume(s) on node {name} are stale: " + _volume_summary(
                derived, nxt, self.nodes
            )
        elif state in ("not_ready",):
            nxt["summary"] = f"node {name} is not Ready; no volume of this driver is on it"
        else:
            nxt["summary"] = f"node {name} is {state or 'not known'}"
        return {
            "kind": "node",
            "object": {"node": name},
            "replica": self._replica(),
            "now": times.iso(times.now_wall),
            "machine": {
                **mx.diagram(NODE, state),
                "since": times.mono(model.entered_at) if model is not None else None,
            },
            "next": nxt,
            "history": mx.history(self.recorder, "node", name, times),
            "cluster": {"node": self._node_facts(name, times)},
            "volumes": holding,
        }

    # --- an appliance -------------------------------------------------------------------------

    async def appliance(self, name: str) -> JSON:
        times = Times(self.clock)
        view = self.appliances[name]
        conn = view.connection
        state = conn.state or "starting"
        nxt: JSON = {"status": "at rest", "event": None, "blocked_by": []}
        timer = _timer(conn, self.clock)
        if timer is not None:
            event, wait = timer
            blocker = self._appliance_blocker(view, times)
            t = next(t for t in CONNECTION.transitions if t.source == state and t.event == event)
            waited = blocker["waiting_for"][0] if blocker["waiting_for"] else {}
            nxt = {
                "status": "blocked",
                "event": event,
                "transition": mx.transition(t),
                "blocked_by": [blocker],
                "at": waited.get("at"),
                "in_s": waited.get("in_s"),
                "summary": f"appliance {name} is {state} after {conn.attempt} failed "
                f"attempt(s): it dials again when {fill(wait.text, conn, None)} ends",
            }
        elif state == "disconnected":
            nxt = {
                "status": "due",
                "event": "retry",
                "blocked_by": [],
                "summary": f"appliance {name} was lost; a redial is made at once",
            }
        elif state in ("connecting", "reconnecting"):
            nxt = {
                "status": "due",
                "event": "succeeded",
                "blocked_by": [],
                "summary": f"dialling appliance {name} (connect timeout "
                f"{self.extra.get('connect_timeout', 10.0):g} s)",
            }
        else:
            nxt["summary"] = f"appliance {name} is {state}"
        return {
            "kind": "appliance",
            "object": {"appliance": name, "connection": conn.key},
            "replica": self._replica(),
            "now": times.iso(times.now_wall),
            "machine": {**mx.diagram(CONNECTION, state), "since": times.mono(conn.entered_at)},
            "model": {
                "attempt": conn.attempt,
                "delay_s": round(conn.delay, 2),
                "lost_at": times.mono(conn.lost_at),
            },
            "next": nxt,
            "history": mx.history(self.recorder, "connection", conn.key, times),
            "appliance": {
                "name": name,
                "connection": state,
                **view.describe(),
                **await view.summary(),
            },
        }

    # --- what is not at rest ------------------------------------------------------------------

    async def overview(self) -> JSON:
        times = Times(self.clock)
        volumes = []
        for vid in list(self.record.volume_ids()):
            observed = self.record.observe(vid)
            model = self.deriver.current(observed)
            pending = [
                c.node
                for c in observed.claims
                if c.node not in model.nodes and not c.deleting and not c.attached
            ]
            if model.state in ("stale", "migrating") or pending:
                volumes.append(
                    {
                        "volume_id": vid,
                        "state": model.state,
                        "nodes": list(model.nodes),
                        "pending": pending,
                    }
                )
        nodes = [
            {"name": n, "state": m.state}
            for n, m in sorted(self.nodes.models.items())
            if m.state != "ready"
        ]
        appliances = [
            {"name": name, "connection": v.connection.state}
            for name, v in sorted(self.appliances.items())
        ]
        return {
            "kind": "overview",
            "replica": self._replica(),
            "now": times.iso(times.now_wall),
            "appliances": appliances,
            "nodes_not_ready": nodes,
            "volumes_not_at_rest": volumes,
        }


# --- helpers ----------------------------------------------------------------------------------


def _validated(query: Mapping[str, str]) -> tuple[str, str]:
    unknown = sorted(set(query) - {"kind", "name"})
    if unknown:
        raise Refused(400, f"unknown parameter(s): {', '.join(unknown)} (use kind and name)")
    kind = query.get("kind", "")
    if kind and kind not in KINDS:
        raise Refused(400, f"kind: {kind[:32]!r} is not one of {', '.join(KINDS)}")
    name = query.get("name", "")
    if len(name) > NAME_LIMIT:
        raise Refused(400, f"name: longer than {NAME_LIMIT} characters")
    if name and not _PRINTABLE.match(name):
        raise Refused(400, "name: only printable ASCII without spaces")
    return kind, name


def _connected(view: ApplianceView) -> bool:
    return view.connection.state == "connected"


def _timer(conn: Any, clock: Clock) -> tuple[str, Part] | None:
    timers: dict[str, tuple[str, Part]] = getattr(ConnectionMachine, "timers", {})
    return timers.get(conn.state or "")


def _blocked_or_due(outcome: JSON, event: str) -> JSON:
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


def _volume_summary(model: AttachmentModel, nxt: JSON, nodes: NodeBook) -> str:
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
                waits.append(f"waiting for {w['text']} ({_node_now(holder, nodes)})")
            elif w["kind"] == "after" and "in_s" in w:
                waits.append(f"{w['text']} ends in {max(0.0, w['in_s']):g} s")
            elif w["kind"] == "before":
                waits.append(f"{w['text']} has closed")
            else:
                waits.append(f"not so: {w['text']}")
    guards = ", ".join(dict.fromkeys(g["guard"] for g in nxt["blocked_by"] if g.get("guard")))
    return f"{head}; {t} blocked by {guards}: " + "; ".join(waits)


def _node_now(name: str | None, nodes: NodeBook) -> str:
    """What the driver sees of a node now, against the evidence it needs."""
    if not name:
        return "no node"
    model = nodes.models.get(name)
    if model is None:
        return f"node {name} never seen"
    deleted = "deleted" if model.state == "deleted" else "not deleted"
    taint = "tainted out-of-service" if model.out_of_service else "no out-of-service taint"
    return f"now: {deleted}, {taint}"


def for_controller(app: ControllerApp) -> Explainer:
    """The explainer of a controller (standalone until `bind_cluster`)."""
    rds, store, config = app.rds, app.store, app.config
    name = config.rds.name
    view = StoreView(name, rds, store, config.rds.nvme_address or config.rds.address)
    leadership = app.leadership
    node = app.server.node
    return Explainer(
        deriver=app.attachments.deriver,
        record=app.record,
        nodes=app.nodes,
        recorder=app.machines.recorder,
        clock=app.clock,
        appliances={name: view},
        appliance_of=lambda vid: name,
        replica=lambda: {
            "identity": leadership.identity,
            "leader": leadership.leading,
            "lease_holder": leadership.identity if leadership.leading else None,
            "mode": "standalone",
        },
        node_side=(config.node_id, node) if node is not None else None,
        extra={"connect_timeout": rds.config.connect_timeout},
    )


def bind_cluster(explainer: Explainer, binding: ClusterBinding) -> None:
    """In a cluster: node facts from the Node informer's cache; who leads from the Lease."""
    leadership = binding.app.leadership
    elector = binding.elector
    explainer.cluster = True
    explainer.node_views = lambda: binding.nodes_informer.store
    explainer.replica = lambda: {
        "identity": binding.identity,
        "leader": leadership.leading,
        "lease_holder": elector.holder or None,
        "mode": "cluster",
    }
