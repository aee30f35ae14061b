"""What an appliance shows, behind one small interface, and its explanation.

`ApplianceView`: `rdscsi explain` asks it for a volume's disk and export (and whatever else
an appliance can tell about a volume: a fence, its NVMe/TCP sessions) and for the
appliance's own summary. One per appliance; each read is bounded in time and never raises
(an unreachable appliance is an answer: "not read, because ..."). Nothing here returns key
material: no key files, no host keys, no passwords; the SSH address and user are shown.

`explain_appliance`: the Connection machine, its last transitions (each failed dial with its
reason) and the timer its next dial waits for; `connection_blocker`: the same as what a
volume's next step waits for.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from ..control.evidence import SessionEvidence
from ..csi.naming import split_id
from ..io.rds.connection import RDSConnection
from ..io.rds.errors import RDSError
from ..io.rds.sessions import SessionsUnavailable, read_sessions
from ..io.rds.volumes import VolumeStore
from ..machines import ConnInput
from ..machines.connection import ConnectionMachine, ConnectionModel
from ..machines.guards import Part, fill
from ..machines.orphan import OrphanInput, OrphanModel
from . import machine as mx
from .machine import CONNECTION, ORPHAN, Times

if TYPE_CHECKING:
    from ..control.nodes import NodeBook
    from ..control.orphans import OrphanSweep
    from .service import Explainer

ORPHANS_SHOWN = 20  # the sweep's objects an answer lists (the count is always whole)

READ_TIMEOUT_S = 5.0

JSON = dict[str, Any]


class ApplianceView(Protocol):
    name: str  # the appliance's configured name (topology value, metrics label)

    @property
    def connection(self) -> ConnectionModel:
        """Its Connection machine's model (state, attempts, backoff delay)."""
        ...

    def describe(self) -> JSON:
        """How it is reached: address, port, user, NVMe/TCP address. Never keys."""
        ...

    async def volume(self, volume_id: str) -> JSON:
        """What it shows for one volume: `read` (bool), `why` when not, then `disk`,
        `export` and any further facts (a fence, sessions) it knows."""
        ...

    async def summary(self) -> JSON:
        """What it shows as a whole (its pool)."""
        ...


