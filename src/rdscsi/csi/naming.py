"""CSI names to appliance slots, and the ids that say which appliance holds them.

Slots are deterministic, so a retried create finds its own volume. Kubernetes names volumes
`pvc-<uuid>` and snapshots `snapshot-<uuid>`; those keep a readable slot. Any other name (up
to 128 characters of anything) is hashed into the slot allowlist.

An id is `<appliance>:<slot>` (`rds-b:pvc-…`), so every later call goes to the box that
holds the volume. The fleet's default appliance (the `rds:` section of the configuration)
issues its ids without the name, `pvc-…`: the single-appliance form, which every id issued
before the fleet has, so those stay valid after an upgrade (and after a rollback). An id has
exactly one spelling: `<default>:pvc-…` is not an id this driver issues, or one disk could
be attached twice under two names.
"""

from __future__ import annotations

import hashlib
import re

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_PVC = re.compile(rf"pvc-{_UUID}")
_SNAPSHOT = re.compile(rf"snapshot-({_UUID})")
# An appliance name: a DNS label short enough that `<driver>/appliance.<name>` is a valid
# label key (its name part is at most 63 characters) and an id stays far below 128 bytes.
APPLIANCE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
APPLIANCE_NAME_MAX = 40
_APPLIANCE = r"(?:(?P<appliance>[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?):)?"
VOLUME_SLOT = rf"pvc-{_UUID}|vol-[0-9a-f]{{32}}"
SNAPSHOT_SLOT = rf"snap-(?:{_UUID}|[0-9a-f]{{32}})"
VOLUME_ID = re.compile(rf"{_APPLIANCE}(?P<slot>{VOLUME_SLOT})")
SNAPSHOT_ID = re.compile(rf"{_APPLIANCE}(?P<slot>{SNAPSHOT_SLOT})")
SEPARATOR = ":"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def _on(appliance: str, slot: str) -> str:
    return f"{appliance}{SEPARATOR}{slot}" if appliance else slot


def volume_slot(name: str) -> str:
    return name if _PVC.fullmatch(name) else f"vol-{_digest(name)}"


def snapshot_slot(name: str) -> str:
    m = _SNAPSHOT.fullmatch(name)
    return f"snap-{m.group(1)}" if m else f"snap-{_digest(name)}"


def volume_id(name: str, appliance: str = "") -> str:
    """The id of the volume CreateVolume `name` makes on `appliance` ('': the default one,
    whose ids carry no name)."""
    return _on(appliance, volume_slot(name))


def snapshot_id(name: str, appliance: str = "") -> str:
    return _on(appliance, snapshot_slot(name))


def with_appliance(appliance: str, slot: str) -> str:
    """The id of `slot` on `appliance` ('': the default appliance)."""
    return _on(appliance, slot)


def split_id(text: str) -> tuple[str, str] | None:
    """(appliance name or '' for the default one, slot) of a volume or snapshot id this
    driver could have issued; None for anything else."""
    m = VOLUME_ID.fullmatch(text) or SNAPSHOT_ID.fullmatch(text)
    if m is None:
        return None
    return m.group("appliance") or "", m.group("slot")


def is_volume_id(text: str) -> bool:
    """Whether `text` has the form of a volume id (which appliance it names is the fleet's
    question: `rdscsi.appliances.Appliances.resolve`)."""
    return VOLUME_ID.fullmatch(text) is not None


def is_snapshot_id(text: str) -> bool:
    return SNAPSHOT_ID.fullmatch(text) is not None
