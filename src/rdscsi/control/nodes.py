"""The Node machines, fed by observed node views; answers "is this node gone, and since when?".

A source (the Kubernetes Node informer, or, standalone, the configured nodes) reports views;
the book turns differences into Node machine events, whose hooks ask for a reconcile pass.
Attachments ask the book whether their node is lost or ready, whether there is evidence
(deleted, or the out-of-service taint) to release them, and since when the node has been
lost: the Ready condition's `lastTransitionTime` when the object carries it, so every replica
and every leader dates a loss alike and a failover restarts no grace period.

The book also knows each node's NVMe host NQN, as its node plugin reports it (the Node's
`<driver>/host-nqn` annotation; standalone, the configured one): the fence puts it on a
disk's allow-list, and session evidence looks for it. A host NQN never changes for a node, so
the last one reported is kept (a deleted node's too, while an attachment names the node).
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass

from ..clock import Clock
from ..machines import Engine, NodeInput, NodeModel, Step


@dataclass(frozen=True, slots=True)
class NodeView:
    """One observation of a Kubernetes Node."""

    name: str
    ready: bool
    out_of_service: bool = False
    deleted: bool = False
    since: float | None = None  # wall time the Ready condition last changed, if known
    # For `rdscsi explain`: each condition as (type, status, reason), each taint as
    # "key[=value]:effect". Not read by any decision.
    conditions: tuple[tuple[str, str, str], ...] = ()
    taints: tuple[str, ...] = ()
    host_nqn: str | None = None  # the NVMe host NQN its node plugin reports, if any


class NodeBook:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.models: dict[str, NodeModel] = {}
        self.synced = False  # a full listing has been seen: absence now means deleted
        self._lost_at: dict[str, float] = {}  # wall time each lost node was lost
        self._absent_at: dict[str, float] = {}  # never-seen names, first asked about after sync
        self._nqn: dict[str, str] = {}  # node -> host NQN
        self._owners: dict[str, set[str]] = {}  # host NQN -> nodes reporting it

    def observe(self, view: NodeView) -> list[Step]:
        """Feed one view; returns the transitions it caused (none when nothing changed)."""
        p = NodeInput(self.clock.monotonic(), _seen(view))
        wall = self.clock.wall()
        model = self.models.get(view.name)
        if model is not None and model.state == "deleted" and not view.deleted:
            self.engine.forget(model)  # a node re-created under the same name: a new life
            self._lost_at.pop(view.name, None)
            self._set_nqn(view.name, None)
            model = None
        if view.host_nqn:
            self._set_nqn(view.name, view.host_nqn)
        if model is None:
            model = self.engine.track(NodeModel(view.name))
            self.models[view.name] = model
            self._absent_at.pop(view.name, None)
        steps: list[Step] = []
        if view.deleted:
            if model.state != "deleted":
                # Lost when it went NotReady if it had; else now, when its deletion is seen.
                self._lost_at.setdefault(
                    view.name, self._since(view, wall) if not view.ready else wall
                )
                steps.append(self.engine.send(model, "delete", p))
            return steps
        if view.ready:
            self._lost_at.pop(view.name, None)
        else:
            self._lost_at[view.name] = self._since(view, wall)
        if view.ready and model.state in ("new", "not_ready"):
            steps.append(self.engine.send(model, "became_ready", p))
        elif not view.ready and model.state in ("new", "ready"):
            steps.append(self.engine.send(model, "became_not_ready", p))
        if view.out_of_service and not model.out_of_service:
            steps.append(self.engine.send(model, "taint_out_of_service", p))
        elif not view.out_of_service and model.out_of_service:
            steps.append(self.engine.send(model, "untaint_out_of_service", p))
        return steps

    def _since(self, view: NodeView, wall: float) -> float:
        """When a not-ready node was lost: its Ready condition's last transition, never in
        the future (another machine's clock may run ahead of ours); else when first seen so."""
        if view.since is not None:
            return min(view.since, wall)
        return self._lost_at.get(view.name, wall)

    def forget_deleted(self, keep: Container[str] = ()) -> int:
        """Drop deleted nodes that no attachment refers to (`keep`): bounded memory when
        nodes come and go. A forgotten name still counts as gone (absent after a full
        listing). Returns how many were dropped."""
        gone = [n for n, m in self.models.items() if m.state == "deleted" and n not in keep]
        for name in gone:
            self.engine.forget(self.models.pop(name))
            self.engine.retire(name)
            self._lost_at.pop(name, None)
            self._set_nqn(name, None)
        for name in [n for n in self._absent_at if n not in keep]:
            del self._absent_at[name]
        return len(gone)

    def _set_nqn(self, node: str, nqn: str | None) -> None:
        old = self._nqn.pop(node, None)
        if old is not None:
            owners = self._owners.get(old, set())
            owners.discard(node)
            if not owners:
                self._owners.pop(old, None)
        if nqn:
            self._nqn[node] = nqn
            self._owners.setdefault(nqn, set()).add(node)

    # --- what the controller asks -----------------------------------------------------------

    def host_nqn(self, node_id: str) -> str | None:
        """The node's NVMe host NQN as its plugin reported it; None if it never did."""
        return self._nqn.get(node_id)

    def owner(self, nqn: str) -> str | None:
        """The one node that reports this host NQN; None if none does, or several."""
        owners = self._owners.get(nqn)
        return next(iter(owners)) if owners and len(owners) == 1 else None

    def sharing(self, node_id: str) -> list[str]:
        """Other nodes reporting this node's host NQN (cloned machines): none can be fenced."""
        nqn = self._nqn.get(node_id)
        return sorted(self._owners.get(nqn, set()) - {node_id}) if nqn else []

    def known(self, node_id: str) -> bool:
        model = self.models.get(node_id)
        return model is not None and model.state != "deleted"

    def ready(self, node_id: str) -> bool:
        model = self.models.get(node_id)
        return model is not None and model.state == "ready"

    def lost(self, node_id: str) -> bool:
        """Not ready, deleted, or (after a full listing) never seen: its volumes are suspect."""
        model = self.models.get(node_id)
        if model is None:
            return self.synced
        return model.state in ("not_ready", "deleted")

    def evidence(self, node_id: str) -> bool:
        """Proof the node no longer uses its volumes: deleted (or absent from a full
        listing), or fenced with the out-of-service taint."""
        model = self.models.get(node_id)
        if model is None:
            return self.synced
        return model.evidence

    def describe(self, node_id: str) -> str:
        """What the driver knows of a node, in a few words: the reason its Attachment events
        carry (shared text: the flight recorder keeps one copy per node and wording)."""
        model = self.models.get(node_id)
        if model is None:
            return (
                f"node {node_id} not in the cluster"
                if self.synced
                else f"node {node_id} not seen yet"
            )
        if model.state == "deleted":
            return f"node {node_id} deleted"
        state = {"ready": "Ready", "not_ready": "not Ready", "new": "not seen Ready yet"}
        text = f"node {node_id} {state.get(model.state or '', model.state)}"
        return text + (", tainted out-of-service" if model.out_of_service else "")

    def lost_since(self, node_id: str) -> float | None:
        """Wall time the node was lost (None while it is not lost). A name never seen is
        dated from the first time it was asked about after the full listing."""
        if not self.lost(node_id):
            return None
        at = self._lost_at.get(node_id)
        if at is not None:
            return at
        if node_id not in self.models:
            return self._absent_at.setdefault(node_id, self.clock.wall())
        return self.clock.wall()  # pragma: no cover - lost nodes always have a time

    def lost_monotonic(self, node_id: str) -> float | None:
        """`lost_since` on this process's monotonic clock (for the machines' guards)."""
        at = self.lost_since(node_id)
        if at is None:
            return None
        return to_monotonic(self.clock, at)


def _seen(view: NodeView) -> str:
    """What one Node object showed (the Node events' reason)."""
    if view.deleted:
        return "the Node object is gone"
    text = "Ready" if view.ready else "Ready condition not True"
    return text + (", out-of-service taint" if view.out_of_service else "")


def to_monotonic(clock: Clock, wall: float) -> float:
    """A wall-clock instant (e.g. from an object's timestamp) on the monotonic clock; an
    instant in the future (clock skew) counts as now."""
    ago = clock.wall() - wall
    if not math.isfinite(ago) or ago < 0:
        ago = 0.0
    return clock.monotonic() - ago
