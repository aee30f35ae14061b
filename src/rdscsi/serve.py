"""`rdscsi serve`: the production entry point, until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY

from .app import ControllerApp, NodeApp, build_controller, build_node
from .clock import LoopClock
from .config import DriverConfig
from .explain.service import bind_cluster, for_controller
from .hooks.events import MemorySink
from .observe import MetricsServer
from .run import start_metrics
from .signals import until_stopped

if TYPE_CHECKING:
    from .cluster import ClusterBinding

log = logging.getLogger("rdscsi.serve")

# Exported once per cluster, by the reconciler leader (followers leave them out).
CLUSTER_SCOPED = frozenset({"rds_csi_attachment_state", "rds_csi_node_state", "rds_csi_pool_bytes"})


async def _metrics(
    config: DriverConfig, app: ControllerApp | NodeApp, binding: ClusterBinding | None = None
) -> MetricsServer | None:
    """`/metrics`, `/livez` (the process), `/readyz` (the appliance and the cluster view) and
    `/debug/explain`; a port that cannot be bound is a one-line `StartError`."""
    scoped = None
    explain = None
    if isinstance(app, ControllerApp):
        scoped = (CLUSTER_SCOPED, app.leadership.exported)
        explainer = for_controller(app)
        if binding is not None:
            bind_cluster(explainer, binding)
        explain = explainer.answer
    return await start_metrics(
        config.metrics_address, REGISTRY, app.ready, live=app.alive, scoped=scoped, explain=explain
    )


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
    metrics = await _metrics(config, app)
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

    identity = instance_name()
    api = await api_client(config.kubeconfig or None)
    sink = KubeEventSink(
        api,
        f"{config.name}/controller",
        identity,
        "default",
        clock,
        appliance_ref=pod_ref_from_env(),
    )
    app = build_controller(config, clock, sink, REGISTRY, identity=identity)
    binding = ClusterBinding(app, api, sink, clock, identity, registry=REGISTRY)
    metrics = await _metrics(config, app, binding)
    sink.start()
    await app.start(serve=False, lead=False)
    await binding.start()  # the socket opens once the informers have synced
    print(
        f"rdscsi serve: {config.name} controller in the cluster as {binding.identity} "
        f"(Lease {binding.namespace}/{binding.elector.name}); CSI on {config.endpoint} "
        "once the cluster view has synced",
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
