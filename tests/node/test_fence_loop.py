"""A fenced node really cannot attach: two node plugins (each its own host NQN, socket,
kubelet and state directories) and a controller, on real loop devices through the simulator,
which admits each connect by the disk's allow-list.

Node A stages a volume and writes to it, dies (its mounts, loop device and session go, as
with a power cut) and is declared dead; the controller releases the volume and takes A off
the list, node B stages it, reads A's data and writes its own. A then comes back and its
kubelet retries the stage: the appliance refuses it, no device appears, and B's filesystem
is intact."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import grpc
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.app import ControllerApp, NodeApp, build_controller, build_node
from rdscsi.clock import ManualClock
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.control.nodes import NodeView
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink
from rdscsi.io.host.transport import Target, TransportError
from rdscsi.io.rds.fence import NO_HOST
from rdscsi.sim import SimConfig, Simulator
from rdscsi.sim.control import CONTROL_SOCKET, ControlServer

from .conftest import GIB, cleanup, loops_for, mount_cap

A = "nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-0000000000aa"
B = "nqn.2014-08.org.nvmexpress:uuid:0b0b0b0b-0000-4000-8000-0000000000bb"
PVC = "pvc-0f0f0f0f-0000-4000-8000-0000000000f1"


@dataclass
class Plugin:
    name: str
    app: NodeApp
    stub: csi_pb2_grpc.NodeStub
    channel: grpc.aio.Channel
    root: Path

    def staging(self) -> Path:
        return self.root / "kubelet" / "staging" / PVC

    def target(self) -> Path:
        return self.root / "kubelet" / "pods" / "pod" / PVC


@dataclass
class Two:
    sim: Simulator
    controller: ControllerApp
    ctl: csi_pb2_grpc.ControllerStub
    clock: ManualClock
    a: Plugin
    b: Plugin


@pytest.fixture
async def two(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[Two]:
    key_file = tmp_path / "id"
    client_key.write_private_key(str(key_file))
    sim = Simulator(
        SimConfig(
            data_dir=tmp_path / "sim",
            pool_size=16 * GIB,
            authorized_keys=[client_key.export_public_key().decode()],
        )
    )
    await sim.start()
    control = ControlServer(sim, sim.data_dir / CONTROL_SOCKET)
    await control.start()
    base = DriverConfig(
        name="rds.csi.test",
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
    )
    clock = ManualClock()
    controller = build_controller(
        DriverConfig(
            **{
                **{f: getattr(base, f) for f in ("name", "rds", "transport")},
                "controller": True,
                "endpoint": f"unix://{tmp_path / 'ctl.sock'}",
                "known_nodes": [f"node-a={A}", f"node-b={B}"],
                "state_dir": str(tmp_path / "ctl"),
            }
        )
        .validate()
        .prepare(),
        clock,
        MemorySink(),
        CollectorRegistry(),
    )
    await controller.start()
    channel = grpc.aio.insecure_channel(controller.config.endpoint)
    plugins = []
    for name, nqn in (("node-a", A), ("node-b", B)):
        root = tmp_path / name
        root.mkdir()
        (root / "hostnqn").write_text(nqn + "\n")
        (root / "kubelet").mkdir()
        config = (
            DriverConfig(
                name=base.name,
                rds=base.rds,
                node=True,
                node_id=name,
                endpoint=f"unix://{root / 'csi.sock'}",
                transport="loop",
                loop_root=base.loop_root,
                loop_control=base.loop_control,
                host_nqn_file=str(root / "hostnqn"),
                node_state_dir=str(root / "state"),
                kubelet_dir=str(root / "kubelet"),
            )
            .validate()
            .prepare()
        )
        app = build_node(config, clock, MemorySink(), CollectorRegistry())
        await app.start()
        node_channel = grpc.aio.insecure_channel(config.endpoint)
        plugins.append(Plugin(name, app, csi_pb2_grpc.NodeStub(node_channel), node_channel, root))
    await asyncio.wait_for(controller.rds.wait_for("connected"), 10)
    try:
        yield Two(sim, controller, csi_pb2_grpc.ControllerStub(channel), clock, *plugins)
    finally:
        for p in plugins:
            await p.channel.close()
            await p.app.stop()
        await channel.close()
        await controller.stop()
        await control.stop()
        await sim.stop()
        cleanup(tmp_path)


async def publish(t: Two, node: str) -> dict[str, str]:
    reply = await t.ctl.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=PVC, node_id=node, volume_capability=mount_cap()
        )
    )
    return dict(reply.publish_context)


def stage(p: Plugin, vol: pb.Volume, context: dict[str, str]) -> object:
    return p.stub.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=PVC,
            staging_target_path=str(p.staging()),
            volume_capability=mount_cap(),
            volume_context=vol.volume_context,
            publish_context=context,
        )
    )


async def mount(p: Plugin, vol: pb.Volume, context: dict[str, str]) -> Path:
    await stage(p, vol, context)
    await p.stub.NodePublishVolume(
        pb.NodePublishVolumeRequest(
            volume_id=PVC,
            staging_target_path=str(p.staging()),
            target_path=str(p.target()),
            volume_capability=mount_cap(),
            volume_context=vol.volume_context,
        )
    )
    return p.target()


async def test_a_fenced_node_cannot_attach_and_the_new_holders_data_stays_whole(
    two: Two,
) -> None:
    t = two
    vol = (
        await t.ctl.CreateVolume(
            pb.CreateVolumeRequest(
                name=PVC,
                volume_capabilities=[mount_cap()],
                capacity_range=pb.CapacityRange(required_bytes=64 << 20),
            )
        )
    ).volume
    disk = t.sim.store.disks[PVC]
    context_a = await publish(t, "node-a")
    assert disk.nvme_tcp_server_allow_host_name == A
    target = await mount(t.a, vol, context_a)
    (target / "a.txt").write_text("written by node-a\n")
    subprocess.run(["sync", "-f", str(target / "a.txt")], check=True)
    assert [c.host_nqn for c in t.sim.store.connections] == [A]

    # node-a dies: its mounts, its loop device and its session go with it
    for path in (t.a.target(), t.a.staging()):
        subprocess.run(["umount", str(path)], check=True)
    (device,) = loops_for(t.sim.backing_path(PVC))
    subprocess.run(["losetup", "--detach", device], check=True)
    t.sim.leave_host(disk.nvme_tcp_server_nqn, A)
    # ...and is declared dead: released after the grace period, and taken off the list
    t.controller.nodes.observe(NodeView("node-a", ready=False, deleted=True, host_nqn=A))
    t.clock.advance(t.controller.config.grace_period)
    await t.controller.reconciler.wait_idle()
    assert disk.nvme_tcp_server_allow_host_name == NO_HOST

    # node-b gets it; node-a comes back meanwhile and its kubelet retries the stage it
    # had: the appliance refuses node-a's connection, nothing is attached for it
    context_b = await publish(t, "node-b")
    assert disk.nvme_tcp_server_allow_host_name == B
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stage(t.a, vol, context_a)
    details = refused.value.details() or ""
    assert "refused the connection" in details and f"host {A} is not allowed" in details
    assert loops_for(t.sim.backing_path(PVC)) == [] and t.sim.store.connections == []
    # node-b stages it: node-a's data is there, node-b writes its own
    target_b = await mount(t.b, vol, context_b)
    assert (target_b / "a.txt").read_text() == "written by node-a\n"
    (target_b / "b.txt").write_text("written by node-b\n")
    subprocess.run(["sync", "-f", str(target_b / "b.txt")], check=True)
    (b_device,) = loops_for(t.sim.backing_path(PVC))
    # node-a tries to connect again, now that node-b holds it: refused again
    transport = t.a.app.node.transports["loop"]
    with pytest.raises(TransportError, match="refused the connection"):
        await transport.connect(Target(PVC, disk.nvme_tcp_server_nqn, file_path=disk.file_path))
    assert loops_for(t.sim.backing_path(PVC)) == [b_device]  # no device for node-a
    assert [c.host_nqn for c in t.sim.store.connections] == [B]

    # node-b's filesystem is whole: its files read back, and a check finds nothing wrong
    assert (target_b / "b.txt").read_text() == "written by node-b\n"
    await t.b.stub.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=PVC, target_path=str(t.b.target()))
    )
    await t.b.stub.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=PVC, staging_target_path=str(t.b.staging()))
    )
    check = subprocess.run(
        ["e2fsck", "-fn", str(t.sim.backing_path(PVC))], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert t.sim.store.connections == []  # node-b left when it unstaged
