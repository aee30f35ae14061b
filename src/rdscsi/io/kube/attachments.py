"""What the cluster records about this driver's attachments: VolumeAttachments and the PVs
they name, as informer resources.

Only this driver's objects are kept (a VolumeAttachment whose `spec.attacher` is the driver,
a PV whose `spec.csi.driver` is), parsed down to the few fields the controller decides on,
so 10k attachments cost a few hundred kilobytes, not the objects' JSON. Neither resource has
a server-side field selector for those fields, hence the filtering here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.aio.client import ApiClient, CoreV1Api, StorageV1Api

from .informer import Resource
from .wire import ListCall, parse_time

log = logging.getLogger("rdscsi.kube.attachments")


@dataclass(frozen=True, slots=True)
class AttachmentView:
    """One of this driver's VolumeAttachments."""

    name: str
    node: str  # spec.nodeName
    pv_name: str  # spec.source.persistentVolumeName
    attached: bool  # status.attached: the attacher saw ControllerPublish succeed
    created: float  # metadata.creationTimestamp, seconds since the epoch
    deleting: bool = False  # metadata.deletionTimestamp is set: a detach is under way


@dataclass(frozen=True, slots=True)
class VolumeView:
    """One of this driver's PersistentVolumes."""

    name: str
    handle: str  # spec.csi.volumeHandle: the CSI volume id
    rwx_block: bool  # Block mode and ReadWriteMany: two nodes at once is a live migration
    claim: str = ""  # spec.claimRef as "<namespace>/<name>": the PVC (for `rdscsi explain`)


def is_rwx_block(pv: Mapping[str, Any]) -> bool:
    spec = pv.get("spec") or {}
    # volumeMode defaults to Filesystem when absent.
    return spec.get("volumeMode") == "Block" and "ReadWriteMany" in (spec.get("accessModes") or [])


def attachment_view(obj: Mapping[str, Any], driver: str) -> AttachmentView | None:
    """The view of a VolumeAttachment of `driver` that names a PV; None otherwise."""
    # Plain look-ups, no helper per field: a 10k relist spends its time here.
    spec = obj.get("spec")
    if not isinstance(spec, Mapping) or spec.get("attacher") != driver:
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, node = meta.get("name"), spec.get("nodeName")
    source = spec.get("source")
    pv_name = source.get("persistentVolumeName") if isinstance(source, Mapping) else None
    if not (isinstance(name, str) and name and isinstance(node, str) and node):
        return None
    if not isinstance(pv_name, str) or not pv_name:
        # Inline (ephemeral) CSI volumes carry their spec in the attachment: not ours to track.
        return None
    status = obj.get("status")
    created = parse_time(meta.get("creationTimestamp"))
    return AttachmentView(
        name,
        node,
        pv_name,
        isinstance(status, Mapping) and status.get("attached") is True,
        created if created is not None else 0.0,
        meta.get("deletionTimestamp") is not None,
    )


def volume_view(obj: Mapping[str, Any], driver: str) -> VolumeView | None:
    """The view of a PV provisioned by `driver`; None for other drivers' PVs."""
    spec = obj.get("spec")
    csi = spec.get("csi") if isinstance(spec, Mapping) else None
    if not isinstance(csi, Mapping) or csi.get("driver") != driver:
        return None
    name = (obj.get("metadata") or {}).get("name")
    handle = csi.get("volumeHandle")
    if not isinstance(name, str) or not isinstance(handle, str) or not handle:
        return None
    ref = spec.get("claimRef") if isinstance(spec, Mapping) else None
    claim = ""
    if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
        claim = f"{ref.get('namespace') or ''}/{ref['name']}"
    return VolumeView(name, handle, is_rwx_block(obj), claim)


def _list_attachments(api: ApiClient) -> ListCall:
    return StorageV1Api(api).list_volume_attachment_without_preload_content  # type: ignore[no-any-return]


def _list_volumes(api: ApiClient) -> ListCall:
    return CoreV1Api(api).list_persistent_volume_without_preload_content  # type: ignore[no-any-return]


def attachments_resource(driver: str) -> Resource[AttachmentView]:
    return Resource(
        "volumeattachments",
        _list_attachments,
        lambda obj: attachment_view(obj, driver),
        lambda v: v.name,
    )


def volumes_resource(driver: str) -> Resource[VolumeView]:
    return Resource(
        "persistentvolumes", _list_volumes, lambda obj: volume_view(obj, driver), lambda v: v.name
    )
