"""docs/install.md is a path that works: every command in its shell blocks is one this test
knows, and what it names (directories, namespaces, objects, containers, labels, Secret keys,
build targets, images, make targets) is checked against the manifests as rendered, the
Dockerfile and the Makefile; its YAML validates against the Kubernetes schemas."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.image.test_image import STAGES

from .kustomize import containers, split_image
from .test_manifests import (
    BASE,
    EXAMPLE,
    NAMESPACE,
    NEWEST_K8S,
    OLDEST_K8S,
    ROOT,
    one,
    pod_spec,
    rendered,
)

DOC = ROOT / "docs" / "install.md"
TEXT = DOC.read_text()
KINDS = {"deployment": "Deployment", "daemonset": "DaemonSet", "pod": "Pod"}

Obj = dict[str, Any]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", TEXT, re.MULTILINE | re.DOTALL)


def commands() -> list[list[str]]:
    out = []
    for block in blocks("sh"):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(shlex.split(line))
    assert out
    return out


def test_the_example_manifest_is_valid() -> None:
    """The YAML the doc applies: a PVC and a pod, valid on both supported Kubernetes ends."""
    (block,) = [b for b in blocks("yaml") if "kind:" in b]
    docs = [d for d in yaml.safe_load_all(block) if d]
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Pod"]
    for version in (OLDEST_K8S, NEWEST_K8S):
        for d in docs:
            kubernetes_validate.validate(d, version, strict=True)
    classes = {o["metadata"]["name"] for o in rendered() if o["kind"] == "StorageClass"}
    pvc, pod = docs
    assert pvc["spec"]["storageClassName"] in classes
    (volume,) = pod["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "rds-test.yaml" in TEXT.split("```yaml")[0].rsplit("```", 1)[-1]


def _example_yaml() -> list[Obj]:
    (block,) = [b for b in blocks("yaml") if "kind:" in b]
    return [d for d in yaml.safe_load_all(block) if d]


def _site() -> Path:
    """deploy/site is the doc's copy of deploy/example."""
    assert ["cp", "-r", "deploy/example", "deploy/site"] in commands()
    return EXAMPLE


def _workload(objects: list[Obj], ref: str) -> Obj:
    kind, _, name = ref.partition("/")
    assert kind in KINDS, ref
    return one(objects, KINDS[kind], name)


def _check_kubectl(args: list[str], built: set[str]) -> None:
    objects = rendered(_site())
    if "-n" in args:
        i = args.index("-n")
        assert args[i + 1] == NAMESPACE, args
        del args[i : i + 2]
    verb = args[1]
    if verb == "apply" and args[2] == "-k":
        assert args[3] == "deploy/site", args
    elif verb in ("apply", "delete") and args[2] == "-f":
        if args[3] == "rds-test.yaml":
            return
        path = ROOT / args[3]
        assert path.is_file() and path.parent == BASE, args
        assert path.name in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    elif verb == "delete" and args[2] == "-k":
        assert args[3] == "deploy/site", args
    elif verb == "rollout":
        assert args[2] == "status"
        _workload(objects, args[3])
    elif verb == "logs":
        workload = _workload(objects, args[2])
        assert args[3] == "-c"
        names = {c["name"] for c in containers(workload)}
        assert args[4] in names, f"{args}: containers {sorted(names)}"
    elif verb == "get" and args[2] == "csidriver":
        one(objects, "CSIDriver", args[3])
    elif verb == "get" and args[2] == "pods":
        selector = dict(s.split("=", 1) for s in args[args.index("-l") + 1].split(","))
        assert any(
            selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
            for o in objects
            if o["kind"] in ("Deployment", "DaemonSet")
        ), selector
    elif verb == "create" and args[2:4] == ["secret", "generic"]:
        name = args[4]
        spec = pod_spec(rendered(BASE), "Deployment", "rdscsi-controller")
        secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert secrets == {name}, secrets
        files = dict(
            a.split("=", 1)[1].split("=", 1) for a in args[5:] if a.startswith("--from-file=")
        )
        (secret,) = [o for o in objects if o["kind"] == "Secret"]
        assert set(files) == set(secret["data"]), "the same keys as the overlay's Secret"
        assert set(files.values()) <= built, "files made in step 1"
    elif verb == "wait":
        assert args[2] == "--for=condition=Ready"
        kind, _, name = args[3].partition("/")
        assert kind == "pod" and name in {d["metadata"]["name"] for d in _example_yaml()}
    elif verb == "exec":
        pod = _example_yaml()[1]
        assert args[2] == pod["metadata"]["name"] and args[3] == "--"
        mounts = {m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]}
        assert args[-1] in mounts
    else:
        raise AssertionError(f"install.md runs `{shlex.join(args)}`: teach this test about it")


