"""Every request the kube package makes is covered by the RBAC rules it declares."""

from __future__ import annotations

import asyncio

from kubernetes.aio.client import ApiClient

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import NORMAL, ClusterEvent, ObjectRef
from rdscsi.io.kube.attachments import list_attachments
from rdscsi.io.kube.events import KubeEventSink
from rdscsi.io.kube.lease import LeaderElector
from rdscsi.io.kube.nodes import NodeWatcher
from rdscsi.io.kube.rbac import CONTROLLER
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi.objects import node, pv, volume_attachment

from .conftest import until

DRIVER = "rds.csi.mikrotik.com"


async def test_requests_stay_within_the_declared_rules(
    kube: FakeKube, api: ApiClient, clock: ManualClock
) -> None:
    kube.put(node("n1"))
    kube.put(pv("pv-1", DRIVER, "vol-1", claim=("apps", "data")))
    kube.put(volume_attachment("csi-1", DRIVER, "n1", "pv-1"))

    watcher = NodeWatcher(api, lambda v: None, clock)
    sink = KubeEventSink(api, f"{DRIVER}/controller", "ctl-0", "default", clock)
    leader = LeaderElector(api, "rds-csi", "lease", "ctl-0", clock)
    watcher.start()
    sink.start()
    leader.start()
    try:
        await list_attachments(api, DRIVER)
        sink.emit(ClusterEvent("R", NORMAL, ObjectRef("PersistentVolume", "pv-1"), "x", "A"))
        sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", "n1"), "x", "A"))
        await until(lambda: sink.stats.posted == 2, "events")
        await until(lambda: leader.is_leader, "leadership")
        clock.advance(2.0)
        await until(lambda: leader.attempts == 2, "a renewal")
        await asyncio.wait_for(watcher.synced.wait(), 5)
        await kube.wait_watchers(1, "/api/v1/nodes")
    finally:
        await leader.stop()
        await sink.stop()
        await watcher.stop()

    used: dict[tuple[str, str], set[str]] = {}
    for access in kube.accesses():
        used.setdefault((access.group, access.resource), set()).add(access.verb)
    for key, verbs in used.items():
        assert key in CONTROLLER, f"{key} used but not declared"
        assert verbs <= CONTROLLER[key], f"{key}: {verbs - CONTROLLER[key]} not declared"
    # ...and nothing is declared that the code never uses.
    assert {k: frozenset(v) for k, v in used.items()} == CONTROLLER
