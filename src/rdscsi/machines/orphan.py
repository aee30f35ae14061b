"""The Orphan lifecycle: one machine per appliance object of this driver that nothing claims.

An object is a disk or a backing file under the driver's prefix (its slot prefixes and its
volume directory). One that no PersistentVolume, VolumeSnapshotContent or operation in
flight accounts for is `suspected`: reported once (an event, the gauge, a log line), then
watched by every sweep. Only where the operator chose it (`orphans: quarantine` or
`delete`), and only once it has been seen unclaimed for the minimum age, it is
`quarantined`: renamed with the time of its quarantine, its export disabled, nothing
deleted. With `orphans: delete` a quarantined object is `deleted` once the retention period
has passed since its quarantine. A claimant appearing at any time before that `restored`s
it: renamed back and exported again.

The guards re-check what the sweep decided on, so no caller can skip a rule: the object is
the driver's, unclaimed now, seen unclaimed for the minimum age, reported before it is
touched, and (to be deleted) quarantined for the retention period; a claim seen by any
sweep ends the machine in `restored`, so nothing claimed is ever deleted. Ages use the monotonic
clock from when this process first saw the object unclaimed (a new leader starts counting
afresh: it only waits longer); the quarantine time is wall time, carried in the object's
quarantine name, so the retention survives a restart or a failover.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine import State, StateMachine

from .engine import FSMModel
from .guards import After, Evidence, Fact, explained

DEFAULT_MIN_AGE_S = 3600.0  # seen unclaimed at least this long before anything is done
DEFAULT_RETENTION_S = 604800.0  # quarantined this long (7 days) before `delete` may delete
MODES = ("report", "quarantine", "delete")
ACTING = frozenset({"quarantine", "delete"})  # the modes that change the appliance


class OrphanModel(FSMModel):
    __slots__ = (
        "appliance",
        "first_seen",
        "kind",
        "name",
        "ours",
        "quarantined_at",
        "reported",
        "volume",
    )

    def __init__(
        self, name: str, kind: str, ours: bool = True, appliance: str = "", volume: str = ""
    ) -> None:
        super().__init__()
        self.volume = volume  # the volume id whose PV would claim it ("" for snapshots)
        self.name = name  # "disk pvc-…" or "file storage-pool/k8s/vol/…img"
        self.kind = kind  # volume, copy, snapshot, file, half-made copy, disk
        self.ours = ours  # under the driver's prefix (the sweep never tracks others)
        self.appliance = appliance  # the appliance it is on (events name it)
        self.first_seen = 0.0  # monotonic: first seen unclaimed
        self.quarantined_at: float | None = None  # wall: when it was quarantined
        self.reported = False  # OrphanSuspected posted

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class OrphanInput:
    now: float = 0.0  # monotonic
    wall: float = 0.0  # wall clock: the quarantine time and the retention
    mode: str = "report"  # orphans: report, quarantine or delete
    claimed: bool = False  # a PV, VolumeSnapshotContent or operation accounts for it now
    min_age_s: float = DEFAULT_MIN_AGE_S
    retention_s: float = DEFAULT_RETENTION_S


class OrphanMachine(StateMachine):
    """One unclaimed appliance object of this driver."""

    machine_name = "orphan"

    suspected = State(initial=True)
    quarantined = State()
    deleted = State(final=True)
    restored = State(final=True)

    # fmt: off
    # --- each sweep (the reconciler, on the leader), and each pass for the quarantined ----------------------------------------
    sweep = (
          suspected.to(restored, cond="claimed")                                                        # a claimant appeared before anything was done: nothing to undo
        | suspected.to(quarantined, cond="quarantinable", on="quarantine", after=["OrphanQuarantined", "orphan_quarantined"])  # unclaimed for the minimum age, mode quarantine or delete
        | suspected.to(suspected, cond="first_sighting", on="note", after=["OrphanSuspected", "orphan_suspected"])  # found: report it once
        | suspected.to(suspected)                                                                       # reported; report mode, too young, or not ours
        | quarantined.to(restored, cond="claimed", on="unquarantine", after=["OrphanRestored", "orphan_restored"])  # a claimant appeared: renamed back, exported again
        | quarantined.to(deleted, cond="expired", after=["OrphanDeleted", "orphan_deleted"])            # mode delete, quarantined for the retention period
        | quarantined.to(quarantined)                                                                   # retention running, or a mode that never deletes
    )
    # fmt: on

    # Who sends each event: what `rdscsi explain` and specs/ say starts it.
    sent_by = {
        "sweep": "the reconciler's sweep of the appliance (the leader: at start, every sweep interval, after each reconnect), in mode {p.mode}",
    }

    # --- guards -----------------------------------------------------------------------------------
    @staticmethod
    @explained(
        "something claims {model.name}",
        Evidence(
            lambda m, p: p.claimed,
            "a PersistentVolume, VolumeSnapshotContent or operation in flight accounts for it",
        ),
    )
    def claimed(model: OrphanModel, p: OrphanInput) -> bool:
        return p.claimed

    @staticmethod
    @explained(
        "{model.name} may be quarantined",
        Fact(lambda m, p: m.ours, "it is under the driver's prefix"),
        Fact(lambda m, p: m.reported, "it was reported (OrphanSuspected) before it is touched"),
        Fact(
            lambda m, p: p.mode in ACTING,
            "the sweep's mode acts (quarantine or delete; now: {p.mode})",
        ),
        After(
            lambda m, p: p.min_age_s - (p.now - m.first_seen),
            "the minimum age ({p.min_age_s:g} s seen unclaimed)",
        ),
    )
    def quarantinable(model: OrphanModel, p: OrphanInput) -> bool:
        return (
            model.ours
            and model.reported
            and p.mode in ACTING
            and p.now - model.first_seen >= p.min_age_s
        )

    @staticmethod
    @explained(
        "{model.name} is seen unclaimed for the first time",
        Fact(lambda m, p: not m.reported, "it has not been reported yet"),
    )
    def first_sighting(model: OrphanModel, p: OrphanInput) -> bool:
        return not model.reported

    @staticmethod
    @explained(
        "{model.name} may be deleted",
        Fact(lambda m, p: m.ours, "it is under the driver's prefix"),
        Fact(lambda m, p: p.mode == "delete", "the sweep's mode deletes (now: {p.mode})"),
        After(
            lambda m, p: (
                None if m.quarantined_at is None else p.retention_s - (p.wall - m.quarantined_at)
            ),
            "the retention period ({p.retention_s:g} s in quarantine)",
        ),
        After(
            lambda m, p: p.min_age_s - (p.now - m.first_seen),
            "the minimum age ({p.min_age_s:g} s seen unclaimed)",
        ),
    )
    def expired(model: OrphanModel, p: OrphanInput) -> bool:
        since = model.quarantined_at
        return (
            model.ours
            and p.mode == "delete"
            and since is not None
            and p.wall - since >= p.retention_s
            and p.now - model.first_seen >= p.min_age_s
        )

    # --- actions ----------------------------------------------------------------------------------
    @staticmethod
    def note(model: OrphanModel, p: OrphanInput) -> None:
        model.reported = True

    @staticmethod
    def quarantine(model: OrphanModel, p: OrphanInput) -> None:
        model.quarantined_at = p.wall

    @staticmethod
    def unquarantine(model: OrphanModel, p: OrphanInput) -> None:
        model.quarantined_at = None
