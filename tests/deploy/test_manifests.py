"""deploy/kubernetes and deploy/example: rendered like `kustomize build` and checked without a
cluster.

The renderer (tests/deploy/kustomize.py) is compared with the real `kubectl kustomize` where
kubectl is installed; every built-in object is validated against the Kubernetes OpenAPI
schemas of the oldest and newest supported release (kubernetes-validate, strict: unknown
fields fail); each sidecar's flags against the flags its release registers
(tests/deploy/sidecars.json, read from the kubernetes-csi sources at those tags); then the
properties that matter for this driver.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rdscsi.csi import params
from rdscsi.io.kube import rbac

from .kustomize import CLUSTER_SCOPED, containers, render, split_image

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
EXAMPLE = ROOT / "deploy" / "example"
SRC = ROOT / "src" / "rdscsi"
DRIVER = "rds.csi.mikrotik.com"
NAMESPACE = "rdscsi-system"
OLDEST_K8S, NEWEST_K8S = "1.29.0", "1.37.0"  # the supported range (docs/install.md)
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
}
SIDECARS = ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter")
SIDECAR_RELEASES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "sidecars.json").read_text()
)["sidecars"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

Obj = dict[str, Any]

__all__ = ["BASE", "EXAMPLE", "container", "one", "pod_spec", "render", "rendered"]


@cache
def _rendered(base: Path) -> tuple[Obj, ...]:
    return tuple(render(base))


def rendered(base: Path = BASE) -> list[Obj]:
    return copy.deepcopy(list(_rendered(base)))


@pytest.fixture
def objects() -> list[Obj]:
    return rendered(BASE)


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_spec(objects: list[Obj], kind: str, name: str) -> Obj:
    spec: Obj = one(objects, kind, name)["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str) -> Obj:
    found = [c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name]
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


def seconds(duration: str) -> float:
    """A Go duration as the sidecars take it (`150s`, `2m`, `1m30s`)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    h, m, s = (int(x or 0) for x in parts.groups())
    return h * 3600 + m * 60 + s


def driver_config(objects: list[Obj]) -> Obj:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config: Obj = yaml.safe_load(cm["data"]["config.yaml"])
    return config


# --- rendering and schemas ---------------------------------------------------------------


def test_every_resource_file_is_listed_and_rendered(objects: list[Obj]) -> None:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    generated = {f for g in kust["configMapGenerator"] for f in g["files"]}
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"} - generated
    assert set(kust["resources"]) == on_disk
    assert kust["namespace"] == NAMESPACE
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), "duplicate objects"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "rdscsi", obj["kind"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("base", [BASE, EXAMPLE], ids=["base", "example"])
def test_the_renderer_matches_kubectl_kustomize(base: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(base)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    real = [o for o in yaml.safe_load_all(out) if o]

    def key(o: Obj) -> tuple[str, str, str]:
        return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]

    mine = {key(o): o for o in rendered(base)}
    theirs = {key(o): o for o in real}
    assert set(mine) == set(theirs)
    for k, obj in mine.items():
        assert obj == theirs[k], k


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: []\n")
    with pytest.raises(AssertionError, match="patches"):
        render(tmp_path)


def test_an_overlay_moves_namespace_and_images(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [str(BASE)],
                "namespace": "elsewhere",
                "images": [
                    {"name": "rdscsi-controller", "newName": "reg.example/c", "newTag": "v9"},
                    {
                        "name": "rdscsi-node",
                        "newName": "reg.example/n",
                        "digest": "sha256:" + "a" * 64,
                    },
                ],
            }
        )
    )
    objs = render(tmp_path)
    assert one(objs, "Deployment", "rdscsi-controller")["metadata"]["namespace"] == "elsewhere"
    binding = one(objs, "ClusterRoleBinding", "rdscsi-controller")
    assert binding["subjects"][0]["namespace"] == "elsewhere"
    assert container(pod_spec(objs, "Deployment", "rdscsi-controller"), "rdscsi")["image"] == (
        "reg.example/c:v9"
    )
    node = pod_spec(objs, "DaemonSet", "rdscsi-node")
    for name in ("rdscsi", "node-init"):
        assert container(node, name)["image"] == "reg.example/n@sha256:" + "a" * 64


