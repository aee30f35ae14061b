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
from ..control.record import AttachmentRecord, ClusterRecord
from ..csi.naming import is_volume_id, split_id, volume_slot
from ..csi.naming import volume_id as volume_id_of
from ..hooks.recorder import FlightRecorder
from ..machines.attachment import AttachInput
from .appliance import ApplianceView, StoreView, explain_appliance
from .machine import JSON, Times
from .node import explain_node
from .volume import explain_volume

if TYPE_CHECKING:
    from ..app import ControllerApp
    from ..cluster import ClusterBinding

KINDS = ("pvc", "pv", "volume", "node", "appliance")
NAME_LIMIT = 253  # a Kubernetes name (a PVC "namespace/name" fits twice over)
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class Refused(Exception):
    """An answer that is not an explanation: (HTTP status, one line)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
    replica: Callable[[], JSON]  # who answers: identity, leader, lease_holder, mode
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
            body = await explain_appliance(self, key)
        elif found_kind == "node":
            body = explain_node(self, key)
        else:
            body = await explain_volume(self, key)
        return {"asked": asked, **body}

    def input(self, node: str, **kw: Any) -> AttachInput:
        """An Attachment input as the driver would build it now."""
        return self.deriver.input(node, **kw)

    # --- names ------------------------------------------------------------------------------

    def pvs(self) -> Iterable[Any]:
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
            for pv in self.pvs():
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
            for pv in self.pvs():
                if pv.name == name:
                    return "volume", pv.handle, {**asked, "pv": pv.name, "pvc": pv.claim or None}
            if kind == "pv":
                if self.cluster:
                    raise Refused(404, f"no PV {name} of this driver in this replica's view")
                # Standalone: the PV's name is the name CreateVolume was given; which
                # appliance holds it, the attachment record knows if it was ever attached.
                slot = volume_slot(name)
                held = [v for v in self.record.volume_ids() if (split_id(v) or ("", ""))[1] == slot]
                return "volume", held[0] if len(held) == 1 else volume_id_of(name), asked
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

    def replica_info(self) -> JSON:
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
            "replica": self.replica_info(),
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


def for_controller(app: ControllerApp) -> Explainer:
    """The explainer of a controller (standalone until `bind_cluster`): one view per
    appliance of its fleet, each volume explained with its own appliance's (its fence,
    sessions and the orphans of its own sweep)."""
    config = app.config
    views: dict[str, ApplianceView] = {
        a.name: StoreView(
            a.name,
            a.rds,
            a.store,
            a.nvme_address,
            fence="allow-host" if a.fence else "none",
            sweep=app.audit[a.name].sweep,
            export_nqn=a.export_nqn,
            clock=app.clock,
        )
        for a in app.appliances
    }
    leadership = app.leadership
    node = app.server.node
    return Explainer(
        deriver=app.attachments.deriver,
        record=app.record,
        nodes=app.nodes,
        recorder=app.machines.recorder,
        clock=app.clock,
        appliances=views,
        appliance_of=app.appliances.appliance_of,
        replica=lambda: {
            "identity": leadership.identity,
            "leader": leadership.leading,
            "lease_holder": leadership.identity if leadership.leading else None,
            "mode": "standalone",
        },
        node_side=(config.node_id, node) if node is not None else None,
        extra={"connect_timeout": app.rds.config.connect_timeout},
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
