"""The fleet: every appliance with its own connection (its own Connection machine, backoff,
health and metrics) and volume store, and the ids that say which one holds a volume.

Nothing is shared between two appliances but the process: a call about a volume reaches only
that volume's appliance, so one appliance down, slow or misconfigured leaves every call for
the others' volumes as it was (`tests/fleet/`). Ids: `rdscsi.csi.naming`; topology and
placement: `rdscsi.csi.topology`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .csi.naming import split_id, with_appliance
from .csi.topology import Layout
from .io.rds.connection import RDSConnection
from .io.rds.errors import MisconfiguredError
from .io.rds.volumes import VolumeStore

T = TypeVar("T")


class ApplianceTasks:
    """Work per appliance in a task of its own, at most one per appliance at a time: a slow
    or hung appliance holds up its own work only. Awaited (tests, a clean stop) or
    cancelled together."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def busy(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def start(self, name: str, kind: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name=f"{kind}-{name}")
        self._tasks[name] = task
        return task

    async def wait(self) -> None:
        """Until the work under way has finished."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def stop(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


@dataclass
class Appliance:
    name: str
    rds: RDSConnection
    store: VolumeStore
    nvme_address: str  # where nodes connect to its exports
    default: bool = False  # ids of the single-appliance form are its
    fence: bool = False  # its `fence: allow-host`: allow-lists, session evidence (docs/fencing.md)
    nqn_prefix: str = "nqn.2000-02.com.mikrotik:"  # export NQN = prefix + slot

    def export_nqn(self, slot: str) -> str:
        """The NQN of the export of the volume in `slot` on this appliance."""
        return self.nqn_prefix + slot

    def id_of(self, slot: str) -> str:
        """The CSI id of the volume or snapshot in `slot` on this appliance."""
        return with_appliance("" if self.default else self.name, slot)


@dataclass(frozen=True)
class Located:
    appliance: Appliance
    slot: str


class Unresolved(Exception):
    """An id that names no appliance of this fleet. `maybe_ours`: it could be a volume of an
    appliance the configuration no longer lists (so it must not be answered as gone); else
    it is not an id this driver issues."""

    def __init__(self, reason: str, maybe_ours: bool) -> None:
        super().__init__(reason)
        self.maybe_ours = maybe_ours


class Appliances:
    def __init__(self, layout: Layout, members: Sequence[Appliance]) -> None:
        if not members:
            raise ValueError("a fleet needs at least one appliance")
        self.layout = layout
        self._by_name = {a.name: a for a in members}
        self.default = next((a for a in members if a.default), None)

    def __iter__(self) -> Iterator[Appliance]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> Appliance:
        return self._by_name[name]

    def get(self, name: str) -> Appliance | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def locate(self, ident: str) -> Located:
        """The appliance and slot of a volume or snapshot id, or `Unresolved`."""
        parts = split_id(ident)
        if parts is None:
            raise Unresolved(f"{ident} is not an id this driver issues", maybe_ours=False)
        name, slot = parts
        if not name:
            if self.default is None:
                raise Unresolved(
                    f"{ident} has no appliance name, so it is the default appliance's (rds:), "
                    "and none is configured",
                    maybe_ours=True,
                )
            return Located(self.default, slot)
        if self.default is not None and name == self.default.name:
            # The default appliance's ids carry no name: one spelling per volume, or one disk
            # could be attached twice under two ids.
            raise Unresolved(
                f"{ident} is not an id this driver issues (appliance {name}'s ids are written "
                f"without its name: {slot})",
                maybe_ours=False,
            )
        found = self._by_name.get(name)
        if found is None:
            raise Unresolved(
                f"{ident} is on appliance {name}, which is not configured (it has: "
                f"{', '.join(self._by_name)})",
                maybe_ours=True,
            )
        return Located(found, slot)

    def slot_on(self, appliance: Appliance, ident: str) -> str | None:
        """The slot of `ident` if it is on `appliance`; None if it is on another one (or on
        none of this fleet)."""
        try:
            where = self.locate(ident)
        except Unresolved:
            return None
        return where.slot if where.appliance is appliance else None

    def appliance_of(self, ident: str) -> str:
        """The name of the appliance an id is on; '' when it names none of this fleet."""
        try:
            return self.locate(ident).appliance.name
        except Unresolved:
            return ""

    # --- health -------------------------------------------------------------------------------

    def ready(self) -> bool:
        """For the CSI Probe: True while at least one appliance is connected (its volumes are
        served; the others' calls answer UNAVAILABLE, and metrics and events say which).
        False while none is; `MisconfiguredError` (FAILED_PRECONDITION) when every
        appliance rejects a setting. With one appliance: exactly its connection's answer."""
        if any(a.rds.connected for a in self):
            return True
        states = [a.rds.state for a in self]
        if all(s == "misconfigured" for s in states):
            first = next(iter(self))
            return first.rds.ready()  # raises its MisconfiguredError
        return False

    def readiness(self) -> tuple[bool, str]:
        """`/readyz`: as `ready`, the body naming every appliance that is not connected."""
        down = [a for a in self if not a.rds.connected]
        text = ", ".join(f"appliance connection {a.name}: {a.rds.state}" for a in down)
        if len(down) == len(self):
            return False, text
        return True, "ok" if not down else f"ok; not connected: {text}"


__all__ = ["Appliance", "Appliances", "Located", "MisconfiguredError", "Unresolved"]
