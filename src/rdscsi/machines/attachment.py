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

The fence (`rds.fence=allow-host`, docs/fencing.md): `fenced` is the set of host NQNs on the
disk's allow-list, the data plane's own record of who may connect. Its steps are guarded so
that a node is never taken off while it holds the volume, and a host is never put on while
the list already holds as many hosts as nodes hold the volume: a single-node volume's new
holder goes on only after the old one came off (a migration holds two). ControllerPublish
sends `fence` after `publish` (and `fence_out` first for hosts the machine let go of);
ControllerUnpublish `unfence`; the reconciler `fence_out` for nodes it released and
`repair_fence`/`repair_unfence` where the appliance's list disagrees with the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine import State, StateMachine

from .engine import FSMModel
from .guards import After, Before, Evidence, Fact, explained

DEFAULT_GRACE_S = 30.0
DEFAULT_MIGRATION_S = 300.0


class AttachmentModel(FSMModel):
    __slots__ = ("deadline", "fenced", "node", "peer", "rwx_block", "stale_since", "volume_id")

    def __init__(self, volume_id: str) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.node: str | None = None  # the node holding the volume (migration: the source)
        self.peer: str | None = None  # migration target, only while migrating
        self.rwx_block = False  # read-write-many block volume: may migrate
        self.stale_since: float | None = None
        self.deadline: float | None = None  # migration must finish by then
        self.fenced: frozenset[str] = frozenset()  # host NQNs on the disk's allow-list

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
    reason: str = ""  # why it was sent, as the flight recorder keeps it
    nqn: str = ""  # fence steps: the host NQN put on or taken off (`node` its owner, "" unknown)

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
    # --- the appliance's allow-list (rds.fence=allow-host) -------------------------------------------------------------------
    fence = (
          attached.to(attached, cond="admissible", on="admit", after="fence_added")                     # ControllerPublish: the holder may connect
        | migrating.to(migrating, cond="admissible", on="admit", after="fence_added")                   # a live migration: both ends may connect
    )
    unfence = (
          detached.to(detached, cond="releasable", on="expel", after="fence_removed")                   # ControllerUnpublish: the node let go
        | attached.to(attached, cond="releasable", on="expel", after="fence_removed")                   # the other end of a finished migration
        | migrating.to(migrating, cond="releasable", on="expel", after="fence_removed")                 # not an end of the migration
        | stale.to(stale, cond="releasable", on="expel", after="fence_removed")                         # not the suspect holder
    )
    fence_out = (
          detached.to(detached, cond="releasable", on="expel", after=["NodeFenced", "fence_removed"])   # a stale holder cleared: it can no longer connect
        | attached.to(attached, cond="releasable", on="expel", after=["NodeFenced", "fence_removed"])   # a migration's end dropped (deadline, node lost)
        | migrating.to(migrating, cond="releasable", on="expel", after=["NodeFenced", "fence_removed"]) # released before a new migration began
        | stale.to(stale, cond="releasable", on="expel", after=["NodeFenced", "fence_removed"])         # released before the holder went stale
    )
    repair_fence = (
          attached.to(attached, cond="admissible", on="admit", after=["fence_added", "fence_repaired"])         # a holder missing from the list (a publish cut short)
        | migrating.to(migrating, cond="admissible", on="admit", after=["fence_added", "fence_repaired"])       # a migration's end missing from the list
    )
    repair_unfence = (
          detached.to(detached, cond="releasable", on="expel", after=["FenceRepaired", "fence_removed", "fence_repaired"])    # a host on the list of a volume nobody holds
        | attached.to(attached, cond="releasable", on="expel", after=["FenceRepaired", "fence_removed", "fence_repaired"])    # a host beside the holder
        | migrating.to(migrating, cond="releasable", on="expel", after=["FenceRepaired", "fence_removed", "fence_repaired"])  # a host beside both ends
        | stale.to(stale, cond="releasable", on="expel", after=["FenceRepaired", "fence_removed", "fence_repaired"])          # a host beside the suspect holder
    )
    # fmt: on

    # Who sends each event: what `rdscsi explain` and specs/ say starts it.
    sent_by = {
        "publish": "ControllerPublishVolume for node {p.node} (the attacher acts on its VolumeAttachment)",
        "unpublish": "ControllerUnpublishVolume from node {p.node} (its VolumeAttachment is deleted)",
        "node_lost": "the reconciler: node {p.node} went NotReady or was deleted",
        "node_ready": "the reconciler: node {p.node} is Ready again",
        "reconcile": "the reconciler's pass (the leader: on a change, at a deadline, every resync)",
        "fence": "ControllerPublishVolume for node {p.node}: its host {p.nqn} goes on the disk's allow-list before the answer",
        "unfence": "ControllerUnpublishVolume from node {p.node}: its host {p.nqn} comes off the disk's allow-list",
        "fence_out": "the reconciler or the next ControllerPublishVolume: node {p.node} was released (cleared, dropped from a migration), so its host {p.nqn} comes off first",
        "repair_fence": "the reconciler's sweep: holder {p.node}'s host {p.nqn} is missing from the disk's allow-list",
        "repair_unfence": "the reconciler's sweep: host {p.nqn} is on the disk's allow-list but no node holds the volume through it",
    }

    # --- guards -----------------------------------------------------------------------------------
    @staticmethod
    @explained(
        "node {p.node} holds the volume",
        Fact(
            lambda m, p: m.node == p.node,
            "node {p.node} is the holder (the holder is {model.node})",
        ),
    )
    def on_node(model: AttachmentModel, p: AttachInput) -> bool:
        return model.node == p.node

    @staticmethod
    @explained(
        "node {p.node} is the migration's target",
        Fact(
            lambda m, p: m.peer == p.node,
            "node {p.node} is the migration's target (the target is {model.peer})",
        ),
    )
    def on_peer(model: AttachmentModel, p: AttachInput) -> bool:
        return model.peer == p.node

    @staticmethod
    @explained(
        "node {p.node} is the migration's source or target",
        Fact(
            lambda m, p: p.node in (m.node, m.peer),
            "node {p.node} is one of the migration's nodes ({model.node}, {model.peer})",
        ),
    )
    def on_either(model: AttachmentModel, p: AttachInput) -> bool:
        return p.node in (model.node, model.peer)

    @staticmethod
    @explained(
        "a live migration to node {p.node} may begin",
        Fact(lambda m, p: m.rwx_block, "the volume is read-write-many block (only those migrate)"),
        Fact(lambda m, p: p.rwx_block, "the request is for read-write-many block access"),
        Fact(lambda m, p: p.node != m.node, "node {p.node} is not already the holder"),
        Before(
            lambda m, p: p.started + p.migration_s - p.now,
            "the migration window ({p.migration_s:g} s from node {p.node}'s VolumeAttachment)",
        ),
    )
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
    @explained(
        "node {model.node} is proven gone and its grace period is over",
        Evidence(
            lambda m, p: p.evidence,
            "evidence that node {model.node} is gone: the Node deleted, or tainted "
            "node.kubernetes.io/out-of-service, or (rds.fence allow-host) no NVMe/TCP session "
            "of its host to the volume in the appliance's listing",
        ),
        After(
            lambda m, p: None if m.stale_since is None else p.grace_s - (p.now - m.stale_since),
            "the grace period ({p.grace_s:g} s from when node {model.node} was lost)",
        ),
    )
    def clearable(model: AttachmentModel, p: AttachInput) -> bool:
        since = model.stale_since
        return p.evidence and since is not None and p.now - since >= p.grace_s

    @staticmethod
    @explained(
        "the migration's deadline has passed",
        After(
            lambda m, p: None if m.deadline is None else m.deadline - p.now,
            "the migration's deadline (node {model.peer} must take over or let go by then)",
        ),
    )
    def deadline_passed(model: AttachmentModel, p: AttachInput) -> bool:
        return model.deadline is not None and p.now >= model.deadline

    @staticmethod
    @explained(
        "host {p.nqn} of node {p.node} may go on the disk's allow-list",
        Fact(lambda m, p: bool(p.nqn), "node {p.node}'s host NQN is known"),
        Fact(
            lambda m, p: p.node in m.nodes,
            "node {p.node} holds the volume (holders: {model.nodes})",
        ),
        Fact(lambda m, p: p.nqn not in m.fenced, "host {p.nqn} is not on the list already"),
        Fact(
            lambda m, p: len(m.fenced) < len(m.nodes),
            "the list holds fewer hosts than nodes hold the volume (on it: {model.fenced}): "
            "an old holder comes off before a new one goes on",
        ),
    )
    def admissible(model: AttachmentModel, p: AttachInput) -> bool:
        # Only a holder goes on, and never while the list holds as many hosts as nodes hold
        # the volume: a single-node volume's old holder must be off first.
        return (
            bool(p.nqn)
            and p.node in model.nodes
            and p.nqn not in model.fenced
            and len(model.fenced) < len(model.nodes)
        )

    @staticmethod
    @explained(
        "host {p.nqn} of node {p.node} may come off the disk's allow-list",
        Fact(lambda m, p: p.nqn in m.fenced, "host {p.nqn} is on the list"),
        Fact(
            lambda m, p: p.node not in m.nodes,
            "node {p.node} does not hold the volume (holders: {model.nodes}): a holder, a "
            "stale one included, is never fenced out",
        ),
    )
    def releasable(model: AttachmentModel, p: AttachInput) -> bool:
        # Never a node that holds the volume (a stale holder included): only what is on comes off.
        return p.nqn in model.fenced and p.node not in model.nodes

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

    @staticmethod
    def admit(model: AttachmentModel, p: AttachInput) -> None:
        model.fenced = model.fenced | {p.nqn}

    @staticmethod
    def expel(model: AttachmentModel, p: AttachInput) -> None:
        model.fenced = model.fenced - {p.nqn}
