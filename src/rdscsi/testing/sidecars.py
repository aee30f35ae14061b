"""What Kubernetes does with the API objects around each CSI controller call, as the external
sidecars and the attach/detach controller do it, for tests and `rdscsi demo --scenario`.

- provisioner: CreateVolume, then the PV (the volume's handle) and its claim, Bound;
  DeleteVolume, then both go.
- attach/detach controller and external-attacher: a VolumeAttachment (`attached: false`) is
  created, the attacher sends ControllerPublishVolume and then sets `status.attached`; a
  detach sets `deletionTimestamp`, the attacher sends ControllerUnpublishVolume and the
  object goes.
- resizer and snapshotter: ControllerExpandVolume, CreateSnapshot, DeleteSnapshot.

A call failing for a reason the sidecars retry (UNAVAILABLE: the driver restarting, or its
socket not open yet; ABORTED: the driver asks to come back) is retried. Which driver each
call goes to, and how long a retry waits, is the subclass's: one controller (`OneDriver`),
or the leader of each sidecar kind among several pods (the HA tests).
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import grpc

from ..clock import Clock
from ..csi import csi_pb2 as pb
from ..csi import csi_pb2_grpc
from .kubeapi import FakeKube
from .kubeapi import objects as k8s
from .kubeapi.kinds import now_time

KINDS = ("provisioner", "attacher", "resizer", "snapshotter")
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
Mode = pb.VolumeCapability.AccessMode
T = TypeVar("T")
Stub: TypeAlias = csi_pb2_grpc.ControllerStub
Call = Callable[[Stub], Awaitable[T]]


class NeverThrough(RuntimeError):
    """A call still failed with a retried code after every try."""


def attachment_name(handle: str, driver: str, node: str) -> str:
    """The attach/detach controller's name for a CSI VolumeAttachment."""
    return "csi-" + hashlib.sha256(f"{handle}{driver}{node}".encode()).hexdigest()


def mount_cap(
    mode: Mode.Mode = Mode.SINGLE_NODE_WRITER, fs_type: str = "ext4"
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs_type),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(mode: Mode.Mode = Mode.MULTI_NODE_MULTI_WRITER) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


