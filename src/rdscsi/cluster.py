"""Connects a controller to its Kubernetes cluster.

- Node informer → `NodeBook` (Node machines; their hooks trigger reconcile passes).
- Leadership (a coordination.k8s.io/v1 Lease): only the holder reconciles and mutates. On
  winning it rebuilds the attachments from this driver's attached VolumeAttachments, posts
  `StartupReconciliation` and runs a pass; on losing it stops reconciling at once (mutating
  RPCs already refuse through `is_leader`).
- Cluster events go to events.k8s.io/v1 through `KubeEventSink`.
Standalone mode (`rdscsi run`) uses none of this: the same machines are fed from an
in-memory view of the local node, and the controller is always the leader.
"""

from __future__ import annotations

import logging
import os
import socket

from kubernetes.aio.client import ApiClient

from .app import ControllerApp
from .clock import Clock
from .config import DriverConfig
from .control.nodes import NodeView
from .hooks.events import NORMAL, WARNING, ClusterEvent, EventSink, ObjectRef
from .io.kube.attachments import held_by_volume, list_attachments
from .io.kube.lease import LeaderElector
from .io.kube.nodes import NodeWatcher

log = logging.getLogger("rdscsi.cluster")


def instance_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


class ClusterBinding:
    def __init__(
        self,
        app: ControllerApp,
        api: ApiClient,
        sink: EventSink,
        clock: Clock,
        identity: str | None = None,
    ) -> None:
        config: DriverConfig = app.config
        self.app = app
        self.api = api
        self.sink = sink
        self.clock = clock
        self.identity = identity or instance_name()
        self.watcher = NodeWatcher(api, self._node_view, clock)
        namespace = config.lease_namespace or os.environ.get("POD_NAMESPACE") or "kube-system"
        self.elector = LeaderElector(
            api,
            namespace,
            f"{config.name}-controller",
            self.identity,
            clock,
            lease_duration=config.lease_duration,
            renew_deadline=config.renew_deadline,
            retry_period=config.retry_period,
            on_started_leading=self._lead,
            on_stopped_leading=self._follow,
        )
        self.rebuilds = 0
        assert app.server.controller is not None
        app.server.controller._is_leader = lambda: self.elector.is_leader

    def _node_view(self, view: NodeView) -> None:
        self.app.nodes.observe(view, self.clock.monotonic())
        if self.watcher.synced.is_set():
            self.app.nodes.synced = True

    async def start(self) -> None:
        self.watcher.start()
        self.elector.start()

    async def stop(self) -> None:
        await self.elector.stop()
        await self.watcher.stop()

    async def _lead(self) -> None:
        """Won the Lease: rebuild from what the cluster records, then reconcile."""
        log.info("%s is the leader: rebuilding attachments", self.identity)
        await self.watcher.synced.wait()
        self.app.nodes.synced = True
        try:
            views = await list_attachments(self.api, self.app.config.name)
        except Exception as exc:  # the API failed: do not act on a partial picture
            log.error("startup reconciliation failed, giving up the Lease: %s", exc)
            await self.elector.stop()
            self.elector.start()
            return
        problems = self.app.attachments.rebuild(held_by_volume(views))
        self.rebuilds += 1
        for problem in problems:
            log.warning("startup reconciliation: %s", problem)
        self.sink.emit(
            ClusterEvent(
                "StartupReconciliation",
                WARNING if problems else NORMAL,
                ObjectRef("Appliance", self.app.rds.config.name),
                f"{self.identity} leads: rebuilt {len(self.app.attachments.models)} "
                f"attachment(s) from {len(views)} VolumeAttachment(s)"
                + (f"; {'; '.join(problems)}" if problems else ""),
                "Reconcile",
            )
        )
        self.app.reconciler.start()
        self.app.reconciler.trigger("startup")

    async def _follow(self) -> None:
        log.warning("%s lost the Lease: reconciliation stopped", self.identity)
        await self.app.reconciler.stop()
