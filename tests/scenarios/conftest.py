"""A controller replica as deployed in a cluster: FakeKube (real HTTP, real `kubernetes.aio`
client), the simulator over real SSH, CSI over a real unix socket, time on a ManualClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import grpc
import pytest
from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry

from rdscsi.app import ControllerApp, build_controller
from rdscsi.clock import ManualClock
from rdscsi.cluster import ClusterBinding
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.io.kube.events import KubeEventSink, KubeRef
from rdscsi.sim import SimConfig, Simulator
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi import objects as k8s

DRIVER = "rds.csi.test"
GRACE = 30.0
STEP = 1.0  # advance time in steps no longer than the lease retry period


async def until(
    condition: Callable[[], bool], what: str = "condition", limit: float = 10.0
) -> None:
    """Let the loop run until `condition` holds; `limit` (real seconds) only turns a hang
    into a failure."""
    try:
        async with asyncio.timeout(limit):
            while not condition():
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Replica:
    name: str
    app: ControllerApp
    binding: ClusterBinding
    sink: KubeEventSink
    api: ApiClient
    clock: ManualClock
    registry: CollectorRegistry
    channel: grpc.aio.Channel
    controller: csi_pb2_grpc.ControllerStub

    stopped: bool = False

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.binding.stop()
        await self.channel.close()
        await self.app.stop()
        await self.sink.stop()
        await self.api.close()


@dataclass
class World:
    kube: FakeKube
    sim: Simulator
    tmp: Path
    key_file: Path
    replicas: list[Replica] = field(default_factory=list)

    async def replica(self, name: str, clock: ManualClock | None = None) -> Replica:
        clock = clock or ManualClock()
        config = DriverConfig(
            name=DRIVER,
            controller=True,
            kubernetes=True,
            endpoint=f"unix://{self.tmp / (name + '.sock')}",
            rds=ApplianceConfig(
                address=self.sim.host,
                port=self.sim.port,
                key_file=str(self.key_file),
                host_keys=[self.sim.host_key],
                name="sim",
            ),
            grace_period=GRACE,
            lease_namespace="kube-system",
        ).validate()
        api = ApiClient(self.kube.configuration())
        registry = CollectorRegistry()
        sink = KubeEventSink(
            api,
            f"{DRIVER}/controller",
            name,
            "default",
            clock,
            appliance_ref=KubeRef("Pod", name, "kube-system"),
        )
        app = build_controller(config, clock, sink, registry)
        binding = ClusterBinding(app, api, sink, clock, identity=name)
        sink.start()
        await app.start(reconcile=False)
        await binding.start()
        channel = grpc.aio.insecure_channel(config.endpoint)
        r = Replica(
            name,
            app,
            binding,
            sink,
            api,
            clock,
            registry,
            channel,
            csi_pb2_grpc.ControllerStub(channel),
        )
        self.replicas.append(r)
        await until(lambda: app.rds.connected, f"{name} connected")
        return r

    def add_nodes(self, *names: str) -> None:
        for n in names:
            self.kube.put(k8s.node(n))

    async def attach(self, r: Replica, pvc_name: str, node: str) -> str:
        """What provisioner and attacher do: CreateVolume, PV + PVC, publish, VolumeAttachment."""
        cap = pb.VolumeCapability(
            mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
            access_mode=pb.VolumeCapability.AccessMode(
                mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        )
        vol = (
            await r.controller.CreateVolume(
                pb.CreateVolumeRequest(
                    name=pvc_name,
                    volume_capabilities=[cap],
                    capacity_range=pb.CapacityRange(required_bytes=1 << 20),
                )
            )
        ).volume
        self.kube.put(
            k8s.pv(pvc_name, DRIVER, vol.volume_id, claim=("apps", f"claim-{node}-{pvc_name[-4:]}"))
        )
        self.kube.put(k8s.pvc("apps", f"claim-{node}-{pvc_name[-4:]}", pvc_name))
        await r.controller.ControllerPublishVolume(
            pb.ControllerPublishVolumeRequest(
                volume_id=vol.volume_id, node_id=node, volume_capability=cap
            )
        )
        self.kube.put(k8s.volume_attachment(f"csi-{pvc_name[-12:]}", DRIVER, node, pvc_name))
        return vol.volume_id


async def tick(r: Replica, seconds: float) -> None:
    """Advance the replica's clock in lease-sized steps, letting renewals and passes land."""
    steps = max(1, round(seconds / STEP))
    for _ in range(steps):
        r.clock.advance(seconds / steps)
        elector = r.binding.elector
        if elector.is_leader:
            # the renewal that fell due must land before time moves on (as in real time)
            period = elector.retry_period
            await until(
                lambda e=elector, p=period: r.clock.monotonic() - e.renewed_at < p,  # type: ignore[misc]
                f"{r.name} renewed",
            )
        await r.app.reconciler.wait_idle()


@pytest.fixture
async def world(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[World]:
    key_file = tmp_path / "id"
    client_key.write_private_key(str(key_file))
    async with FakeKube() as kube:
        sim = Simulator(
            SimConfig(
                data_dir=tmp_path / "sim", authorized_keys=[client_key.export_public_key().decode()]
            )
        )
        await sim.start()
        w = World(kube, sim, tmp_path, key_file)
        try:
            yield w
        finally:
            for r in w.replicas:
                await r.stop()
            await sim.stop()
