"""The Attachment lifecycle: one machine per volume, holding which node(s) may use it.

Invariants the guards keep: a single-node volume is attached to at most one node; only a
read-write-many *block* volume may be on two nodes at once (`migrating`, KubeVirt live
migration), and only until a deadline; an attachment to a node that is not ready or gone is
`stale` and is released only with evidence (node deleted or out-of-service taint) *and* after
the grace period; a node that comes back before that keeps its attachment.
ControllerPublish/Unpublish send `publish`/`unpublish`; the reconciler sends the others.

Times come from the cluster's objects where they exist (`AttachInput.since`): a node is
stale from its Ready condition's last transition, a migration's deadline runs from the
target's VolumeAttachment creation. Any replica, and the next leader, then dates them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine import State, StateMachine

from .engine import FSMModel

DEFAULT_GRACE_S = 30.0
DEFAULT_MIGRATION_S = 300.0


class AttachmentModel(FSMModel):
    __slots__ = ("deadline", "node", "peer", "rwx_block", "stale_since", "volume_id")

    def __init__(self, volume_id: str) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.node: str | None = None  # the node holding the volume (migration: the source)
        self.peer: str | None = None  # migration target, only while migrating
        self.rwx_block = False  # read-write-many block volume: may migrate
        self.stale_since: float | None = None
        self.deadline: float | None = None  # migration must finish by then

    @property
    def key(self) -> str:
        return self.volume_id

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(n for n in (self.node, self.peer) if n is not None)


@dataclass(frozen=True, slots=True)
class AttachInput:
    now: float = 0.0
    node: str = ""
    rwx_block: bool = False  # publish: the request is for a read-write-many block volume
    evidence: bool = False  # reconcile: the stale node is deleted or tainted out-of-service
    grace_s: float = DEFAULT_GRACE_S
    migration_s: float = DEFAULT_MIGRATION_S
    # When the cause happened, per the objects (node lost; migration target's attachment
    # created), on the monotonic clock; None: now.
    since: float | None = None

    @property
    def started(self) -> float:
        return self.now if self.since is None else self.since


class AttachmentMachine(StateMachine):
    """Where one volume is attached."""

    machine_name = "attachment"

    detached = State(initial=True)
    attached = State()
    migrating = State()
    stale = State()

    # fmt: off
    # --- ControllerPublishVolume -----------------------------------------------------------------------------------------------
    publish = (
          detached.to(attached, on="bind", after="VolumeAttached")                                      # first attach of the volume
        | attached.to(attached, cond="on_node")                                                         # retry for the holder: idempotent
        | attached.to(migrating, cond="can_migrate", on="begin_migration", after="MigrationStarted")    # RWX block on a 2nd node: live migration
        | attached.to(attached, after="AttachmentConflict")                                             # 2nd node for a single-node volume: refused
        | migrating.to(migrating, cond="on_either")                                                     # retry for source or target: idempotent
        | migrating.to(migrating, after="AttachmentConflict")                                           # a third node: refused
        | stale.to(stale, cond="on_node")                                                               # retry for the suspect holder: unchanged
        | stale.to(stale, after="AttachmentConflict")                                                   # never hand over on suspicion alone
    )
    # --- ControllerUnpublishVolume ---------------------------------------------------------------------------------------------
    unpublish = (
          detached.to(detached)                                                                         # repeat of a finished unpublish: idempotent
        | attached.to(detached, cond="on_node", on="unbind", after="VolumeDetached")                    # the holder lets go
        | attached.to(attached)                                                                         # not attached to that node: nothing to do
        | migrating.to(attached, cond="on_node", on="promote_peer", after="MigrationCompleted")         # source let go: target holds it
        | migrating.to(attached, cond="on_peer", on="drop_peer", after="MigrationFailed")               # target let go: source keeps it
        | migrating.to(migrating)                                                                       # neither end of the migration: nothing to do
        | stale.to(detached, cond="on_node", on="unbind", after="VolumeDetached")                       # Kubernetes force-detached the suspect node
        | stale.to(stale)                                                                               # not attached to that node: nothing to do
    )
    # --- reconciler: a node holding the volume went not-ready or was deleted ---------------------------------------------------
    node_lost = (
          attached.to(stale, cond="on_node", on="mark_stale", after="marked_stale")                     # holder suspect: wait for evidence and grace
        | migrating.to(attached, cond="on_peer", on="drop_peer", after="MigrationFailed")               # target lost: source keeps it
        | migrating.to(attached, cond="on_node", on="promote_peer", after="MigrationFailed")            # source lost: target (RWX) keeps it
    )
    # --- reconciler: the suspect node is ready again -------------------------------------------------------------------------
    node_ready = (
          stale.to(attached, cond="on_node", on="unmark_stale", after="recovered")                      # back before clearing: keep the attachment
    )
    # --- reconciler: periodic pass over stale and migrating attachments -------------------------------------------------------
    reconcile = (
          stale.to(detached, cond="clearable", on="unbind", after=["StaleAttachmentCleared", "stale_cleared"])  # evidence and grace: release
        | stale.to(stale)                                                                               # evidence or grace missing: keep waiting
        | migrating.to(attached, cond="deadline_passed", on="drop_peer", after=["MigrationFailed", "migration_expired"])       # past the deadline: back to the source
        | migrating.to(migrating)                                                                       # migration still within its deadline
    )
    # fmt: on

    # --- guards -----------------------------------------------------------------------------------
    @staticmethod
    def on_node(model: AttachmentModel, p: AttachInput) -> bool:
        return model.node == p.node

    @staticmethod
    def on_peer(model: AttachmentModel, p: AttachInput) -> bool:
        return model.peer == p.node

    @staticmethod
    def on_either(model: AttachmentModel, p: AttachInput) -> bool:
        return p.node in (model.node, model.peer)

    @staticmethod
    def can_migrate(model: AttachmentModel, p: AttachInput) -> bool:
        # Both the stored volume and the request must be read-write-many block, and the
        # target's attachment younger than the migration timeout (an expired one stays out).
        return (
            model.rwx_block
            and p.rwx_block
            and p.node != model.node
            and p.now < p.started + p.migration_s
        )

    @staticmethod
    def clearable(model: AttachmentModel, p: AttachInput) -> bool:
        since = model.stale_since
        return p.evidence and since is not None and p.now - since >= p.grace_s

    @staticmethod
    def deadline_passed(model: AttachmentModel, p: AttachInput) -> bool:
        return model.deadline is not None and p.now >= model.deadline

    # --- actions ----------------------------------------------------------------------------------
    @staticmethod
    def bind(model: AttachmentModel, p: AttachInput) -> None:
        model.node = p.node
        model.rwx_block = p.rwx_block

    @staticmethod
    def unbind(model: AttachmentModel, p: AttachInput) -> None:
        model.node = model.peer = None
        model.stale_since = model.deadline = None

    @staticmethod
    def begin_migration(model: AttachmentModel, p: AttachInput) -> None:
        model.peer = p.node
        model.deadline = p.started + p.migration_s

    @staticmethod
    def promote_peer(model: AttachmentModel, p: AttachInput) -> None:
        model.node, model.peer, model.deadline = model.peer, None, None

    @staticmethod
    def drop_peer(model: AttachmentModel, p: AttachInput) -> None:
        model.peer = model.deadline = None

    @staticmethod
    def mark_stale(model: AttachmentModel, p: AttachInput) -> None:
        model.stale_since = p.started

    @staticmethod
    def unmark_stale(model: AttachmentModel, p: AttachInput) -> None:
        model.stale_since = None
