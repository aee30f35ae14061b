"""CreateVolume and DeleteVolume through the real gRPC server, the appliance adding 20 ms.

An idempotent create needs two round trips (look up, add) and a delete two (remove disk,
remove file). The baseline, measured in the same run against the same simulator, is a bare
asyncssh client sending the same two commands per create with the same channel cap and the
same 100 creates in flight. Targets: `create_p50_vs_plain` <= 1.1 (one create at a time) and
`create_throughput_vs_plain` >= 0.9 (creates per second, 100 in flight), so the figures mean
the same on a 2-core laptop and a big server. Also printed: the ratios against the ideal
(40 ms per create, command cap / 40 ms creates per second). The simulator runs in its own
process, as an appliance would.

A fleet: the same burst through one driver with two appliances (two simulator processes,
each with its own connection and channel cap), the creates alternating between them by the
StorageClass parameter `appliance`. `fleet_throughput_vs_one` is its creates per second over
the one-appliance burst's of the same run: each appliance brings its own channels, so it
should be well above 1 (about 2 when neither the driver's CPU nor a noisy machine limits it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncssh
import grpc
from _report import report
from prometheus_client import CollectorRegistry
from rds import LATENCY, SimProcess

from rdscsi.app import build_controller
from rdscsi.clock import LoopClock
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.hooks.events import MemorySink
from rdscsi.io.rds.commands import CommandBuilder
from rdscsi.io.rds.connection import ENCRYPTION_ALGS

IDEAL = 2 * LATENCY
CAP = pb.VolumeCapability(
    mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=pb.VolumeCapability.AccessMode(
        mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)


def _create(name: str, appliance: str = "") -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(
        name=name,
        volume_capabilities=[CAP],
        capacity_range=pb.CapacityRange(required_bytes=1 << 20),
        parameters={"appliance": appliance} if appliance else {},
    )


def _appliance(ep: dict[str, Any], name: str = "rds") -> ApplianceConfig:
    return ApplianceConfig(
        name=name,
        address=ep["host"],
        port=ep["port"],
        key_file=ep["client_key"],
        host_keys=[ep["host_key"]],
    )


async def burst(ctl: csi_pb2_grpc.ControllerStub, total: int, appliances: list[str]) -> float:
    """Creates per second, 100 in flight, spread over `appliances` in turn; then deleted."""
    names = [f"pvc-{uuid.uuid4()}" for _ in range(total)]
    in_flight = asyncio.Semaphore(100)
    ids: list[str] = []

    async def one(index: int, name: str) -> None:
        async with in_flight:
            req = _create(name, appliances[index % len(appliances)])
            ids.append((await ctl.CreateVolume(req)).volume.volume_id)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
    rate = total / (time.perf_counter() - t0)
    for vid in ids:
        await ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    return rate


async def measure_fleet(tmp: Path, total: int) -> float:
    """The burst's creates per second through one driver with two appliances."""
    sims = [SimProcess(tmp / "fleet-a"), SimProcess(tmp / "fleet-b")]
    for sim in sims:
        await sim.start()
    config = DriverConfig(
        controller=True,
        endpoint=f"unix://{tmp / 'fleet.sock'}",
        rds=_appliance(sims[0].endpoint),
        appliances={"rds-b": _appliance(sims[1].endpoint, "rds-b")},
    ).validate()
    app = build_controller(config, LoopClock(), MemorySink(), CollectorRegistry())
    await app.start()
    try:
        for appliance in app.appliances:
            await appliance.rds.wait_for("connected")
        async with grpc.aio.insecure_channel(config.endpoint) as channel:
            ctl = csi_pb2_grpc.ControllerStub(channel)
            await burst(ctl, 20, ["", "rds-b"])  # warm up both connections
            return await burst(ctl, total, ["", "rds-b"])
    finally:
        await app.stop()
        for sim in sims:
            await sim.stop()


