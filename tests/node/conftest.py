"""Controller and node in one process, as `rdscsi run`: real SSH to the simulator, real loop
devices, real mkfs and mounts (root only; skipped with the reason otherwise). The node has a
host NQN of its own, the controller fences with it, and every connect of the loop transport
is admitted by the simulator over its control socket, as `rdscsi run` does."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
from rdscsi.sim.control import CONTROL_SOCKET, ControlServer

NODE = "node-a"
NODE_NQN = "nqn.2014-08.org.nvmexpress:uuid:0d0e0f00-0000-4000-8000-00000000000a"
GIB = 1 << 30
Mode = pb.VolumeCapability.AccessMode

if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
    pytest.skip(
        "node tests need root and loop devices (real mkfs and mounts)", allow_module_level=True
    )


@dataclass
class Node:
    sim: Simulator
    app: ControllerApp
    clock: ManualClock
    registry: CollectorRegistry
    channel: grpc.aio.Channel
    controller: csi_pb2_grpc.ControllerStub
    node: csi_pb2_grpc.NodeStub
    tmp: Path
    publish_context: dict[str, dict[str, str]] = field(default_factory=dict)
    sink: MemorySink = field(default_factory=MemorySink)

    def staging(self, vid: str) -> Path:
        return self.tmp / "kubelet" / "staging" / vid

    def target(self, vid: str, pod: str = "pod-1") -> Path:
        return self.tmp / "kubelet" / "pods" / pod / vid

    def loop_of(self, vid: str) -> Path:
        """The one loop device the volume's backing file is attached to."""
        (device,) = loops_for(self.sim.backing_path(vid))
        return Path(device)


def loops_for(root: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[0] for line in out.splitlines() if str(root) in line]


def cleanup(tmp: Path) -> None:
    """Whatever a failing test left: unmount under tmp, detach loops of its files."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if str(tmp) in line.split()[4]]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True)
    for dev in loops_for(tmp):
        subprocess.run(["blockdev", "--setrw", dev], capture_output=True)  # survives detach
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
async def node(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[Node]:
    key_file = tmp_path / "id"
    client_key.write_private_key(str(key_file))
    sim = Simulator(
        SimConfig(
            data_dir=tmp_path / "sim",
            pool_size=64 * GIB,
            authorized_keys=[client_key.export_public_key().decode()],
        )
    )
    await sim.start()
    control = ControlServer(sim, sim.data_dir / CONTROL_SOCKET)
    await control.start()
    hostnqn = tmp_path / "hostnqn"
    hostnqn.write_text(NODE_NQN + "\n")
    config = DriverConfig(
        name="rds.csi.test",
        controller=True,
        node=True,
        node_id=NODE,
        endpoint=f"unix://{tmp_path / 'csi.sock'}",
        rds=ApplianceConfig(
            address=sim.host,
            port=sim.port,
            key_file=str(key_file),
            host_keys=[sim.host_key],
            name="sim",
        ),
        transport="loop",
        loop_root=str(sim.store.files_root),
        loop_control=str(control.path),
        host_nqn_file=str(hostnqn),
        known_nodes=[NODE],  # its host NQN: this process's own (host_nqn_file)
        node_state_dir=str(tmp_path / "node-state"),
        kubelet_dir=str(tmp_path / "kubelet"),
    ).validate()
    clock, registry, sink = ManualClock(), CollectorRegistry(), MemorySink()
    app = build_controller(config, clock, sink, registry)
    await app.start()
    channel = grpc.aio.insecure_channel(config.endpoint)
    n = Node(
        sim,
        app,
        clock,
        registry,
        channel,
        csi_pb2_grpc.ControllerStub(channel),
        csi_pb2_grpc.NodeStub(channel),
        tmp_path,
        sink=sink,
    )
    await asyncio.wait_for(app.rds.wait_for("connected"), 10)
    try:
        yield n
    finally:
        await channel.close()
        await app.stop()
        await control.stop()
        await sim.stop()
        cleanup(tmp_path)


def mount_cap(
    fs: str = "ext4", mode: int = Mode.SINGLE_NODE_WRITER, flags: tuple[str, ...] = ()
) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(mode: int = Mode.SINGLE_NODE_WRITER) -> pb.VolumeCapability:
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=mode),
    )
