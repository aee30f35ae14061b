"""The node-side volume lifecycle: one machine per volume on a node.

Nothing here is remembered between calls: every RPC first observes the node (sysfs for the
device, mountinfo for the staging and publish mounts) and restores the machine to what it
sees, then sends the RPC's event. The transition taken says what to do; a state the node
cannot be in cleanly (a mount whose device was replaced, publish mounts without a staging
mount, a half-done earlier call) is `uncertain`, from which the next call repairs rather
than fails. The node service (`rdscsi.csi.node`) carries out each transition.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine import State, StateMachine

from .engine import FSMModel
from .guards import Evidence, Fact, explained


class NodeVolumeModel(FSMModel):
    __slots__ = ("reason", "volume_id")

    def __init__(self, volume_id: str) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.reason = ""  # why the last observation was uncertain

    @property
    def key(self) -> str:
        return self.volume_id


@dataclass(frozen=True, slots=True)
class NodeVolumeInput:
    now: float = 0.0
    target_path: str = ""
    block: bool = False  # a raw block volume (no filesystem, no staging mount)
    other_targets: int = 0  # publish mounts other than `target_path`
    repairable: bool = True  # uncertain: nothing in use stands in the way of a repair
    reason: str = ""  # what the node showed, when it was in no clean state


class NodeVolumeMachine(StateMachine):
    """A volume as the node sees it."""

    machine_name = "node_volume"

    unstaged = State(initial=True)
    connected = State()
    staged = State()
    published = State()
    uncertain = State()

    # fmt: off
    stage = (
          unstaged.to(connected, cond="block")                                       # NodeStage, block volume: connect only
        | unstaged.to(staged)                                                        # NodeStage: connect, format if blank, mount
        | connected.to(connected, cond="block")                                      # kubelet repeats a block NodeStage
        | connected.to(staged)                                                       # half-done stage: format if blank, mount
        | staged.to(staged)                                                          # kubelet repeats NodeStage
        | published.to(published)                                                    # NodeStage again while published
        | uncertain.to(connected, cond=["repairable", "block"], after="repaired")    # stale: reconnect
        | uncertain.to(staged, cond="repairable", after="repaired")                  # stale or half-done: unmount, reconnect, mount
    )
    unstage = (
          unstaged.to(unstaged)                                                      # repeat of a finished unstage
        | connected.to(unstaged)                                                     # block unstage, or a half-done one: disconnect
        | staged.to(unstaged)                                                        # NodeUnstage: unmount, disconnect, verify gone
        | uncertain.to(unstaged, cond="repairable", after="repaired")                # stale: unmount, disconnect
    )
    publish = (
          connected.to(published, cond="block")                                      # block NodePublish: bind the device
        | staged.to(published, unless="block")                                       # NodePublish: bind the staged filesystem
        | published.to(published)                                                    # another pod target, or a repeat
    )
    unpublish = (
          published.to(published, cond="others_remain")                              # other pods still use it
        | published.to(connected, cond="block")                                      # last pod target of a block volume
        | published.to(staged)                                                       # last pod target goes
        | staged.to(staged)                                                          # repeat of a finished unpublish
        | connected.to(connected)                                                    # repeat (block, or half-staged)
        | unstaged.to(unstaged)                                                      # repeat after unstage
        | uncertain.to(uncertain)                                                    # clean the pod target; repair comes later
    )
    interrupted = (
          unstaged.to(uncertain, after="interrupted_op")                             # a step failed or timed out half-way:
        | connected.to(uncertain, after="interrupted_op")                            #   the node is in no clean state, and
        | staged.to(uncertain, after="interrupted_op")                               #   the next call repairs from what
        | published.to(uncertain, after="interrupted_op")                            #   it observes
    )
    # fmt: on

    # Who sends each event: the node service, after observing the node (the CSI call's).
    sent_by = {
        "stage": "NodeStageVolume",
        "unstage": "NodeUnstageVolume",
        "publish": "NodePublishVolume",
        "unpublish": "NodeUnpublishVolume",
        "interrupted": "a node step failed or timed out half-way",
    }

    @staticmethod
    @explained(
        "nothing on the node stands in the way of a repair",
        Evidence(
            lambda m, p: p.repairable,
            "no pod target still mounted from the volume (kubelet unpublishes them first)",
        ),
    )
    def repairable(model: NodeVolumeModel, p: NodeVolumeInput) -> bool:
        return p.repairable

    @staticmethod
    @explained(
        "the volume is raw block",
        Fact(lambda m, p: p.block, "the volume is raw block (no filesystem, no staging mount)"),
    )
    def block(model: NodeVolumeModel, p: NodeVolumeInput) -> bool:
        return p.block

    @staticmethod
    @explained(
        "other pod targets still use the volume",
        Fact(lambda m, p: p.other_targets > 0, "another pod target is published on this node"),
    )
    def others_remain(model: NodeVolumeModel, p: NodeVolumeInput) -> bool:
        return p.other_targets > 0
