"""The Kubernetes Node lifecycle: one machine per node the driver has seen.

Readiness comes from the Node's `Ready` condition; the `node.kubernetes.io/out-of-service`
taint is guard data (`out_of_service`): together with deletion it is the evidence that lets
a stale attachment be cleared. The node watcher sends only changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine import State, StateMachine

from .engine import FSMModel

OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"


class NodeModel(FSMModel):
    __slots__ = ("name", "out_of_service")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.out_of_service = False

    @property
    def key(self) -> str:
        return self.name

    @property
    def evidence(self) -> bool:
        """Proof the node no longer uses its volumes: deleted, or fenced by the taint."""
        return self.state == "deleted" or self.out_of_service


@dataclass(frozen=True, slots=True)
class NodeInput:
    now: float = 0.0
    reason: str = ""  # what the Node object showed


class NodeMachine(StateMachine):
    """One Kubernetes Node as seen by the controller."""

    machine_name = "node"

    new = State(initial=True)
    ready = State()
    not_ready = State()
    deleted = State(final=True)

    # fmt: off
    became_ready = (
          new.to(ready)                                                                                   # first sighting, Ready condition True
        | not_ready.to(ready, after="reconcile")                                                          # recovered: its stale attachments return
    )
    became_not_ready = (
          new.to(not_ready, after="reconcile")                                                            # first sighting, Ready False/Unknown
        | ready.to(not_ready, after="reconcile")                                                          # lost: its attachments become suspect
    )
    taint_out_of_service = (
          ready.to(ready, on="set_out_of_service", after="reconcile")                                     # operator declares it down: evidence
        | not_ready.to(not_ready, on="set_out_of_service", after="reconcile")                             # non-graceful shutdown: evidence
    )
    untaint_out_of_service = (
          ready.to(ready, on="clear_out_of_service")                                                      # repaired: no longer evidence
        | not_ready.to(not_ready, on="clear_out_of_service")                                              # taint lifted before it is ready
    )
    delete = (
          new.to(deleted, after="reconcile")                                                              # deleted before it was ever ready
        | ready.to(deleted, after="reconcile")                                                            # Node object deleted (or tombstone)
        | not_ready.to(deleted, after="reconcile")                                                        # the usual death: evidence
    )
    # fmt: on

    # Who sends each event: the Node informer (standalone: the configured nodes).
    sent_by = {
        "became_ready": "the Node's Ready condition turned True",
        "became_not_ready": "the Node's Ready condition is False or Unknown",
        "taint_out_of_service": "the node.kubernetes.io/out-of-service taint was added",
        "untaint_out_of_service": "the node.kubernetes.io/out-of-service taint was removed",
        "delete": "the Node object was deleted (or is absent from a full listing)",
    }

    @staticmethod
    def set_out_of_service(model: NodeModel, p: NodeInput) -> None:
        model.out_of_service = True

    @staticmethod
    def clear_out_of_service(model: NodeModel, p: NodeInput) -> None:
        model.out_of_service = False