def _schema_cases() -> list[tuple[str, Obj]]:
    cases = []
    for version in (OLDEST_K8S, NEWEST_K8S):
        for base in (BASE, EXAMPLE):
            for obj in _rendered(base):
                if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
                    continue
                if base is EXAMPLE and obj["kind"] not in ("Secret", "ConfigMap"):
                    continue  # the rest is the base's, already validated
                cases.append((version, obj))
    return cases


@pytest.mark.parametrize(
    ("version", "obj"),
    _schema_cases(),
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_builtin_kinds_match_the_kubernetes_schema(version: str, obj: Obj) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {exc.message}")


def test_every_kind_is_a_schema_kind_or_a_known_crd(objects: list[Obj]) -> None:
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, NEWEST_K8S, strict=True)


def test_crd_objects_have_their_required_structure(objects: list[Obj]) -> None:
    pods = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
    }
    seen = set()
    monitored = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key not in CRD_KINDS:
            continue
        seen.add(key)
        assert set(obj) <= {"apiVersion", "kind", "metadata", "spec", "driver", "deletionPolicy"}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        if obj["kind"] == "VolumeSnapshotClass":
            assert obj["driver"] == DRIVER
            assert obj["deletionPolicy"] in ("Delete", "Retain")
        elif obj["kind"] == "PodMonitor":
            spec = obj["spec"]
            assert set(spec) == {"selector", "podMetricsEndpoints"}
            match = spec["selector"]["matchLabels"]
            selected = [
                c
                for p in pods.values()
                if match.items() <= p["spec"]["template"]["metadata"]["labels"].items()
                for c in containers(p)
            ]
            assert selected, f"{obj['metadata']['name']} selects no pod"
            component = match["app.kubernetes.io/component"]
            monitored.add(component)
            for ep in spec["podMetricsEndpoints"]:
                assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
                assert ep["path"] == "/metrics"
                ports = [p["name"] for c in selected for p in c.get("ports", [])]
                assert ports.count(ep["port"]) == 1, f"no single port {ep['port']}"
                relabel = ep["relabelings"]
                assert {"targetLabel": "job", "replacement": f"rdscsi-{component}"} in relabel
                assert {
                    "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                    "targetLabel": "component",
                } in relabel
                for r in relabel:
                    assert set(r) <= {"sourceLabels", "targetLabel", "replacement", "action"}
        elif obj["kind"] == "PrometheusRule":
            assert set(obj["spec"]) == {"groups"}
            for group in obj["spec"]["groups"]:
                assert isinstance(group["name"], str) and group["rules"]
                for rule in group["rules"]:
                    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
                    if "for" in rule:
                        assert re.fullmatch(r"\d+[smh]", rule["for"])
                    assert rule["labels"]["severity"] in ("critical", "warning", "info")
                    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
    assert seen == CRD_KINDS
    assert monitored == {"controller", "node"}


def test_every_scrapeable_port_is_scraped(objects: list[Obj]) -> None:
    """Each /metrics endpoint (the driver's, each controller sidecar's) is on a PodMonitor."""
    scraped = {
        (o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], ep["port"])
        for o in objects
        if o["kind"] == "PodMonitor"
        for ep in o["spec"]["podMetricsEndpoints"]
    }
    assert scraped == {
        ("controller", "metrics"),
        ("controller", "provisioner"),
        ("controller", "attacher"),
        ("controller", "resizer"),
        ("controller", "snapshotter"),
        ("node", "metrics"),
    }


# --- the CSIDriver and RBAC --------------------------------------------------------------


def test_csidriver(objects: list[Obj]) -> None:
    spec = one(objects, "CSIDriver", DRIVER)["spec"]
    # pod information is passed to NodePublish only when the node code reads it
    reads_pod_info = any(
        "csi.storage.k8s.io/pod." in p.read_text() for p in (SRC / "csi").glob("*.py")
    )
    assert spec == {
        "attachRequired": True,
        "podInfoOnMount": reads_pod_info,
        "fsGroupPolicy": "File",
        "storageCapacity": True,
        "volumeLifecycleModes": ["Persistent"],
    }


