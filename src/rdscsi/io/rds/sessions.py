"""The appliance's NVMe/TCP sessions, as evidence of who uses which export.

One `/interface nvme-tcp connection print` lists every session of every export (its output
shape is unconfirmed on a device: the parser accepts the list, detail, `key: value` and
table forms, and fails loudly on anything else). A listing is evidence only if it can be
read whole: every session must name its host (host NQN) and its export (NQN or slot). If
one does not, or the command fails, `read_sessions` raises `SessionsUnavailable`, and the
caller has no evidence at all, never "no sessions".
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from rdscsi.io.rds.errors import RDSError
from rdscsi.io.rds.records import NvmeConnection
from rdscsi.io.rds.volumes import VolumeStore


class SessionsUnavailable(Exception):
    """The listing could not be taken or read whole: no evidence either way."""


@dataclass(frozen=True)
class SessionListing:
    """Which hosts hold a session to which export, at one moment."""

    taken_at: float  # monotonic
    by_export: dict[str, frozenset[str]] = field(default_factory=dict)  # NQN or slot -> hosts
    count: int = 0

    @classmethod
    def of(cls, taken_at: float, sessions: Iterable[NvmeConnection]) -> SessionListing:
        found: dict[str, set[str]] = {}
        count = 0
        for s in sessions:
            if not s.host_nqn or not (s.nqn or s.slot):
                shown = " ".join(f"{k}={v}" for k, v in s.raw.items())
                raise SessionsUnavailable(
                    f"a session names no host or no export ({shown or 'no fields'}): the "
                    "listing cannot tell who is connected"
                )
            count += 1
            for export in (s.nqn, s.slot):
                if export:
                    found.setdefault(export, set()).add(s.host_nqn)
        return cls(taken_at, {k: frozenset(v) for k, v in found.items()}, count)

    def connected(self, host_nqn: str, export_nqn: str, slot: str) -> bool:
        """Whether the host has a session to the export (named by its NQN or its slot)."""
        return host_nqn in self.by_export.get(export_nqn, ()) or host_nqn in self.by_export.get(
            slot, ()
        )


# Each store's last listing: sessions whose lines did not change are the same objects
# (`ListingMemo`), and a listing made of the same sessions is not indexed again.
_LAST: weakref.WeakKeyDictionary[VolumeStore, tuple[list[NvmeConnection], SessionListing]] = (
    weakref.WeakKeyDictionary()
)


async def read_sessions(store: VolumeStore, now: float) -> SessionListing:
    """One listing of the appliance behind `store`; `SessionsUnavailable` when there is none."""
    try:
        sessions = await store.sessions()
    except RDSError as exc:
        raise SessionsUnavailable(f"session listing failed: {exc}") from exc
    last = _LAST.get(store)
    if last is not None and _same(last[0], sessions):
        return replace(last[1], taken_at=now)
    listing = SessionListing.of(now, sessions)
    _LAST[store] = (sessions, listing)
    return listing


def _same(a: list[NvmeConnection], b: list[NvmeConnection]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
