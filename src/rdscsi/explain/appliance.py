"""What an appliance shows, behind one small interface: `rdscsi explain` asks it for a
volume's disk and export (and whatever else an appliance can tell about a volume: a fence,
its NVMe/TCP sessions) and for the appliance's own summary. One `ApplianceView` per
appliance; each read is bounded in time and never raises (an unreachable appliance is an
answer: "not read, because ..."). Nothing here returns key material: no key files, no host
keys, no passwords; the SSH address and user are shown.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ..io.rds.connection import RDSConnection
from ..io.rds.errors import RDSError
from ..io.rds.volumes import VolumeStore
from ..machines.connection import ConnectionModel

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
    ) -> None:
        self.name = name
        self.rds = rds
        self.store = store
        self.nvme_address = nvme_address
        self.timeout = timeout

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
        try:
            vol = await asyncio.wait_for(self.store.get_volume(volume_id), self.timeout)
        except TimeoutError:
            return {"read": False, "why": f"no answer in {self.timeout:g} s"}
        except (RDSError, ValueError) as exc:
            return {"read": False, "why": str(exc)}
        if vol is None:
            return {"read": True, "disk": None, "export": None}
        source = f"{vol.source.kind} {vol.source.id}" if vol.source is not None else None
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
        }

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
        return {"read": True, "pool": {"size_bytes": pool.size, "free_bytes": pool.free}}
