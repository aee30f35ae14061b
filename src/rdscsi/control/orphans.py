"""The orphan sweep: the leader's look at what of the driver's is on the appliance and who
claims it, feeding one Orphan machine per unclaimed object (`machines.orphan`).

It runs in the reconciler, on the leader only, at start, after every reconnect to the
appliance and every `sweep_interval`. Each sweep lists the appliance (`io.rds.orphans`: the
driver's disks and files only) and asks who claims each object:

- a volume: a PersistentVolume names it (the PV informer's view), or an operation on it is
  in flight on this replica, or a host has a session to its export (the session listing);
- a snapshot: a VolumeSnapshotContent names it (listed once per sweep), or an operation;
- half of a pair (a disk without its file, a file without its disk, a half-made copy):
  whatever claims its volume or snapshot id.

Where the claimants cannot be known (standalone there are no PVs; without the snapshot CRDs
no VolumeSnapshotContents; an exported volume while the session listing is unavailable) the
object is not judged at all this time: nothing is suspected on missing evidence. Halves of a
pair are judged even then: nothing on the appliance can use them.

An object is suspected only when two sweeps in a row find it unclaimed: a volume is on the
appliance a moment before its PV exists, and the operation that made it may have run on
another replica.

Every decision is the machine's (`sweep`, told whether the object is claimed now); the sweep
carries out the appliance side of a transition first (rename into quarantine, rename back,
delete) and takes the transition once the appliance accepted it. `orphans: report` (the
default) never changes the appliance. Between sweeps, each reconcile pass checks the
quarantined objects against the PVs it sees, so a volume whose PV appears during its
quarantine is restored at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from ..clock import Clock
from ..io.rds.orphans import OrphanStore, Stored
from ..io.rds.sessions import SessionListing
from ..io.rds.volumes import SNAPSHOT_PREFIX
from ..machines import Engine, OrphanInput, OrphanModel

log = logging.getLogger("rdscsi.orphans")

CLAIMED, UNCLAIMED, UNKNOWN = "claimed", "unclaimed", "unknown"


@dataclass(frozen=True)
class Claims:
    """Who accounts for which ids, as far as it is known."""

    volumes: frozenset[str] | None  # volume ids some PV names; None: unknown
    snapshots: frozenset[str] | None  # snapshot ids some VolumeSnapshotContent names; None: unknown
    busy: frozenset[str] = frozenset()  # ids with an operation in flight here

    def of(self, slot: str) -> frozenset[str] | None:
        return self.snapshots if slot.startswith(SNAPSHOT_PREFIX) else self.volumes


@dataclass(frozen=True)
class SweepSettings:
    mode: str  # report, quarantine, delete
    min_age_s: float
    retention_s: float


@dataclass
class SweepReport:
    """One sweep, for the log and tests: object keys by what happened to them."""

    suspected: list[str]
    quarantined: list[str]
    deleted: list[str]
    restored: list[str]
    unjudged: int = 0
    settling: int = 0  # unclaimed for the first time: judged if the next sweep agrees


Sessions = Callable[[], Awaitable[SessionListing | None]]


def sweep_counter(registry: CollectorRegistry | None) -> Counter:
    """`rds_csi_orphan_sweeps_total{appliance,outcome}`: made once, shared by the fleet."""
    return Counter(
        "rds_csi_orphan_sweeps_total",
        "Orphan sweeps of each appliance by the reconciler leader, by outcome",
        ["appliance", "outcome"],
        registry=registry,
    )


class OrphanSweep:
    def __init__(
        self,
        engine: Engine,
        store: OrphanStore,
        clock: Clock,
        settings: SweepSettings,
        export_nqn: Callable[[str], str],
        appliance: str,
        registry: CollectorRegistry | None = None,
        counter: Counter | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self.settings = settings
        self.export_nqn = export_nqn
        self.appliance = appliance
        self.models: dict[str, OrphanModel] = {}  # Stored.ident -> its machine
        self.items: dict[str, Stored] = {}  # Stored.ident -> as last listed
        # Found unclaimed by the last sweep, not yet suspected: an object is suspected only
        # when two sweeps in a row find it unclaimed. A volume is on the appliance a moment
        # before its PV exists (the provisioner writes it once CreateVolume answered, maybe
        # on another replica, whose operation this one cannot see).
        self._unclaimed_once: set[str] = set()
        # One counter for the fleet (`sweep_counter`), each appliance's sweeps under its label.
        self.sweeps = counter if counter is not None else sweep_counter(registry)
        self._completed = self.sweeps.labels(appliance, "completed")
        self._failed = self.sweeps.labels(appliance, "failed")

    def _input(self, claimed: bool = False) -> OrphanInput:
        s = self.settings
        return OrphanInput(
            now=self.clock.monotonic(),
            wall=self.clock.wall(),
            mode=s.mode,
            claimed=claimed,
            min_age_s=s.min_age_s,
            retention_s=s.retention_s,
        )

    async def _status(self, item: Stored, claims: Claims, sessions: Sessions) -> str:
        if item.slot in claims.busy:
            return CLAIMED
        known = claims.of(item.slot)
        if known is not None and item.slot in known:
            return CLAIMED
        if item.structural:
            return UNCLAIMED
        if known is None:
            return UNKNOWN
        if item.exported and item.quarantined_at is None:
            listing = await sessions()
            if listing is None:
                return UNKNOWN
            if listing.by_export.get(self.export_nqn(item.slot)) or listing.by_export.get(
                item.slot
            ):
                return CLAIMED  # a host uses it: in use, whatever the cluster says
        return UNCLAIMED

    def _track(self, item: Stored) -> OrphanModel:
        volume = "" if item.slot.startswith(SNAPSHOT_PREFIX) else item.slot
        model = OrphanModel(item.key, item.kind, True, self.appliance, volume)
        if item.quarantined_at is not None:
            self.engine.track(model, "quarantined")
            model.quarantined_at = item.quarantined_at
            model.reported = True
            # The retention runs from the quarantine time in its name (whoever quarantined
            # it); the minimum age counts afresh, as for any object this process first sees:
            # a name it did not write (another replica's clock, a hand rename) never makes
            # an object deletable sooner.
            model.first_seen = self.clock.monotonic()
        else:
            self.engine.track(model)
            model.first_seen = self.clock.monotonic()
        self.models[item.ident] = model
        return model

    def _forget(self, ident: str) -> None:
        model = self.models.pop(ident, None)
        self.items.pop(ident, None)
        if model is not None:
            self.engine.forget(model)

    async def run(
        self, items: list[Stored], claims: Claims, sessions: Sessions, check: Callable[[], None]
    ) -> SweepReport:
        """One sweep over `items` (the appliance's inventory, just listed). `check` runs
        before every appliance command (leadership)."""
        report = SweepReport([], [], [], [])
        before, self._unclaimed_once = self._unclaimed_once, set()
        try:
            seen: set[str] = set()
            for item in items:
                seen.add(item.ident)
                status = await self._status(item, claims, sessions)
                new = item.ident not in self.models and item.quarantined_at is None
                if status == UNCLAIMED and new and item.ident not in before:
                    self._unclaimed_once.add(item.ident)
                    report.settling += 1
                    continue
                await self._judge(item, status, check, report)
            for ident in [i for i in self.models if i not in seen]:
                self._forget(ident)  # gone from the appliance by other means
        except BaseException:
            self._failed.inc()
            raise
        self._completed.inc()
        return report

    async def _judge(
        self, item: Stored, status: str, check: Callable[[], None], report: SweepReport
    ) -> None:
        model = self.models.get(item.ident)
        if status == UNKNOWN:
            report.unjudged += 1
            return
        if status == CLAIMED:
            if model is None and item.quarantined_at is not None:
                model = self._track(item)
            if model is not None:
                self.items[item.ident] = item
                await self._claim(item.ident, check, report)
            return
        if model is None:
            model = self._track(item)
        self.items[item.ident] = item
        p = self._input()
        tr = self.engine.allowed(model, "sweep", p)
        assert tr is not None  # `sweep` has an unguarded alternative in every live state
        if tr.source == "suspected" and tr.target == "quarantined":
            check()
            self.items[item.ident] = await self.store.quarantine(item, p.wall)
            self.engine.send(model, "sweep", p)
            report.quarantined.append(item.key)
            log.warning(
                "orphan %s (%s) quarantined as %s",
                item.key,
                item.kind,
                self.items[item.ident].key,
            )
        elif tr.target == "deleted":
            check()
            await self.store.delete(item)
            self.engine.send(model, "sweep", p)
            report.deleted.append(item.key)
            log.warning("orphan %s (%s) deleted after its quarantine", item.key, item.kind)
            self._forget(item.ident)
        else:
            step = self.engine.send(model, "sweep", p)
            if "OrphanSuspected" in step.transition.hooks:
                report.suspected.append(item.key)
                log.warning(
                    "orphan suspected: %s (%s): no PersistentVolume, VolumeSnapshotContent or "
                    "operation claims it (orphans: %s)",
                    item.key,
                    item.kind,
                    self.settings.mode,
                )

    async def _claim(self, ident: str, check: Callable[[], None], report: SweepReport) -> None:
        model, item = self.models[ident], self.items[ident]
        p = self._input(claimed=True)
        if model.state == "quarantined":
            check()
            await self.store.restore(item)
            report.restored.append(item.key)
            log.info("orphan %s (%s) claimed again: restored", item.key, item.kind)
        self.engine.send(model, "sweep", p)
        self._forget(ident)

    def clear(self) -> None:
        """Leadership lost: the machines go (their gauge with them); the next leader's sweep
        finds the quarantined objects by their names and suspects the rest afresh."""
        for ident in list(self.models):
            self._forget(ident)
        self._unclaimed_once.clear()

    async def restore_claimed(self, claims: Claims, check: Callable[[], None]) -> list[str]:
        """Between sweeps: quarantined objects whose id is claimed now go back at once."""
        restored: list[str] = []
        report = SweepReport([], [], [], restored)
        for ident, model in list(self.models.items()):
            item = self.items.get(ident)
            if model.state != "quarantined" or item is None:
                continue
            known = claims.of(item.slot)
            if item.slot in claims.busy or (known is not None and item.slot in known):
                await self._claim(ident, check, report)
        return restored
