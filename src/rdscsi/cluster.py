"""Connects a controller replica to its Kubernetes cluster.

- Three informers (`io.kube.informer`): Nodes -> `NodeBook` (the Node machines), this
  driver's VolumeAttachments and PVs -> `ClusterRecord`. Every replica runs them; every
  CSI decision derives from them, so any replica answers every call.
- The CSI socket opens only once all three have synced: no call is answered from an empty
  view.
- A coordination.k8s.io/v1 Lease elects the replica that runs the reconciler
  (`control.leadership`). A replica campaigns only once synced; a holder whose view stops
  being current for longer than `sync_timeout` releases the Lease and campaigns again only
  when current, after a growing delay (never a tight loop).
- Cluster events go to events.k8s.io/v1 through `KubeEventSink`.
- The orphan sweep's claimants: the PVs of the informer's view, this driver's
  VolumeSnapshotContents (listed per sweep) and the operations in flight on this replica.
Standalone mode (`rdscsi run`) uses none of this: the same machines are fed from the local
record and the configured nodes, and the process always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket

from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry

from .app import ControllerApp
from .clock import Clock
from .config import DriverConfig
from .control.nodes import NodeView
from .control.orphans import Claims
from .control.record import ClusterRecord
from .hooks.events import EventSink
from .io.kube.attachments import attachments_resource, volumes_resource
from .io.kube.informer import Informer, InformerMetrics
from .io.kube.lease import LeaderElector, lease_name
from .io.kube.nodes import nodes_resource
from .io.kube.ratelimit import Backoff
from .io.kube.snapshots import snapshot_handles

log = logging.getLogger("rdscsi.cluster")


def instance_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def sync_bound(config: DriverConfig) -> float:
    """How long a leader may go on with a view that is not current before it lets go."""
    return max(30.0, 2 * config.lease_duration)


class ClusterBinding:
    def __init__(
        self,
        app: ControllerApp,
        api: ApiClient,
        sink: EventSink,
        clock: Clock,
        identity: str | None = None,
        *,
        registry: CollectorRegistry | None = None,
        informer_options: dict[str, object] | None = None,
        sync_timeout: float | None = None,
    ) -> None:
        config: DriverConfig = app.config
        if not isinstance(app.record, ClusterRecord):
            raise TypeError("ClusterBinding needs an app built with config.kubernetes")
        self.app = app
        self.api = api
        self.sink = sink
        self.clock = clock
        self.identity = identity or instance_name()
        self.record: ClusterRecord = app.record
        metrics = InformerMetrics(registry)
        options = dict(informer_options or {})
        self.nodes_informer = Informer(
            api,
            nodes_resource(config.name),
            clock,
            self._node,
            metrics=metrics,
            **options,  # type: ignore[arg-type]
        )
        self.attachments_informer = Informer(
            api,
            attachments_resource(config.name),
            clock,
            self.record.attachment_changed,
            metrics=metrics,
            **options,  # type: ignore[arg-type]
        )
        self.volumes_informer = Informer(
            api,
            volumes_resource(config.name),
            clock,
            self.record.volume_changed,
            metrics=metrics,
            **options,  # type: ignore[arg-type]
        )
        self.informers: tuple[Informer[object], ...] = (
            self.nodes_informer,  # type: ignore[assignment]
            self.volumes_informer,  # type: ignore[assignment]
            self.attachments_informer,  # type: ignore[assignment]
        )
        self.namespace = config.lease_namespace or os.environ.get("POD_NAMESPACE") or "kube-system"
        self.elector = LeaderElector(
            api,
            self.namespace,
            lease_name(config.name),
            self.identity,
            clock,
            lease_duration=config.lease_duration,
            renew_deadline=config.renew_deadline,
            retry_period=config.retry_period,
            on_started_leading=self._lead,
            on_stopped_leading=self._follow,
        )
        self.sync_timeout = sync_bound(config) if sync_timeout is None else sync_timeout
        # Growing pause before campaigning again after a release for not being in sync.
        self._recampaign = Backoff(
            initial=config.lease_duration, cap=10 * config.lease_duration, jitter=0.2
        )
        self._releasing = False
        self.synced = asyncio.Event()  # all informers listed, the CSI socket open
        self.releases = 0  # Lease given back for not being in sync
        self._task: asyncio.Task[None] | None = None
        app.leadership.lease_held = lambda: self.elector.is_leader
        app.ready_checks.append(self._current_check)
        app.live_checks.append(self.alive)
        app.audit.claims = self.claims

    async def claims(self) -> Claims:
        """Who accounts for which volume and snapshot ids, for the orphan sweep."""
        record = self.record
        volumes = frozenset(v.handle for v in record.volumes.values()) if self.current() else None
        snapshots = await snapshot_handles(self.api, self.app.config.name)
        busy = self.app.locks.keys() | record.in_flight()
        return Claims(volumes, snapshots, frozenset(busy))

    # --- views in ---------------------------------------------------------------------------

    def _node(self, key: str, old: NodeView | None, new: NodeView | None) -> None:
        if new is None:
            if old is not None:
                self.app.nodes.observe(dataclasses.replace(old, deleted=True))
            return
        self.app.nodes.observe(new)

    def current(self) -> bool:
        return all(i.current for i in self.informers)

    def _current_check(self) -> tuple[bool, str]:
        stale = [i.resource.name for i in self.informers if not i.current]
        if stale:
            return False, f"cluster view not current: {', '.join(stale)}"
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        """A crashed informer, elector or binding task is a bug: restart the process."""
        tasks = [self._task, self.elector._task, *(i.task for i in self.informers)]
        for task in tasks:
            if task is not None and task.done() and not task.cancelled() and task.exception():
                return False, f"task {task.get_name()} crashed: {task.exception()!r}"
        return True, "ok"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the informers; the socket and the campaign follow once they have synced
        (in the background: an unreachable API server must not block shutdown)."""
        for informer in self.informers:
            informer.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-binding")

    async def _run(self) -> None:
        await asyncio.gather(*(i.has_synced.wait() for i in self.informers))
        self.app.nodes.synced = True
        log.info(
            "cluster view synced: %d node(s), %d VolumeAttachment(s), %d PV(s) of this driver",
            len(self.nodes_informer.store),
            len(self.attachments_informer.store),
            len(self.volumes_informer.store),
        )
        await self.app.serve()
        self.synced.set()
        self.elector.start()
        await self._watch_sync()

    async def _watch_sync(self) -> None:
        """Release the Lease when the view stays behind for `sync_timeout`."""
        behind_since: float | None = None
        while True:
            await self.clock.sleep(self.elector.retry_period)
            if self.current():
                behind_since = None
                continue
            now = self.clock.monotonic()
            if behind_since is None:
                behind_since = now
            if not self.elector.is_leader or now - behind_since < self.sync_timeout:
                continue
            stale = ", ".join(i.resource.name for i in self.informers if not i.current)
            log.warning(
                "%s: cluster view not current for %.0fs (%s): releasing the Lease",
                self.identity,
                now - behind_since,
                stale,
            )
            self.releases += 1
            self._releasing = True
            try:
                await self.elector.stop(release=True)
            finally:
                self._releasing = False
            while not self.current():
                await self.clock.sleep(self.elector.retry_period)
            await self.clock.sleep(self._recampaign.next())
            behind_since = None
            self.elector.start()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._releasing = True
        try:
            await self.elector.stop(release=True)
        finally:
            self._releasing = False
        for informer in self.informers:
            await informer.stop()

    # --- leadership -------------------------------------------------------------------------

    async def _lead(self) -> None:
        await self.app.leadership.acquired()

    async def _follow(self) -> None:
        await self.app.leadership.lost(released=self._releasing)
