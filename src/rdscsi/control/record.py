"""What is observed about each volume's attachments: the input every decision derives from.

A `Claim` is one node's claim on a volume: in a cluster a VolumeAttachment of this driver
(attached, or pending while the attacher publishes), standalone a publish this process made.
Two records provide them:

- `ClusterRecord`, fed by the VolumeAttachment and PersistentVolume informers, plus the
  publishes this replica answered that no VolumeAttachment shows yet ("in flight"): those
  count as holders, so two single-node publishes on one replica can never both succeed.
- `LocalRecord` (standalone, `rdscsi run`): the publishes themselves, kept in a JSON file so
  a restarted process sees the same attachments.

Neither holds a decision: `control.derive` restores the Attachment machine from a record
before each one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..clock import Clock
from ..io.kube.attachments import AttachmentView, VolumeView

log = logging.getLogger("rdscsi.record")

INFLIGHT_PREFIX = "inflight:"
INFLIGHT_TTL_S = 600.0  # memory bound for a publish no VolumeAttachment ever confirms


@dataclass(frozen=True, slots=True)
class Claim:
    key: str  # the VolumeAttachment's name; standalone and in-flight: derived from the node
    node: str
    since: float  # wall: the VolumeAttachment's creationTimestamp, or when published here
    attached: bool  # holds the volume (status.attached, in flight here, or standalone)
    deleting: bool = False  # a detach is under way (deletionTimestamp set)

    @property
    def order(self) -> tuple[float, str]:
        """Oldest first; the name breaks ties (creationTimestamp has one-second steps)."""
        return (self.since, self.key)


def claim_order(claim: Claim) -> tuple[float, str]:
    return claim.order


@dataclass(slots=True)
class Observed:
    volume_id: str
    rwx_block: bool
    claims: list[Claim] = field(default_factory=list)  # oldest first, one per node

    def holders(self) -> list[Claim]:
        return [c for c in self.claims if c.attached]

    def pending(self) -> list[Claim]:
        """Claims waiting for their publish: not attached and not being detached."""
        return [c for c in self.claims if not c.attached and not c.deleting]

    def claim(self, node: str) -> Claim | None:
        return next((c for c in self.claims if c.node == node), None)


class AttachmentRecord(Protocol):
    def observe(self, volume_id: str) -> Observed: ...

    def volume_ids(self) -> Iterable[str]: ...

    def nodes(self) -> set[str]: ...

    def published(self, volume_id: str, node: str, rwx_block: bool) -> None: ...

    def unpublished(self, volume_id: str, node: str) -> None: ...

    def forget(self, volume_id: str) -> None: ...

    async def wait_claim(self, volume_id: str, node: str, timeout: float) -> bool: ...


def _ordered(claims: Iterable[Claim]) -> list[Claim]:
    """Oldest first, one claim per node (the oldest)."""
    out: list[Claim] = []
    nodes: set[str] = set()
    for c in sorted(claims, key=claim_order):
        if c.node not in nodes:
            nodes.add(c.node)
            out.append(c)
    return out


class ClusterRecord:
    """VolumeAttachments and PVs as the informers report them, indexed by volume id."""

    def __init__(
        self,
        clock: Clock,
        on_change: Callable[[str], None] | None = None,
        inflight_ttl: float = INFLIGHT_TTL_S,
    ) -> None:
        self.clock = clock
        self._on_change = on_change
        self._inflight_ttl = inflight_ttl
        self.attachments: dict[str, AttachmentView] = {}  # VolumeAttachment name -> view
        self.volumes: dict[str, VolumeView] = {}  # PV name -> view
        self._by_pv: dict[str, set[str]] = {}  # PV name -> VolumeAttachment names
        self._pv_of: dict[str, str] = {}  # volume id -> PV name
        self._inflight: dict[str, dict[str, float]] = {}  # volume id -> node -> wall
        self._cache: dict[str, tuple[Claim, ...]] = {}  # PV name -> its claims, ordered
        self._waiters: list[asyncio.Future[None]] = []  # publishes waiting for their claim

    # --- fed by the informers -------------------------------------------------------------

    def attachment_changed(
        self, key: str, old: AttachmentView | None, new: AttachmentView | None
    ) -> None:
        if old is not None:
            self._by_pv.get(old.pv_name, set()).discard(key)
            self._cache.pop(old.pv_name, None)
            if not self._by_pv.get(old.pv_name):
                self._by_pv.pop(old.pv_name, None)
        if new is None:
            self.attachments.pop(key, None)
        else:
            self.attachments[key] = new
            self._by_pv.setdefault(new.pv_name, set()).add(key)
            self._cache.pop(new.pv_name, None)
        view = new or old
        assert view is not None
        pv = self.volumes.get(view.pv_name)
        if pv is not None:
            flying = self._inflight.get(pv.handle)
            # The attachment now says it (attached), or it is gone: no longer in flight.
            if flying and view.node in flying and (new is None or new.attached):
                del flying[view.node]
                if not flying:
                    del self._inflight[pv.handle]
            self._changed(pv.handle)

    def volume_changed(self, key: str, old: VolumeView | None, new: VolumeView | None) -> None:
        if old is not None and self._pv_of.get(old.handle) == key:
            del self._pv_of[old.handle]
        if new is None:
            self.volumes.pop(key, None)
        else:
            self.volumes[key] = new
            self._pv_of[new.handle] = key
        self._cache.pop(key, None)
        view = new or old
        assert view is not None
        self._changed(view.handle)

    def _changed(self, volume_id: str) -> None:
        if self._on_change is not None:
            self._on_change(volume_id)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --- what decisions read --------------------------------------------------------------

    def _claims(self, pv_name: str) -> tuple[Claim, ...]:
        cached = self._cache.get(pv_name)
        if cached is None:
            atts = self.attachments
            cached = tuple(
                _ordered(
                    Claim(a.name, a.node, a.created, a.attached, a.deleting)
                    for a in (atts[n] for n in self._by_pv.get(pv_name, ()))
                )
            )
            self._cache[pv_name] = cached
        return cached

    def observe(self, volume_id: str) -> Observed:
        pv_name = self._pv_of.get(volume_id)
        pv = self.volumes.get(pv_name) if pv_name is not None else None
        claims = list(self._claims(pv_name)) if pv_name is not None else []
        flying = self._inflight.get(volume_id)
        if flying:
            now = self.clock.wall()
            for node, at in list(flying.items()):
                if now - at > self._inflight_ttl:
                    del flying[node]
                    continue
                for i, c in enumerate(claims):
                    if c.node == node:
                        if not c.attached:
                            claims[i] = Claim(c.key, c.node, c.since, True, c.deleting)
                        break
                else:
                    claims.append(Claim(INFLIGHT_PREFIX + node, node, at, True))
            if not flying:
                del self._inflight[volume_id]
            claims = _ordered(claims)
        return Observed(volume_id, pv.rwx_block if pv is not None else False, claims)

    def volume_ids(self) -> Iterator[str]:
        """Every volume with a VolumeAttachment (whose PV is known) or a publish in flight."""
        for pv_name in self._by_pv:
            pv = self.volumes.get(pv_name)
            if pv is not None:
                yield pv.handle
        for vid in list(self._inflight):
            owner = self._pv_of.get(vid)
            if owner is None or owner not in self._by_pv:
                yield vid

    def nodes(self) -> set[str]:
        """Every node some VolumeAttachment or in-flight publish names."""
        out = {a.node for a in self.attachments.values()}
        for flying in self._inflight.values():
            out.update(flying)
        return out

    def in_flight(self) -> frozenset[str]:
        """Volumes with a publish of this replica that no VolumeAttachment shows yet."""
        return frozenset(self._inflight)

    def has_claim(self, volume_id: str, node: str) -> bool:
        pv_name = self._pv_of.get(volume_id)
        if pv_name is None:
            return False
        return any(self.attachments[n].node == node for n in self._by_pv.get(pv_name, ()))

    # --- what this replica did ------------------------------------------------------------

    def published(self, volume_id: str, node: str, rwx_block: bool) -> None:
        observed = self.observe(volume_id).claim(node)
        if (
            observed is not None
            and observed.attached
            and not observed.key.startswith(INFLIGHT_PREFIX)
        ):
            return  # the VolumeAttachment already says so
        self._inflight.setdefault(volume_id, {}).setdefault(node, self.clock.wall())

    def unpublished(self, volume_id: str, node: str) -> None:
        flying = self._inflight.get(volume_id)
        if flying is not None:
            flying.pop(node, None)
            if not flying:
                del self._inflight[volume_id]

    def forget(self, volume_id: str) -> None:
        self._inflight.pop(volume_id, None)

    async def wait_claim(self, volume_id: str, node: str, timeout: float) -> bool:
        """Until this driver's VolumeAttachment for (volume, node) is in the view (the
        attacher acts on one, so ours may lag a moment); False after `timeout` on the clock.
        Seeing it means seeing every older attachment too: a watch delivers changes in
        resourceVersion order."""
        deadline = self.clock.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while not self.has_claim(volume_id, node):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = self.clock.call_later(
                remaining,
                lambda w=waiter: w.done() or w.set_result(None),  # type: ignore[misc]
            )
            try:
                await waiter
            finally:
                timer.cancel()
        return True


class LocalRecord:
    """Standalone: the publishes this process made, kept in `path` (JSON) across restarts."""

    VERSION = 2

    def __init__(
        self,
        clock: Clock,
        path: Path | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.path = path
        self._on_change = on_change
        # volume id -> {"rwx_block": bool, "nodes": {node: wall time published}}
        self._volumes: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self._load(json.loads(path.read_text()))

    def observe(self, volume_id: str) -> Observed:
        entry = self._volumes.get(volume_id)
        if entry is None:
            return Observed(volume_id, False)
        claims = _ordered(Claim(n, n, t, True) for n, t in entry["nodes"].items())
        return Observed(volume_id, bool(entry["rwx_block"]), claims)

    def volume_ids(self) -> list[str]:
        return list(self._volumes)

    def nodes(self) -> set[str]:
        return {n for e in self._volumes.values() for n in e["nodes"]}

    def published(self, volume_id: str, node: str, rwx_block: bool) -> None:
        entry = self._volumes.setdefault(volume_id, {"rwx_block": rwx_block, "nodes": {}})
        if node not in entry["nodes"]:
            entry["nodes"][node] = self.clock.wall()
            self._save()
            self._changed(volume_id)

    def unpublished(self, volume_id: str, node: str) -> None:
        entry = self._volumes.get(volume_id)
        if entry is not None and entry["nodes"].pop(node, None) is not None:
            if not entry["nodes"]:
                del self._volumes[volume_id]
            self._save()
            self._changed(volume_id)

    def release(self, volume_id: str, node: str) -> None:
        """The reconciler let go of a node's claim (stale cleared, migration expired)."""
        self.unpublished(volume_id, node)

    def forget(self, volume_id: str) -> None:
        if self._volumes.pop(volume_id, None) is not None:
            self._save()

    async def wait_claim(self, volume_id: str, node: str, timeout: float) -> bool:
        return True  # nothing to wait for: the publish itself is the record

    def _changed(self, volume_id: str) -> None:
        if self._on_change is not None:
            self._on_change(volume_id)

    # --- persistence ----------------------------------------------------------------------

    def _load(self, data: dict[str, Any]) -> None:
        if data.get("version") == self.VERSION:
            for vid, entry in (data.get("volumes") or {}).items():
                nodes = {str(n): float(t) for n, t in (entry.get("nodes") or {}).items()}
                if nodes:
                    self._volumes[vid] = {"rwx_block": bool(entry.get("rwx_block")), "nodes": nodes}
            return
        # The first format stored the machine's fields: keep its holders.
        now = self.clock.wall()
        for vid, record in data.items():
            if not isinstance(record, dict):
                continue
            nodes = {n: now for n in (record.get("node"), record.get("peer")) if n}
            if nodes:
                self._volumes[vid] = {"rwx_block": bool(record.get("rwx_block")), "nodes": nodes}

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"version": self.VERSION, "volumes": self._volumes}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
