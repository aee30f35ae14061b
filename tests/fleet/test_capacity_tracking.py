"""Storage capacity tracking with a fleet, end to end: node plugins started as `serve --node`
report the appliances their node reaches; kubelet turns that into the CSINode's topology keys
and the Node's labels; the external-provisioner (`--enable-capacity`) makes one segment per
distinct set of a node's key/value pairs and asks GetCapacity once per StorageClass and
segment, publishing CSIStorageCapacity objects; the scheduler keeps a node for a claim only
where an object of the claim's class matches the node's labels and holds its size; then
the provisioner's CreateVolume for the chosen node (its accessibility requirements) must
land on the appliance whose capacity was checked, with a topology the node carries.

The sidecar's rules are taken from the external-provisioner's sources (v6:
pkg/capacity/topology/nodes.go for the segments, pkg/controller/topology.go for the
requirements of a WaitForFirstConsumer claim: the requisite terms are the selected node's
keys on every node that has them all, the selected node's term first among the preferred)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from prometheus_client import CollectorRegistry

from rdscsi.app import build_node
from rdscsi.cli import build_parser, flags_from_args
from rdscsi.clock import ManualClock
from rdscsi.config import load
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink

from .conftest import DRIVER, GIB, A, B, Fleet, mount_cap

Labels = dict[str, str]


@dataclass(frozen=True)
class Node:
    name: str
    keys: tuple[str, ...]  # CSINode spec.drivers[driver].topologyKeys, as kubelet records them
    labels: Labels  # the Node's labels kubelet adds from NodeGetInfo


@dataclass(frozen=True)
class StorageCapacity:
    storage_class: str
    node_topology: Labels  # matchLabels
    capacity: int
    maximum_volume_size: int | None


async def registered(fleet: Fleet, tmp: Path, name: str, *reach: str) -> Node:
    """A node plugin on `name`, started from the fleet's configuration file as the DaemonSet
    starts it, reaching `reach` (none: every appliance); what kubelet records from it."""
    data = {k: v for k, v in yaml.safe_load((tmp / "config.yaml").read_text()).items()}
    data["controller"] = False
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = ["serve", "--config", str(path), "--node", "--node-id", name]
    argv += ["--endpoint", f"unix://{tmp / f'{name}.sock'}"]
    argv += ["--node-state-dir", str(tmp / name)]
    for appliance in reach:
        argv += ["--node-appliance", appliance]
    config = load(path, flags_from_args(build_parser().parse_args(argv)), {}).prepare()
    app = build_node(config, ManualClock(), MemorySink(), CollectorRegistry())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(config.endpoint) as channel:
            info = await csi_pb2_grpc.NodeStub(channel).NodeGetInfo(pb.NodeGetInfoRequest())
    finally:
        await app.stop()
    segments = dict(info.accessible_topology.segments)
    labels = {"kubernetes.io/hostname": name, **segments}
    return Node(name, tuple(sorted(segments)), labels)


def segments_of(nodes: list[Node]) -> list[Labels]:
    """The provisioner's capacity segments: per node, its driver keys with its label values
    (a node missing a label is skipped until it has it), each distinct set once."""
    out: list[Labels] = []
    for node in nodes:
        if not all(k in node.labels for k in node.keys):
            continue
        segment = {k: node.labels[k] for k in sorted(node.keys)}
        if segment not in out:
            out.append(segment)
    return out


async def publish_capacity(
    fleet: Fleet, classes: dict[str, dict[str, str]], nodes: list[Node]
) -> list[StorageCapacity]:
    objects = []
    for name, parameters in classes.items():
        for segment in segments_of(nodes):
            got = await fleet.controller.GetCapacity(
                pb.GetCapacityRequest(
                    parameters=parameters, accessible_topology=pb.Topology(segments=segment)
                )
            )
            most = got.maximum_volume_size.value if got.HasField("maximum_volume_size") else None
            objects.append(StorageCapacity(name, segment, int(got.available_capacity), most))
    return objects


def fits(objects: list[StorageCapacity], storage_class: str, node: Node, size: int) -> bool:
    """The scheduler's capacity check for one claim on one node."""
    for o in objects:
        if o.storage_class != storage_class:
            continue
        if not o.node_topology.items() <= node.labels.items():
            continue
        if (o.maximum_volume_size if o.maximum_volume_size is not None else o.capacity) >= size:
            return True
    return False


