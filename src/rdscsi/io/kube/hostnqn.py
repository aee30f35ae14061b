"""The node plugin reports its NVMe host NQN on its own Node, for the controller's fence.

With `rds.fence: allow-host` the controller puts a node's host NQN on a disk's allow-list
when it publishes a volume to the node; it reads it from the Node's `<driver>/host-nqn`
annotation (`io.kube.nodes`), which the node plugin writes here: a merge patch of that one
annotation on its own Node, at start and again every `resync_period` (someone may have
removed it), retried with a growing delay while the API server cannot be reached. The NQN
itself is `/etc/nvme/hostnqn`, made once by `rdscsi node-init` and never changed.

The annotation is a report, not a credential: NVMe/TCP host NQNs are not authenticated, so
the fence protects against a node declared dead that reconnects, not against a hostile one
(docs/fencing.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kubernetes.aio.client import ApiClient, CoreV1Api

from ...clock import Clock
from .nodes import host_nqn_annotation
from .ratelimit import Backoff
from .wire import read_json

log = logging.getLogger("rdscsi.kube.hostnqn")


async def report_host_nqn(api: ApiClient, node: str, driver: str, nqn: str) -> None:
    """Write the annotation on Node `node` (merge patch: nothing else changes)."""
    body = {"metadata": {"annotations": {host_nqn_annotation(driver): nqn}}}
    resp = await CoreV1Api(api).patch_node_without_preload_content(
        node, body, _content_type="application/merge-patch+json", _request_timeout=30
    )
    await read_json(resp)


class HostNQNReporter:
    """Keeps the annotation in place for the life of the node plugin."""

    def __init__(
        self,
        api: ApiClient,
        node: str,
        driver: str,
        nqn: str,
        clock: Clock,
        every: float,
        backoff: Backoff | None = None,
    ) -> None:
        self.api = api
        self.node = node
        self.driver = driver
        self.nqn = nqn
        self.clock = clock
        self.every = every
        self.backoff = backoff or Backoff(initial=1.0, cap=60.0)
        self.reports = 0
        self.failures = 0
        self.reported = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="host-nqn")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await report_host_nqn(self.api, self.node, self.driver, self.nqn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API's errors and the transport's alike
                self.failures += 1
                delay = self.backoff.next()
                log.warning(
                    "host NQN not reported on node %s (%r): again in %.0fs; until then the "
                    "controller refuses to publish volumes here",
                    self.node,
                    exc,
                    delay,
                )
                await self.clock.sleep(delay)
                continue
            if not self.reported.is_set():
                log.info("reported host NQN %s on node %s", self.nqn, self.node)
            self.reports += 1
            self.reported.set()
            self.backoff.reset()
            await self.clock.sleep(self.every)
