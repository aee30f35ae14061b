"""The fence at the appliance through the CSI calls (`rds.fence: allow-host`, the default):
each disk's allow-list, as the simulator holds it, is exactly the hosts of the nodes that
hold the volume; a dead node comes off before another node goes on; session evidence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs
import grpc
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.app import build_controller
from rdscsi.clock import ManualClock
from rdscsi.control.nodes import NodeView
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink
from rdscsi.io.rds.errors import TransportLostError
from rdscsi.io.rds.fence import NO_HOST

from .conftest import Cluster, block_cap, host_nqn, mount_cap
from .test_controller import PVC, code_of, create, publish, unpublish

A, B = host_nqn("node-a"), host_nqn("node-b")


@pytest.fixture
def c(cluster: Cluster) -> Cluster:
    return cluster


def allowed(c: Cluster, vid: str = PVC) -> str:
    return c.sim.store.disks[vid].nvme_tcp_server_allow_host_name


def fence_writes(c: Cluster, vid: str = PVC) -> list[str]:
    """Every allow-list the controller wrote for the volume, in order."""
    key = f'[find slot="{vid}"] nvme-tcp-server-allow-host-name="'
    return [line.split(key, 1)[1].rstrip('"') for line in c.sim.commands if key in line]


def sample(c: Cluster, name: str, **labels: str) -> float:
    # The fence's and session listings' series carry the appliance, like the fleet's others.
    labels = {"appliance": c.app.rds.config.name, **labels}
    return c.registry.get_sample_value(name, labels) or 0.0


async def test_publish_lets_only_the_holder_connect_and_unpublish_nobody(c: Cluster) -> None:
    await create(c)
    assert allowed(c) == ""  # created open: nobody holds it yet, nobody fenced it yet
    await publish(c, "node-a")
    assert allowed(c) == A
    await publish(c, "node-a")  # a retry writes nothing
    assert fence_writes(c) == [A]
    assert c.sink.reasons()[-1] == "VolumeAttached"
    # a second node for a single-node volume: refused, the list untouched
    code, _ = await code_of(publish(c, "node-b"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and allowed(c) == A
    await unpublish(c, "node-a")
    assert allowed(c) == NO_HOST  # nobody, never the open (empty) list
    await unpublish(c, "node-a")  # repeated: nothing more written
    assert fence_writes(c) == [A, NO_HOST]
    assert sample(c, "rds_csi_fence_changes_total", change="add") == 1
    assert sample(c, "rds_csi_fence_changes_total", change="remove") == 1


async def test_a_migration_holds_both_ends_then_the_target(c: Cluster) -> None:
    await create(c, caps=[block_cap()])
    await publish(c, "node-a", block_cap())
    await publish(c, "node-b", block_cap())  # live migration: both may connect
    assert sorted(allowed(c).split(",")) == sorted([A, B])
    await unpublish(c, "node-a")  # source lets go: the target alone
    assert allowed(c) == B
    assert fence_writes(c) == [A, ",".join(sorted([A, B])), B]


async def test_a_node_without_a_host_nqn_is_refused_before_anything(c: Cluster) -> None:
    await create(c)
    c.app.nodes.observe(NodeView("node-x", ready=True))  # its plugin never reported one
    code, details = await code_of(publish(c, "node-x"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "node-x has not reported its NVMe host NQN" in details
    assert allowed(c) == "" and c.app.attachments.nodes(PVC) == ()
    # two nodes reporting one host NQN (cloned machines) cannot be told apart: refused
    c.app.nodes.observe(NodeView("node-y", ready=True, host_nqn=A))
    code, details = await code_of(publish(c, "node-y"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "as do node-a" in details
    code, _ = await code_of(publish(c, "node-a"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert allowed(c) == ""


async def test_a_dead_holder_comes_off_before_another_node_goes_on(c: Cluster) -> None:
    await create(c)
    await publish(c, "node-a")
    c.app.nodes.observe(NodeView("node-a", ready=False, deleted=True, host_nqn=A))
    c.clock.advance(c.app.config.grace_period)
    await c.app.reconciler.wait_idle()
    # the reconciler released it, then took it off the list: it can no longer connect
    assert c.app.attachments.nodes(PVC) == ()
    assert c.sink.reasons()[-2:] == ["StaleAttachmentCleared", "NodeFenced"]
    fenced = c.sink.events[-1]
    assert A in fenced.note and fenced.related is not None and fenced.related.name == "node-a"
    assert allowed(c) == NO_HOST
    await publish(c, "node-b")
    assert fence_writes(c) == [A, NO_HOST, B]


async def test_a_publish_takes_off_a_dead_holder_the_reconciler_could_not(c: Cluster) -> None:
    await create(c)
    await publish(c, "node-a")
    store = c.app.store
    real = store.set_allow_list
    failing = [True]

    async def broken(vid: str, hosts: frozenset[str]) -> None:
        if failing[0]:
            raise TransportLostError("link lost mid-command")
        await real(vid, hosts)

    store.set_allow_list = broken  # type: ignore[method-assign]
    c.app.nodes.observe(NodeView("node-a", ready=False, deleted=True, host_nqn=A))
    c.clock.advance(c.app.config.grace_period)
    for _ in range(1000):  # the pass fails; its retry waits on the (manual) clock
        if c.app.reconciler.failures:
            break
        await asyncio.sleep(0.01)
    assert c.app.reconciler.failures >= 1 and allowed(c) == A  # still on: the write failed
    assert c.app.passes.unfence == {PVC: {"node-a"}}  # queued for the retry
    failing[0] = False
    # the publish to node-b finds node-a on it: off first, then node-b on, two writes
    await publish(c, "node-b")
    assert fence_writes(c) == [A, NO_HOST, B]
    assert "NodeFenced" in c.sink.reasons()


async def test_no_session_is_evidence_and_a_session_is_not(c: Cluster) -> None:
    await create(c)
    await publish(c, "node-a")
    c.sim.register_host_connection(PVC, A)  # node-a is connected
    c.app.nodes.observe(NodeView("node-a", ready=False, host_nqn=A))
    c.clock.advance(c.app.config.grace_period * 3)
    await c.app.reconciler.wait_idle()
    assert c.app.attachments.nodes(PVC) == ("node-a",)  # NotReady, still connected: kept
    code, _ = await code_of(publish(c, "node-b"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    listed = sample(c, "rds_csi_session_listings_total", outcome="listed")
    assert listed >= 2  # the pass's, and the publish's own
    # its session goes (the node died): no session is evidence, the grace is long over
    c.sim.unregister_host_connection(slot=PVC, host_nqn=A)
    before = len(c.sink.events)
    await publish(c, "node-b")
    assert allowed(c) == B
    assert "VolumeAttached" in c.sink.reasons()[before:]
    # the leader then releases node-a's lingering claim itself, and reports it once
    await c.app.reconciler.wait_idle()
    assert c.app.attachments.nodes(PVC) == ("node-b",)
    assert c.sink.reasons()[before:].count("StaleAttachmentCleared") <= 1


async def test_an_unreadable_listing_is_no_evidence(c: Cluster) -> None:
    await create(c)
    await publish(c, "node-a")
    interpreter = c.sim.interpreter

    async def garbage(command: object) -> object:
        from rdscsi.sim.cli import Outcome

        return Outcome("who knows what this says\n", True)

    interpreter._handlers[(("interface", "nvme-tcp", "connection"), "print")] = garbage  # type: ignore[assignment]
    c.app.nodes.observe(NodeView("node-a", ready=False, host_nqn=A))
    c.clock.advance(c.app.config.grace_period * 3)
    await c.app.reconciler.wait_idle()
    assert c.app.attachments.nodes(PVC) == ("node-a",)  # no listing: no evidence
    assert sample(c, "rds_csi_session_listings_total", outcome="unavailable") >= 1
    code, _ = await code_of(publish(c, "node-b"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert allowed(c) == A


async def test_with_the_fence_off_nothing_is_written(c: Cluster, tmp_path: Path) -> None:
    config = c.app.config
    off = attrs.evolve(
        config,
        endpoint=f"unix://{tmp_path / 'off.sock'}",
        rds=attrs.evolve(config.rds, fence="none"),
        known_nodes=["node-a", "node-b"],  # no host NQNs needed without the fence
    ).validate()
    app = build_controller(off, ManualClock(), MemorySink(), CollectorRegistry())
    await app.start()
    channel = grpc.aio.insecure_channel(off.endpoint)
    try:
        await app.rds.wait_for("connected")
        stub = csi_pb2_grpc.ControllerStub(channel)
        await stub.CreateVolume(
            pb.CreateVolumeRequest(
                name=PVC,
                capacity_range=pb.CapacityRange(required_bytes=1 << 30),
                volume_capabilities=[mount_cap()],
            )
        )
        for node in ("node-a",):
            await stub.ControllerPublishVolume(
                pb.ControllerPublishVolumeRequest(
                    volume_id=PVC, node_id=node, volume_capability=mount_cap()
                )
            )
            await stub.ControllerUnpublishVolume(
                pb.ControllerUnpublishVolumeRequest(volume_id=PVC, node_id=node)
            )
        assert app.attachments.fencer is None and all(a.fencer is None for a in app.audit)
    finally:
        await channel.close()
        await app.stop()
    assert fence_writes(c) == [] and allowed(c) == ""


async def test_the_volume_context_still_names_the_export(c: Cluster) -> None:
    vol = await create(c, caps=[mount_cap()])
    reply = await c.controller.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id="node-a", volume_capability=mount_cap()
        )
    )
    assert reply.publish_context["nqn"] == f"nqn.2000-02.com.mikrotik:{PVC}"
