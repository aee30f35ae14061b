"""A model of the four CSI sidecars of each controller pod.

Each kind (provisioner, attacher, resizer, snapshotter) runs in every pod and elects its own
leader with its own Lease, independently of the others and of the driver's Lease (as
`--leader-election` does); only the leader acts, and it calls the driver in its own pod over
that pod's unix socket. What each does with the API objects follows the real sidecars:
the provisioner creates the PV and binds the claim, the attach/detach controller makes the
VolumeAttachment and the attacher publishes and then sets `status.attached`, a detach is a
deletion the attacher finishes after ControllerUnpublish. A call that fails for a reason a
sidecar retries (UNAVAILABLE: the driver restarting; ABORTED) is retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from kubernetes.aio.client import ApiClient

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.io.kube.lease import LeaderElector
from rdscsi.testing.kubeapi import objects as k8s

from .conftest import DRIVER, NAMESPACE, TOKEN, World, block_cap, mount_cap, until

KINDS = ("provisioner", "attacher", "resizer", "snapshotter")
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
T = TypeVar("T")


def attachment_name(handle: str, node: str) -> str:
    """The attach/detach controller's name for a CSI VolumeAttachment."""
    return "csi-" + hashlib.sha256(f"{handle}{DRIVER}{node}".encode()).hexdigest()


@dataclass
class Sidecar:
    kind: str
    pod: str
    elector: LeaderElector

    @property
    def leads(self) -> bool:
        return self.elector.is_leader


