"""`rdscsi serve`: the production entry point, until SIGINT or SIGTERM."""

from __future__ import annotations

from prometheus_client import REGISTRY

from .app import ControllerApp, NodeApp, build_controller, build_node
from .clock import LoopClock
from .config import DriverConfig
from .hooks.events import MemorySink
from .run import start_metrics
from .signals import until_stopped


async def serve(config: DriverConfig) -> int:
    clock = LoopClock()
    if config.controller and config.kubernetes:
        return await _serve_in_cluster(config, clock)
    # Without a cluster, events go to the log.
    sink = MemorySink(log_events=True)
    app: ControllerApp | NodeApp
    if config.controller:
        app = build_controller(config, clock, sink, REGISTRY)
    else:
        app = build_node(config, clock, sink, REGISTRY)
    metrics = await start_metrics(config.metrics_address, REGISTRY, app)
    try:
        await app.start()
    except BaseException:
        if metrics is not None:
            await metrics.stop()
        raise
    what = " and ".join(
        n for n, on in (("controller", config.controller), ("node", config.node)) if on
    )
    print(f"rdscsi serve: {config.name} {what} on {config.endpoint}", flush=True)
    try:
        await until_stopped()
    finally:
        await app.stop()
        if metrics is not None:
            await metrics.stop()
    return 0


async def _serve_in_cluster(config: DriverConfig, clock: LoopClock) -> int:
    from .cluster import ClusterBinding, instance_name
    from .io.kube.client import api_client
    from .io.kube.events import KubeEventSink, pod_ref_from_env

    api = await api_client(config.kubeconfig or None)
    sink = KubeEventSink(
        api,
        f"{config.name}/controller",
        instance_name(),
        "default",
        clock,
        appliance_ref=pod_ref_from_env(),
    )
    app = build_controller(config, clock, sink, REGISTRY)
    binding = ClusterBinding(app, api, sink, clock)
    metrics = await start_metrics(config.metrics_address, REGISTRY, app)
    sink.start()
    await app.start(reconcile=False)
    await binding.start()
    print(
        f"rdscsi serve: {config.name} controller on {config.endpoint}, in the cluster as "
        f"{binding.identity}",
        flush=True,
    )
    try:
        await until_stopped()
    finally:
        await binding.stop()
        await app.stop()
        await sink.stop()
        await api.close()  # type: ignore[no-untyped-call]
        if metrics is not None:
            await metrics.stop()
    return 0