def test_every_command_names_what_exists() -> None:
    built_files: set[str] = set()
    images: set[str] = set()
    example = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
    overlay_images = {i["name"]: i for i in example["images"]}
    for args in commands():
        tool = args[0]
        if tool == "ssh-keygen":
            built_files.add(args[args.index("-f") + 1])
            assert args[args.index("-t") + 1] == "ed25519"
        elif tool == "ssh-keyscan":
            assert args[-2] == ">"
            built_files.add(args[-1])
        elif tool == "docker" and args[1] == "build":
            target = args[args.index("--target") + 1]
            assert target in STAGES and target in ("controller", "node"), target
            name, tag = split_image(args[args.index("-t") + 1])
            assert args[-1] == "."
            (image,) = [i for i in overlay_images.values() if i["newName"] == name]
            assert image["name"] == f"rdscsi-{target}", "the manifests run this target's image"
            assert tag == ":" + image["newTag"]
            images.add(name + tag)
        elif tool == "docker" and args[1] == "push":
            assert args[2] in images, "push what was built"
        elif tool == "cp":
            if args[1] == "-r":
                assert (ROOT / args[2]).is_dir() and args[3] == "deploy/site"
            else:
                *files, dest = args[1:]
                assert set(files) <= built_files
                assert dest == "deploy/site/appliance/"
                assert {f.name for f in (EXAMPLE / "appliance").iterdir()} == set(files)
        elif tool == "kubectl":
            _check_kubectl(list(args), built_files)
        else:
            raise AssertionError(f"install.md runs `{shlex.join(args)}`: teach this test about it")
    assert len(images) == 2


def test_the_example_keys_are_the_secret_the_config_reads() -> None:
    keys = {o["metadata"]["name"]: o for o in rendered(EXAMPLE) if o["kind"] == "Secret"}
    (secret,) = keys.values()
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())["rds"]
    assert {Path(config["key_file"]).name, Path(config["known_hosts"]).name} == set(secret["data"])


def test_make_targets_and_links_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make ([a-z-]+)`", TEXT):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no make target {target}"
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", TEXT):
        assert (DOC.parent / link).exists(), link


def test_the_stated_versions_are_the_tested_ones() -> None:
    low, high = (v.rsplit(".", 1)[0] for v in (OLDEST_K8S, NEWEST_K8S))
    assert f"Kubernetes {low} to {high}" in TEXT
    assert "v0.1.0" in TEXT and "bookworm" in TEXT
    floor = re.search(r"Node kernels (\d+\.\d+) or newer", TEXT)
    assert floor, "the oldest supported kernel is stated"
    try:  # the node plugin's own floor, where the mkfs module states it
        from rdscsi.io.host import mkfs  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        assert floor.group(1) == mkfs.KERNEL_FLOOR
    # a place for the high-availability section (written with the leadership work)
    assert "High availability" in TEXT


def test_the_fleet_configuration_is_one_the_driver_takes() -> None:
    """The two-appliance `config.yaml`: what the base's is, plus `appliances:`; the driver
    loads it as it ships (the same key files, each appliance's own host key file)."""
    from rdscsi.config import load

    (block,) = [b for b in blocks("yaml") if "appliances:" in b]
    data = yaml.safe_load(block)
    base = yaml.safe_load((BASE / "config.yaml").read_text())
    assert data["rds"]["key_file"] == base["rds"]["key_file"]
    cfg = load(None, {**data, "controller": True}, {})
    assert [a.name for a in cfg.fleet] == ["rds", "rds-b"] and cfg.default_appliance == "rds"
    mount = "/etc/rdscsi/appliance/"
    assert all(a.known_hosts.startswith(mount) and a.key_file.startswith(mount) for a in cfg.fleet)
    assert "host_key_b.pub=appliance/host_key_b.pub" in TEXT
