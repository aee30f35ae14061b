"""Which snapshot ids the cluster's VolumeSnapshotContents of this driver name: the claims
the orphan sweep checks snapshot disks against.

Listed once per sweep (not watched: a sweep is minutes apart, and the snapshot CRDs are
optional). A cluster without them (404), or a list that fails, gives None: the snapshots'
claimants are unknown, so no snapshot is judged that sweep.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes.aio.client import ApiClient, CustomObjectsApi

from .wire import get_path, list_all, status_of

log = logging.getLogger("rdscsi.kube.snapshots")

GROUP, VERSION, PLURAL = "snapshot.storage.k8s.io", "v1", "volumesnapshotcontents"


def snapshot_handle(obj: Mapping[str, Any], driver: str) -> str | None:
    """The snapshot id a VolumeSnapshotContent of `driver` names (made, or pre-provisioned)."""
    if get_path(obj, "spec", "driver") != driver:
        return None
    handle = get_path(obj, "status", "snapshotHandle") or get_path(
        obj, "spec", "source", "snapshotHandle"
    )
    return handle if isinstance(handle, str) and handle else None


async def snapshot_handles(
    api: ApiClient, driver: str, page_size: int = 500
) -> frozenset[str] | None:
    """Every snapshot id this driver's VolumeSnapshotContents name; None when unknown."""
    call = functools.partial(
        CustomObjectsApi(api).list_cluster_custom_object_without_preload_content,
        GROUP,
        VERSION,
        PLURAL,
    )
    try:
        items, _ = await list_all(call, page_size)
    except Exception as exc:  # the API's errors and the transport's alike: no evidence
        if status_of(exc) == 404:
            log.debug("no VolumeSnapshotContents in this cluster (snapshot CRDs absent)")
        else:
            log.warning("VolumeSnapshotContents not listed (%r): snapshots not judged", exc)
        return None
    return frozenset(h for obj in items if (h := snapshot_handle(obj, driver)) is not None)
