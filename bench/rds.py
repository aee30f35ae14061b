"""The SSH adapter against the simulator adding 20 ms per command, and the same through a
real OpenSSH server relaying to that simulator (when sshd is installed).

Prints one JSON object with --json. Every speed figure is relative to a bare asyncssh client
doing the same commands against the same server in the same run, so the figures mean the
same on a laptop and a big server. Targets: `p50_vs_plain` <= 1.1 (one command at a time),
`throughput_vs_plain` >= 0.9 (800 commands, 50 in flight, the same channel cap for both);
a dropped connection noticed within 100 ms (`drop_detect_ms`); connected again within 100 ms
of the appliance accepting, beyond the pending backoff step (`reconnect_extra_ms`); a silent
partition, with every command slot busy, found within the keepalive bound
(`partition_detect_ms` <= `partition_bound_ms`). The `openssh_` figures are the same through
sshd; `openssh` says why they are missing when they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from _report import report
from prometheus_client import CollectorRegistry

from rdscsi.clock import LoopClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.rds.connection import ENCRYPTION_ALGS, RDSConfig, RDSConnection
from rdscsi.io.rds.errors import RDSError
from rdscsi.machines import Step
from rdscsi.testing.openssh import Sshd, unavailable_reason
from rdscsi.testing.partition import PartitionProxy

LATENCY = 0.020
KEEPALIVE = (0.5, 2)  # interval, count for the partition figure: bound 1.5 s


class Stamps:
    """Wall-clock instants of Connection transitions, taken inside the hook."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}

    def after_transition(self, step: Step) -> None:
        self.at.setdefault(step.target, []).append(time.perf_counter())


class SimProcess:
    """The simulator in its own process, as an appliance would be: its CPU is not ours."""

    def __init__(self, data_dir: Path, relay: bool = False, latency: float = LATENCY) -> None:
        self.data_dir = data_dir
        self.relay = relay
        self.latency = latency
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoint: dict[str, Any] = {}

    async def start(self) -> None:
        extra = ["--relay-socket", str(self.data_dir / "relay.sock")] if self.relay else []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rdscsi.cli",
            "sim",
            "--data-dir",
            str(self.data_dir),
            "--latency-ms",
            str(self.latency * 1000),
            *extra,
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


async def start_sshd(sim: SimProcess, directory: Path, max_sessions: int = 10) -> Sshd:
    """A real sshd whose sessions run their commands on `sim` (started with `relay`)."""
    public = asyncssh.read_public_key(sim.endpoint["client_key"] + ".pub")
    sshd = Sshd(
        directory,
        sim.endpoint["relay_command"],
        [public.export_public_key().decode()],
        max_sessions=max_sessions,
    )
    await sshd.start()
    return sshd


@dataclass
class Target:
    """One SSH server in front of the simulator, and how to make it fail."""

    sim: SimProcess
    sshd: Sshd | None = None

    @property
    def port(self) -> int:
        return self.sshd.port if self.sshd is not None else int(self.sim.endpoint["port"])

    @property
    def host_key(self) -> str:
        return self.sshd.host_key if self.sshd is not None else str(self.sim.endpoint["host_key"])

    @property
    def user(self) -> str:
        return getpass.getuser() if self.sshd is not None else "admin"

    async def drop(self) -> None:
        """The appliance side of every link dies (sshd: its per-connection processes)."""
        if self.sshd is not None:
            await self.sshd.kill_connections()
        else:
            await self.sim.control(op="drop")

    async def go_away(self) -> None:
        """Nothing accepts connections, every link is closed."""
        if self.sshd is not None:
            await self.sshd.stop(connections=True)
        else:
            await self.sim.control(op="refuse", on=True)
            await self.sim.control(op="drop")

    async def come_back(self) -> None:
        if self.sshd is not None:
            await self.sshd.start()
        else:
            await self.sim.control(op="refuse", on=False)

    def config(self, port: int | None = None, **overrides: Any) -> RDSConfig:
        return RDSConfig(
            address="127.0.0.1",
            port=port or self.port,
            user=self.user,
            client_keys=[self.sim.endpoint["client_key"]],
            host_keys=[self.host_key],
            health_interval=3600,
            **overrides,
        )


def _connection(config: RDSConfig, stamps: Stamps) -> RDSConnection:
    machines = build_machines(
        LoopClock(),
        MemorySink(),
        lambda reason: None,
        CollectorRegistry(),
        extra_listeners=(stamps,),
    )
    return RDSConnection(config, machines.connection, LoopClock())


async def figures_for(target: Target, sequential: int, concurrent_total: int) -> dict[str, Any]:
    stamps = Stamps()
    conn = _connection(target.config(), stamps)
    try:
        await conn.start()
        await conn.wait_for("connected")
        out = await _speed(target, conn, sequential, concurrent_total)
        out.update(await _loss(target, conn, stamps))
    finally:
        await conn.close()
    out.update(await _partition(target))
    return out


