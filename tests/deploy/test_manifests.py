"""deploy/kubernetes: rendered like `kustomize build` and checked without a cluster.

A small renderer covers what the base uses (resources, namespace, images); every object is
validated against the Kubernetes OpenAPI schemas bundled with kubernetes-validate (strict:
unknown fields fail), the CRD kinds by hand; then the properties that matter for this driver.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rdscsi.csi import params
from rdscsi.io.kube import rbac

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
SRC = ROOT / "src" / "rdscsi"
DRIVER = "rds.csi.mikrotik.com"
NAMESPACE = "rdscsi-system"
K8S_VERSION = kubernetes_validate.latest_version()
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "StorageClass",
    "VolumeSnapshotClass",
    "PriorityClass",
}
SIDECARS = ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter")

Obj = dict[str, Any]


# --- the renderer ------------------------------------------------------------------------


def _split_image(image: str) -> tuple[str, str]:
    """("registry/name", ":tag" or "@digest" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _containers(obj: Obj) -> Iterator[Obj]:
    spec = obj.get("spec", {}).get("template", {}).get("spec")
    if spec is None:
        return
    for key in ("initContainers", "containers"):
        yield from spec.get(key, [])


def render(base: Path, overrides: dict[str, Any] | None = None) -> list[Obj]:
    """`kustomize build base`, for the fields this base uses; anything else is refused."""
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    kust.update(overrides or {})
    allowed = {"apiVersion", "kind", "resources", "namespace", "images", "commonLabels"}
    unknown = set(kust) - allowed
    assert not unknown, f"the test renderer does not implement {sorted(unknown)}"
    objects: list[Obj] = []
    for entry in kust["resources"]:
        path = base / entry
        assert path.is_file(), f"resources: {entry} is not a file in {base}"
        objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    namespace = kust.get("namespace")
    labels = kust.get("commonLabels", {})
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if namespace and obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
        if labels:
            meta.setdefault("labels", {}).update(labels)
            spec = obj.get("spec", {})
            if "selector" in spec and "template" in spec:
                spec["selector"].setdefault("matchLabels", {}).update(labels)
                spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        for container in _containers(obj):
            name, tag = _split_image(container["image"])
            for image in kust.get("images", []):
                if image["name"] == name:
                    new_tag = (
                        "@" + image["digest"]
                        if "digest" in image
                        else ":" + image["newTag"]
                        if "newTag" in image
                        else tag
                    )
                    container["image"] = image.get("newName", name) + new_tag
    return objects


@cache
def _rendered() -> tuple[Obj, ...]:
    return tuple(render(BASE))


@pytest.fixture
def objects() -> list[Obj]:
    return copy.deepcopy(list(_rendered()))


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_spec(objects: list[Obj], kind: str, name: str) -> Obj:
    spec: Obj = one(objects, kind, name)["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str) -> Obj:
    found = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name}: {len(found)}"
    return found[0]


def flag(c: Obj, name: str) -> str | None:
    """The value of `--name=value` in a container's args ("" for a bare `--name`)."""
    for arg in c.get("args", []):
        if arg == f"--{name}":
            return ""
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
    return None


# --- rendering and schemas ---------------------------------------------------------------


def test_every_resource_file_is_listed_and_rendered(objects: list[Obj]) -> None:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk
    assert kust["namespace"] == NAMESPACE
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), "duplicate objects"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_the_renderer_applies_namespace_and_images() -> None:
    objs = render(
        BASE,
        {
            "namespace": "elsewhere",
            "images": [{"name": "rdscsi", "newName": "reg.example/rdscsi", "newTag": "v1.2.3"}],
        },
    )
    assert one(objs, "Deployment", "rdscsi-controller")["metadata"]["namespace"] == "elsewhere"
    binding = one(objs, "ClusterRoleBinding", "rdscsi-controller")
    assert binding["subjects"][0]["namespace"] == "elsewhere"
    for kind, name in (("Deployment", "rdscsi-controller"), ("DaemonSet", "rdscsi-node")):
        spec = pod_spec(objs, kind, name)
        assert container(spec, "rdscsi")["image"] == "reg.example/rdscsi:v1.2.3"
        assert container(spec, "liveness-probe")["image"].startswith("registry.k8s.io/")


