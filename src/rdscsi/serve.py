"""`rdscsi serve`: the production entry point, until SIGINT or SIGTERM."""

from __future__ import annotations

from prometheus_client import REGISTRY, start_http_server

from .app import ControllerApp, NodeApp, build_controller, build_node
from .clock import LoopClock
from .config import DriverConfig
from .hooks.events import MemorySink
from .run import split_address
from .signals import until_stopped


async def serve(config: DriverConfig) -> int:
    # Cluster events go to the log until the Kubernetes sink is wired in.
    sink = MemorySink(log_events=True)
    app: ControllerApp | NodeApp
    if config.controller:
        app = build_controller(config, LoopClock(), sink, REGISTRY)
    else:
        app = build_node(config, LoopClock(), sink, REGISTRY)
    if config.metrics_address:
        host, port = split_address(config.metrics_address)
        start_http_server(port, host)
    await app.start()
    what = " and ".join(
        n for n, on in (("controller", config.controller), ("node", config.node)) if on
    )
    print(f"rdscsi serve: {config.name} {what} on {config.endpoint}", flush=True)
    try:
        await until_stopped()
    finally:
        await app.stop()
    return 0