async def measure(tmp: Path, sequential: int, concurrent_total: int) -> dict[str, Any]:
    sim = SimProcess(tmp / "sim")
    await sim.start()
    ep = sim.endpoint
    config = DriverConfig(
        controller=True,
        endpoint=f"unix://{tmp / 'csi.sock'}",
        rds=_appliance(ep),
    ).validate()
    app = build_controller(config, LoopClock(), MemorySink(), CollectorRegistry())
    await app.start()
    try:
        await app.rds.wait_for("connected")
        async with grpc.aio.insecure_channel(config.endpoint) as channel:
            ctl = csi_pb2_grpc.ControllerStub(channel)
            for _ in range(3):  # warm up
                name = f"pvc-{uuid.uuid4()}"
                await ctl.CreateVolume(_create(name))
                await ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=name))
            creates, deletes = [], []
            names = [f"pvc-{uuid.uuid4()}" for _ in range(sequential)]
            for name in names:
                t0 = time.perf_counter()
                await ctl.CreateVolume(_create(name))
                creates.append(time.perf_counter() - t0)
            for name in names:
                t0 = time.perf_counter()
                await ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=name))
                deletes.append(time.perf_counter() - t0)

            rate = await burst(ctl, concurrent_total, [""])
        plain_p50, plain_rate = await _plain_asyncssh(ep, config.rds, sequential, concurrent_total)
    finally:
        await app.stop()
        await sim.stop()
    fleet_rate = await measure_fleet(tmp, concurrent_total)
    ideal_rate = config.rds.max_concurrency / IDEAL
    creates.sort()
    return {
        "create_p50_vs_plain": round(statistics.median(creates) / plain_p50, 3),
        "create_throughput_vs_plain": round(rate / plain_rate, 3),
        "plain_create_p50_ms": round(plain_p50 * 1000, 2),
        "plain_creates_per_s": round(plain_rate, 1),
        "create_p50_ratio": round(statistics.median(creates) / IDEAL, 3),
        "create_p99_ratio": round(creates[max(0, int(len(creates) * 0.99) - 1)] / IDEAL, 3),
        "delete_p50_ratio": round(statistics.median(deletes) / IDEAL, 3),
        "create_throughput_efficiency": round(rate / ideal_rate, 3),
        "create_p50_ms": round(statistics.median(creates) * 1000, 2),
        "creates_per_s": round(rate, 1),
        "ideal_creates_per_s": ideal_rate,
        "fleet_throughput_vs_one": round(fleet_rate / rate, 3),
        "fleet_creates_per_s": round(fleet_rate, 1),
    }


async def _plain_asyncssh(
    ep: dict[str, Any], rds: ApplianceConfig, sequential: int, total: int
) -> tuple[float, float]:
    """The same two commands per create (look up, add) from a bare asyncssh client, with the
    driver's channel cap and the same creates in flight: (p50 seconds, creates per second)."""
    b = CommandBuilder(pool_root=rds.pool_root)
    conn = await asyncssh.connect(
        ep["host"],
        ep["port"],
        username="admin",
        client_keys=[ep["client_key"]],
        known_hosts=([asyncssh.import_public_key(ep["host_key"])], [], []),
        encryption_algs=list(ENCRYPTION_ALGS),
        compression_algs=None,
    )
    channels = asyncio.Semaphore(rds.max_concurrency)

    async def run(line: str) -> None:
        async with channels:
            await conn.run(line, check=True)

    async def create(name: str) -> None:
        await run(b.disk_print(name).line)
        add = b.disk_add(
            slot=name,
            file_path=f"{rds.pool_root}{rds.volume_dir}/{name}.img",
            file_size=1 << 20,
            nvme_port=rds.nvme_port,
            nvme_nqn=f"{rds.nqn_prefix}{name}",
        )
        await run(add.line)

    try:
        for _ in range(3):
            await create(f"pvc-{uuid.uuid4()}")
        latencies = []
        for _ in range(sequential):
            t0 = time.perf_counter()
            await create(f"pvc-{uuid.uuid4()}")
            latencies.append(time.perf_counter() - t0)
        in_flight = asyncio.Semaphore(100)

        async def one() -> None:
            async with in_flight:
                await create(f"pvc-{uuid.uuid4()}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return statistics.median(latencies), total / (time.perf_counter() - t0)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--concurrent-total", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(measure(Path(tmp), args.sequential, args.concurrent_total))
    report(figures, args.json)


if __name__ == "__main__":
    main()
