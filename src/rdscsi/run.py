"""`rdscsi run`: the embedded default, everything in one process with no appliance.

It starts the RDS simulator (state under `--state-dir`), connects the driver's adapter to it
through the Connection machine, serves Prometheus metrics, and logs every transition and
cluster event, until SIGINT or SIGTERM. The simulator's fault control socket works while it
runs (`rdscsi sim-fault --data-dir .rdscsi/sim drop`), so the reconnect machinery can be
watched live.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, start_http_server

from .clock import LoopClock
from .hooks.events import MemorySink
from .hooks.log import TransitionLogger
from .hooks.triggers import Reconciler
from .hooks.wiring import build_machines
from .io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from .signals import until_stopped
from .sim import SimConfig, Simulator
from .sim.control import CONTROL_SOCKET, ControlServer
from .sim.main import ensure_client_key

log = logging.getLogger("rdscsi.run")


@dataclass(frozen=True)
class RunOptions:
    state_dir: Path = Path(".rdscsi")
    metrics_address: str = "127.0.0.1:9809"  # empty: no metrics endpoint


def _split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address: expected HOST:PORT, got {text!r}")
    return host or "0.0.0.0", int(port)


async def run(options: RunOptions, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    state_dir = options.state_dir.resolve()
    sim_dir = state_dir / "sim"
    sim_dir.mkdir(parents=True, exist_ok=True)
    key_file, authorized = ensure_client_key(sim_dir)
    sim = Simulator(SimConfig(data_dir=sim_dir, authorized_keys_file=authorized))
    await sim.start()
    control = ControlServer(sim, sim_dir / CONTROL_SOCKET)
    await control.start()

    clock = LoopClock()

    async def reconcile_pass(reasons: frozenset[str]) -> None:
        # The controller's attachment reconciler plugs in here; until then a pass checks
        # that the appliance answers and reports the pool.
        pool = await rds.run(rds.commands.pool_print())
        log.info(
            "reconcile pass (%s): appliance answers: %s",
            ", ".join(sorted(reasons)),
            pool.strip().splitlines()[0] if pool.strip() else "empty pool listing",
        )

    reconciler = Reconciler(reconcile_pass)
    machines = build_machines(
        clock,
        MemorySink(log_events=True),
        reconciler,
        REGISTRY,
        extra_listeners=(TransitionLogger(),),
    )
    rds = RDSConnection(
        RDSConfig(
            address=sim.host, port=sim.port, client_keys=[str(key_file)], host_keys=[sim.host_key]
        ),
        machines.connection,
        clock,
        random.Random(),
        CommandMetrics(REGISTRY),
    )
    if options.metrics_address:
        host, port = _split_address(options.metrics_address)
        start_http_server(port, host)
    reconciler.start()
    await rds.start()

    print(f"rdscsi run: simulator on {sim.host}:{sim.port} (data in {sim_dir})")
    if options.metrics_address:
        print(f"rdscsi run: metrics on http://{options.metrics_address}/metrics")
    print(f"rdscsi run: try `rdscsi sim-fault --data-dir {sim_dir} drop` to watch a reconnect")
    print("rdscsi run: Ctrl-C to stop", flush=True)

    try:
        await until_stopped(stop)
    finally:
        await reconciler.stop()
        await rds.close()
        await control.stop()
        await sim.stop()
    print("rdscsi run: stopped", flush=True)
    return 0
