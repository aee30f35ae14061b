"""Sustained load through a real OpenSSH server (MaxSessions 10) for --duration seconds:
the adapter's channel cap must keep every command clear of the server's session limit.

Not part of `make test` (it runs for minutes). Many workers send a mix of reads and
create/remove cycles through one connection with the default settings (5 command channels
plus the health check, which here runs every second); every 20 s two commands are made to
hang past their deadline (their sessions linger on the server until released). Prints one
JSON object with --json. Target: `failed_by_refusal` == 0 (no command failed because the
server refused its channel; refused opens may be retried, `refused_opens_retried`), no lost
link (`disconnects` == 0), and no command failed but the injected timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import report
from prometheus_client import CollectorRegistry
from rds import SimProcess, Stamps, Target, start_sshd

from rdscsi.clock import LoopClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.rds.connection import CommandMetrics, RDSConnection
from rdscsi.io.rds.errors import CommandTimeoutError, RDSError
from rdscsi.testing.openssh import unavailable_reason

COMMAND_TIMEOUT = 10.0
HANG_EVERY = 20.0  # seconds between injected hangs
HANG_FOR = 12.0  # the hung commands are released after this long (past their deadline)


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


async def soak(tmp: Path, duration: float, workers: int, max_sessions: int) -> dict[str, Any]:
    sim = SimProcess(tmp / "sim", relay=True, latency=0.005)
    await sim.start()
    sshd = await start_sshd(sim, tmp / "sshd", max_sessions=max_sessions)
    target = Target(sim, sshd)
    registry = CollectorRegistry()
    stamps = Stamps()
    machines = build_machines(
        LoopClock(), MemorySink(), lambda r: None, registry, extra_listeners=(stamps,)
    )
    config = target.config(command_timeout=COMMAND_TIMEOUT)
    config = type(config)(**{**config.__dict__, "health_interval": 1.0})
    conn = RDSConnection(config, machines.connection, LoopClock(), metrics=CommandMetrics(registry))
    failures: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    ok = 0
    lingering_max = 0
    hangs = 0
    stop_at = time.monotonic() + duration
    b = conn.commands

    async def worker(n: int) -> None:
        nonlocal ok
        rng = random.Random(n)
        slot = f"pvc-soak-{n}"
        path = f"/storage-pool/k8s/{slot}.img"
        while time.monotonic() < stop_at:
            pick = rng.random()
            if pick < 0.4:
                command = b.pool_print()
            elif pick < 0.7:
                command = b.disk_print(slot)
            elif pick < 0.85:
                command = b.disk_add(
                    slot=slot,
                    file_path=path,
                    file_size=1 << 20,
                    nvme_port=4420,
                    nvme_nqn=f"nqn.2000-02.com.mikrotik:{slot}",
                )
            else:
                command = b.disk_remove_owned(slot, "/storage-pool/k8s/")
            t0 = time.perf_counter()
            try:
                await conn.run(command)
                ok += 1
                latencies.append(time.perf_counter() - t0)
            except CommandTimeoutError as exc:
                if not exc.sent and exc.refused:
                    failures["refused until the deadline"] += 1
                else:
                    failures["timeout (sent)" if exc.sent else "timeout (no free slot)"] += 1
            except RDSError as exc:
                if "already exists" in str(exc) or "no such" in str(exc).lower():
                    ok += 1  # the device's answer to add-twice / remove-missing: fine here
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures[type(exc).__name__] += 1

    async def hang_injector() -> None:
        nonlocal hangs
        while time.monotonic() < stop_at - HANG_FOR:
            await asyncio.sleep(HANG_EVERY)
            await sim.control(op="hang-next", count=2)
            hangs += 2
            await asyncio.sleep(HANG_FOR)
            await sim.control(op="release")

    async def watch() -> None:
        nonlocal lingering_max
        while time.monotonic() < stop_at:
            lingering_max = max(lingering_max, conn.lingering)
            await asyncio.sleep(0.1)

    try:
        await conn.start()
        await conn.wait_for("connected")
        started = time.monotonic()
        await asyncio.gather(*(worker(n) for n in range(workers)), hang_injector(), watch())
        elapsed = time.monotonic() - started
        await sim.control(op="release")
    finally:
        await conn.close()
        await sshd.stop()
        await sim.stop()
    latencies.sort()
    health = {
        o: int(_sample(registry, "rds_csi_rds_health_checks_total", {"outcome": o}))
        for o in ("ok", "error", "timeout", "refused", "lost")
    }
    return {
        "server": f"OpenSSH sshd, MaxSessions {max_sessions}",
        "duration_s": round(elapsed, 1),
        "workers": workers,
        "channel_cap": conn.config.max_concurrency,
        "sessions_used_max": conn.config.sessions,
        "commands": ok + sum(failures.values()),
        "ok": ok,
        "failed": dict(failures),
        "failed_by_refusal": failures["refused until the deadline"],
        "refused_opens_retried": int(_sample(registry, "rds_csi_rds_channel_refused_total")),
        "hung_commands_injected": hangs,
        "lingering_max": lingering_max,
        "disconnects": len(stamps.at.get("disconnected", [])),
        "health_checks": health,
        "commands_per_s": round((ok + sum(failures.values())) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--max-sessions", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    missing = unavailable_reason()
    if missing is not None:
        report({"skipped": missing}, args.json)
        return
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(soak(Path(tmp), args.duration, args.workers, args.max_sessions))
    report(figures, args.json)


if __name__ == "__main__":
    main()
