"""The SSH adapter against the simulator adding 20 ms per command.

Prints {"overhead_p50_ms", "concurrent_efficiency", "drop_detect_ms", "reconnect_extra_ms"}
with --json. Targets (issue 3): overhead p50 <= 2 ms; efficiency >= 0.9 (throughput of 50
concurrent commands over the ideal cap / 20 ms); a dropped connection noticed within 100 ms;
connected again within 100 ms of the simulator accepting, beyond the pending backoff step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
from _report import report
from prometheus_client import CollectorRegistry

from rdscsi.clock import LoopClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.rds.connection import ENCRYPTION_ALGS, RDSConfig, RDSConnection
from rdscsi.machines import Step

LATENCY = 0.020


class Stamps:
    """Wall-clock instants of Connection transitions, taken inside the hook."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}

    def after_transition(self, step: Step) -> None:
        self.at.setdefault(step.target, []).append(time.perf_counter())


class SimProcess:
    """The simulator in its own process, as an appliance would be: its CPU is not ours."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoint: dict[str, Any] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rdscsi.cli",
            "sim",
            "--data-dir",
            str(self.data_dir),
            "--latency-ms",
            str(LATENCY * 1000),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        endpoint = self.data_dir / "endpoint.json"
        for _ in range(500):
            if endpoint.exists():
                with contextlib.suppress(ValueError):
                    self.endpoint = json.loads(endpoint.read_text())
                    return
            await asyncio.sleep(0.02)
        raise RuntimeError("simulator did not start")

    async def control(self, **request: Any) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(self.endpoint["control_socket"])
        writer.write(json.dumps(request).encode() + b"\n")
        answer: dict[str, Any] = json.loads(await reader.readline())
        writer.close()
        if not answer.get("ok"):
            raise RuntimeError(f"control {request}: {answer}")
        return answer

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def measure(tmp: Path, sequential: int, concurrent_total: int) -> dict[str, Any]:
    sim = SimProcess(tmp / "sim")
    await sim.start()
    ep = sim.endpoint
    stamps = Stamps()
    machines = build_machines(
        LoopClock(),
        MemorySink(),
        lambda reason: None,
        CollectorRegistry(),
        extra_listeners=(stamps,),
    )
    conn = RDSConnection(
        RDSConfig(
            address=ep["host"],
            port=ep["port"],
            client_keys=[ep["client_key"]],
            host_keys=[ep["host_key"]],
            health_interval=3600,
        ),
        machines.connection,
        LoopClock(),
    )
    try:
        return await _measure(sim, conn, stamps, sequential, concurrent_total)
    finally:
        await conn.close()
        await sim.stop()


async def _measure(
    sim: SimProcess, conn: RDSConnection, stamps: Stamps, sequential: int, concurrent_total: int
) -> dict[str, Any]:
    await conn.start()
    await conn.wait_for("connected")
    cmd = conn.commands.pool_print()
    for _ in range(5):  # warm up
        await conn.run(cmd)

    latencies = []
    for _ in range(sequential):
        t0 = time.perf_counter()
        await conn.run(cmd)
        latencies.append(time.perf_counter() - t0)
    overhead_ms = (statistics.median(latencies) - LATENCY) * 1000

    limit = asyncio.Semaphore(50)

    async def one() -> None:
        async with limit:
            await conn.run(cmd)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrent_total)))
    throughput = concurrent_total / (time.perf_counter() - t0)
    ideal = conn.config.max_concurrency / LATENCY

    # A dropped connection: from the simulator closing it to the machine leaving connected.
    drops = []
    for _ in range(5):
        await conn.wait_for("connected")
        before = len(stamps.at.get("disconnected", []))
        t0 = time.perf_counter()
        await sim.control(op="drop")
        await conn.wait_until(lambda b=before: len(stamps.at.get("disconnected", [])) > b)
        # the control reply may arrive after the loss was seen: measure from the request
        drops.append(max(0.0, stamps.at["disconnected"][-1] - t0))
        await conn.wait_for("connected")

    # The appliance away long enough for a backoff step, then accepting again.
    extras = []
    for _ in range(3):
        await conn.wait_for("connected")
        await sim.control(op="refuse", on=True)
        await sim.control(op="drop")
        await conn.wait_for("backoff")
        backoff_entered = stamps.at["backoff"][-1]
        delay = conn.model.delay
        await sim.control(op="refuse", on=False)
        accepting = time.perf_counter()
        await conn.wait_for("connected")
        due = max(accepting, backoff_entered + delay)
        extras.append(stamps.at["connected"][-1] - due)

    plain_p50, plain_throughput = await _plain_asyncssh(
        sim, cmd.line, sequential, concurrent_total, ideal
    )
    return {
        "overhead_p50_ms": round(overhead_ms, 3),
        "concurrent_efficiency": round(throughput / ideal, 3),
        "drop_detect_ms": round(statistics.median(drops) * 1000, 3),
        "reconnect_extra_ms": round(statistics.median(extras) * 1000, 3),
        "p99_ms": round(sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "throughput_per_s": round(throughput, 1),
        "ideal_per_s": ideal,
        # The floor on this machine: a bare asyncssh client, same simulator, same run.
        "plain_asyncssh_overhead_p50_ms": round((plain_p50 - LATENCY) * 1000, 3),
        "plain_asyncssh_efficiency": round(plain_throughput / ideal, 3),
        "overhead_vs_plain_ms": round((statistics.median(latencies) - plain_p50) * 1000, 3),
    }


async def _plain_asyncssh(
    sim: SimProcess, line: str, sequential: int, total: int, ideal: float
) -> tuple[float, float]:
    ep = sim.endpoint
    conn = await asyncssh.connect(
        ep["host"],
        ep["port"],
        username="admin",
        client_keys=[ep["client_key"]],
        known_hosts=asyncssh.import_known_hosts(ep["known_hosts"] + "\n"),
        encryption_algs=list(ENCRYPTION_ALGS),
        compression_algs=None,
    )
    try:
        latencies = []
        for _ in range(sequential):
            t0 = time.perf_counter()
            await conn.run(line)
            latencies.append(time.perf_counter() - t0)
        cap = asyncio.Semaphore(int(ideal * LATENCY))

        async def one() -> None:
            async with cap:
                await conn.run(line)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return statistics.median(latencies), total / (time.perf_counter() - t0)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent-total", type=int, default=800)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(measure(Path(tmp), args.sequential, args.concurrent_total))
    report(figures, args.json)


if __name__ == "__main__":
    main()
