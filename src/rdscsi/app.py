"""Assembles the controller: machines, appliance connection, volume store, attachments,
reconciler and the CSI server. `rdscsi serve` and `rdscsi run` both start one of these."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from .clock import Clock, TimerHandle
from .config import DriverConfig
from .control.nodes import NodeBook, NodeView
from .control.reconcile import reconcile_attachments
from .csi.attachments import AttachmentBook
from .csi.controller import ControllerService, ControllerSettings
from .csi.identity import IdentityService
from .csi.node import NodeService, NodeSettings
from .csi.server import CSIServer
from .hooks.events import EventSink
from .hooks.log import TransitionLogger
from .hooks.triggers import Reconciler
from .hooks.wiring import Machines, build_machines
from .io.host.loop import LoopTransport
from .io.host.nvme import NvmeTransport
from .io.host.transport import Transport
from .io.rds.commands import CommandBuilder
from .io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from .io.rds.errors import RDSError
from .io.rds.volumes import StoreSettings, VolumeStore

log = logging.getLogger("rdscsi.app")


class PoolGauge:
    """`rds_csi_pool_bytes{kind="size|free"}`: the appliance pool as last read."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "rds_csi_pool_bytes",
            "Appliance storage pool bytes, as last read",
            ["kind"],
            registry=registry,
        )

    def record(self, size: int, free: int) -> None:
        self.gauge.labels("size").set(size)
        self.gauge.labels("free").set(free)


@dataclass
class ControllerApp:
    config: DriverConfig
    machines: Machines
    rds: RDSConnection
    store: VolumeStore
    attachments: AttachmentBook
    nodes: NodeBook
    reconciler: Reconciler
    server: CSIServer
    clock: Clock
    pool: PoolGauge | None = None
    _resync: TimerHandle | None = None

    async def start(self, reconcile: bool = True) -> None:
        """`reconcile=False` in a cluster: the reconciler starts when this replica leads."""
        if self.server.node is not None:
            await self.server.node.cleanup_orphans()
        if reconcile:
            self.reconciler.start()
        self._arm_resync()
        await self.rds.start()  # returns at once; an unreachable appliance means backoff
        await self.server.start()

    def _arm_resync(self) -> None:
        # A periodic pass backs up the triggers (a missed watch event, a clock jump).
        def fire() -> None:
            if self.reconciler.running:
                self.reconciler.trigger("resync")
                self._arm_resync()

        self._resync = self.clock.call_later(self.config.resync_period, fire)

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
        await self.server.stop()
        await self.reconciler.stop()
        await self.rds.close()

    async def _reconcile(self, reasons: frozenset[str]) -> None:
        outcome = reconcile_attachments(self.attachments, self.nodes)
        if self.rds.connected and self.pool is not None:
            # Each pass also refreshes the pool figures, so the dashboard sees capacity even
            # when no provisioner is asking.
            try:
                pool = await self.store.capacity()
            except RDSError as exc:
                log.debug("pool capacity not read: %s", exc)
            else:
                if pool.size is not None and pool.free is not None:
                    self.pool.record(pool.size, pool.free)
        if outcome:
            log.info("reconcile (%s): %s", ", ".join(sorted(reasons)), dict(outcome))


def node_transports(config: DriverConfig) -> dict[str, Transport]:
    transports: dict[str, Transport] = {"nvme-tcp": NvmeTransport(config.rds.nqn_prefix)}
    if config.loop_root:
        transports["loop"] = LoopTransport(Path(config.loop_root))
    return transports


def build_node_service(
    config: DriverConfig, machines: Machines, sink: EventSink | None = None
) -> NodeService:
    return NodeService(
        NodeSettings(
            node_id=config.node_id,
            plugin_name=config.name,
            appliance=config.rds.name,
            transport=config.transport,
            state_dir=Path(config.node_state_dir),
            max_volumes=config.max_volumes_per_node,
            kubelet_dir=Path(config.kubelet_dir),
        ),
        node_transports(config),
        machines.node_volume,
        events=sink,
    )


