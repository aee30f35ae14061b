"""Assembles the controller: machines, the fleet (one connection and volume store per
appliance), the attachment record and its derivation, the reconciler with its leadership,
and the CSI server.
`rdscsi serve` and `rdscsi run` both start one of these.

Standalone (`rdscsi run`, or `serve --controller` without `--kubernetes`) the attachment
record is local (a JSON file under `state_dir`), the nodes are the configured ones and the
process always leads. In a cluster (`cluster.ClusterBinding`) the record and the nodes come
from informers and the Lease decides who runs the reconciler.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from .appliances import Appliance, Appliances
from .clock import Clock, TimerHandle
from .config import ApplianceConfig, DriverConfig
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
from .csi.topology import Layout
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
    """`rds_csi_pool_bytes{appliance,kind="size|free"}`: each appliance's pool as last read."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "rds_csi_pool_bytes",
            "Appliance storage pool bytes, as last read",
            ["appliance", "kind"],
            registry=registry,
        )

    def record(self, appliance: str, size: int, free: int) -> None:
        self.gauge.labels(appliance, "size").set(size)
        self.gauge.labels(appliance, "free").set(free)


class PoolRefresh:
    """Each reconcile pass reads every connected appliance's pool in a task of its own, at
    most one per appliance at a time: a slow or hung appliance delays neither the pass nor
    the other appliances' reads (it is bounded by its command timeout)."""

    def __init__(self, appliances: Appliances, gauge: PoolGauge, check: Callable[[], None]):
        self.appliances = appliances
        self.gauge = gauge
        self.check = check  # leadership, before every command
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        for appliance in self.appliances:
            running = self.tasks.get(appliance.name)
            if appliance.rds.connected and (running is None or running.done()):
                self.tasks[appliance.name] = asyncio.get_running_loop().create_task(
                    self._read(appliance), name=f"pool-{appliance.name}"
                )

    async def _read(self, appliance: Appliance) -> None:
        try:
            self.check()
            pool = await appliance.store.capacity()
        except RDSError as exc:
            log.debug("appliance %s: pool capacity not read: %s", appliance.name, exc)
        except Exception as exc:
            log.debug("appliance %s: pool capacity not read: %r", appliance.name, exc)
        else:
            if pool.size is not None and pool.free is not None:
                self.gauge.record(appliance.name, pool.size, pool.free)

    async def wait(self) -> None:
        """Until the reads under way have finished (tests, and a clean stop)."""
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def stop(self) -> None:
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


@dataclass
class ControllerApp:
    config: DriverConfig
    machines: Machines
    appliances: Appliances
    record: AttachmentRecord
    attachments: AttachmentBook
    nodes: NodeBook
    passes: AttachmentPass
    reconciler: Reconciler
    leadership: Leadership
    server: CSIServer
    clock: Clock
    pool: PoolRefresh | None = None
    # What else must hold for readiness (a cluster: every informer current) and liveness (a
    # cluster: no informer or elector task crashed).
    ready_checks: list[Health] = field(default_factory=list)
    live_checks: list[Health] = field(default_factory=list)
    _resync: TimerHandle | None = None
    _due: TimerHandle | None = None

    @property
    def rds(self) -> RDSConnection:
        """The default (else the first) appliance's connection: with one appliance, its."""
        return self._first.rds

    @property
    def store(self) -> VolumeStore:
        """The default (else the first) appliance's volume store."""
        return self._first.store

    @property
    def _first(self) -> Appliance:
        return self.appliances.default or next(iter(self.appliances))

    async def start(self, serve: bool = True, lead: bool = True) -> None:
        """`serve=False`: the CSI socket opens later (`serve()`), once the caller's sources
        have synced. `lead=False`: leadership comes from elsewhere (the Lease)."""
        if self.server.node is not None:
            await self.server.node.cleanup_orphans()
        self._arm_resync()
        for appliance in self.appliances:
            await appliance.rds.start()  # returns at once; an unreachable one means backoff
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
        if self.pool is not None:
            await self.pool.stop()
        await asyncio.gather(*(a.rds.close() for a in self.appliances))

    # --- health ---------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Readiness: an appliance connection is up (with several, the body names those
        that are not; see `Appliances.ready`), and the cluster view current."""
        ok, why = self.appliances.readiness()
        if not ok:
            return False, why
        for check in self.ready_checks:
            fine, reason = check()
            if not fine:
                return False, reason
        return True, why

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
        if self.pool is not None:
            # Each pass also refreshes every appliance's pool figures, so the dashboard sees
            # capacity even when no provisioner is asking: per appliance, in the background.
            self.pool.start()
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


def layout_of(config: DriverConfig) -> Layout:
    """The fleet's names and topology keys, as the controller and every node see them."""
    return Layout(config.name, tuple(a.name for a in config.fleet), config.default_appliance)