class Sidecars:
    def __init__(self, world: World, pods: tuple[str, ...]) -> None:
        self.world = world
        self.pods = pods
        self.apis: list[ApiClient] = []
        self.sidecars: dict[tuple[str, str], Sidecar] = {}
        self.calls: list[tuple[str, str, str]] = []  # (kind, pod, rpc)

    async def start(self) -> None:
        self.world.cleanups.append(self.stop)
        for pod in self.pods:
            api = ApiClient(self.world.kube.configuration(TOKEN))
            self.apis.append(api)
            for kind in KINDS:
                elector = LeaderElector(
                    api,
                    NAMESPACE,
                    f"external-{kind}-leader-{DRIVER.replace('.', '-')}",
                    pod,
                    self.world.clock,
                    lease_duration=15,
                    renew_deadline=10,
                    retry_period=1,
                )
                self.sidecars[(kind, pod)] = Sidecar(kind, pod, elector)
                self.world.electors.append(elector)
                elector.start()
        await until(lambda: all(self.leader(k) for k in KINDS), "a leader per sidecar kind")

    async def stop(self) -> None:
        for sidecar in self.sidecars.values():
            await sidecar.elector.stop()
        apis, self.apis = self.apis, []
        for api in apis:
            await api.close()

    def leader(self, kind: str) -> str | None:
        pods = [p for (k, p), s in self.sidecars.items() if k == kind and s.leads]
        assert len(pods) <= 1, f"two {kind} leaders: {pods}"
        return pods[0] if pods else None

    def alignment(self) -> dict[str, str | None]:
        return {kind: self.leader(kind) for kind in KINDS}

    async def move(self, kind: str, pod: str) -> None:
        """Hand the sidecar kind's Lease to `pod` (the current leader releases it)."""
        if self.leader(kind) == pod:
            return
        others = [s for (k, p), s in self.sidecars.items() if k == kind and p != pod]
        for sidecar in others:
            await sidecar.elector.stop(release=True)
        target = self.sidecars[(kind, pod)]
        for _ in range(30):
            if target.leads:
                break
            await self.world.tick(1.0)
        await until(lambda: target.leads, f"{kind} leading in {pod}")
        for sidecar in others:
            sidecar.elector.start()
        await self.world.settle()

    async def align(self, assignment: dict[str, str]) -> None:
        for kind, pod in assignment.items():
            await self.move(kind, pod)
        assert self.alignment() == assignment

    # --- calls, from the leader of a kind to the driver in its own pod ---------------------

    async def call(
        self, kind: str, rpc: str, fn: Callable[[csi_pb2_grpc.ControllerStub], Awaitable[T]]
    ) -> T:
        last = "no leader"
        for _ in range(40):
            pod = self.leader(kind)
            replica = self.world.replicas.get(pod or "")
            if replica is not None and not replica.stopped:
                self.calls.append((kind, replica.name, rpc))
                try:
                    return await fn(replica.controller)
                except grpc.aio.AioRpcError as err:
                    if err.code() not in RETRIED:
                        raise
                    last = f"{pod}: {err.code().name}: {err.details()}"
                    if "failed to connect" in (err.details() or ""):
                        # as csi-lib-utils does: connect again once the socket is back
                        await replica.reconnect()
            else:
                last = f"leader {pod!r} has no running driver"
            await self.world.tick(1.0)  # the sidecar's retry backoff
        raise AssertionError(f"{kind}: {rpc} never got through ({last})")

    async def provision(self, pvc: str, rwx_block: bool = False, size: int = 1 << 20) -> str:
        cap = block_cap() if rwx_block else mount_cap()
        volume = (
            await self.call(
                "provisioner",
                "CreateVolume",
                lambda s: s.CreateVolume(
                    pb.CreateVolumeRequest(
                        name=pvc,
                        volume_capabilities=[cap],
                        capacity_range=pb.CapacityRange(required_bytes=size),
                    )
                ),
            )
        ).volume
        modes = ("ReadWriteMany",) if rwx_block else ("ReadWriteOnce",)
        mode = "Block" if rwx_block else "Filesystem"
        self.world.kube.put(
            k8s.pv(pvc, DRIVER, volume.volume_id, ("apps", pvc), modes, volume_mode=mode)
        )
        self.world.kube.put(k8s.pvc("apps", pvc, pvc, modes, volume_mode=mode))
        return str(volume.volume_id)

    async def attach(self, handle: str, pv_name: str, node: str, rwx_block: bool = False) -> str:
        """The attach/detach controller creates the VolumeAttachment; the attacher publishes
        and records the outcome. Returns the attachment's name; raises the refusal."""
        name = attachment_name(handle, node)
        kube = self.world.kube
        if kube.get("storage.k8s.io/v1", "VolumeAttachment", name) is None:
            kube.put(k8s.volume_attachment(name, DRIVER, node, pv_name, attached=False))
        cap = block_cap() if rwx_block else mount_cap()
        await self.call(
            "attacher",
            "ControllerPublishVolume",
            lambda s: s.ControllerPublishVolume(
                pb.ControllerPublishVolumeRequest(
                    volume_id=handle, node_id=node, volume_capability=cap
                )
            ),
        )
        va = kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
        assert va is not None
        va["status"] = {"attached": True}
        kube.put(va)
        return name

    async def detach(self, handle: str, node: str) -> None:
        """The VolumeAttachment is deleted; the attacher unpublishes, then lets it go."""
        name = attachment_name(handle, node)
        kube = self.world.kube
        va = kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
        if va is not None:
            va["metadata"]["deletionTimestamp"] = k8s.now_time(self.world.clock.wall())
            kube.put(va)
        await self.call(
            "attacher",
            "ControllerUnpublishVolume",
            lambda s: s.ControllerUnpublishVolume(
                pb.ControllerUnpublishVolumeRequest(volume_id=handle, node_id=node)
            ),
        )
        if va is not None:
            kube.remove("storage.k8s.io/v1", "VolumeAttachment", name)

    async def expand(self, handle: str, size: int) -> int:
        reply = await self.call(
            "resizer",
            "ControllerExpandVolume",
            lambda s: s.ControllerExpandVolume(
                pb.ControllerExpandVolumeRequest(
                    volume_id=handle, capacity_range=pb.CapacityRange(required_bytes=size)
                )
            ),
        )
        return int(reply.capacity_bytes)

    async def snapshot(self, handle: str, name: str) -> str:
        reply = await self.call(
            "snapshotter",
            "CreateSnapshot",
            lambda s: s.CreateSnapshot(
                pb.CreateSnapshotRequest(name=name, source_volume_id=handle)
            ),
        )
        return str(reply.snapshot.snapshot_id)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.call(
            "snapshotter",
            "DeleteSnapshot",
            lambda s: s.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snapshot_id)),
        )

    async def delete(self, handle: str, pv_name: str) -> None:
        await self.call(
            "provisioner",
            "DeleteVolume",
            lambda s: s.DeleteVolume(pb.DeleteVolumeRequest(volume_id=handle)),
        )
        kube = self.world.kube
        if kube.get("v1", "PersistentVolume", pv_name) is not None:
            kube.remove("v1", "PersistentVolume", pv_name)
        if kube.get("v1", "PersistentVolumeClaim", pv_name, "apps") is not None:
            kube.remove("v1", "PersistentVolumeClaim", pv_name, "apps")
