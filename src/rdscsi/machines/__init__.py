"""Every lifecycle of the driver, declared as python-statemachine classes.

- `connection.ConnectionMachine`: one per RDS appliance.
- `node.NodeMachine`: one per Kubernetes node seen.
- `attachment.AttachmentMachine`: one per volume (controller).
- `volume.NodeVolumeMachine`: one per volume on a node (node plugin).
- `orphan.OrphanMachine`: one per unclaimed appliance object of this driver (the sweep).

`engine` compiles them into dispatch tables run over light per-object models;
`diagrams` exports them into `specs/`.
"""

from statemachine import StateMachine

from .attachment import AttachInput, AttachmentMachine, AttachmentModel
from .connection import ConnectionMachine, ConnectionModel, ConnInput
from .engine import (
    ActionFailed,
    Engine,
    FSMModel,
    HookFailed,
    MachineDef,
    MachineError,
    Step,
    Transition,
    TransitionNotAllowed,
    UnknownState,
    compile_machine,
)
from .node import NodeInput, NodeMachine, NodeModel
from .orphan import OrphanInput, OrphanMachine, OrphanModel
from .volume import NodeVolumeInput, NodeVolumeMachine, NodeVolumeModel

MACHINES: tuple[type[StateMachine], ...] = (
    ConnectionMachine,
    NodeMachine,
    AttachmentMachine,
    NodeVolumeMachine,
    OrphanMachine,
)

__all__ = [
    "MACHINES",
    "ActionFailed",
    "AttachInput",
    "AttachmentMachine",
    "AttachmentModel",
    "ConnInput",
    "ConnectionMachine",
    "ConnectionModel",
    "Engine",
    "FSMModel",
    "HookFailed",
    "MachineDef",
    "MachineError",
    "NodeInput",
    "NodeMachine",
    "NodeModel",
    "NodeVolumeInput",
    "NodeVolumeMachine",
    "NodeVolumeModel",
    "OrphanInput",
    "OrphanMachine",
    "OrphanModel",
    "Step",
    "Transition",
    "TransitionNotAllowed",
    "UnknownState",
    "compile_machine",
]