def _rules_as_map(role: Obj) -> dict[tuple[str, str], frozenset[str]]:
    out: dict[tuple[str, str], frozenset[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, "no URLs"
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], "no wildcards"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                out[key] = out.get(key, frozenset()) | frozenset(rule["verbs"])
    return out


def test_the_driver_cluster_role_is_exactly_rbac_controller(objects: list[Obj]) -> None:
    assert _rules_as_map(one(objects, "ClusterRole", "rdscsi-controller")) == rbac.CONTROLLER
    binding = one(objects, "ClusterRoleBinding", "rdscsi-controller")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "rdscsi-controller",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rdscsi-controller", "namespace": NAMESPACE}
    ]
    # The Lease: a namespaced Role, limited by name wherever RBAC can limit it
    # (tests/kube/test_rbac.py checks the calls by namespace and name).
    lease_role = one(objects, "Role", "rdscsi-controller")
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    granted = {
        (g, r, frozenset(rule["verbs"]), frozenset(rule.get("resourceNames", [])))
        for rule in lease_role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert granted == rbac.namespaced(rbac.controller_rules(DRIVER))
    role_binding = one(objects, "RoleBinding", "rdscsi-controller")
    assert role_binding["roleRef"]["kind"] == "Role"
    assert role_binding["roleRef"]["name"] == "rdscsi-controller"
    assert role_binding["subjects"] == binding["subjects"]


def test_the_node_cluster_role_is_exactly_rbac_node(objects: list[Obj]) -> None:
    assert _rules_as_map(one(objects, "ClusterRole", "rdscsi-node")) == rbac.NODE
    binding = one(objects, "ClusterRoleBinding", "rdscsi-node")
    assert binding["roleRef"]["name"] == "rdscsi-node"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rdscsi-node", "namespace": NAMESPACE}
    ]
    # the token reaches the driver container only, and it reports its host NQN
    spec = pod_spec(objects, "DaemonSet", "rdscsi-node")
    assert spec["automountServiceAccountToken"] is False
    token_mount = "/var/run/secrets/kubernetes.io/serviceaccount"
    mounted = [
        c["name"]
        for c in [*spec["initContainers"], *spec["containers"]]
        if any(m["mountPath"] == token_mount for m in c.get("volumeMounts", []))
    ]
    assert mounted == ["rdscsi"]
    assert "--kubernetes" in container(spec, "rdscsi")["args"]


