"""The controller as deployed: simulator over real SSH, CSI over a real unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import grpc
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.app import ControllerApp, build_controller
from rdscsi.clock import ManualClock
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink
from rdscsi.sim import SimConfig, Simulator

NODES = ["node-a", "node-b", "node-c"]


def host_nqn(node: str) -> str:
    """The host NQN each test node reports (what the fence puts on allow-lists)."""
    return f"nqn.2014-08.org.example:host-{node}"


@dataclass
class Cluster:
    sim: Simulator
    app: ControllerApp
    clock: ManualClock
    sink: MemorySink
    registry: CollectorRegistry
    channel: grpc.aio.Channel
    identity: csi_pb2_grpc.IdentityStub
    controller: csi_pb2_grpc.ControllerStub

    def disks(self) -> list[str]:
        return sorted(self.sim.store.disks)

    def files(self) -> list[str]:
        root = self.sim.store.files_root
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.img"))

    async def connected(self) -> None:
        await asyncio.wait_for(self.app.rds.wait_for("connected"), 10)


@pytest.fixture
async def cluster(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[Cluster]:
    key_file = tmp_path / "id"
    client_key.write_private_key(str(key_file))
    sim = Simulator(
        SimConfig(
            data_dir=tmp_path / "sim",
            pool_size=64 << 30,
            authorized_keys=[client_key.export_public_key().decode()],
        )
    )
    await sim.start()
    config = DriverConfig(
        name="rds.csi.test",
        controller=True,
        endpoint=f"unix://{tmp_path / 'csi.sock'}",
        rds=ApplianceConfig(
            address=sim.host,
            port=sim.port,
            key_file=str(key_file),
            host_keys=[sim.host_key],
            name="sim-1",
        ),
        known_nodes=[f"{n}={host_nqn(n)}" for n in NODES],
    ).validate()
    clock, sink, registry = ManualClock(), MemorySink(), CollectorRegistry()
    app = build_controller(config, clock, sink, registry)
    await app.start()
    channel = grpc.aio.insecure_channel(config.endpoint)
    c = Cluster(
        sim,
        app,
        clock,
        sink,
        registry,
        channel,
        csi_pb2_grpc.IdentityStub(channel),
        csi_pb2_grpc.ControllerStub(channel),
    )
    await c.connected()
    try:
        yield c
    finally:
        await channel.close()
        await app.stop()
        await sim.stop()


def mount_cap(
    mode: int = pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER, fs: str = "ext4"
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(
    mode: int = pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER,
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )
