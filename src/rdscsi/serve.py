"""`rdscsi serve`: the production entry point, until SIGINT or SIGTERM."""

from __future__ import annotations

from prometheus_client import REGISTRY, start_http_server

from .app import build_controller
from .clock import LoopClock
from .config import DriverConfig
from .hooks.events import MemorySink
from .run import split_address
from .signals import until_stopped


async def serve(config: DriverConfig) -> int:
    # Cluster events go to the log until the Kubernetes sink is wired in.
    app = build_controller(config, LoopClock(), MemorySink(log_events=True), REGISTRY)
    if config.metrics_address:
        host, port = split_address(config.metrics_address)
        start_http_server(port, host)
    await app.start()
    print(f"rdscsi serve: {config.name} controller on {config.endpoint}", flush=True)
    try:
        await until_stopped()
    finally:
        await app.stop()
    return 0
