"""What the cluster records as attached: this driver's VolumeAttachments, joined to PVs.

Two paged lists (VolumeAttachments, then PersistentVolumes) and an in-memory join, so 10k
attachments cost a few requests, not one GET per attachment. Used at start-up (and on
leadership) to rebuild the attachment machines from the cluster's record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.aio.client import ApiClient, CoreV1Api, StorageV1Api

from .wire import JSON, get_path, list_all

log = logging.getLogger("rdscsi.kube.attachments")


@dataclass(frozen=True, slots=True)
class AttachmentView:
    volume_id: str  # the PV's spec.csi.volumeHandle
    node: str
    rwx_block: bool  # Block mode and ReadWriteMany: two nodes at once is a live migration
    pv_name: str
    attachment_name: str


def is_rwx_block(pv: Mapping[str, Any]) -> bool:
    spec = pv.get("spec") or {}
    # volumeMode defaults to Filesystem when absent.
    return spec.get("volumeMode") == "Block" and "ReadWriteMany" in (spec.get("accessModes") or [])


def join(vas: Iterable[JSON], pvs: Iterable[JSON], driver_name: str) -> list[AttachmentView]:
    """Attached VolumeAttachments of `driver_name` with their PV's handle and mode."""
    by_name: dict[str, JSON] = {}
    pv: JSON | None
    for pv in pvs:
        name = get_path(pv, "metadata", "name")
        if isinstance(name, str):
            by_name[name] = pv
    views: list[AttachmentView] = []
    for va in vas:
        if get_path(va, "spec", "attacher") != driver_name:
            continue
        # Only `attached: true` holds a volume; a pending or detached one does not.
        if get_path(va, "status", "attached") is not True:
            continue
        va_name = get_path(va, "metadata", "name") or ""
        node = get_path(va, "spec", "nodeName") or ""
        source = get_path(va, "spec", "source") or {}
        pv_name = source.get("persistentVolumeName")
        if not pv_name:
            if source.get("inlineVolumeSpec") is not None:
                log.info("VolumeAttachment %s: inline volume spec, not ours to track", va_name)
            else:
                log.warning("VolumeAttachment %s has no source volume; skipped", va_name)
            continue
        pv = by_name.get(pv_name)
        if pv is None:
            # The PV is gone while its attachment lingers: without the PV there is no volume
            # handle to key it by. The attacher's own cleanup handles it.
            log.warning("VolumeAttachment %s: PV %s not found; skipped", va_name, pv_name)
            continue
        csi = get_path(pv, "spec", "csi") or {}
        handle = csi.get("volumeHandle")
        if csi.get("driver") not in (None, driver_name) or not handle:
            log.warning(
                "VolumeAttachment %s: PV %s is not a %s CSI volume; skipped",
                va_name,
                pv_name,
                driver_name,
            )
            continue
        if not node:
            log.warning("VolumeAttachment %s has no node; skipped", va_name)
            continue
        views.append(AttachmentView(handle, node, is_rwx_block(pv), pv_name, va_name))
    return views


async def list_attachments(
    api: ApiClient, driver_name: str, page_size: int = 500
) -> list[AttachmentView]:
    """Attachments the cluster records for `driver_name`. Raises on API errors: a partial
    record must not be mistaken for the whole one."""
    # Both lists at once: the server serialises one while we parse the other.
    (vas, _), (pvs, _) = await asyncio.gather(
        list_all(StorageV1Api(api).list_volume_attachment_without_preload_content, page_size),
        list_all(CoreV1Api(api).list_persistent_volume_without_preload_content, page_size),
    )
    return join(vas, pvs, driver_name)


def held_by_volume(views: Iterable[AttachmentView]) -> dict[str, list[tuple[str, bool]]]:
    """The shape `AttachmentBook.rebuild` takes: volume id -> [(node, rwx_block)]."""
    held: dict[str, list[tuple[str, bool]]] = {}
    for v in views:
        held.setdefault(v.volume_id, []).append((v.node, v.rwx_block))
    return held