class SidecarActions(ABC):
    """The sidecars' object writes around each call; `driver_for` and `backoff` are the
    subclass's."""

    tries = 40

    def __init__(self, kube: FakeKube, driver: str, clock: Clock, namespace: str = "apps") -> None:
        self.kube = kube
        self.driver = driver
        self.clock = clock
        self.namespace = namespace  # the claims' namespace
        self.calls: list[tuple[str, str, str]] = []  # (kind, pod, rpc)
        self.volumes: dict[str, pb.Volume] = {}  # provisioned, by handle
        self.claims: dict[str, str] = {}  # PV name -> its claim's name
        self.publish_contexts: dict[tuple[str, str], dict[str, str]] = {}  # (handle, node)

    @abstractmethod
    def driver_for(self, kind: str) -> tuple[str, Stub] | str:
        """The pod whose driver the sidecar of `kind` calls now, and its stub; or why none."""

    @abstractmethod
    async def backoff(self) -> None:
        """The sidecar's wait before it retries."""

    @abstractmethod
    async def reconnect(self, pod: str) -> None:
        """Connect to `pod`'s socket again (gRPC backs off on its own after a refusal)."""

    def attachment_name(self, handle: str, node: str) -> str:
        return attachment_name(handle, self.driver, node)

    async def call(self, kind: str, rpc: str, fn: Call[T]) -> T:
        last = "never tried"
        for _ in range(self.tries):
            found = self.driver_for(kind)
            if isinstance(found, str):
                last = found
            else:
                pod, stub = found
                self.calls.append((kind, pod, rpc))
                try:
                    return await fn(stub)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this sidecar is being stopped
                    # The channel was closed under the call (another call's reconnect after
                    # the driver restarted): a lost connection, which sidecars retry.
                    last = f"{pod}: the connection closed during the call"
                except grpc.aio.AioRpcError as err:
                    if err.code() not in RETRIED:
                        raise
                    last = f"{pod}: {err.code().name}: {err.details()}"
                    if "failed to connect" in (err.details() or ""):
                        # as csi-lib-utils does: connect again once the socket is back
                        await self.reconnect(pod)
            await self.backoff()
        raise NeverThrough(f"{kind}: {rpc} never got through ({last})")

    # --- provisioner ---------------------------------------------------------------------

    async def provision_volume(
        self, pvc: str, rwx_block: bool = False, size: int = 1 << 20, claim: str = ""
    ) -> pb.Volume:
        """CreateVolume named `pvc` (the PV's name, as the provisioner names it), then that
        PV bound to its claim, `claim` in the namespace (default: named as the PV)."""
        claim = claim or pvc
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
        self.kube.put(
            k8s.pv(
                pvc,
                self.driver,
                volume.volume_id,
                (self.namespace, claim),
                modes,
                volume_mode=mode,
                attributes=dict(volume.volume_context),
            )
        )
        self.kube.put(k8s.pvc(self.namespace, claim, pvc, modes, volume_mode=mode))
        self.claims[pvc] = claim
        self.volumes[volume.volume_id] = volume
        return volume  # type: ignore[no-any-return]

    async def provision(self, pvc: str, rwx_block: bool = False, size: int = 1 << 20) -> str:
        return str((await self.provision_volume(pvc, rwx_block, size)).volume_id)

    async def delete(self, handle: str, pv_name: str) -> None:
        await self.call(
            "provisioner",
            "DeleteVolume",
            lambda s: s.DeleteVolume(pb.DeleteVolumeRequest(volume_id=handle)),
        )
        self.volumes.pop(handle, None)
        claim = self.claims.pop(pv_name, pv_name)
        kube = self.kube
        if kube.get("v1", "PersistentVolume", pv_name) is not None:
            kube.remove("v1", "PersistentVolume", pv_name)
        if kube.get("v1", "PersistentVolumeClaim", claim, self.namespace) is not None:
            kube.remove("v1", "PersistentVolumeClaim", claim, self.namespace)

    # --- attach/detach controller and attacher ---------------------------------------------

    def request_attachment(self, handle: str, pv_name: str, node: str) -> str:
        """The attach/detach controller's VolumeAttachment (not attached yet); its name."""
        name = self.attachment_name(handle, node)
        if self.kube.get("storage.k8s.io/v1", "VolumeAttachment", name) is None:
            self.kube.put(k8s.volume_attachment(name, self.driver, node, pv_name, attached=False))
        return name

    async def attach(self, handle: str, pv_name: str, node: str, rwx_block: bool = False) -> str:
        """The attach/detach controller creates the VolumeAttachment; the attacher publishes
        and records the outcome. Returns the attachment's name; raises the refusal."""
        name = self.request_attachment(handle, pv_name, node)
        cap = block_cap() if rwx_block else mount_cap()
        reply = await self.call(
            "attacher",
            "ControllerPublishVolume",
            lambda s: s.ControllerPublishVolume(
                pb.ControllerPublishVolumeRequest(
                    volume_id=handle, node_id=node, volume_capability=cap
                )
            ),
        )
        self.publish_contexts[(handle, node)] = dict(reply.publish_context)
        va = self.kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
        assert va is not None
        va["status"] = {"attached": True}
        self.kube.put(va)
        return name

    async def detach(self, handle: str, node: str) -> None:
        """The VolumeAttachment is deleted; the attacher unpublishes, then lets it go."""
        name = self.attachment_name(handle, node)
        kube = self.kube
        va = kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
        if va is not None:
            va["metadata"]["deletionTimestamp"] = now_time(self.clock.wall())
            kube.put(va)
        await self.call(
            "attacher",
            "ControllerUnpublishVolume",
            lambda s: s.ControllerUnpublishVolume(
                pb.ControllerUnpublishVolumeRequest(volume_id=handle, node_id=node)
            ),
        )
        self.publish_contexts.pop((handle, node), None)
        if va is not None:
            kube.remove("storage.k8s.io/v1", "VolumeAttachment", name)

    # --- resizer and snapshotter -----------------------------------------------------------

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


class OneDriver(SidecarActions):
    """Every sidecar calls the one controller at `endpoint` (one replica, as in a small
    cluster), retrying every `interval` seconds of real time."""

    def __init__(
        self,
        kube: FakeKube,
        driver: str,
        clock: Clock,
        endpoint: str,
        namespace: str = "apps",
        pod: str = "controller",
        interval: float = 0.2,
        tries: int = 50,
    ) -> None:
        super().__init__(kube, driver, clock, namespace)
        self.endpoint = endpoint
        self.pod = pod
        self.interval = interval
        self.tries = tries
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.stub = csi_pb2_grpc.ControllerStub(self.channel)

    def driver_for(self, kind: str) -> tuple[str, Stub] | str:
        return self.pod, self.stub

    async def backoff(self) -> None:
        await asyncio.sleep(self.interval)

    async def reconnect(self, pod: str) -> None:
        await self.channel.close()
        self.channel = grpc.aio.insecure_channel(self.endpoint)
        self.stub = csi_pb2_grpc.ControllerStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
