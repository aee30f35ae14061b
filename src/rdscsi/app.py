"""Assembles the controller: machines, appliance connection, volume store, the attachment
record and its derivation, the reconciler with its leadership, and the CSI server.
`rdscsi serve` and `rdscsi run` both start one of these.

Standalone (`rdscsi run`, or `serve --controller` without `--kubernetes`) the attachment
record is local (a JSON file under `state_dir`), the nodes are the configured ones and the
process always leads. In a cluster (`cluster.ClusterBinding`) the record and the nodes come
from informers and the Lease decides who runs the reconciler.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from .clock import Clock, TimerHandle
from .config import DriverConfig
from .control.derive import Deriver, Timing
from .control.leadership import Leadership
from .control.nodes import NodeBook, NodeView
from .control.reconcile import AttachmentPass
from .control.record import AttachmentRecord, ClusterRecord, LocalRecord
from .control.triggers import Reconciler
from .csi.attachments import AttachmentBook
from .csi.controller import ControllerService, ControllerSettings
from .csi.identity import IdentityService
from .csi.node import NodeService, NodeSettings
from .csi.server import CSIServer
from .hooks.events import EventSink, bind_metrics
from .hooks.log import TransitionLogger
from .hooks.wiring import Machines, build_machines
from .io.host.loop import LoopTransport
from .io.host.nvme import NvmeTransport
from .io.host.transport import Transport
from .io.rds.commands import CommandBuilder
from .io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from .io.rds.errors import RDSError
from .io.rds.volumes import StoreSettings, VolumeStore

log = logging.getLogger("rdscsi.app")

Health = Callable[[], tuple[bool, str]]


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
    record: AttachmentRecord
    attachments: AttachmentBook
    nodes: NodeBook
    passes: AttachmentPass
    reconciler: Reconciler
    leadership: Leadership
    server: CSIServer
    clock: Clock
    pool: PoolGauge | None = None
    # What else must hold for readiness (a cluster: every informer current) and liveness (a
    # cluster: no informer or elector task crashed).
    ready_checks: list[Health] = field(default_factory=list)
    live_checks: list[Health] = field(default_factory=list)
    _resync: TimerHandle | None = None
    _due: TimerHandle | None = None

    async def start(self, serve: bool = True, lead: bool = True) -> None:
        """`serve=False`: the CSI socket opens later (`serve()`), once the caller's sources
        have synced. `lead=False`: leadership comes from elsewhere (the Lease)."""
        if self.server.node is not None:
            await self.server.node.cleanup_orphans()
        self._arm_resync()
        await self.rds.start()  # returns at once; an unreachable appliance means backoff
        if lead:
            await self.leadership.acquired()
        if serve:
            await self.serve()

    async def serve(self) -> None:
        await self.server.start()

    def _arm_resync(self) -> None:
        # A periodic pass backs up the triggers (a missed watch event, a clock jump). It is
        # armed on every replica: a follower that later leads has it running already.
        def fire() -> None:
            self.reconciler.trigger("resync")
            self._arm_resync()

        self._resync = self.clock.call_later(self.config.resync_period, fire)

    def _arm_due(self) -> None:
        """Wake the reconciler when the next grace period or migration deadline ends."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        due = self.passes.next_due()
        if due is not None:
            delay = max(0.0, due - self.clock.monotonic())
            self._due = self.clock.call_later(delay, lambda: self.reconciler.trigger("deadline"))

    async def stop(self) -> None:
        for timer in (self._resync, self._due):
            if timer is not None:
                timer.cancel()
        await self.server.stop()
        await self.leadership.lost(released=True)
        await self.rds.close()

    # --- health ---------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Readiness: the appliance connection is up (and the cluster view current)."""
        if not self.rds.connected:
            return False, f"appliance connection {self.rds.config.name}: {self.rds.state}"
        for check in self.ready_checks:
            ok, why = check()
            if not ok:
                return False, why
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        """Liveness: this process still does its work (the loop answers this call, and the
        reconciler has not crashed). An appliance outage is not a reason to restart."""
        task = self.reconciler.task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            return False, f"reconciler crashed: {task.exception()!r}"
        for check in self.live_checks:
            ok, why = check()
            if not ok:
                return False, why
        return True, "ok"

    # --- the reconcile pass (leader only) ---------------------------------------------------

    async def _reconcile(self, reasons: frozenset[str]) -> None:
        self.leadership.check()
        outcome = self.passes.run()
        self._arm_due()
        if self.rds.connected and self.pool is not None:
            # Each pass also refreshes the pool figures, so the dashboard sees capacity even
            # when no provisioner is asking. Leadership is checked before every command.
            self.leadership.check()
            try:
                pool = await self.store.capacity()
            except RDSError as exc:
                log.debug("pool capacity not read: %s", exc)
            else:
                if pool.size is not None and pool.free is not None:
                    self.pool.record(pool.size, pool.free)
        if outcome:
            log.info("reconcile (%s): %s", ", ".join(sorted(reasons)), dict(outcome))

    def summary(self) -> tuple[str, list[str]]:
        """What a new leader starts from (the StartupReconciliation event)."""
        volumes = list(self.record.volume_ids())
        attached = sum(1 for v in volumes if self.attachments.nodes(v))
        claims = sum(len(self.record.observe(v).claims) for v in volumes)
        source = "VolumeAttachment(s)" if isinstance(self.record, ClusterRecord) else "record(s)"
        problems = []
        for vid in volumes:
            holders = self.record.observe(vid).holders()
            limit = 2 if self.record.observe(vid).rwx_block else 1
            if len(holders) > limit:
                problems.append(
                    f"volume {vid} is recorded on nodes {', '.join(c.node for c in holders)}; "
                    f"keeping {', '.join(c.node for c in holders[:limit])}"
                )
        return f"{attached} attached volume(s) from {claims} {source}", problems


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

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        return True, "ok"


