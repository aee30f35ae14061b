"""Two simulated appliances behind one controller, configured as a user writes it: the
default appliance under `rds:`, the second under `appliances:`. Each simulator is its own
SSH server with its own state, so either can be dropped, refused or hung alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from rdscsi.app import ControllerApp, build_controller
from rdscsi.clock import ManualClock
from rdscsi.config import DriverConfig, load
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink
from rdscsi.sim import SimConfig, Simulator

GIB = 1 << 30
NODES = ["node-a", "node-b"]
A, B = "rds-a", "rds-b"  # the default appliance (`rds:`) and one under `appliances:`
DRIVER = "rds.csi.test"
Mode = pb.VolumeCapability.AccessMode


def host_nqn(node: str) -> str:
    """The host NQN each test node reports (what `fence: allow-host` puts on allow-lists)."""
    return f"nqn.2014-08.org.example:host-{node}"


def mount_cap(mode: int = Mode.SINGLE_NODE_WRITER) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


@dataclass
class Fleet:
    sims: dict[str, Simulator]
    app: ControllerApp
    clock: ManualClock
    sink: MemorySink
    registry: CollectorRegistry
    channel: grpc.aio.Channel
    identity: csi_pb2_grpc.IdentityStub
    controller: csi_pb2_grpc.ControllerStub
    config: DriverConfig
    stopped: list[Any] = field(default_factory=list)

    def rds(self, name: str) -> Any:
        return self.app.appliances[name].rds

    def sample(self, name: str, labels: Mapping[str, str]) -> float:
        return self.registry.get_sample_value(name, dict(labels)) or 0.0

    async def connected(self, *names: str) -> None:
        for name in names or tuple(self.sims):
            await asyncio.wait_for(self.rds(name).wait_for("connected"), 10)

    async def create(self, name: str, appliance: str = "", size: int = GIB, **kw: Any) -> pb.Volume:
        params = {"appliance": appliance} if appliance else {}
        req = pb.CreateVolumeRequest(
            name=name,
            capacity_range=pb.CapacityRange(required_bytes=size),
            volume_capabilities=[mount_cap()],
            parameters=params,
            **kw,
        )
        return (await self.controller.CreateVolume(req)).volume


def fleet_yaml(
    sims: Mapping[str, Simulator], key_file: Path, tmp: Path, fence: str = "none"
) -> dict[str, Any]:
    """The configuration file a user writes for two appliances. `fence: none` unless asked:
    these tests are about serving a fleet (with the fence, an unpublish needs the volume's
    appliance to take the host off its allow-list); tests/fleet/test_fleet_fence.py fences."""

    def appliance(sim: Simulator) -> dict[str, Any]:
        return {
            "fence": fence,
            "address": sim.host,
            "port": sim.port,
            "key_file": str(key_file),
            "host_keys": [sim.host_key],
        }

    return {
        "name": DRIVER,
        "controller": True,
        "endpoint": f"unix://{tmp / 'csi.sock'}",
        "known_nodes": [f"{n}={host_nqn(n)}" for n in NODES],  # the fence lets them connect
        "state_dir": str(tmp / "state"),  # the attachments outlive a restart
        "rds": {"name": A, **appliance(sims[A])},
        "appliances": {B: appliance(sims[B])},
    }


async def start_sims(
    tmp: Path, client_key: asyncssh.SSHKey, names: tuple[str, ...] = (A, B)
) -> dict[str, Simulator]:
    sims = {}
    for name in names:
        sim = Simulator(
            SimConfig(
                data_dir=tmp / name,
                pool_size=64 << 30,
                authorized_keys=[client_key.export_public_key().decode()],
            )
        )
        await sim.start()
        sims[name] = sim
    return sims


async def start_fleet(
    tmp: Path, sims: dict[str, Simulator], key_file: Path, data: dict[str, Any]
) -> Fleet:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load(path, {}, {}).prepare()  # as `rdscsi serve` does
    clock, sink, registry = ManualClock(), MemorySink(), CollectorRegistry()
    app = build_controller(config, clock, sink, registry)
    await app.start()
    channel = grpc.aio.insecure_channel(config.endpoint)
    fleet = Fleet(
        sims,
        app,
        clock,
        sink,
        registry,
        channel,
        csi_pb2_grpc.IdentityStub(channel),
        csi_pb2_grpc.ControllerStub(channel),
        config,
    )
    await fleet.connected(*(a.name for a in app.appliances))
    return fleet


async def stop_fleet(fleet: Fleet) -> None:
    await fleet.channel.close()
    await fleet.app.stop()


@pytest.fixture
def key_file(tmp_path: Path, client_key: asyncssh.SSHKey) -> Path:
    path = tmp_path / "id"
    client_key.write_private_key(str(path))
    return path


@pytest.fixture
async def fleet(
    tmp_path: Path, client_key: asyncssh.SSHKey, key_file: Path
) -> AsyncIterator[Fleet]:
    async for f in running_fleet(tmp_path, client_key, key_file, "none"):
        yield f


@pytest.fixture
async def fenced_fleet(
    tmp_path: Path, client_key: asyncssh.SSHKey, key_file: Path
) -> AsyncIterator[Fleet]:
    async for f in running_fleet(tmp_path, client_key, key_file, "allow-host"):
        yield f


async def running_fleet(
    tmp_path: Path, client_key: asyncssh.SSHKey, key_file: Path, fence: str
) -> AsyncIterator[Fleet]:
    sims = await start_sims(tmp_path, client_key)
    data = fleet_yaml(sims, key_file, tmp_path, fence)
    f = await start_fleet(tmp_path, sims, key_file, data)
    try:
        yield f
    finally:
        await stop_fleet(f)
        for sim in sims.values():
            await sim.stop()