@pytest.mark.parametrize(
    "obj",
    [o for o in _rendered() if (o["apiVersion"], o["kind"]) not in CRD_KINDS],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_builtin_kinds_match_the_kubernetes_schema(obj: Obj) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({K8S_VERSION}): {exc.message}")


def test_every_kind_is_a_schema_kind_or_a_known_crd(objects: list[Obj]) -> None:
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _metric_names() -> set[str]:
    text = (SRC / "hooks" / "metrics.py").read_text() + (
        SRC / "io" / "rds" / "connection.py"
    ).read_text()
    names = set(re.findall(r'"(rds_csi_[a-z_]+)"', text))
    assert 'f"rds_csi_{d.name}_state"' in text, "the per-machine state gauges moved"
    # one rds_csi_<machine>_state gauge per machine; specs/ holds one diagram per machine
    names |= {f"rds_csi_{p.stem}_state" for p in (ROOT / "specs").glob("*.md")}
    return names


def test_crd_objects_have_their_required_structure(objects: list[Obj]) -> None:
    labels_of_pods = [
        (o["spec"]["template"]["metadata"]["labels"], list(_containers(o)))
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
    ]
    seen = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key not in CRD_KINDS:
            continue
        seen.add(key)
        assert set(obj) <= {
            "apiVersion",
            "kind",
            "metadata",
            "spec",
            "driver",
            "deletionPolicy",
            "parameters",
        }
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        if obj["kind"] == "VolumeSnapshotClass":
            assert obj["driver"] == DRIVER
            assert obj["deletionPolicy"] in ("Delete", "Retain")
            assert "spec" not in obj
            assert all(isinstance(v, str) for v in obj.get("parameters", {}).values())
        elif obj["kind"] == "PodMonitor":
            spec = obj["spec"]
            match = spec["selector"]["matchLabels"]
            assert isinstance(match, dict) and match
            endpoints = spec["podMetricsEndpoints"]
            assert endpoints
            selected = [cs for lbls, cs in labels_of_pods if match.items() <= lbls.items()]
            assert len(selected) == 2, "the PodMonitor selects the controller and node pods"
            for ep in endpoints:
                assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
                assert ep["path"].startswith("/")
                for containers in selected:
                    ports = [p for c in containers for p in c.get("ports", [])]
                    assert any(
                        p.get("name") == ep["port"] and p["containerPort"] == 9809 for p in ports
                    ), f"a selected pod has no port {ep['port']} on 9809"
        elif obj["kind"] == "PrometheusRule":
            groups = obj["spec"]["groups"]
            assert groups and set(obj["spec"]) == {"groups"}
            known = _metric_names()
            for group in groups:
                assert isinstance(group["name"], str) and group["rules"]
                for rule in group["rules"]:
                    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
                    assert isinstance(rule["expr"], str) and rule["expr"].strip()
                    if "for" in rule:
                        assert re.fullmatch(r"\d+[smh]", rule["for"])
                    assert rule["labels"]["severity"] in ("critical", "warning", "info")
                    assert {"summary", "description"} <= set(rule["annotations"])
                    for metric in re.findall(r"rds_csi_[a-z_]+", rule["expr"]):
                        assert metric in known, f"{rule['alert']}: no metric {metric}"
    assert seen == CRD_KINDS


def test_the_alerts_are_the_expected_ones(objects: list[Obj]) -> None:
    from rdscsi.hooks.metrics import RECONCILE_ACTIONS

    rules = {
        r["alert"]: r
        for g in one(objects, "PrometheusRule", "rdscsi")["spec"]["groups"]
        for r in g["rules"]
    }
    assert rules["RdsCsiApplianceDisconnected"]["expr"] == "rds_csi_rds_connection_state == 0"
    assert rules["RdsCsiApplianceDisconnected"]["for"] == "1m"
    assert "increase(rds_csi_rds_reconnect_total[10m])" in rules["RdsCsiReconnectStorm"]["expr"]
    assert rules["RdsCsiReconnectStorm"]["expr"].endswith("> 5")
    stale = rules["RdsCsiStaleAttachments"]
    assert stale["expr"] == 'rds_csi_attachment_state{state="stale"} > 0'
    assert stale["for"] == "5m"
    expired = rules["RdsCsiMigrationExpired"]["expr"]
    assert 'rds_csi_attachment_reconcile_total{action="expire_migration"}[15m]' in expired
    assert "expire_migration" in RECONCILE_ACTIONS.values()


# --- the driver's properties -------------------------------------------------------------


def test_csidriver(objects: list[Obj]) -> None:
    spec = one(objects, "CSIDriver", DRIVER)["spec"]
    assert spec == {
        "attachRequired": True,
        "podInfoOnMount": True,
        "fsGroupPolicy": "File",
        "storageCapacity": True,
        "volumeLifecycleModes": ["Persistent"],
    }


def _rules_as_map(role: Obj) -> dict[tuple[str, str], frozenset[str]]:
    out: dict[tuple[str, str], frozenset[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no names, URLs or wildcards"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                out[key] = out.get(key, frozenset()) | frozenset(rule["verbs"])
    return out


def test_the_driver_cluster_role_is_exactly_rbac_controller(objects: list[Obj]) -> None:
    role = one(objects, "ClusterRole", "rdscsi-controller")
    assert _rules_as_map(role) == rbac.CONTROLLER
    binding = one(objects, "ClusterRoleBinding", "rdscsi-controller")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "rdscsi-controller",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rdscsi-controller", "namespace": NAMESPACE}
    ]


def test_each_sidecar_has_its_roles_and_leases(objects: list[Obj]) -> None:
    lease = ("coordination.k8s.io", "leases")
    expected = {
        "provisioner": {
            ("", "persistentvolumes"): {"create", "delete", "get", "list", "watch"},
            ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
            ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
            ("", "events"): {"list", "watch", "create", "update", "patch"},
            ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list"},
            ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list"},
            ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
            ("", "nodes"): {"get", "list", "watch"},
        },
        "attacher": {
            ("", "persistentvolumes"): {"get", "list", "watch", "patch"},
            ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
            ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch", "patch"},
            ("storage.k8s.io", "volumeattachments/status"): {"patch"},
        },
        "resizer": {
            ("", "persistentvolumes"): {"get", "list", "watch", "patch"},
            ("", "persistentvolumeclaims"): {"get", "list", "watch"},
            ("", "persistentvolumeclaims/status"): {"patch"},
            ("", "events"): {"create", "patch"},
        },
        "snapshotter": {
            ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
            ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {
                "get",
                "list",
                "watch",
                "update",
                "patch",
            },
            ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
            ("", "events"): {"create", "patch"},
        },
    }
    for name, needs in expected.items():
        cluster = _rules_as_map(one(objects, "ClusterRole", f"rdscsi-{name}"))
        for key, verbs in needs.items():
            assert verbs <= cluster.get(key, frozenset()), f"{name}: {key} lacks {verbs}"
        role = _rules_as_map(one(objects, "Role", f"rdscsi-{name}"))
        assert {"get", "create", "update"} <= role[lease], f"{name}: leader election"
        for kind in ("ClusterRoleBinding", "RoleBinding"):
            binding = one(objects, kind, f"rdscsi-{name}")
            assert binding["roleRef"]["name"] == f"rdscsi-{name}"
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": "rdscsi-controller", "namespace": NAMESPACE}
            ]
    capacity = _rules_as_map(one(objects, "Role", "rdscsi-provisioner"))
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= capacity[
        ("storage.k8s.io", "csistoragecapacities")
    ]
    assert "get" in capacity[("", "pods")] and "get" in capacity[("apps", "replicasets")]


def test_images_are_pinned(objects: list[Obj]) -> None:
    for obj in objects:
        for c in _containers(obj):
            name, tag = _split_image(c["image"])
            if name == "rdscsi":
                assert c["name"] == "rdscsi", "only the driver uses the overridable image"
                continue
            assert name.startswith("registry.k8s.io/sig-storage/"), c["image"]
            assert re.fullmatch(r":v\d+\.\d+\.\d+", tag), f"{c['image']} is not pinned"


def test_controller(objects: list[Obj]) -> None:
    deployment = one(objects, "Deployment", "rdscsi-controller")
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(objects, "Deployment", "rdscsi-controller")
    assert spec["serviceAccountName"] == "rdscsi-controller"
    driver = container(spec, "rdscsi")
    assert driver["args"] == [
        "serve",
        "--controller",
        "--kubernetes",
        "--config",
        "/etc/rdscsi/config.yaml",
        "--endpoint",
        "unix:///csi/csi.sock",
        "--metrics-address",
        "0.0.0.0:9809",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in driver["env"]}
    assert env == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_UID": "metadata.uid",
    }
    for name in SIDECARS:
        sidecar = container(spec, name)
        assert flag(sidecar, "leader-election") == "", name
        assert flag(sidecar, "csi-address") == "/csi/csi.sock", name
    provisioner = container(spec, "csi-provisioner")
    for bare in ("extra-create-metadata", "enable-capacity"):
        assert flag(provisioner, bare) == ""
    assert flag(provisioner, "capacity-ownerref-level") == "2"
    assert flag(provisioner, "feature-gates") == "Topology=true"
    assert {e["name"] for e in provisioner["env"]} == {"NAMESPACE", "POD_NAME"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["socket-dir"] == {"name": "socket-dir", "emptyDir": {}}
    assert volumes["appliance"]["secret"]["secretName"] == "rdscsi-appliance"
    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert mounts["appliance"]["readOnly"] is True
    for c in spec["containers"]:
        assert {"name": "socket-dir", "mountPath": "/csi"} in c["volumeMounts"], c["name"]


def test_the_config_map_is_a_valid_driver_config(objects: list[Obj], tmp_path: Path) -> None:
    from rdscsi import config

    text = one(objects, "ConfigMap", "rdscsi-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    controller = config.load(path, {"controller": True}, environ={})
    mount = "/etc/rdscsi/appliance/"
    assert controller.rds.key_file == mount + "id_ed25519"
    assert controller.rds.known_hosts == mount + "host_key.pub"
    secret = one(objects, "Secret", "rdscsi-appliance")
    assert set(secret["stringData"]) == {"id_ed25519", "host_key.pub"}
    assert all("REPLACE-ME" in v for v in secret["stringData"].values()), "placeholders"
    spec = pod_spec(objects, "Deployment", "rdscsi-controller")
    mounted = {m["mountPath"] for m in container(spec, "rdscsi")["volumeMounts"]}
    assert mount.rstrip("/") in mounted
    node = config.load(path, {"node": True, "node_id": "n1"}, environ={})
    assert node.node_state_dir == "/var/lib/rdscsi"


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "rdscsi-controller"), ("DaemonSet", "rdscsi-node")]
)
def test_liveness_probes_are_wired_to_the_livenessprobe_sidecar(kind: str, name: str) -> None:
    spec = pod_spec(list(_rendered()), kind, name)
    driver = container(spec, "rdscsi")
    probe = driver["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    # kubelet resolves a named probe port among the probed container's own ports
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert probe["port"] == "healthz"
    sidecar = container(spec, "liveness-probe")
    assert flag(sidecar, "health-port") == str(ports["healthz"])
    assert flag(sidecar, "csi-address") == "/csi/csi.sock"
    all_ports = [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])]
    assert len(all_ports) == len(set(all_ports)), "two containers claim one port"


