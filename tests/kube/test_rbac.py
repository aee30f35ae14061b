"""The controller's API calls against the RBAC it ships: FakeKube authorizes every request
with the rendered deploy/kubernetes roles of the driver container alone (403 outside them),
and each recorded call is matched, verb, namespace and object name included, against the
rules `rdscsi.io.kube.rbac` declares. Nothing declared goes unused."""

from __future__ import annotations

from pathlib import Path

from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry

from rdscsi.app import build_controller
from rdscsi.clock import ManualClock
from rdscsi.cluster import ClusterBinding
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.hooks.events import NORMAL, ClusterEvent, ObjectRef
from rdscsi.io.kube.events import KubeEventSink, KubeRef
from rdscsi.io.kube.rbac import controller_rules, node_rules
from rdscsi.testing.kubeapi import Access, Authorizer, FakeKube, User
from rdscsi.testing.kubeapi.objects import node, pv, volume_attachment
from tests.deploy.test_manifests import BASE, render

from .conftest import until

DRIVER = "rds.csi.mikrotik.com"
NAMESPACE = "rdscsi-system"
SA = User.service_account(NAMESPACE, "rdscsi-controller")
TOKEN = "driver-token"


def driver_roles() -> list[dict[str, object]]:
    """The driver container's own RBAC from the manifests (not the sidecars' roles, which
    are bound to the same ServiceAccount and would hide a missing rule)."""
    kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    return [
        o
        for o in render(BASE)
        if o["kind"] in kinds and o["metadata"]["name"] == "rdscsi-controller"
    ]


def declared() -> Authorizer:
    """The rules rbac.py declares, as RBAC objects: cluster-wide ones in a ClusterRole, the
    namespaced ones in a Role of the driver's namespace."""
    cluster, local = [], []
    for r in controller_rules(DRIVER):
        rule = {"apiGroups": [r.group], "resources": [r.resource], "verbs": sorted(r.verbs)}
        if r.names:
            rule["resourceNames"] = sorted(r.names)
        (local if r.namespaced else cluster).append(rule)
    subject = [{"kind": "ServiceAccount", "name": "rdscsi-controller", "namespace": NAMESPACE}]
    return Authorizer(
        [
            {"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": cluster},
            {"kind": "Role", "metadata": {"name": "r", "namespace": NAMESPACE}, "rules": local},
            {
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "c"},
                "subjects": subject,
                "roleRef": {"kind": "ClusterRole", "name": "c"},
            },
            {
                "kind": "RoleBinding",
                "metadata": {"name": "r", "namespace": NAMESPACE},
                "subjects": subject,
                "roleRef": {"kind": "Role", "name": "r"},
            },
        ]
    )


async def test_the_controller_stays_within_its_shipped_rbac(tmp_path: Path) -> None:
    clock = ManualClock()
    async with FakeKube(clock=clock, authorizer=Authorizer(driver_roles())) as kube:
        kube.grant(TOKEN, SA)
        kube.put(node("n1"))
        kube.put(pv("pv-1", DRIVER, "vol-1", claim=("apps", "data")))
        kube.put(volume_attachment("csi-1", DRIVER, "n1", "pv-1"))
        config = DriverConfig(
            controller=True,
            kubernetes=True,
            endpoint=f"unix://{tmp_path / 'csi.sock'}",
            rds=ApplianceConfig(address="127.0.0.1", port=9, insecure_skip_host_key_check=True),
            lease_namespace=NAMESPACE,
        ).validate()
        api = ApiClient(kube.configuration(TOKEN))
        registry = CollectorRegistry()
        sink = KubeEventSink(
            api,
            f"{DRIVER}/controller",
            "ctl-0",
            "default",
            clock,
            appliance_ref=KubeRef("Pod", "ctl-0", NAMESPACE),
        )
        app = build_controller(config, clock, sink, registry, identity="ctl-0")
        binding = ClusterBinding(app, api, sink, clock, "ctl-0", registry=registry)
        sink.start()
        await app.start(serve=False, lead=False)
        await binding.start()
        try:
            await until(lambda: app.leadership.leading, "leadership")
            event = ClusterEvent("R", NORMAL, ObjectRef("PersistentVolume", "pv-1"), "x", "A")
            sink.emit(event)
            sink.emit(ClusterEvent("R", NORMAL, ObjectRef("Node", "n1"), "x", "A"))
            # StartupReconciliation (on the Pod), the PV's and the Node's
            await until(lambda: sink.stats.sent == 3, "three events")
            sink.emit(event)  # a repeat: its series is patched
            await until(lambda: sink.stats.series_patches == 1, "the series")
            # the orphan sweep's claimants: the PVs in view, the VolumeSnapshotContents
            claims = await binding.claims()
            assert claims.volumes == {"vol-1"} and claims.snapshots == frozenset()
            renewed = binding.elector.attempts
            clock.advance(config.retry_period)
            await until(lambda: binding.elector.attempts > renewed, "a renewal")
            await kube.wait_watchers(3, "")
        finally:
            await binding.stop()  # releases the Lease: an update
            await app.stop()
            await sink.stop()
            await api.close()

        assert kube.denied == [], kube.denied
        rules = declared()
        accesses = kube.accesses()
        outside = [a for a in accesses if not rules.allows(SA, a)]
        assert outside == [], outside
        # Namespace and name: the Lease is only ever read and written by its own name.
        leases = [a for a in accesses if a.resource == "leases"]
        assert {(a.verb, a.namespace, a.name) for a in leases} <= {
            ("create", NAMESPACE, ""),
            ("get", NAMESPACE, f"{DRIVER}-controller"),
            ("update", NAMESPACE, f"{DRIVER}-controller"),
        }
        # ...and nothing is declared that the code never uses.
        used = {(a.group, a.resource, a.verb) for a in accesses}
        wanted = {(r.group, r.resource, v) for r in controller_rules(DRIVER) for v in r.verbs}
        assert used == wanted


