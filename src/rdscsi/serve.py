"""`rdscsi serve`: the production entry point, until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry

from .app import ControllerApp, NodeApp, build_controller, build_node
from .clock import Clock, LoopClock
from .config import DriverConfig
from .explain.service import bind_cluster, for_controller
from .hooks.events import MemorySink
from .observe import MetricsServer
from .run import start_metrics
from .signals import until_stopped

if TYPE_CHECKING:  # the cluster's modules load only for a controller in a cluster
    from kubernetes.aio.client import ApiClient

    from .cluster import ClusterBinding
    from .io.kube.events import KubeEventSink, KubeRef

log = logging.getLogger("rdscsi.serve")

# Exported once per cluster, by the reconciler leader (followers leave them out).
CLUSTER_SCOPED = frozenset(
    {"rds_csi_attachment_state", "rds_csi_node_state", "rds_csi_orphan_state", "rds_csi_pool_bytes"}
)


async def _metrics(
    config: DriverConfig,
    app: ControllerApp | NodeApp,
    binding: ClusterBinding | None = None,
    registry: CollectorRegistry = REGISTRY,
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
        config.metrics_address, registry, app.ready, live=app.alive, scoped=scoped, explain=explain
    )


async def serve(config: DriverConfig) -> int:
    clock = LoopClock()
    if config.controller and config.kubernetes:
        return await _serve_in_cluster(config, clock)
    if config.node and config.kubernetes:
        return await _serve_node_in_cluster(config, clock)
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


@dataclass
class InCluster:
    """A controller replica as `serve --controller --kubernetes` runs it: the app, fed by the
    cluster binding (informers, Lease), its events posted to the API server. `rdscsi demo
    --scenario` runs this very assembly against its built-in API server."""

    app: ControllerApp
    binding: ClusterBinding
    sink: KubeEventSink
    api: ApiClient
    registry: CollectorRegistry
    metrics: MetricsServer | None = None  # with `config.metrics_address`, once started

    async def start(self) -> None:
        """Metrics (and /debug/explain) first; the CSI socket opens once the cluster view
        has synced (`binding.synced`)."""
        self.metrics = await _metrics(self.app.config, self.app, self.binding, self.registry)
        self.sink.start()
        await self.app.start(serve=False, lead=False)
        await self.binding.start()

    async def stop(self) -> None:
        await self.binding.stop()
        await self.app.stop()
        await self.sink.stop()
        await self.api.close()  # type: ignore[no-untyped-call]
        if self.metrics is not None:
            await self.metrics.stop()


def in_cluster(
    config: DriverConfig,
    clock: Clock,
    api: ApiClient,
    registry: CollectorRegistry = REGISTRY,
    *,
    identity: str | None = None,
    appliance_ref: KubeRef | None = None,
    listeners: Iterable[object] = (),
) -> InCluster:
    """Builds (does not start) a replica. `identity`: the pod's name (default: POD_NAME or the
    host name); `appliance_ref`: where appliance events go (default: the pod, from the
    downward API); `listeners`: more transition listeners beside the log."""
    from .cluster import ClusterBinding, instance_name
    from .io.kube.events import KubeEventSink, pod_ref_from_env

    identity = identity or instance_name()
    sink = KubeEventSink(
        api,
        f"{config.name}/controller",
        identity,
        "default",
        clock,
        appliance_ref=appliance_ref or pod_ref_from_env(),
    )
    app = build_controller(config, clock, sink, registry, identity=identity, listeners=listeners)
    binding = ClusterBinding(app, api, sink, clock, identity, registry=registry)
    return InCluster(app, binding, sink, api, registry)


async def _serve_in_cluster(config: DriverConfig, clock: LoopClock) -> int:
    from .io.kube.client import api_client

    replica = in_cluster(config, clock, await api_client(config.kubeconfig or None))
    binding = replica.binding
    await replica.start()  # the socket opens once the informers have synced
    print(
        f"rdscsi serve: {config.name} controller in the cluster as {binding.identity} "
        f"(Lease {binding.namespace}/{binding.elector.name}); CSI on {config.endpoint} "
        "once the cluster view has synced",
        flush=True,
    )
    try:
        await until_stopped()
    finally:
        await replica.stop()
    return 0


async def _serve_node_in_cluster(config: DriverConfig, clock: LoopClock) -> int:
    """The node plugin in a cluster: Identity and Node, and its host NQN reported on its Node
    (the controller fences with it)."""
    from .io.kube.client import api_client

    api = await api_client(config.kubeconfig or None)
    app = build_node(config, clock, MemorySink(log_events=True), REGISTRY, api=api)
    metrics = await _metrics(config, app)
    try:
        await app.start()
    except BaseException:
        await api.close()  # type: ignore[no-untyped-call]
        if metrics is not None:
            await metrics.stop()
        raise
    print(
        f"rdscsi serve: {config.name} node {config.node_id} on {config.endpoint}; host NQN "
        f"{app.host_nqn or '(none: ' + config.host_nqn_file + ' is missing)'} reported on its Node",
        flush=True,
    )
    try:
        await until_stopped()
    finally:
        await app.stop()
        await api.close()  # type: ignore[no-untyped-call]
        if metrics is not None:
            await metrics.stop()
    return 0