def requirement_for(selected: Node, nodes: list[Node]) -> pb.TopologyRequirement:
    """What the provisioner sends for a WaitForFirstConsumer claim on `selected`."""
    terms: list[Labels] = []
    for node in nodes:
        if all(k in node.labels for k in selected.keys):
            term = {k: node.labels[k] for k in selected.keys}
            if term not in terms:
                terms.append(term)
    mine = {k: selected.labels[k] for k in selected.keys}
    preferred = [mine] + [t for t in terms if t != mine]
    return pb.TopologyRequirement(
        requisite=[pb.Topology(segments=t) for t in terms],
        preferred=[pb.Topology(segments=t) for t in preferred],
    )


async def test_capacity_tracking_schedules_where_the_class_s_appliance_is_reached(
    fleet: Fleet, tmp_path: Path
) -> None:
    both = await registered(fleet, tmp_path, "n-both")
    only_a = await registered(fleet, tmp_path, "n-a", A)
    only_b = await registered(fleet, tmp_path, "n-b", B)
    nodes = [both, only_a, only_b]
    # one key per appliance: a node reaching both carries both, with their names as values
    assert both.keys == (f"{DRIVER}/appliance", f"{DRIVER}/appliance.{B}")
    assert only_b.labels[f"{DRIVER}/appliance.{B}"] == B and only_a.keys == (f"{DRIVER}/appliance",)
    assert len(segments_of(nodes)) == 3

    # Space used on B, so the two appliances' answers differ.
    await fleet.create("filler", B, size=40 * GIB)
    free = {n: s.store.pool_size - s.store.used_bytes() for n, s in fleet.sims.items()}
    assert free[A] != free[B]

    fstype = {"csi.storage.k8s.io/fstype": "ext4"}  # the sidecar passes the class's as they are
    classes = {"default": fstype, "on-a": {**fstype, "appliance": A}, "on-b": {"appliance": B}}
    objects = await publish_capacity(fleet, classes, nodes)
    seen = {(o.storage_class, tuple(sorted(o.node_topology))): o.capacity for o in objects}
    assert seen[("default", both.keys)] == free[A]  # the default appliance where reached
    assert seen[("default", only_b.keys)] == 0  # never another box: the default is not there
    assert seen[("on-b", both.keys)] == free[B] and seen[("on-b", only_a.keys)] == 0
    assert seen[("on-a", only_b.keys)] == 0

    # The scheduler's verdicts, per class and node: a node reaching only B has no place for
    # a class without `appliance` (its volumes go to the default appliance, A).
    verdict = {(c, n.name): fits(objects, c, n, GIB) for c in classes for n in nodes}
    assert verdict == {
        ("default", "n-both"): True,
        ("default", "n-a"): True,
        ("default", "n-b"): False,
        ("on-a", "n-both"): True,
        ("on-a", "n-a"): True,
        ("on-a", "n-b"): False,
        ("on-b", "n-both"): True,
        ("on-b", "n-a"): False,
        ("on-b", "n-b"): True,
    }
    # More than B has left: no node fits a class that goes to B, although n-both also
    # matches the objects of n-a's segment (A's free space): those are for another class.
    big = free[B] + GIB
    assert not fits(objects, "on-b", both, big) and not fits(objects, "on-b", only_b, big)
    assert fits(objects, "default", both, big) == (free[A] >= big)

    # Provisioning for each node the scheduler kept: every object the scheduler could have
    # taken for that node (its segment a subset of the node's labels) spoke for the
    # appliance the volume lands on, or said 0; the volume's topology (the PV's node
    # affinity) is on that node, and on exactly the nodes that reach its appliance.
    by_name = {n.name: n for n in nodes}
    for index, (cls, name) in enumerate(k for k, ok in verdict.items() if ok):
        node = by_name[name]
        volume = (
            await fleet.controller.CreateVolume(
                pb.CreateVolumeRequest(
                    name=f"pvc-{index}",
                    capacity_range=pb.CapacityRange(required_bytes=GIB),
                    volume_capabilities=[mount_cap()],
                    parameters=classes[cls],
                    accessibility_requirements=requirement_for(node, nodes),
                )
            )
        ).volume
        on = volume.volume_context["appliance"]
        matching = [
            o.capacity
            for o in objects
            if o.storage_class == cls and o.node_topology.items() <= node.labels.items()
        ]
        assert set(matching) <= {free[on], 0} and free[on] in matching, (cls, name, on)
        (topology,) = volume.accessible_topology
        reach = [n.name for n in nodes if dict(topology.segments).items() <= n.labels.items()]
        assert name in reach and reach == [n.name for n in nodes if on in n.labels.values()]
