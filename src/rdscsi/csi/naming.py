"""CSI names to appliance slots: deterministic, so a retried create finds its own volume.

Kubernetes names volumes `pvc-<uuid>` and snapshots `snapshot-<uuid>`; those keep a readable
slot. Any other name (up to 128 characters of anything) is hashed into the slot allowlist.
"""

from __future__ import annotations

import hashlib
import re

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_PVC = re.compile(rf"pvc-{_UUID}")
_SNAPSHOT = re.compile(rf"snapshot-({_UUID})")
VOLUME_ID = re.compile(rf"(pvc-{_UUID}|vol-[0-9a-f]{{32}})")
SNAPSHOT_ID = re.compile(rf"snap-({_UUID}|[0-9a-f]{{32}})")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def volume_id(name: str) -> str:
    return name if _PVC.fullmatch(name) else f"vol-{_digest(name)}"


def snapshot_id(name: str) -> str:
    m = _SNAPSHOT.fullmatch(name)
    return f"snap-{m.group(1)}" if m else f"snap-{_digest(name)}"


def is_volume_id(text: str) -> bool:
    return VOLUME_ID.fullmatch(text) is not None


def is_snapshot_id(text: str) -> bool:
    return SNAPSHOT_ID.fullmatch(text) is not None