def node_transports(config: DriverConfig) -> dict[str, Transport]:
    prefixes = sorted({a.nqn_prefix for a in config.fleet})
    transports: dict[str, Transport] = {"nvme-tcp": NvmeTransport(prefixes)}
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
            topology=layout_of(config).node_segments(config.node_appliances),
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
    # The reconciler's pass needs the app; the app needs the engines the reconciler feeds.
    holder: list[ControllerApp] = []

    async def run_pass(reasons: frozenset[str]) -> None:
        await holder[0]._reconcile(reasons)

    reconciler = Reconciler(run_pass, registry=registry, clock=clock)
    bind_metrics(sink, registry)
    machines = build_machines(
        clock, sink, reconciler, registry, extra_listeners=(TransitionLogger(), *listeners)
    )
    rng = rng or random.Random()
    command_metrics = CommandMetrics(registry)
    layout = layout_of(config)
    appliances = Appliances(
        layout,
        [build_appliance(config, a, machines, clock, rng, command_metrics) for a in config.fleet],
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
        ", ".join(appliances.names),
        identity,
        lambda: True,
        lambda: holder[0].summary(),
        on_lost=passes.clear,
        registry=registry,
    )
    identity_service = IdentityService(config.name, True, appliances.ready)
    gauge = PoolGauge(registry)
    controller = ControllerService(
        ControllerSettings(plugin_name=config.name, transport=config.transport),
        appliances,
        attachments,
        directory,
        on_pool=gauge.record,
    )
    node = build_node_service(config, machines, sink) if config.node else None
    app = ControllerApp(
        config,
        machines,
        appliances,
        record,
        attachments,
        directory,
        passes,
        reconciler,
        leadership,
        CSIServer(config.socket_path, identity_service, controller, node, registry=registry),
        clock,
        PoolRefresh(appliances, gauge, leadership.check),
    )
    holder.append(app)
    return app


def build_appliance(
    config: DriverConfig,
    cfg: ApplianceConfig,
    machines: Machines,
    clock: Clock,
    rng: random.Random,
    metrics: CommandMetrics,
) -> Appliance:
    """One appliance of the fleet: its own connection (Connection machine, backoff, health,
    metrics labelled with its name) and volume store."""
    rds = RDSConnection(
        RDSConfig(
            address=cfg.address,
            port=cfg.port,
            user=cfg.user,
            client_keys=[cfg.key_file] if cfg.key_file else [],
            host_keys=list(cfg.host_keys),
            known_hosts=cfg.known_hosts or None,
            insecure_skip_host_key_check=cfg.insecure_skip_host_key_check,
            max_concurrency=cfg.max_concurrency,
            command_timeout=cfg.command_timeout,
            health_interval=cfg.health_interval,
            health_timeout=cfg.health_timeout,
            keepalive_interval=cfg.keepalive_interval,
            keepalive_count=cfg.keepalive_count,
            appliance=cfg.name,
            section=config.section_of(cfg.name),
        ),
        machines.connection,
        clock,
        rng,
        metrics,
        CommandBuilder(pool_root=cfg.pool_root),
    )
    store = VolumeStore(
        rds,
        StoreSettings(
            pool_root=cfg.pool_root,
            volume_dir=cfg.volume_dir,
            nvme_port=cfg.nvme_port,
            nqn_prefix=cfg.nqn_prefix,
        ),
        clock.wall,
    )
    return Appliance(
        cfg.name,
        rds,
        store,
        cfg.nvme_address or cfg.address,
        default=cfg.name == config.default_appliance,
    )