def test_the_declared_rules_are_not_looser_than_needed() -> None:
    rules = declared()
    # A Lease of another name, or in another namespace, is out of bounds.
    assert not rules.allows(SA, Access("get", "coordination.k8s.io", "leases", NAMESPACE, "x"))
    assert not rules.allows(
        SA, Access("update", "coordination.k8s.io", "leases", "kube-system", f"{DRIVER}-controller")
    )
    assert not rules.allows(
        SA, Access("create", "coordination.k8s.io", "leases", "kube-system", "")
    )
    # Nothing the driver never does: no deletes, no node writes, no status writes.
    for access in (
        Access("delete", "storage.k8s.io", "volumeattachments", "", "csi-1"),
        Access("patch", "", "nodes", "", "n1"),
        Access("patch", "storage.k8s.io", "volumeattachments/status", "", "csi-1"),
        Access("list", "", "secrets", "kube-system", ""),
    ):
        assert not rules.allows(SA, access), access


def node_roles() -> list[dict[str, object]]:
    """The node plugin's RBAC from the manifests."""
    kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    return [
        o for o in render(BASE) if o["kind"] in kinds and o["metadata"]["name"] == "rdscsi-node"
    ]


async def test_the_node_plugin_reports_its_host_nqn_within_its_shipped_rbac() -> None:
    from rdscsi.io.kube.hostnqn import HostNQNReporter

    clock = ManualClock()
    node_sa = User.service_account(NAMESPACE, "rdscsi-node")
    nqn = "nqn.2014-08.org.nvmexpress:uuid:0b1c2d3e-0000-4000-8000-000000000001"
    async with FakeKube(clock=clock, authorizer=Authorizer(node_roles())) as kube:
        kube.grant("node-token", node_sa)
        kube.put(node("n1"))
        kube.put(node("n2"))
        api = ApiClient(kube.configuration("node-token"))
        reporter = HostNQNReporter(api, "n1", DRIVER, nqn, clock, every=300.0)
        reporter.start()
        try:
            await until(lambda: reporter.reported.is_set(), "the report")
            annotations = kube.get("v1", "Node", "n1")["metadata"]["annotations"]  # type: ignore[index]
            assert annotations == {f"{DRIVER}/host-nqn": nqn}
            assert "annotations" not in kube.get("v1", "Node", "n2")["metadata"]  # type: ignore[index]
            # someone removes it: the next report (a resync later) puts it back
            n1 = kube.get("v1", "Node", "n1")
            assert n1 is not None
            del n1["metadata"]["annotations"]
            kube.put(n1)
            clock.advance(300.0)
            await until(lambda: reporter.reports == 2, "the second report")
            assert kube.get("v1", "Node", "n1")["metadata"]["annotations"]  # type: ignore[index]
        finally:
            await reporter.stop()
            await api.close()
        assert kube.denied == [], kube.denied
        used = {(a.group, a.resource, a.verb, a.name) for a in kube.accesses()}
        assert used == {("", "nodes", "patch", "n1")}
        wanted = {(r.group, r.resource, v) for r in node_rules() for v in r.verbs}
        assert {(g, r, v) for g, r, v, _ in used} == wanted


async def test_the_reporter_retries_with_a_growing_delay() -> None:
    from rdscsi.io.kube.hostnqn import HostNQNReporter
    from rdscsi.io.kube.ratelimit import Backoff

    clock = ManualClock()
    async with FakeKube(clock=clock) as kube:
        api = ApiClient(kube.configuration())
        reporter = HostNQNReporter(
            api,
            "n1",
            DRIVER,
            "nqn.2014-08.org.example:n1",
            clock,
            every=300.0,
            backoff=Backoff(initial=1.0, cap=4.0, jitter=0.0),
        )
        reporter.start()  # the Node does not exist yet: 404, then retries
        try:
            await until(lambda: reporter.failures == 1, "a failure")
            clock.advance(1.0)
            await until(lambda: reporter.failures == 2, "a retry after 1 s")
            kube.put(node("n1"))
            clock.advance(2.0)
            await until(lambda: reporter.reported.is_set(), "reported after 2 s more")
        finally:
            await reporter.stop()
            await api.close()