async def _speed(
    target: Target, conn: RDSConnection, sequential: int, concurrent_total: int
) -> dict[str, Any]:
    cmd = conn.commands.pool_print()
    for _ in range(5):  # warm up
        await conn.run(cmd)
    latencies = []
    for _ in range(sequential):
        t0 = time.perf_counter()
        await conn.run(cmd)
        latencies.append(time.perf_counter() - t0)
    limit = asyncio.Semaphore(50)

    async def one() -> None:
        async with limit:
            await conn.run(cmd)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrent_total)))
    throughput = concurrent_total / (time.perf_counter() - t0)
    cap = conn.config.max_concurrency
    plain_p50, plain_throughput = await _plain_asyncssh(
        target, cmd.line, sequential, concurrent_total, cap
    )
    p50 = statistics.median(latencies)
    ideal = cap / LATENCY
    return {
        "p50_vs_plain": round(p50 / plain_p50, 3),
        "throughput_vs_plain": round(throughput / plain_throughput, 3),
        "p50_ms": round(p50 * 1000, 3),
        "p99_ms": round(sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "plain_asyncssh_p50_ms": round(plain_p50 * 1000, 3),
        "overhead_vs_plain_ms": round((p50 - plain_p50) * 1000, 3),
        "throughput_per_s": round(throughput, 1),
        "plain_asyncssh_throughput_per_s": round(plain_throughput, 1),
        "concurrent_efficiency": round(throughput / ideal, 3),
        "plain_asyncssh_efficiency": round(plain_throughput / ideal, 3),
        "ideal_per_s": ideal,
    }


async def _loss(target: Target, conn: RDSConnection, stamps: Stamps) -> dict[str, Any]:
    # A dropped connection: from the request to drop it to the machine leaving connected.
    drops = []
    for _ in range(5):
        await conn.wait_for("connected")
        before = len(stamps.at.get("disconnected", []))
        t0 = time.perf_counter()
        await target.drop()
        await conn.wait_until(lambda b=before: len(stamps.at.get("disconnected", [])) > b)
        drops.append(max(0.0, stamps.at["disconnected"][-1] - t0))
        await conn.wait_for("connected")

    # The appliance away long enough for a backoff step, then accepting again.
    extras = []
    for _ in range(3):
        await conn.wait_for("connected")
        await target.go_away()
        await conn.wait_for("backoff")
        backoff_entered = stamps.at["backoff"][-1]
        delay = conn.model.delay
        await target.come_back()
        accepting = time.perf_counter()
        await conn.wait_for("connected")
        due = max(accepting, backoff_entered + delay)
        extras.append(stamps.at["connected"][-1] - due)
    return {
        "drop_detect_ms": round(statistics.median(drops) * 1000, 3),
        "reconnect_extra_ms": round(statistics.median(extras) * 1000, 3),
    }


async def _partition(target: Target, rounds: int = 3) -> dict[str, Any]:
    """Every command slot busy (hung), then the network goes silent: time to `disconnected`."""
    interval, count = KEEPALIVE
    detected = []
    for _ in range(rounds):
        proxy = PartitionProxy("127.0.0.1", target.port)
        await proxy.start()
        stamps = Stamps()
        conn = _connection(
            target.config(proxy.port, keepalive_interval=interval, keepalive_count=count), stamps
        )
        try:
            await conn.start()
            await conn.wait_for("connected")
            await target.sim.control(op="hang-match", text="mount-point")
            busy = [
                asyncio.ensure_future(conn.run(conn.commands.pool_print()))
                for _ in range(conn.config.max_concurrency)
            ]
            await asyncio.sleep(0.3)  # every slot taken
            proxy.partition()
            cut = time.perf_counter()
            await conn.wait_until(lambda s=stamps: "disconnected" in s.at)  # type: ignore[misc]
            detected.append(stamps.at["disconnected"][0] - cut)
            for task in busy:
                with contextlib.suppress(RDSError):
                    await task
        finally:
            await target.sim.control(op="hang-match", text=None)
            await target.sim.control(op="release")
            await conn.close()
            await proxy.stop()
    return {
        "partition_detect_ms": round(statistics.median(detected) * 1000, 1),
        "partition_detect_max_ms": round(max(detected) * 1000, 1),
        "partition_bound_ms": round((count + 1) * interval * 1000, 1),
    }


async def _plain_asyncssh(
    target: Target, line: str, sequential: int, total: int, cap: int
) -> tuple[float, float]:
    """The floor on this machine: a bare asyncssh client, same server, same channel cap."""
    conn = await asyncssh.connect(
        "127.0.0.1",
        target.port,
        username=target.user,
        client_keys=[target.sim.endpoint["client_key"]],
        known_hosts=([asyncssh.import_public_key(target.host_key)], [], []),
        encryption_algs=list(ENCRYPTION_ALGS),
        compression_algs=None,
    )
    try:
        for _ in range(5):
            await conn.run(line)
        latencies = []
        for _ in range(sequential):
            t0 = time.perf_counter()
            await conn.run(line)
            latencies.append(time.perf_counter() - t0)
        slots = asyncio.Semaphore(cap)

        async def one() -> None:
            async with slots:
                await conn.run(line)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return statistics.median(latencies), total / (time.perf_counter() - t0)
    finally:
        conn.close()


async def measure(
    tmp: Path, sequential: int, concurrent_total: int, ssh_sequential: int, ssh_total: int
) -> dict[str, Any]:
    missing = unavailable_reason()
    sim = SimProcess(tmp / "sim", relay=missing is None)
    await sim.start()
    try:
        figures = await figures_for(Target(sim), sequential, concurrent_total)
        if missing is not None:
            figures["openssh"] = f"skipped: {missing}"
            return figures
        sshd = await start_sshd(sim, tmp / "sshd")
        try:
            through = await figures_for(Target(sim, sshd), ssh_sequential, ssh_total)
        finally:
            await sshd.stop()
        figures["openssh"] = "OpenSSH sshd, MaxSessions 10, ForceCommand relay to the simulator"
        figures.update({f"openssh_{key}": value for key, value in through.items()})
        return figures
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent-total", type=int, default=800)
    parser.add_argument("--openssh-sequential", type=int, default=60)
    parser.add_argument("--openssh-concurrent-total", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(
            measure(
                Path(tmp),
                args.sequential,
                args.concurrent_total,
                args.openssh_sequential,
                args.openssh_concurrent_total,
            )
        )
    report(figures, args.json)


if __name__ == "__main__":
    main()