def test_node_plugin(objects: list[Obj]) -> None:
    daemonset = one(objects, "DaemonSet", "rdscsi-node")
    template = daemonset["spec"]["template"]
    spec = template["spec"]
    driver = container(spec, "rdscsi")
    args = driver["args"]
    assert args[:4] == ["serve", "--node", "--node-id", "$(NODE_NAME)"]
    assert args[args.index("--endpoint") + 1] == "unix:///csi/csi.sock"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in (
        driver["env"]
    )
    security = driver["securityContext"]
    assert security["runAsUser"] == 0
    assert {"SYS_ADMIN", "SYS_RESOURCE"} <= set(security["capabilities"]["add"])
    if security.get("privileged"):
        reason = (
            template["metadata"]
            .get("annotations", {})
            .get("rds.csi.mikrotik.com/privileged-reason", "")
        )
        assert "Bidirectional" in reason and "device" in reason, "privileged needs its reason"
    mounts = {m["mountPath"]: m for m in driver["volumeMounts"]}
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                # the API server refuses it otherwise
                assert c.get("securityContext", {}).get("privileged") is True, c["name"]
    assert mounts["/lib/modules"]["readOnly"] is True
    volumes = {v["name"]: v.get("hostPath", {}).get("path") for v in spec["volumes"]}
    for path in (
        "/dev",
        "/sys",
        "/var/lib/kubelet",
        "/var/lib/rdscsi",
        f"/var/lib/kubelet/plugins/{DRIVER}",
        "/var/lib/kubelet/plugins_registry",
    ):
        assert path in volumes.values(), path
    assert mounts["/var/lib/rdscsi"]["name"] == next(
        k for k, v in volumes.items() if v == "/var/lib/rdscsi"
    )
    registrar = container(spec, "node-driver-registrar")
    assert flag(registrar, "kubelet-registration-path") == (
        f"/var/lib/kubelet/plugins/{DRIVER}/csi.sock"
    )
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    for c in spec["containers"]:
        if c["name"] != "rdscsi":
            assert not c.get("securityContext", {}).get("privileged"), c["name"]


def test_storage_classes(objects: list[Obj]) -> None:
    classes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StorageClass"}
    assert set(classes) == {"rds-ext4", "rds-block-rwx"}
    for sc in classes.values():
        assert sc["provisioner"] == DRIVER
        params.volume_parameters(sc.get("parameters", {}))  # raises on an unknown key
    ext4 = classes["rds-ext4"]
    assert ext4["allowVolumeExpansion"] is True
    assert ext4["volumeBindingMode"] == "WaitForFirstConsumer"
    assert ext4["parameters"]["csi.storage.k8s.io/fstype"] == "ext4"
    assert "csi.storage.k8s.io/fstype" not in classes["rds-block-rwx"]["parameters"]
