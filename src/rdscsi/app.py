"""Assembles the controller: machines, the fleet (one connection and volume store per
appliance), the attachment record and its derivation, the reconciler with its leadership,
and the CSI server.
`rdscsi serve` and `rdscsi run` both start one of these.

Standalone (`rdscsi run`, or `serve --controller` without `--kubernetes`) the attachment
record is local (a JSON file under `state_dir`), the nodes are the configured ones and the
process always leads. In a cluster (`cluster.ClusterBinding`) the record and the nodes come
from informers and the Lease decides who runs the reconciler.

With `fence: allow-host` on an appliance the controller fences at it (`control.fence`) and
takes session evidence from it (`control.evidence`); the leader also sweeps each appliance
(`control.audit`: the fence's convergence and the orphan sweep), each in a task of its own,
when it first connects, after each reconnect to it, when a new leader starts and every
`sweep_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes.aio.client import ApiClient
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from .appliances import Appliance, Appliances, ApplianceTasks, Unresolved
from .clock import Clock, TimerHandle
from .config import ApplianceConfig, DriverConfig
from .control.audit import ApplianceAudit, FleetAudit
from .control.derive import Deriver, Timing
from .control.evidence import SessionEvidence, SessionReader
from .control.fence import Fencer
from .control.leadership import Leadership
from .control.nodes import NodeBook, NodeView
from .control.orphans import Claims, OrphanSweep, SweepSettings, sweep_counter
from .control.reconcile import AttachmentPass
from .control.record import AttachmentRecord, ClusterRecord, LocalRecord
from .control.triggers import Reconciler
from .csi.attachments import AttachmentBook
from .csi.controller import ControllerService, ControllerSettings
from .csi.identity import IdentityService
from .csi.locks import OperationLocks
from .csi.node import NodeService, NodeSettings
from .csi.server import CSIServer
from .csi.topology import Layout
from .hooks.events import EventSink, bind_metrics
from .hooks.log import TransitionLogger
from .hooks.wiring import Machines, build_machines
from .io.host.identity import read_host_nqn
from .io.host.loop import LoopTransport
from .io.host.nvme import NvmeTransport
from .io.host.transport import Transport
from .io.kube.hostnqn import HostNQNReporter
from .io.rds.commands import CommandBuilder
from .io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from .io.rds.errors import RDSError
from .io.rds.orphans import OrphanStore
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
        self.tasks = ApplianceTasks()

    def start(self) -> None:
        for appliance in self.appliances:
            if appliance.rds.connected and not self.tasks.busy(appliance.name):
                self.tasks.start(appliance.name, "pool", self._read(appliance))

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
        await self.tasks.wait()

    async def stop(self) -> None:
        await self.tasks.stop()


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
    audit: FleetAudit
    locks: OperationLocks
    pool: PoolRefresh | None = None
    # What else must hold for readiness (a cluster: every informer current) and liveness (a
    # cluster: no informer or elector task crashed).
    ready_checks: list[Health] = field(default_factory=list)
    live_checks: list[Health] = field(default_factory=list)
    _resync: TimerHandle | None = None
    _due: TimerHandle | None = None
    _sweep: TimerHandle | None = None

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
        self._arm_sweep()
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

    def _arm_sweep(self) -> None:
        # The appliance sweep (fences, orphans): on every replica, like the resync; only a
        # leader's reconciler runs (at start and after a reconnect too: their triggers).
        def fire() -> None:
            self.reconciler.trigger("sweep")
            self._arm_sweep()

        self._sweep = self.clock.call_later(self.config.sweep_interval, fire)

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
        for timer in (self._resync, self._due, self._sweep):
            if timer is not None:
                timer.cancel()
        await self.server.stop()
        await self.leadership.lost(released=True)
        if self.pool is not None:
            await self.pool.stop()
        await self.audit.stop()
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
        # Each connected appliance's listing, side by side (a hung one is not waited for
        # past `audit.wait_s`): evidence for that appliance's volumes only.
        sessions = await self.audit.sessions()
        outcome = self.passes.run(sessions)
        self._arm_due()
        # The fence and sweep work, per appliance in its own task; the pass goes on without
        # an appliance still busy after `audit.wait_s` (it finishes alone).
        done = await self.audit.after_pass(reasons)
        if done.fenced_out:
            outcome["fenced_out"] += done.fenced_out
        if done.restored:
            outcome["orphans_restored"] += done.restored
        if self.pool is not None:
            # Each pass also refreshes every appliance's pool figures, so the dashboard sees
            # capacity even when no provisioner is asking: per appliance, in the background.
            self.pool.start()
        if outcome:
            log.info("reconcile (%s): %s", ", ".join(sorted(reasons)), dict(outcome))

    def forget_led(self) -> None:
        """Leadership lost: the kept attachment models and orphan machines go (and their
        gauges); the next leader derives them again."""
        self.passes.clear()
        self.audit.clear()

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
        admission = None
        if config.loop_control:
            from .sim.admission import SimAdmission  # the simulator's side: only for loop

            nqn = read_host_nqn(Path(config.host_nqn_file))
            if nqn is None:
                raise ValueError(
                    f"host_nqn_file: {config.host_nqn_file} holds no host NQN; the loop "
                    "transport asks the simulator to admit this host by it"
                )
            sockets = [Path(p) for p in config.loop_control.split(",") if p]
            admission = SimAdmission(sockets, nqn)
        transports["loop"] = LoopTransport(Path(config.loop_root), admission=admission)
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
    """`serve --node` alone: Identity and Node, no appliance connection. In a cluster it also
    reports this host's NVMe host NQN on its Node (`io.kube.hostnqn`): the controller's fence."""

    config: DriverConfig
    machines: Machines
    node: NodeService
    server: CSIServer
    host_nqn: str | None = None
    reporter: HostNQNReporter | None = None

    async def start(self) -> None:
        await self.node.cleanup_orphans()
        if self.reporter is not None:
            self.reporter.start()
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        if self.reporter is not None:
            await self.reporter.stop()

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        task = self.reporter.task if self.reporter is not None else None
        if task is not None and task.done() and not task.cancelled() and task.exception():
            return False, f"host NQN reporter crashed: {task.exception()!r}"
        return True, "ok"


def build_node(
    config: DriverConfig,
    clock: Clock,
    sink: EventSink,
    registry: CollectorRegistry = REGISTRY,
    listeners: Iterable[object] = (),
    api: ApiClient | None = None,
) -> NodeApp:
    """`listeners`: more transition listeners beside the log (e.g. `rdscsi demo`'s narrator).
    With `api` (a cluster) the node's host NQN is reported on its Node."""
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
    host_nqn = read_host_nqn(Path(config.host_nqn_file))
    reporter = None
    if api is not None:
        if host_nqn is None:
            log.error(
                "%s holds no NVMe host NQN (node-init writes it): the controller refuses to "
                "publish volumes to node %s until it is reported",
                config.host_nqn_file,
                config.node_id,
            )
        else:
            reporter = HostNQNReporter(
                api, config.node_id, config.name, host_nqn, clock, config.resync_period
            )
    return NodeApp(
        config,
        machines,
        node,
        CSIServer(config.socket_path, identity, node=node, registry=registry),
        host_nqn,
        reporter,
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

    # The fence's and sweep's series carry each volume's appliance, like the fleet's others.
    machines.metrics.appliance_of = lambda vid: appliances.appliance_of(vid) or "unknown"
    for appliance in appliances:
        machines.metrics.preset(appliance.name)

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
        # Kubernetes informer feeds in a cluster (their host NQNs too: the configured ones,
        # or this host's for the Node service in this process).
        for name, nqn in config.known_host_nqns().items():
            if nqn is None and config.node and name == config.node_id:
                nqn = read_host_nqn(Path(config.host_nqn_file))
            directory.observe(NodeView(name, ready=True, host_nqn=nqn))
        directory.synced = True
    deriver = Deriver(
        machines.attachment,
        directory,
        clock,
        Timing(grace_s=config.grace_period, migration_s=config.migration_timeout),
    )

    # The fence is each appliance's own setting (`fence:` in its section): one Fencer for
    # the fleet, writing each volume's allow-list on its own appliance by its slot.
    fencing = any(a.fence for a in appliances)

    def locate(volume_id: str) -> tuple[VolumeStore, str]:
        where = appliances.locate(volume_id)
        return where.appliance.store, where.slot

    fencer = Fencer(machines.attachment, directory, clock, locate) if fencing else None
    reader = SessionReader(directory, clock.monotonic, registry) if fencing else None
    for appliance in appliances:
        if reader is not None and appliance.fence:
            reader.preset(appliance.name)

    async def sessions(volume_id: str) -> SessionEvidence | None:
        # A ControllerPublish meeting a lost holder: a listing of this volume's appliance.
        try:
            where = appliances.locate(volume_id)
        except Unresolved:
            return None
        appliance = where.appliance
        if reader is None or not appliance.fence or not appliance.rds.connected:
            return None
        return await reader.read(
            appliance.store,
            appliance.name,
            appliance.export_nqn,
            lambda vid: appliances.slot_on(appliance, vid),
        )

    attachments = AttachmentBook(
        deriver, record, fencer=fencer, sessions=sessions if fencing else None
    )
    passes = AttachmentPass(deriver, record, fencing=fencing)
    locks = OperationLocks()

    async def standalone_claims() -> Claims:
        # No PVs or VolumeSnapshotContents standalone: only operations in flight are known.
        return Claims(None, None, locks.keys())

    settings = SweepSettings(config.orphans, config.orphan_min_age, config.orphan_retention)
    sweeps = sweep_counter(registry)
    leadership = Leadership(
        reconciler,
        sink,
        ", ".join(appliances.names),
        identity,
        lambda: True,
        lambda: holder[0].summary(),
        on_lost=lambda: holder[0].forget_led(),
        registry=registry,
    )
    identity_service = IdentityService(config.name, True, appliances.ready)
    gauge = PoolGauge(registry)
    controller = ControllerService(
        ControllerSettings(plugin_name=config.name, transport=config.transport),
        appliances,
        attachments,
        directory,
        locks=locks,
        on_pool=gauge.record,
    )
    audit = FleetAudit(
        appliances,
        [
            ApplianceAudit(
                appliance,
                appliances,
                passes,
                deriver,
                record,
                leadership.check,
                standalone_claims,  # the cluster binding sets the cluster's
                fencer=fencer,
                reader=reader,
                sweep=OrphanSweep(
                    machines.orphan,
                    OrphanStore(appliance.store),
                    clock,
                    settings,
                    appliance.export_nqn,
                    appliance.name,
                    counter=sweeps,
                ),
            )
            for appliance in appliances
        ],
        reconciler.trigger,
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
        audit,
        locks,
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
        fence=cfg.fence == "allow-host",
        nqn_prefix=cfg.nqn_prefix,
    )
