"""The leader's work on the appliance around each attachment pass.

Before the pass: one session listing when a lost holder has no other evidence (session
evidence, with the fence only). After it:

- every node the pass released is taken off its disks' allow-lists (`Fencer.fence_out`),
  retried by the next pass until the appliance has accepted it;
- quarantined orphans whose volume a PV names again are restored;
- at start, after a reconnect and every `sweep_interval`, the sweep: one inventory of the
  appliance (`io.rds.orphans`), the fence's convergence over every exported volume in it
  (each allow-list made the cluster's view: after a crash between two fence steps, a list
  edited by hand, or fencing just turned on), then the orphan sweep.

Every appliance command is preceded by `check` (leadership): a deposed leader sends nothing
more. One `ApplianceAudit` works on one appliance of the fleet (its `VolumeStore`, its disk
slots: a volume id `<appliance>:<slot>` is set by its slot on its own appliance, and nothing
is ever written for it on another). `FleetAudit` runs them: per appliance, in a task of its
own (at most one at a time), so one slow or hung appliance delays neither the pass (it waits
`wait_s` at most) nor the other appliances' work.

Per appliance: its session listing is evidence for its volumes only (`FleetEvidence`); a
down appliance gives none (never "no session"). Its sweep runs once it is connected: after
each new link to it (`RDSConnection.connects`), when a new leader starts, and every
`sweep_interval`; a sweep that could not run stays due until it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..appliances import ApplianceTasks
from ..io.rds.errors import NotFoundError
from ..io.rds.orphans import OrphanStore, Stored
from ..io.rds.sessions import SessionListing, SessionsUnavailable, read_sessions
from ..io.rds.volumes import ForeignDiskError
from .derive import Deriver
from .evidence import FleetEvidence, SessionEvidence, SessionReader
from .fence import Fencer, Repairs
from .orphans import Claims, OrphanSweep, SweepReport
from .reconcile import AttachmentPass
from .record import AttachmentRecord

if TYPE_CHECKING:
    from ..appliances import Appliance, Appliances

log = logging.getLogger("rdscsi.audit")

SWEEP_REASONS = frozenset({"startup", "sweep"})  # trigger kinds that make every sweep due
WAIT_S = 5.0  # seconds a pass waits for an appliance's work before leaving it to run alone

ClaimSource = Callable[[], Awaitable[Claims]]


@dataclass
class AuditReport:
    fenced_out: int = 0
    restored: int = 0
    sweep: SweepReport | None = None
    repairs: Repairs | None = None

    def add(self, other: AuditReport) -> None:
        self.fenced_out += other.fenced_out
        self.restored += other.restored


class ApplianceAudit:
    def __init__(
        self,
        appliance: Appliance,
        fleet: Appliances,
        passes: AttachmentPass,
        deriver: Deriver,
        record: AttachmentRecord,
        check: Callable[[], None],
        claims: ClaimSource,
        fencer: Fencer | None = None,
        reader: SessionReader | None = None,
        sweep: OrphanSweep | None = None,
    ) -> None:
        self.appliance = appliance
        self.fleet = fleet
        self.store = appliance.store
        self.passes = passes
        self.deriver = deriver
        self.record = record
        self.check = check
        self.claims = claims  # the cluster's, as volume and snapshot ids of every appliance
        self.fencer = fencer if appliance.fence else None
        self.reader = reader if appliance.fence else None
        self.sweep = sweep
        self.orphans = OrphanStore(self.store)
        self.sweeps = 0
        self.swept_connects = 0  # the link the last sweep ran on
        self.due = True  # a sweep is owed (start, interval, new leader)

    @property
    def name(self) -> str:
        return self.appliance.name

    def slot_of(self, volume_id: str) -> str | None:
        """The slot of a volume or snapshot id on this appliance; None if it is not here."""
        return self.fleet.slot_on(self.appliance, volume_id)

    def sweep_due(self) -> bool:
        return self.due or self.appliance.rds.connects != self.swept_connects

    def local(self, claims: Claims) -> Claims:
        """The claims on this appliance, by slot (what its inventory lists)."""

        def here(ids: frozenset[str] | None) -> frozenset[str] | None:
            if ids is None:
                return None
            return frozenset(s for s in map(self.slot_of, ids) if s is not None)

        busy = here(claims.busy)
        return Claims(here(claims.volumes), here(claims.snapshots), busy or frozenset())

    def clear(self) -> None:
        """Leadership lost: what the sweep kept goes with it."""
        if self.sweep is not None:
            self.sweep.clear()
        self.due = True

    def wants_sessions(self) -> bool:
        return self.reader is not None and self.passes.wants_sessions()

    async def sessions(self) -> SessionEvidence | None:
        """Evidence for this pass from this appliance, if a listing could be any."""
        if self.reader is None or not self.passes.wants_sessions():
            return None
        self.check()
        return await self.reader.read(
            self.store, self.name, self.appliance.export_nqn, self.slot_of
        )

    async def after_pass(self, reasons: frozenset[str], sweep: bool = False) -> AuditReport:
        """The work after a pass on this appliance; `sweep`: its sweep is run too (or, with
        `sweep=False`, when `reasons` name a sweep, as with one appliance)."""
        report = AuditReport()
        if self.passes.unfence:
            report.fenced_out = await self._fence_out(self.fencer)
        if self.sweep is not None and self.sweep.models:
            claims = self.local(await self.claims())
            report.restored = len(await self.sweep.restore_claimed(claims, self.check))
        kinds = {r.split(":", 1)[0] for r in reasons}
        sweep = sweep or bool(kinds & SWEEP_REASONS)
        if sweep and (self.fencer is not None or self.sweep is not None):
            connects = self.appliance.rds.connects
            await self._sweep(report)
            self.swept_connects, self.due = connects, False
        return report

    async def _fence_out(self, fencer: Fencer | None) -> int:
        done = 0
        engine = self.deriver.engine
        for vid, nodes in list(self.passes.unfence.items()):
            slot = self.slot_of(vid)
            if slot is None:
                continue  # another appliance's volume: its own audit takes it off there
            if fencer is None:
                del self.passes.unfence[vid]  # this appliance does not fence
                continue
            self.check()
            try:
                vol = await self.store.get_volume(slot)
            except ForeignDiskError:
                vol = None
            if vol is not None:
                model = self.passes.models.get(vid)
                temporary = model is None
                if model is None:
                    model = self.deriver.restore(engine, vid, False, [])
                try:
                    done += await fencer.fence_out(model, vol.allow, sorted(nodes), self.check)
                finally:
                    if temporary:
                        engine.forget(model)
            self.passes.unfence.pop(vid, None)
        return done

    async def _sweep(self, report: AuditReport) -> None:
        self.check()
        items = await self.orphans.inventory()
        listing: list[SessionListing | None] = []

        async def sessions() -> SessionListing | None:
            if not listing:  # one listing per sweep, only if some object needs it
                self.check()
                try:
                    listing.append(await read_sessions(self.store, self.deriver.clock.monotonic()))
                except SessionsUnavailable as exc:
                    log.warning(
                        "sweep of appliance %s: %s: exported volumes are not judged this time",
                        self.name,
                        exc,
                    )
                    listing.append(None)
            return listing[0]

        if self.fencer is not None:
            report.repairs = await self._converge(self.fencer, items)
        if self.sweep is not None:
            claims = self.local(await self.claims())
            report.sweep = await self.sweep.run(items, claims, sessions, self.check)
            s = report.sweep
            if s.suspected or s.quarantined or s.deleted or s.restored:
                log.info(
                    "sweep of appliance %s: %d suspected, %d quarantined, %d deleted, %d restored "
                    "(orphans: %s)",
                    self.name,
                    len(s.suspected),
                    len(s.quarantined),
                    len(s.deleted),
                    len(s.restored),
                    self.sweep.settings.mode,
                )
        self.sweeps += 1

    async def _converge(self, fencer: Fencer, items: list[Stored]) -> Repairs:
        repairs = Repairs()
        engine = self.deriver.engine
        for item in items:
            allow = item.allow
            if allow is None or item.disk != item.slot or item.kind not in ("volume", "copy"):
                continue  # not an exported volume in place
            vid = self.appliance.id_of(item.slot)  # the cluster's name for it
            observed = self.record.observe(vid)
            released = self.passes.released.get(vid, set())
            holders = [c for c in observed.holders() if c.key not in released]
            want = fencer.expected(c.node for c in holders)
            if want is not None and not allow.open and allow.hosts == want:
                continue  # agrees: no derivation needed
            model = self.deriver.for_decision(observed, holders)
            try:
                await fencer.converge(model, allow, observed, holders, repairs, self.check)
            except NotFoundError as exc:
                repairs.skipped.append(f"volume {vid}: {exc}")  # deleted meanwhile
            finally:
                engine.forget(model)
        if repairs:
            log.info(
                "fence on appliance %s: %d host(s) put back, %d taken off, %d export(s) closed to "
                "their holders%s",
                self.name,
                repairs.added,
                repairs.removed,
                repairs.closed,
                "; left: " + "; ".join(repairs.skipped) if repairs.skipped else "",
            )
        return repairs


class FleetAudit:
    """Every appliance's `ApplianceAudit`, each in a task of its own (at most one at a time
    per appliance): the session listings before a pass, the fence and sweep work after it.
    A pass waits `wait_s` at most for them; an appliance still busy then keeps working
    alone (bounded by its command timeout) and is skipped by the passes meanwhile: its
    volumes have no session evidence, its work waits for the next pass after it is done."""

    def __init__(
        self, fleet: Appliances, audits: list[ApplianceAudit], trigger: Callable[[str], None]
    ) -> None:
        self.fleet = fleet
        self.audits = {a.name: a for a in audits}
        self.trigger = trigger
        self.wait_s = WAIT_S
        self.tasks = ApplianceTasks()
        self.late: dict[str, SessionEvidence] = {}  # listings done after their pass
        self.failed: list[BaseException] = []  # background work that failed, raised next pass

    def __iter__(self) -> Iterator[ApplianceAudit]:
        return iter(self.audits.values())

    def __getitem__(self, name: str) -> ApplianceAudit:
        return self.audits[name]

    @property
    def sweeps(self) -> int:
        return sum(a.sweeps for a in self)

    @property
    def claims(self) -> ClaimSource:
        return next(iter(self)).claims

    @claims.setter
    def claims(self, source: ClaimSource) -> None:
        for audit in self:
            audit.claims = source  # the cluster's ids; each audit keeps its own appliance's

    def _free(self) -> list[ApplianceAudit]:
        """Connected appliances with no work of theirs still running."""
        out = []
        for audit in self:
            if audit.appliance.rds.connected and not self.tasks.busy(audit.name):
                out.append(audit)
        return out

    def _late(self, name: str, task: asyncio.Task[object], kind: str) -> None:
        """A task the pass stopped waiting for: what it finds is kept for the next pass."""

        def done(t: asyncio.Task[object]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                log.warning("appliance %s: %s failed after its pass: %r", name, kind, exc)
                self.failed.append(exc)
                return
            result = t.result()
            if isinstance(result, SessionEvidence):
                self.late[name] = result
                self.trigger(f"sessions:{name}")

        task.add_done_callback(done)

    async def _run(
        self, work: dict[str, Callable[[], Awaitable[object]]], kind: str
    ) -> dict[str, object]:
        """Each appliance's `work` in its own task; their results, of those done within
        `wait_s`. The first failure among them is raised once all are done or waited for."""
        started: dict[str, asyncio.Task[object]] = {}
        for name, fn in work.items():

            async def one(fn: Callable[[], Awaitable[object]] = fn) -> object:
                return await fn()

            started[name] = self.tasks.start(name, kind, one())
        if started:
            await asyncio.wait(started.values(), timeout=self.wait_s)
        results: dict[str, object] = {}
        error: BaseException | None = None
        for name, task in started.items():
            if not task.done():
                log.warning(
                    "appliance %s: %s still running after %.1f s; the pass goes on without it",
                    name,
                    kind,
                    self.wait_s,
                )
                self._late(name, task, kind)
            elif task.cancelled():
                continue
            elif task.exception() is not None:
                error = error or task.exception()
            else:
                results[name] = task.result()
        if error is not None:
            raise error
        return results

    async def sessions(self) -> FleetEvidence | None:
        """This pass's evidence: a listing of each connected appliance with a fenced volume
        whose holder is lost, read side by side."""
        evidence: dict[str, SessionEvidence] = dict(self.late)
        self.late.clear()
        work: dict[str, Callable[[], Awaitable[object]]] = {
            a.name: a.sessions for a in self._free() if a.wants_sessions()
        }
        if not work and not evidence:
            return None
        for name, found in (await self._run(work, "session listing")).items():
            if isinstance(found, SessionEvidence):
                evidence[name] = found
        if not evidence:
            return None
        return FleetEvidence(evidence, self.fleet.appliance_of)

    async def after_pass(self, reasons: frozenset[str]) -> AuditReport:
        kinds = {r.split(":", 1)[0] for r in reasons}
        if kinds & SWEEP_REASONS:
            for audit in self:
                audit.due = True
        work: dict[str, Callable[[], Awaitable[object]]] = {}
        for audit in self._free():

            async def one(audit: ApplianceAudit = audit) -> AuditReport:
                return await audit.after_pass(frozenset(), sweep=audit.sweep_due())

            work[audit.name] = one
        report = AuditReport()
        failed, self.failed = self.failed, []
        for found in (await self._run(work, "fence and sweep")).values():
            if isinstance(found, AuditReport):
                report.add(found)
        if failed:
            raise failed[0]  # background work that failed: the pass is retried (backoff)
        return report

    def clear(self) -> None:
        for audit in self:
            audit.clear()
        self.late.clear()

    async def wait(self) -> None:
        """Until every appliance's work under way is done (tests, and a clean stop)."""
        await self.tasks.wait()

    async def stop(self) -> None:
        await self.tasks.stop()
