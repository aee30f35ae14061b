"""A disk's NVMe/TCP allow-list: every assumption the driver makes about it lives here.

`/disk print detail` prints `nvme-tcp-server-allow-host-name` on every disk (empty in every
published capture: *confirmed* that the property exists and that exports work with it
empty). What the driver *assumes* about it, not yet confirmed on a device (docs/fencing.md
keeps the list, and how to turn fencing off if a device disagrees):

- it takes several host NQNs, separated by commas (`allow_list_value`, `parse_allow_list`);
- empty means every host may connect (the default every capture shows);
- a host whose NQN is not on a non-empty list is refused when it connects;
- a session already open is not cut when its host is taken off: the list stops reconnects
  and new connects, and the session listing tells a node that is still connected apart.

So under `rds.fence: allow-host` the driver never writes an empty list: a disk nobody may
use gets `NO_HOST`, an NQN no host has, and reading it back gives the empty set again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

ALLOW_PROPERTY: Final = "nvme-tcp-server-allow-host-name"
SEPARATOR: Final = ","
# Under the appliance vendor's NQN domain, as every export NQN is: no host is named so.
NO_HOST: Final = "nqn.2000-02.com.mikrotik:rdscsi-no-host"


@dataclass(frozen=True, slots=True)
class AllowList:
    """Who may connect to one export, as the appliance lists it."""

    hosts: frozenset[str] = frozenset()  # host NQNs on the list (NO_HOST left out)
    open: bool = True  # nothing set: every host may connect

    @property
    def closed(self) -> bool:
        """Nobody may connect (only NO_HOST on it)."""
        return not self.open and not self.hosts


OPEN: Final = AllowList()


def parse_allow_list(text: str | None) -> AllowList:
    """The list a disk prints (the property's value; None or "" when unset)."""
    entries = [e.strip() for e in (text or "").split(SEPARATOR) if e.strip()]
    if not entries:
        return OPEN
    return AllowList(frozenset(e for e in entries if e != NO_HOST), open=False)


def allow_list_value(hosts: Iterable[str]) -> str:
    """The property's value that lets exactly `hosts` connect (none: NO_HOST, never empty)."""
    chosen = sorted(set(hosts) - {NO_HOST})
    return SEPARATOR.join(chosen) if chosen else NO_HOST