def test_each_sidecar_has_its_roles_and_leases(objects: list[Obj]) -> None:
    """The needs of each release's upstream RBAC example for the features enabled here."""
    lease = ("coordination.k8s.io", "leases")
    expected = {
        "provisioner": {
            ("", "persistentvolumes"): {"create", "delete", "get", "list", "watch", "patch"},
            ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
            ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
            ("", "events"): {"list", "watch", "create", "update", "patch"},
            # v6.2+: the snapshot source-protection finalizer
            ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list", "watch", "update"},
            ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list"},
            ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
            ("", "nodes"): {"get", "list", "watch"},
            ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch"},
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
            ("", "events"): {"list", "watch", "create", "update", "patch"},
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
            ("", "events"): {"list", "watch", "create", "update", "patch"},
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


def test_no_rbac_for_features_the_driver_lacks(objects: list[Obj]) -> None:
    """VolumeAttributesClasses and group snapshots are left out of RBAC because the driver
    has neither: the resizer watches VACs only for MODIFY_VOLUME, and the snapshotter's group
    snapshots are switched off. Adding either capability must bring their RBAC back."""
    from rdscsi.csi import csi_pb2 as pb
    from rdscsi.csi.controller import CAPABILITIES

    assert pb.ControllerServiceCapability.RPC.MODIFY_VOLUME not in CAPABILITIES
    assert "GROUP_CONTROLLER_SERVICE" not in (SRC / "csi" / "identity.py").read_text()
    groups = {
        g
        for o in objects
        if o["kind"] in ("ClusterRole", "Role")
        for r in o["rules"]
        for g in r["apiGroups"]
    }
    assert "groupsnapshot.storage.k8s.io" not in groups
    resources = {
        res
        for o in objects
        if o["kind"] in ("ClusterRole", "Role")
        for r in o["rules"]
        for res in r["resources"]
    }
    assert "volumeattributesclasses" not in resources
    snapshotter = container(pod_spec(objects, "Deployment", "rdscsi-controller"), "csi-snapshotter")
    assert flag(snapshotter, "feature-gates") == "CSIVolumeGroupSnapshot=false"


# --- images --------------------------------------------------------------------------------


def test_images_are_pinned_and_current(objects: list[Obj]) -> None:
    seen = set()
    for obj in objects:
        for c in containers(obj):
            name, tag = split_image(c["image"])
            if name in ("rdscsi-controller", "rdscsi-node"):
                assert tag == f":v{VERSION}", f"{c['image']}: the driver's own version"
                continue
            assert name.startswith("registry.k8s.io/sig-storage/"), c["image"]
            image = name.rsplit("/", 1)[1]
            assert re.fullmatch(r":v\d+\.\d+\.\d+", tag), f"{c['image']} is not pinned"
            # the release whose flags and RBAC were read (tests/deploy/sidecars.json)
            assert tag == ":" + SIDECAR_RELEASES[image]["tag"], c["image"]
            seen.add(image)
    assert seen == set(SIDECAR_RELEASES)
    controller = pod_spec(objects, "Deployment", "rdscsi-controller")
    node = pod_spec(objects, "DaemonSet", "rdscsi-node")
    assert split_image(container(controller, "rdscsi")["image"])[0] == "rdscsi-controller"
    for name in ("rdscsi", "node-init"):
        assert split_image(container(node, name)["image"])[0] == "rdscsi-node"


def test_every_sidecar_flag_exists_in_its_release(objects: list[Obj]) -> None:
    """A sidecar exits on an unknown flag: each flag is one its release registers, none is
    deprecated, and each feature gate is one it knows (and not set to its own default,
    except the explicit group-snapshot switch)."""
    for obj in objects:
        for c in containers(obj):
            image = split_image(c["image"])[0].rsplit("/", 1)[-1]
            if image not in SIDECAR_RELEASES:
                continue
            release = SIDECAR_RELEASES[image]
            for arg in c.get("args", []):
                m = re.fullmatch(r"--([a-z0-9-]+)(?:=(.*))?", arg)
                assert m, f"{image}: {arg!r} is not a --flag"
                assert m.group(1) in release["flags"], f"{image} {release['tag']}: no {arg}"
                assert m.group(1) not in release["deprecated_flags"], f"{image}: {arg} deprecated"
                if m.group(1) == "feature-gates":
                    for gate in (m.group(2) or "").split(","):
                        key, _, value = gate.partition("=")
                        assert key in release["feature_gates"], f"{image}: no gate {key}"
                        assert (value == "true") != release["feature_gates"][key] or (
                            key == "CSIVolumeGroupSnapshot"
                        ), f"{image}: {gate} is the default"


# --- the controller ------------------------------------------------------------------------


def test_controller(objects: list[Obj]) -> None:
    deployment = one(objects, "Deployment", "rdscsi-controller")
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(objects, "Deployment", "rdscsi-controller")
    assert spec["serviceAccountName"] == "rdscsi-controller"
    driver = container(spec, "rdscsi")
    args = driver["args"]
    assert args[:3] == ["serve", "--controller", "--kubernetes"]
    assert args[args.index("--endpoint") + 1] == "unix:///csi/csi.sock"
    assert args[args.index("--metrics-address") + 1] == "0.0.0.0:9809"  # the pod network
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in driver["env"]}
    assert {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_UID": "metadata.uid",
    }.items() <= env.items()
    for name in SIDECARS:
        sidecar = container(spec, name)
        assert flag(sidecar, "leader-election") == "", name
        assert flag(sidecar, "csi-address") == "/csi/csi.sock", name
        assert flag(sidecar, "retry-interval-max") == "60s", name
    provisioner = container(spec, "csi-provisioner")
    for bare in ("extra-create-metadata", "enable-capacity"):
        assert flag(provisioner, bare) == ""
    assert flag(provisioner, "default-fstype") == "ext4"
    assert flag(provisioner, "capacity-ownerref-level") == "2"
    assert flag(provisioner, "feature-gates") is None  # Topology is GA (on) since v5
    assert {e["name"] for e in provisioner["env"]} == {"NAMESPACE", "POD_NAME"}
    assert flag(container(spec, "csi-snapshotter"), "extra-create-metadata") == ""
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["socket-dir"] == {"name": "socket-dir", "emptyDir": {}}
    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert mounts["appliance"]["readOnly"] is True
    for c in spec["containers"]:
        assert {"name": "socket-dir", "mountPath": "/csi"} in c["volumeMounts"], c["name"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # the image's USER (tests/image), so the Secret's group-readable files are readable
    security = spec["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (65532,) * 3
    assert security["runAsNonRoot"] is True


def test_sidecar_workers_and_timeouts_fit_the_appliance_channels(objects: list[Obj]) -> None:
    """At most max_concurrency calls per sidecar and 2 x max_concurrency in all, so a command
    waits for at most one ahead of it; each --timeout covers its longest call's commands at
    command_timeout each (which includes the wait for a channel) plus one more for the rest
    of the call, so the driver answers first."""
    rds = driver_config(objects)["rds"]
    channels, command_timeout = rds["max_concurrency"], rds["command_timeout"]
    assert channels <= 8, "OpenSSH allows 10 sessions per connection: keep headroom"
    spec = pod_spec(objects, "Deployment", "rdscsi-controller")
    # appliance commands of each sidecar's longest call (src/rdscsi/io/rds/volumes.py)
    commands = {
        "csi-provisioner": ("worker-threads", 4),  # look-up, source size, add, re-read
        "csi-attacher": ("worker-threads", 1),  # the volume's look-up
        "csi-resizer": ("workers", 3),  # look-up, set size, re-read
        "csi-snapshotter": ("worker-threads", 3),  # source look-up, add, re-read
    }
    total = 0
    for name, (workers_flag, calls) in commands.items():
        sidecar = container(spec, name)
        workers = int(flag(sidecar, workers_flag) or 0)
        assert 1 <= workers <= channels, f"{name}: {workers} workers for {channels} channels"
        total += workers
        timeout = seconds(flag(sidecar, "timeout") or "")
        need = (calls + 1) * command_timeout
        assert timeout >= need, f"{name}: --timeout {timeout}s < {need}s"
        assert timeout <= need + command_timeout, f"{name}: --timeout {timeout}s is slack"
    assert total <= 2 * channels, f"{total} workers for {channels} channels"


def test_sidecar_http_endpoints_are_declared_probed_and_distinct(objects: list[Obj]) -> None:
    spec = pod_spec(objects, "Deployment", "rdscsi-controller")
    for name in SIDECARS:
        sidecar = container(spec, name)
        endpoint = flag(sidecar, "http-endpoint") or ""
        m = re.fullmatch(r":(\d+)", endpoint)
        assert m, f"{name}: --http-endpoint {endpoint!r} (the pod's network)"
        (port,) = sidecar["ports"]
        assert port["containerPort"] == int(m.group(1))
        probe = sidecar["livenessProbe"]["httpGet"]
        assert probe == {"path": "/healthz/leader-election", "port": port["name"]}
    for pod in (spec, pod_spec(objects, "DaemonSet", "rdscsi-node")):
        ports = [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])]
        assert len(ports) == len(set(ports)), "two containers claim one port"


def test_controller_liveness_is_the_process_and_readiness_the_appliance() -> None:
    # An appliance outage must not restart the controller: kubelet probes the driver's own
    # endpoints (tests/scenarios/test_manifest_run.py runs them), no livenessprobe sidecar.
    spec = pod_spec(rendered(), "Deployment", "rdscsi-controller")
    driver = container(spec, "rdscsi")
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert driver["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert driver["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    args = driver["args"]
    assert args[args.index("--metrics-address") + 1].endswith(f":{ports['metrics']}")
    assert "liveness-probe" not in {c["name"] for c in spec["containers"]}


def test_liveness_probes_give_the_livenessprobe_time() -> None:
    for kind, name in (("DaemonSet", "rdscsi-node"),):
        spec = pod_spec(rendered(), kind, name)
        sidecar = container(spec, "liveness-probe")
        assert flag(sidecar, "csi-address") == "/csi/csi.sock"
        endpoint = flag(sidecar, "http-endpoint") or ""
        port = int(endpoint.rsplit(":", 1)[1])
        driver = container(spec, "rdscsi")
        ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
        probe = driver["livenessProbe"]
        if probe.get("httpGet", {}).get("port") == "healthz":
            # kubelet resolves a named probe port among the probed container's own ports
            assert ports["healthz"] == port
            assert probe["timeoutSeconds"] > seconds(flag(sidecar, "probe-timeout") or "")


def test_config_is_generated_and_mounted_without_subpath(
    objects: list[Obj], tmp_path: Path
) -> None:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert re.fullmatch(r"rdscsi-config-[a-z0-9]{10}", cm["metadata"]["name"])
    for kind, name in (("Deployment", "rdscsi-controller"), ("DaemonSet", "rdscsi-node")):
        spec = pod_spec(objects, kind, name)
        (volume,) = [v for v in spec["volumes"] if "configMap" in v]
        assert volume["configMap"]["name"] == cm["metadata"]["name"]
        driver = container(spec, "rdscsi")
        (mount,) = [m for m in driver["volumeMounts"] if m["name"] == volume["name"]]
        path = driver["args"][driver["args"].index("--config") + 1]
        assert path == mount["mountPath"] + "/config.yaml" and mount["readOnly"] is True
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert all("subPath" not in m for m in c.get("volumeMounts", [])), c["name"]
    # a changed setting is a new ConfigMap name in both pod templates: they roll
    copy_dir = tmp_path / "base"
    shutil.copytree(BASE, copy_dir)
    with (copy_dir / "config.yaml").open("a") as f:
        f.write("grace_period: 31\n")
    changed = render(copy_dir)
    for kind, name in (("Deployment", "rdscsi-controller"), ("DaemonSet", "rdscsi-node")):
        (volume,) = [v for v in pod_spec(changed, kind, name)["volumes"] if "configMap" in v]
        assert volume["configMap"]["name"] != cm["metadata"]["name"]


def test_the_config_is_a_valid_driver_config(objects: list[Obj], tmp_path: Path) -> None:
    from rdscsi import config

    for base in (BASE, EXAMPLE):
        (cm,) = [o for o in rendered(base) if o["kind"] == "ConfigMap"]
        path = tmp_path / "config.yaml"
        path.write_text(cm["data"]["config.yaml"])
        controller = config.load(path, {"controller": True}, environ={})
        assert controller.rds.key_file == "/etc/rdscsi/appliance/id_ed25519"
        assert controller.rds.known_hosts == "/etc/rdscsi/appliance/host_key.pub"
        node = config.load(path, {"node": True, "node_id": "n1"}, environ={})
        assert node.node_state_dir == "/var/lib/rdscsi"


def test_the_base_never_carries_the_secret_and_the_example_generates_it(
    objects: list[Obj],
) -> None:
    assert not [o for o in objects if o["kind"] == "Secret"], "re-applying would overwrite it"
    spec = pod_spec(objects, "Deployment", "rdscsi-controller")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["appliance"]["secret"]["secretName"] == "rdscsi-appliance"
    (mount,) = [m for m in container(spec, "rdscsi")["volumeMounts"] if m["name"] == "appliance"]
    assert mount["mountPath"] == "/etc/rdscsi/appliance"

    example = rendered(EXAMPLE)
    (secret,) = [o for o in example if o["kind"] == "Secret"]
    assert re.fullmatch(r"rdscsi-appliance-[a-z0-9]{10}", secret["metadata"]["name"])
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert set(secret["data"]) == {"id_ed25519", "host_key.pub"}
    volumes = {
        v["name"]: v for v in pod_spec(example, "Deployment", "rdscsi-controller")["volumes"]
    }
    assert volumes["appliance"]["secret"]["secretName"] == secret["metadata"]["name"]
    for name in ("rdscsi-controller", "rdscsi-node"):
        images = [c["image"] for o in example for c in containers(o) if name in c["image"]]
        assert images and all(i.startswith("registry.example.com/") for i in images)


# --- the node plugin -----------------------------------------------------------------------


def test_node_plugin(objects: list[Obj]) -> None:
    daemonset = one(objects, "DaemonSet", "rdscsi-node")
    template = daemonset["spec"]["template"]
    spec = template["spec"]
    driver = container(spec, "rdscsi")
    args = driver["args"]
    assert args[:5] == ["serve", "--node", "--kubernetes", "--node-id", "$(NODE_NAME)"]
    assert args[args.index("--endpoint") + 1] == "unix:///csi/csi.sock"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in driver["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP"}
    security = driver["securityContext"]
    assert security["runAsUser"] == 0
    assert {"SYS_ADMIN", "SYS_RESOURCE"} <= set(security["capabilities"]["add"])
    reason = template["metadata"]["annotations"]["rds.csi.mikrotik.com/privileged-reason"]
    assert "Bidirectional" in reason and "device" in reason and "init_module" in reason
    mounts = {m["mountPath"]: m for m in driver["volumeMounts"]}
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    assert mounts["/etc/nvme"]["readOnly"] is True  # node-init writes it, the plugin reads
    for c in [*spec["initContainers"], *spec["containers"]]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                # the API server refuses it otherwise
                assert c.get("securityContext", {}).get("privileged") is True, c["name"]
        if c["name"] not in ("rdscsi", "node-init"):
            assert not c.get("securityContext", {}).get("privileged"), c["name"]
    volumes = {v["name"]: v.get("hostPath", {}).get("path") for v in spec["volumes"]}
    for path in (
        "/dev",
        "/sys",
        "/etc/nvme",
        "/lib/modules",
        "/var/lib/kubelet",
        "/var/lib/rdscsi",
        f"/var/lib/kubelet/plugins/{DRIVER}",
        "/var/lib/kubelet/plugins_registry",
    ):
        assert path in volumes.values(), path
    registrar = container(spec, "node-driver-registrar")
    assert flag(registrar, "kubelet-registration-path") == (
        f"/var/lib/kubelet/plugins/{DRIVER}/csi.sock"
    )
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is False


def test_node_init_prepares_the_host_identity(objects: list[Obj]) -> None:
    spec = pod_spec(objects, "DaemonSet", "rdscsi-node")
    (init,) = spec["initContainers"]
    assert init["name"] == "node-init" and init["args"] == ["node-init"]
    assert init["securityContext"]["privileged"] is True  # init_module
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {
        m["mountPath"]: (volumes[m["name"]], m.get("readOnly", False)) for m in init["volumeMounts"]
    }
    assert mounts == {
        "/etc/nvme": ("/etc/nvme", False),  # written when missing
        "/sys": ("/sys", True),  # /sys/module/nvme_tcp
        "/lib/modules": ("/lib/modules", True),  # modprobe
    }
    # the subcommand exists as the manifest calls it
    from rdscsi.cli import build_parser

    args = build_parser().parse_args(init["args"])
    assert args.command == "node-init" and args.root == "/"


def test_node_ports_are_not_open_on_every_interface(objects: list[Obj]) -> None:
    from rdscsi.observe import split_address

    spec = pod_spec(objects, "DaemonSet", "rdscsi-node")
    driver = container(spec, "rdscsi")
    address = driver["args"][driver["args"].index("--metrics-address") + 1]
    assert address == "$(POD_IP):9809"  # the node's own address (hostNetwork)
    for ip in ("10.1.2.3", "fd00::7"):  # as kubelet expands it, IPv4 and IPv6
        assert split_address(address.replace("$(POD_IP)", ip)) == (ip, 9809)
    for name, port_name in (
        ("liveness-probe", "healthz"),
        ("node-driver-registrar", "reg-healthz"),
    ):
        sidecar = container(spec, name)
        host, port = (flag(sidecar, "http-endpoint") or "").rsplit(":", 1)
        assert host == "127.0.0.1", name
        prober = driver if name == "liveness-probe" else sidecar
        probe = prober["livenessProbe"]["httpGet"]
        assert probe["host"] == "127.0.0.1" and probe["port"] == port_name
        assert {p["name"]: p["containerPort"] for p in prober["ports"]}[port_name] == int(port)
    assert flag(container(spec, "node-driver-registrar"), "mode") is None  # deprecated probe


def test_priority_disruption_and_spreading(objects: list[Obj]) -> None:
    (pc,) = [o for o in objects if o["kind"] == "PriorityClass"]
    assert pc["metadata"]["name"] == "rdscsi-critical"
    assert pc["value"] <= 1_000_000_000, "above 1e9 is reserved for system classes"
    assert pc["globalDefault"] is False
    controller = pod_spec(objects, "Deployment", "rdscsi-controller")
    node = pod_spec(objects, "DaemonSet", "rdscsi-node")
    for spec in (controller, node):
        assert spec["priorityClassName"] == "rdscsi-critical"
    labels = one(objects, "Deployment", "rdscsi-controller")["spec"]["template"]["metadata"][
        "labels"
    ]
    (term,) = controller["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == labels
    pdb = one(objects, "PodDisruptionBudget", "rdscsi-controller")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    replicas = one(objects, "Deployment", "rdscsi-controller")["spec"]["replicas"]
    assert 0 < pdb["spec"]["maxUnavailable"] < replicas
    strategy = one(objects, "Deployment", "rdscsi-controller")["spec"]["strategy"]
    # required anti-affinity: a surge pod would have no node on a two-node cluster
    assert strategy["rollingUpdate"]["maxSurge"] == 0


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
