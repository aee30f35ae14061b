"""CreateVolume and DeleteVolume through the real gRPC server, the appliance adding 20 ms.

Prints {"create_p50_ratio", "create_p99_ratio", "delete_p50_ratio",
"create_throughput_efficiency"} with --json. An idempotent create needs two round trips
(look up, add) and a delete two (remove disk, remove file): 40 ms ideal. Ratios are one
request at a time over 40 ms (target p50 <= 1.25); efficiency is creates per second with
100 requests in flight over the ideal, command cap / 40 ms (target >= 0.8). The simulator
runs in its own process, as an appliance would.
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

IDEAL = 2 * LATENCY
CAP = pb.VolumeCapability(
    mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=pb.VolumeCapability.AccessMode(
        mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)


def _create(name: str) -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(
        name=name,
        volume_capabilities=[CAP],
        capacity_range=pb.CapacityRange(required_bytes=1 << 20),
    )


async def measure(tmp: Path, sequential: int, concurrent_total: int) -> dict[str, Any]:
    sim = SimProcess(tmp / "sim")
    await sim.start()
    ep = sim.endpoint
    config = DriverConfig(
        controller=True,
        endpoint=f"unix://{tmp / 'csi.sock'}",
        rds=ApplianceConfig(
            address=ep["host"],
            port=ep["port"],
            key_file=ep["client_key"],
            host_keys=[ep["host_key"]],
        ),
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

            burst = [f"pvc-{uuid.uuid4()}" for _ in range(concurrent_total)]
            in_flight = asyncio.Semaphore(100)

            async def one(name: str) -> None:
                async with in_flight:
                    await ctl.CreateVolume(_create(name))

            t0 = time.perf_counter()
            await asyncio.gather(*(one(n) for n in burst))
            rate = concurrent_total / (time.perf_counter() - t0)
            for name in burst:
                await ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=name))
    finally:
        await app.stop()
        await sim.stop()
    ideal_rate = config.rds.max_concurrency / IDEAL
    creates.sort()
    return {
        "create_p50_ratio": round(statistics.median(creates) / IDEAL, 3),
        "create_p99_ratio": round(creates[max(0, int(len(creates) * 0.99) - 1)] / IDEAL, 3),
        "delete_p50_ratio": round(statistics.median(deletes) / IDEAL, 3),
        "create_throughput_efficiency": round(rate / ideal_rate, 3),
        "create_p50_ms": round(statistics.median(creates) * 1000, 2),
        "creates_per_s": round(rate, 1),
        "ideal_creates_per_s": ideal_rate,
    }


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