class StoreView:
    """One appliance through its connection and volume store."""

    def __init__(
        self,
        name: str,
        rds: RDSConnection,
        store: VolumeStore,
        nvme_address: str,
        timeout: float = READ_TIMEOUT_S,
        fence: str = "none",
        sweep: OrphanSweep | None = None,
        export_nqn: Any = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.rds = rds
        self.store = store
        self.nvme_address = nvme_address
        self.timeout = timeout
        self.fence = fence  # rds.fence: allow-host shows each disk's allow-list and sessions
        self.sweep = sweep  # the orphan sweep (its machines live on the reconciler leader)
        self.export_nqn = export_nqn or (lambda vid: vid)
        self.clock = clock

    @property
    def connection(self) -> ConnectionModel:
        return self.rds.model

    def describe(self) -> JSON:
        cfg = self.rds.config
        return {
            "address": cfg.address,
            "port": cfg.port,
            "user": cfg.user,
            "nvme_address": self.nvme_address,
        }

    def _unread(self) -> JSON | None:
        if not self.rds.connected:
            return {"read": False, "why": f"appliance {self.name} is {self.rds.state}"}
        return None

    async def volume(self, volume_id: str) -> JSON:
        unread = self._unread()
        if unread is not None:
            return unread
        parts = split_id(volume_id)
        slot = parts[1] if parts is not None else volume_id
        try:
            vol = await asyncio.wait_for(self.store.get_volume(slot), self.timeout)
        except TimeoutError:
            return {"read": False, "why": f"no answer in {self.timeout:g} s"}
        except (RDSError, ValueError) as exc:
            return {"read": False, "why": str(exc)}
        if vol is None:
            return {"read": True, "disk": None, "export": None}
        source = f"{vol.source.kind} {vol.source.id}" if vol.source is not None else None
        facts = await self._fence_facts(slot, vol.allow)
        return {
            "read": True,
            "disk": {
                "slot": vol.id,
                "size_bytes": vol.size,
                "file_path": vol.file_path,
                "kind": vol.kind.encode() if vol.kind is not None else None,
                "copied_from": source,
                "comment": vol.comment,
            },
            "export": (
                {"nqn": vol.nqn, "address": self.nvme_address, "port": vol.port}
                if vol.nqn
                else None
            ),
            **facts,
        }

    async def _sessions(self) -> Any:
        """The appliance's session listing, or why there is none (one command)."""
        now = self.clock.monotonic() if self.clock is not None else 0.0
        try:
            return await asyncio.wait_for(read_sessions(self.store, now), self.timeout)
        except TimeoutError:
            return f"not read: no answer in {self.timeout:g} s"
        except SessionsUnavailable as exc:
            return f"not read: {exc}"

    async def _fence_facts(self, slot: str, allow: Any) -> JSON:
        """With this appliance's fence allow-host: who may connect to the export of the
        volume in `slot` (the disk's allow-list) and who is connected now (its session
        listing)."""
        if self.fence != "allow-host":
            return {"fence": {"setting": self.fence, "allow_list": "not managed"}}
        if allow.open:
            shown = "open: any host may connect"
        elif allow.closed:
            shown = "closed: no host may connect"
        else:
            shown = ",".join(sorted(allow.hosts))
        listing = await self._sessions()
        if isinstance(listing, str):
            sessions: Any = listing
        else:
            hosts = listing.by_export.get(self.export_nqn(slot), frozenset())
            hosts |= listing.by_export.get(slot, frozenset())
            sessions = sorted(hosts)
        return {"fence": {"setting": self.fence, "allow_list": shown}, "sessions": sessions}

    async def session_evidence(self, nodes: NodeBook) -> tuple[SessionEvidence | None, str]:
        """The appliance's session listing as the reconciler reads it for evidence (with
        its fence allow-host; one command), or None with why there is none."""
        if self.fence != "allow-host":
            return None, ""
        if not self.rds.connected:
            return None, f"no session listing (appliance {self.name} is {self.rds.state})"
        listing = await self._sessions()
        if isinstance(listing, str):
            return None, f"session listing {listing}"
        # Evidence for this appliance's volumes (explain asks the volume's own appliance).
        return SessionEvidence(listing, nodes, self.export_nqn, _slot, self.name), ""

    async def _appliance_facts(self) -> JSON:
        out: JSON = {"fence": self.fence}
        if self.fence == "allow-host":
            listing = await self._sessions()
            out["sessions"] = (
                listing
                if isinstance(listing, str)
                else f"{listing.count} NVMe/TCP session(s) listed"
            )
        return out

    async def summary(self) -> JSON:
        unread = self._unread()
        if unread is not None:
            return unread
        try:
            pool = await asyncio.wait_for(self.store.capacity(), self.timeout)
        except TimeoutError:
            return {"read": False, "why": f"no answer in {self.timeout:g} s"}
        except RDSError as exc:
            return {"read": False, "why": str(exc)}
        return {
            "read": True,
            "pool": {"size_bytes": pool.size, "free_bytes": pool.free},
            **await self._appliance_facts(),
        }


def _slot(volume_id: str) -> str | None:
    parts = split_id(volume_id)
    return parts[1] if parts is not None else None


def explain_orphans(sweep: OrphanSweep | None, clock: Clock, times: Times) -> JSON:
    """The orphan sweep's objects as its machines hold them (the reconciler leader's; other
    replicas hold none), each with what its next sweep would do and what that waits for."""
    if sweep is None:
        return {"orphans": "no sweep here"}
    s = sweep.settings
    models = sorted(sweep.models.values(), key=lambda m: m.name)
    lines = []
    for m in models[:ORPHANS_SHOWN]:
        lines.append(_orphan_line(m, s, clock, times))
    if len(models) > ORPHANS_SHOWN:
        lines.append(f"... and {len(models) - ORPHANS_SHOWN} more")
    by_state: dict[str, int] = {}
    for m in models:
        by_state[m.state or "?"] = by_state.get(m.state or "?", 0) + 1
    return {
        "orphan_sweep": {
            "mode": s.mode,
            "min_age_s": s.min_age_s,
            "retention_s": s.retention_s,
            **by_state,
        },
        "orphans": lines,
    }


def _orphan_line(m: OrphanModel, s: Any, clock: Clock, times: Times) -> str:
    p = OrphanInput(
        now=clock.monotonic(),
        wall=clock.wall(),
        mode=s.mode,
        claimed=False,
        min_age_s=s.min_age_s,
        retention_s=s.retention_s,
    )
    head = f"{m.name} ({m.kind}): {m.state}, unclaimed since {times.mono(m.first_seen)}"
    found = mx.outcome(ORPHAN, m, "sweep", p, times)
    taken = found["takes"]
    if taken is not None and taken["target"] != m.state:
        return f"{head}; the next sweep takes {taken['text']}"
    waits = []
    for c in found["refused"]:
        if c["transition"]["target"] in ("restored", m.state):
            continue  # a claimant appearing, or staying: not what the sweep waits for
        for g in c["guards"]:
            unmet = [w for w in g["waiting_for"] if not w["met"]]
            if unmet and g["refuses"]:
                shown = "; ".join(
                    w["text"] + (f" (ends {w['at']})" if w.get("at") else "") for w in unmet
                )
                waits.append(f"{c['transition']['text']} needs {shown}")
    if not waits:
        return f"{head}; stays {m.state} (a claimant restores it)"
    return f"{head}; " + " | ".join(waits)


# --- explanations -----------------------------------------------------------------------------


def timer_of(conn: Any) -> tuple[str, Part] | None:
    """The timer that moves the connection's state on, as its machine declares it."""
    timers: dict[str, tuple[str, Part]] = getattr(ConnectionMachine, "timers", {})
    return timers.get(conn.state or "")


def connection_blocker(view: ApplianceView, clock: Clock, times: Times) -> JSON:
    """The appliance connection as what a volume's next step waits for."""
    conn = view.connection
    state = conn.state or "starting"
    out: JSON = {
        "machine": "connection",
        "object": view.name,
        "guard": None,
        "state": state,
        "text": (
            f"appliance {view.name} is {state}: every CSI call that reads or changes it "
            "(ControllerPublishVolume, CreateVolume, DeleteVolume...) answers UNAVAILABLE "
            "until it reconnects"
        ),
        "waiting_for": [],
    }
    if state == "misconfigured":  # a setting to fix, not an outage
        out["text"] = (
            f"appliance {view.name} rejects the driver's {conn.setting}: {conn.reason} "
            f"(server host key {conn.fingerprint or 'unknown'}); every CSI call that reads or "
            "changes it answers FAILED_PRECONDITION until the setting is fixed"
        )
    timer = timer_of(conn)
    if timer is not None:
        _, wait = timer
        out["waiting_for"].append(mx.part(wait, conn, ConnInput(clock.monotonic()), times))
    return out


async def explain_appliance(ex: Explainer, name: str) -> JSON:
    times = Times(ex.clock)
    view = ex.appliances[name]
    conn = view.connection
    state = conn.state or "starting"
    nxt: JSON = {"status": "at rest", "event": None, "blocked_by": []}
    timer = timer_of(conn)
    if timer is not None:
        event, wait = timer
        blocker = connection_blocker(view, ex.clock, times)
        t = next(t for t in CONNECTION.transitions if t.source == state and t.event == event)
        waited = blocker["waiting_for"][0] if blocker["waiting_for"] else {}
        nxt = {
            "status": "blocked",
            "event": event,
            "transition": mx.transition(t),
            "blocked_by": [blocker],
            "at": waited.get("at"),
            "in_s": waited.get("in_s"),
            "summary": f"appliance {name} is {state} after {conn.attempt} failed "
            f"attempt(s): it dials again when {fill(wait.text, conn, None)} ends"
            + (f" ({conn.setting}: {conn.reason})" if state == "misconfigured" else ""),
        }
    elif state == "disconnected":
        nxt = {
            "status": "due",
            "event": "retry",
            "blocked_by": [],
            "summary": f"appliance {name} was lost; a redial is made at once",
        }
    elif state in ("connecting", "reconnecting"):
        nxt = {
            "status": "due",
            "event": "succeeded",
            "blocked_by": [],
            "summary": f"dialling appliance {name} (connect timeout "
            f"{ex.extra.get('connect_timeout', 10.0):g} s)",
        }
    else:
        nxt["summary"] = f"appliance {name} is {state}"
    return {
        "kind": "appliance",
        "object": {"appliance": name, "connection": conn.key},
        "replica": ex.replica_info(),
        "now": times.iso(times.now_wall),
        "machine": {**mx.diagram(CONNECTION, state), "since": times.mono(conn.entered_at)},
        "model": {
            "attempt": conn.attempt,
            "delay_s": round(conn.delay, 2),
            "lost_at": times.mono(conn.lost_at),
            # the last rejected setting (empty unless misconfigured) and the key shown
            "setting": conn.setting,
            "reason": conn.reason,
            "fingerprint": conn.fingerprint,
        },
        "next": nxt,
        "history": mx.history(ex.recorder, "connection", conn.key, times),
        "appliance": {
            "name": name,
            "connection": state,
            **view.describe(),
            **await view.summary(),
            **explain_orphans(getattr(view, "sweep", None), ex.clock, times),
        },
    }