def build_node(
    config: DriverConfig,
    clock: Clock,
    sink: EventSink,
    registry: CollectorRegistry = REGISTRY,
    listeners: Iterable[object] = (),
) -> NodeApp:
    """`listeners`: more transition listeners beside the log (e.g. `rdscsi demo`'s narrator)."""
    bind_metrics(sink, registry)
    machines = build_machines(
        clock,
        sink,
        lambda reason: None,
        registry,
        extra_listeners=(TransitionLogger(), *listeners),
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
    identity: str = "controller",
    listeners: Iterable[object] = (),
) -> ControllerApp:
    """The controller; with `config.node` the same process serves the Node service too
    (`rdscsi run`), sharing one set of machines and metrics. With `config.kubernetes` its
    attachment record is a `ClusterRecord` for `cluster.ClusterBinding` to feed.
    `listeners`: more transition listeners beside the log (e.g. `rdscsi demo`'s narrator)."""
    rds_cfg = config.rds
    # The reconciler's pass needs the app; the app needs the engines the reconciler feeds.
    holder: list[ControllerApp] = []

    async def run_pass(reasons: frozenset[str]) -> None:
        await holder[0]._reconcile(reasons)

    reconciler = Reconciler(run_pass, registry=registry, clock=clock)
    bind_metrics(sink, registry)
    machines = build_machines(
        clock, sink, reconciler, registry, extra_listeners=(TransitionLogger(), *listeners)
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
            health_interval=rds_cfg.health_interval,
            health_timeout=rds_cfg.health_timeout,
            keepalive_interval=rds_cfg.keepalive_interval,
            keepalive_count=rds_cfg.keepalive_count,
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

    def changed(volume_id: str) -> None:
        reconciler.trigger("attachment")

    record: AttachmentRecord
    if config.kubernetes:
        record = ClusterRecord(clock, on_change=changed)
    else:
        state = Path(config.state_dir) / "attachments.json" if config.state_dir else None
        record = LocalRecord(clock, state, on_change=changed)
    directory = NodeBook(machines.node, clock)
    if config.known_nodes and not config.kubernetes:
        # Standalone: an in-memory view of the configured nodes feeds the same machines the
        # Kubernetes informer feeds in a cluster.
        for name in config.known_nodes:
            directory.observe(NodeView(name, ready=True))
        directory.synced = True
    deriver = Deriver(
        machines.attachment,
        directory,
        clock,
        Timing(grace_s=config.grace_period, migration_s=config.migration_timeout),
    )
    attachments = AttachmentBook(deriver, record)
    passes = AttachmentPass(deriver, record)
    leadership = Leadership(
        reconciler,
        sink,
        rds_cfg.name,
        identity,
        lambda: True,
        lambda: holder[0].summary(),
        on_lost=passes.clear,
        registry=registry,
    )
    identity_service = IdentityService(config.name, True, rds.ready)
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
        record,
        attachments,
        directory,
        passes,
        reconciler,
        leadership,
        CSIServer(config.socket_path, identity_service, controller, node, registry=registry),
        clock,
        pool,
    )
    holder.append(app)
    return app
