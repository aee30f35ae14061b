"""`rdscsi run`: the embedded default, everything in one process with no appliance.

It starts the RDS simulator (state under `--state-dir`), then the CSI Identity, Controller and
Node services on a unix socket: the controller reaches the simulator over real SSH through the
Connection machine, and the node attaches the simulator's backing files as loop devices, so
staging formats and mounts real filesystems. It serves Prometheus metrics and logs every
transition and cluster event, until SIGINT or SIGTERM. While it runs, `rdscsi demo` drives
a volume through its life, and `rdscsi sim-fault --data-dir .rdscsi/sim drop` shows a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from .app import ControllerApp, NodeApp, build_controller
from .clock import LoopClock
from .config import ApplianceConfig, DriverConfig
from .hooks.events import MemorySink
from .observe import MetricsServer, split_address
from .signals import until_stopped
from .sim import SimConfig, Simulator
from .sim.control import CONTROL_SOCKET, ControlServer
from .sim.main import ensure_client_key

log = logging.getLogger("rdscsi.run")


@dataclass(frozen=True)
class RunOptions:
    state_dir: Path = Path(".rdscsi")
    endpoint: str = ""  # default: unix://<state-dir>/csi.sock
    metrics_address: str = "127.0.0.1:9809"  # empty: no metrics endpoint
    node_id: str = ""  # default: this host's name


__all__ = ["RunOptions", "health_of", "run", "split_address", "start_metrics"]


def health_of(app: ControllerApp | NodeApp) -> Callable[[], tuple[bool, str]]:
    """`/healthz`: a controller is healthy while its appliance connection is `connected`; a
    node-only process while it runs."""
    if isinstance(app, ControllerApp):
        rds = app.rds

        def controller() -> tuple[bool, str]:
            return rds.connected, f"appliance connection {rds.config.name}: {rds.state}"

        return controller
    return lambda: (True, "ok")


async def start_metrics(
    address: str, registry: CollectorRegistry, app: ControllerApp | NodeApp
) -> MetricsServer | None:
    """The `/metrics` and `/healthz` endpoint on this loop; None when `address` is empty."""
    if not address:
        return None
    server = MetricsServer(address, registry, health_of(app))
    await server.start()
    return server


async def run(options: RunOptions, stop: asyncio.Event | None = None) -> int:
    state_dir = options.state_dir.resolve()
    sim_dir = state_dir / "sim"
    sim_dir.mkdir(parents=True, exist_ok=True)
    key_file, authorized = ensure_client_key(sim_dir)
    sim = Simulator(SimConfig(data_dir=sim_dir, authorized_keys_file=authorized))
    await sim.start()
    control = ControlServer(sim, sim_dir / CONTROL_SOCKET)
    await control.start()

    node_id = options.node_id or socket.gethostname()
    # The node side attaches loop devices and mounts filesystems: root only.
    node = os.geteuid() == 0 and Path("/dev/loop-control").exists()
    config = DriverConfig(
        controller=True,
        node=node,
        endpoint=options.endpoint or f"unix://{state_dir / 'csi.sock'}",
        node_id=node_id,
        metrics_address=options.metrics_address,
        rds=ApplianceConfig(
            address=sim.host,
            port=sim.port,
            key_file=str(key_file),
            host_keys=[sim.host_key],
            name="sim",
        ),
        transport="loop",
        known_nodes=[node_id],
        state_dir=str(state_dir),
        node_state_dir=str(state_dir / "node"),
        loop_root=str(sim.store.files_root),
    ).validate()
    app = build_controller(config, LoopClock(), MemorySink(log_events=True), REGISTRY)
    metrics = await start_metrics(options.metrics_address, REGISTRY, app)
    try:
        await app.start()
    except BaseException:
        if metrics is not None:
            await metrics.stop()
        raise

    print(f"rdscsi run: simulator on {sim.host}:{sim.port} (data in {sim_dir})")
    print(
        f"rdscsi run: CSI Identity, Controller and Node on {config.endpoint} (node {node_id}, "
        "volumes attach as loop devices)"
    )
    if metrics is not None:
        print(f"rdscsi run: metrics on {metrics.url}/metrics, health on {metrics.url}/healthz")
    print(f"rdscsi run: try `rdscsi demo --endpoint {config.endpoint}` in another shell,")
    print(f"            or `rdscsi sim-fault --data-dir {sim_dir} drop` to watch a reconnect")
    print("rdscsi run: Ctrl-C to stop", flush=True)
    try:
        await until_stopped(stop)
    finally:
        await app.stop()
        if metrics is not None:
            await metrics.stop()
        await control.stop()
        await sim.stop()
    print("rdscsi run: stopped", flush=True)
    return 0
