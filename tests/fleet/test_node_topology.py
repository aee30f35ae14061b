"""The node side of a fleet: the node plugin, started as `serve --node` starts it, reports the
segment of each appliance it reaches, and volumes are accessible exactly where their
appliance is reached; its NVMe/TCP transport takes every appliance's NQN prefix as its own."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.app import build_node, layout_of
from rdscsi.cli import build_parser, flags_from_args
from rdscsi.clock import ManualClock
from rdscsi.config import load
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink
from rdscsi.io.host.nvme import NvmeTransport
from rdscsi.io.host.transport import InvalidTarget, Target

K = "rds.csi.test/appliance"
CONFIG = """
name: rds.csi.test
rds: {name: rds-a, address: 10.0.0.5, nqn_prefix: "nqn.2000-02.com.mikrotik:"}
appliances:
  rds-b: {address: 10.0.0.6, nqn_prefix: "nqn.2000-02.com.mikrotik:"}
  rds-c: {address: 10.0.0.7, nqn_prefix: "nqn.2024-01.example.rack2:"}
"""


async def node_info(tmp_path: Path, *flags: str) -> dict[str, str]:
    (tmp_path / "config.yaml").write_text(CONFIG)
    argv = ["serve", "--config", str(tmp_path / "config.yaml"), "--node", "--node-id", "n1"]
    argv += ["--endpoint", f"unix://{tmp_path / 'csi.sock'}"]
    argv += ["--node-state-dir", str(tmp_path / "state"), *flags]
    args = build_parser().parse_args(argv)
    config = load(args.config, flags_from_args(args), {}).prepare()
    app = build_node(config, ManualClock(), MemorySink(), CollectorRegistry())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(config.endpoint) as channel:
            info = await csi_pb2_grpc.NodeStub(channel).NodeGetInfo(pb.NodeGetInfoRequest())
    finally:
        await app.stop()
    return dict(info.accessible_topology.segments)


async def test_a_node_reports_the_appliances_it_reaches(tmp_path: Path) -> None:
    every = await node_info(tmp_path)
    assert every == {K: "rds-a", f"{K}.rds-b": "rds-b", f"{K}.rds-c": "rds-c"}
    some = await node_info(tmp_path, "--node-appliance", "rds-b", "--node-appliance", "rds-c")
    assert some == {f"{K}.rds-b": "rds-b", f"{K}.rds-c": "rds-c"}
    # a volume is accessible from a node whose topology holds the volume's segment
    (tmp_path / "c.yaml").write_text(CONFIG)
    layout = layout_of(load(tmp_path / "c.yaml", {"node": True, "node_id": "n1"}, {}))
    assert layout.segment("rds-b").items() <= some.items()
    assert not layout.segment("rds-a").items() <= some.items()


def test_the_nvme_transport_takes_every_appliances_prefix() -> None:
    nvme = NvmeTransport(["nqn.2000-02.com.mikrotik:", "nqn.2024-01.example.rack2:"])
    for nqn in ("nqn.2000-02.com.mikrotik:pvc-1", "nqn.2024-01.example.rack2:pvc-1"):
        argv = nvme.connect_argv(Target("rds-c:pvc-1", nqn, "10.0.0.7", 4420))
        assert nqn in argv and nvme._ours(nqn)
    assert not nvme._ours("nqn.2014-08.org.nvmexpress:uuid:1")  # never another's session
    with pytest.raises(InvalidTarget, match="not under this driver's NQN prefix"):
        nvme.connect_argv(Target("v", "nqn.2014-08.org.nvmexpress:x", "10.0.0.7", 4420))
