"""The Node machines, fed by observed node views; answers "is this node gone?".

A source (the Kubernetes Node informer, or the standalone view of the one local node)
reports every view; the book turns differences into Node machine events, whose hooks ask
for a reconcile pass. Attachments ask the book whether their node is lost, ready, and
whether there is evidence (deleted, or the out-of-service taint) to release them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..machines import Engine, NodeInput, NodeModel, Step


@dataclass(frozen=True, slots=True)
class NodeView:
    """One observation of a Kubernetes Node."""

    name: str
    ready: bool
    out_of_service: bool = False
    deleted: bool = False


class NodeBook:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.models: dict[str, NodeModel] = {}
        self.synced = False  # a full listing has been seen: absence now means deleted

    def observe(self, view: NodeView, now: float = 0.0) -> list[Step]:
        """Feed one view; returns the transitions it caused (none when nothing changed)."""
        p = NodeInput(now)
        model = self.models.get(view.name)
        if model is not None and model.state == "deleted" and not view.deleted:
            self.engine.forget(model)  # a node re-created under the same name: a new life
            model = None
        if model is None:
            model = self.engine.track(NodeModel(view.name))
            self.models[view.name] = model
        steps: list[Step] = []
        if view.deleted:
            if model.state != "deleted":
                steps.append(self.engine.send(model, "delete", p))
            return steps
        if view.ready and model.state in ("new", "not_ready"):
            steps.append(self.engine.send(model, "became_ready", p))
        elif not view.ready and model.state in ("new", "ready"):
            steps.append(self.engine.send(model, "became_not_ready", p))
        if view.out_of_service and not model.out_of_service:
            steps.append(self.engine.send(model, "taint_out_of_service", p))
        elif not view.out_of_service and model.out_of_service:
            steps.append(self.engine.send(model, "untaint_out_of_service", p))
        return steps

    def forget_deleted(self) -> None:
        """Drop deleted nodes no attachment refers to any more (bounded memory)."""
        for name in [n for n, m in self.models.items() if m.state == "deleted"]:
            self.engine.forget(self.models.pop(name))

    # --- what the controller asks -----------------------------------------------------------

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
