"""Builders for the objects tests seed FakeKube with, shaped as the apiserver returns them.

They are plain dicts for `FakeKube.put`, which stores them as given (it does not run the
create strategy), so each builder fills in what the real system would have: a Node's Ready
condition, a bound PV's claimRef and phase, an attached VolumeAttachment's status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .kinds import now_micro, now_time

Obj = dict[str, Any]


def node(
    name: str,
    ready: bool = True,
    taints: Iterable[Mapping[str, str]] = (),
    labels: Mapping[str, str] | None = None,
    since: float | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    """A Node as a kubelet registers it; taints are `{"key", "effect"[, "value"]}` dicts.
    `since`: when the Ready condition took its value (seconds since the epoch; None: now);
    `annotations`: e.g. the host NQN a CSI node plugin reported."""
    stamp = now_time(since)
    spec: Obj = {}
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    meta: Obj = {
        "name": name,
        "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            **(labels or {}),
        },
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": spec,
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletNotReady",
                    "message": "kubelet is posting ready status"
                    if ready
                    else "kubelet stopped posting",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "addresses": [{"type": "Hostname", "address": name}],
        },
    }


def pv(
    name: str,
    driver: str,
    handle: str,
    claim: tuple[str, str] | None = None,
    access_modes: Sequence[str] = ("ReadWriteOnce",),
    volume_mode: str = "Filesystem",
    capacity: str = "1Gi",
    attributes: Mapping[str, str] | None = None,
    reclaim_policy: str = "Delete",
) -> Obj:
    """A CSI PersistentVolume; with `claim=(namespace, name)` it is Bound to that claim."""
    spec: Obj = {
        "capacity": {"storage": capacity},
        "accessModes": list(access_modes),
        "volumeMode": volume_mode,
        "persistentVolumeReclaimPolicy": reclaim_policy,
        "csi": {
            "driver": driver,
            "volumeHandle": handle,
            "volumeAttributes": dict(attributes or {}),
        },
    }
    if claim is not None:
        namespace, claim_name = claim
        spec["claimRef"] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": namespace,
            "name": claim_name,
        }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": spec,
        "status": {
            "phase": "Bound" if claim else "Available",
            "lastPhaseTransitionTime": now_time(),
        },
    }


def pvc(
    namespace: str,
    name: str,
    volume_name: str | None,
    access_modes: Sequence[str] = ("ReadWriteOnce",),
    size: str = "1Gi",
    storage_class: str | None = None,
    volume_mode: str = "Filesystem",
) -> Obj:
    """A PersistentVolumeClaim, Bound when `volume_name` is given, Pending otherwise."""
    spec: Obj = {
        "accessModes": list(access_modes),
        "resources": {"requests": {"storage": size}},
        "volumeMode": volume_mode,
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    status: Obj = {"phase": "Pending"}
    if volume_name:
        spec["volumeName"] = volume_name
        status = {
            "phase": "Bound",
            "accessModes": list(access_modes),
            "capacity": {"storage": size},
        }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
        "status": status,
    }


def volume_attachment(
    name: str,
    attacher: str,
    node: str,
    pv_name: str,
    attached: bool = True,
    created: float | None = None,
) -> Obj:
    """A VolumeAttachment as the attach/detach controller makes it, status as set by an
    attacher. `created`: its creationTimestamp (seconds since the epoch; None: FakeKube's
    clock when stored)."""
    meta: Obj = {"name": name}
    if created is not None:
        meta["creationTimestamp"] = now_time(created)
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": meta,
        "spec": {
            "attacher": attacher,
            "nodeName": node,
            "source": {"persistentVolumeName": pv_name},
        },
        "status": {"attached": attached},
    }


def lease(namespace: str, name: str, holder: str | None, duration: int = 15) -> Obj:
    """A coordination Lease, held by `holder` and renewed now (or released when None)."""
    spec: Obj = {"leaseDurationSeconds": duration, "leaseTransitions": 0}
    if holder is not None:
        stamp = now_micro()
        spec |= {"holderIdentity": holder, "acquireTime": stamp, "renewTime": stamp}
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }


def volume_snapshot_content(name: str, driver: str, handle: str) -> Obj:
    """A VolumeSnapshotContent the snapshotter made for `driver`, ready, naming `handle`."""
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name},
        "spec": {
            "driver": driver,
            "deletionPolicy": "Delete",
            "source": {"volumeHandle": "pvc-source"},
            "volumeSnapshotRef": {"name": name, "namespace": "apps"},
        },
        "status": {"snapshotHandle": handle, "readyToUse": True},
    }