@dataclass
class NodeApp:
    """`serve --node` alone: Identity and Node, no appliance connection."""

    config: DriverConfig
    machines: Machines
    node: NodeService
    server: CSIServer

    async def start(self) -> None:
        await self.node.cleanup_orphans()
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()


def build_node(
    config: DriverConfig, clock: Clock, sink: EventSink, registry: CollectorRegistry = REGISTRY
) -> NodeApp:
    machines = build_machines(
        clock, sink, lambda reason: None, registry, extra_listeners=(TransitionLogger(),)
    )
    node = build_node_service(config, machines, sink)
    identity = IdentityService(config.name, False, lambda: True)
    return NodeApp(
        config,
        machines,
        node,
        CSIServer(config.socket_path, identity, node=node, registry=registry),
    )


def build_controller(
    config: DriverConfig,
    clock: Clock,
    sink: EventSink,
    registry: CollectorRegistry = REGISTRY,
    rng: random.Random | None = None,
) -> ControllerApp:
    """The controller; with `config.node` the same process serves the Node service too
    (`rdscsi run`), sharing one set of machines and metrics."""
    rds_cfg = config.rds
    # The reconciler's pass needs the app; the app needs the engines the reconciler feeds.
    holder: list[ControllerApp] = []

    async def run_pass(reasons: frozenset[str]) -> None:
        await holder[0]._reconcile(reasons)

    reconciler = Reconciler(run_pass, registry=registry)
    machines = build_machines(
        clock, sink, reconciler, registry, extra_listeners=(TransitionLogger(),)
    )
    rds = RDSConnection(
        RDSConfig(
            address=rds_cfg.address,
            port=rds_cfg.port,
            user=rds_cfg.user,
            client_keys=[rds_cfg.key_file] if rds_cfg.key_file else [],
            host_keys=list(rds_cfg.host_keys),
            known_hosts=rds_cfg.known_hosts or None,
            insecure_skip_host_key_check=rds_cfg.insecure_skip_host_key_check,
            max_concurrency=rds_cfg.max_concurrency,
            command_timeout=rds_cfg.command_timeout,
        ),
        machines.connection,
        clock,
        rng or random.Random(),
        CommandMetrics(registry),
        CommandBuilder(pool_root=rds_cfg.pool_root),
    )
    store = VolumeStore(
        rds,
        StoreSettings(
            pool_root=rds_cfg.pool_root,
            volume_dir=rds_cfg.volume_dir,
            nvme_port=rds_cfg.nvme_port,
            nqn_prefix=rds_cfg.nqn_prefix,
        ),
        clock.wall,
    )
    state = Path(config.state_dir) / "attachments.json" if config.state_dir else None
    attachments = AttachmentBook(
        machines.attachment,
        clock,
        config.grace_period,
        config.migration_timeout,
        state,
        wake=reconciler.trigger,
    )
    directory = NodeBook(machines.node)
    if config.known_nodes:
        # Standalone: an in-memory view of the configured nodes feeds the same machines the
        # Kubernetes informer feeds in a cluster.
        for name in config.known_nodes:
            directory.observe(NodeView(name, ready=True), clock.monotonic())
        directory.synced = True
    identity = IdentityService(config.name, True, lambda: rds.connected)
    controller = ControllerService(
        ControllerSettings(
            plugin_name=config.name,
            appliance=rds_cfg.name,
            nvme_address=rds_cfg.nvme_address or rds_cfg.address,
            transport=config.transport,
        ),
        store,
        attachments,
        directory,
        on_pool=(pool := PoolGauge(registry)).record,
    )
    node = build_node_service(config, machines, sink) if config.node else None
    app = ControllerApp(
        config,
        machines,
        rds,
        store,
        attachments,
        directory,
        reconciler,
        CSIServer(config.socket_path, identity, controller, node, registry=registry),
        clock,
        pool,
    )
    holder.append(app)
    return app
