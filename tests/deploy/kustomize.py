"""A small `kustomize build` for the tests: exactly the features deploy/ uses, anything else
refused, and checked against the real `kubectl kustomize` wherever kubectl is installed
(tests/deploy/test_manifests.py), so CI without kubectl still renders what a cluster gets.

Covered: resources (files and directories, i.e. bases), namespace, images (newName, newTag,
digest), configMapGenerator / secretGenerator (files, `key=path`, type, options.labels,
behavior create/replace/merge), the content-hash name suffix of generated objects (the same
hash as kustomize: sha256 of Go-style JSON of kind/type/data with an empty name) and the name
references to them in pod templates.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "StorageClass",
    "PriorityClass",
}  # built-in kinds only: kustomize gives CRD kinds (VolumeSnapshotClass) the namespace too
KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "configMapGenerator",
    "secretGenerator",
}
GENERATOR_KEYS = {"name", "files", "behavior", "options", "type"}
_ORIGINAL = "__original_name__"  # bookkeeping on generated objects, removed at the end


def split_image(image: str) -> tuple[str, str]:
    """("registry/name", ":tag" or "@digest" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def pod_templates(obj: Obj) -> Iterator[Obj]:
    spec = obj.get("spec", {}).get("template", {}).get("spec")
    if spec is not None:
        yield spec


def containers(obj: Obj) -> Iterator[Obj]:
    for spec in pod_templates(obj):
        for key in ("initContainers", "containers"):
            yield from spec.get(key, [])


def _go_json(value: Any) -> str:
    """encoding/json.Marshal: sorted keys, no spaces, <>& and U+2028/9 escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return text


def kustomize_base64(raw: bytes) -> str:
    """Base64 as kustomize writes Secret data: 70-column lines, each ended by a newline
    whenever the encoding needs more than one (it counts lines as len // 70 + 1)."""
    text = base64.b64encode(raw).decode()
    if len(text) // 70 + 1 == 1:
        return text
    return "".join(text[i : i + 70] + "\n" for i in range(0, len(text), 70))


def content_hash(obj: Obj) -> str:
    # kustomize looks the name up under the literal key "metadata/name" and finds nothing,
    # so every generated object is hashed with an empty name.
    if obj["kind"] == "ConfigMap":
        fields: Obj = {"kind": "ConfigMap", "name": "", "data": obj.get("data", "")}
    else:
        fields = {"kind": "Secret", "type": obj.get("type", ""), "name": "", "data": obj["data"]}
    digest = hashlib.sha256(_go_json(fields).encode()).hexdigest()
    swap = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return "".join(swap.get(c, c) for c in digest[:10])


def _generate(base: Path, spec: Obj, kind: str) -> Obj:
    unknown = set(spec) - GENERATOR_KEYS
    assert not unknown, f"{kind} generator: the test renderer does not implement {unknown}"
    options = spec.get("options", {})
    assert set(options) <= {"labels"}, f"generator options {sorted(options)} not implemented"
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.rpartition("=")
        path = base / rel
        assert path.is_file(), f"{kind} {spec['name']}: no file {path}"
        raw = path.read_bytes()
        data[key or path.name] = raw.decode() if kind == "ConfigMap" else kustomize_base64(raw)
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if options.get("labels"):
        obj["metadata"]["labels"] = dict(options["labels"])
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
    obj["data"] = data
    obj[_ORIGINAL] = spec["name"]
    return obj


def _build(base: Path) -> list[Obj]:
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    unknown = set(kust) - KEYS
    assert not unknown, f"{base}: the test renderer does not implement {sorted(unknown)}"
    objects: list[Obj] = []
    for entry in kust.get("resources", []):
        path = (base / entry).resolve()
        if path.is_dir():
            objects.extend(_build(path))
        else:
            assert path.is_file(), f"resources: {entry} is not a file or directory in {base}"
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    for key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in kust.get(key, []):
            new = _generate(base, spec, kind)
            behavior = spec.get("behavior", "create")
            same = [o for o in objects if o["kind"] == kind and o.get(_ORIGINAL) == spec["name"]]
            if behavior == "create":
                assert not same, f"{kind} {spec['name']} generated twice (use behavior)"
                objects.append(new)
            else:
                assert behavior in ("replace", "merge") and len(same) == 1, (
                    f"{kind} {spec['name']}: behavior {behavior} needs one in a base"
                )
                old = same[0]
                if behavior == "merge":
                    new["data"] = {**old["data"], **new["data"]}
                    labels = {
                        **old["metadata"].get("labels", {}),
                        **new["metadata"].get("labels", {}),
                    }
                    if labels:
                        new["metadata"]["labels"] = labels
                new["metadata"].setdefault("namespace", old["metadata"].get("namespace"))
                if new["metadata"]["namespace"] is None:
                    del new["metadata"]["namespace"]
                objects[objects.index(old)] = new
    namespace = kust.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if namespace and obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
        for container in containers(obj):
            name, tag = split_image(container["image"])
            for image in kust.get("images", []):
                if image["name"] == name:
                    assert set(image) <= {"name", "newName", "newTag", "digest"}, image
                    new_tag = (
                        "@" + image["digest"]
                        if "digest" in image
                        else ":" + image["newTag"]
                        if "newTag" in image
                        else tag
                    )
                    container["image"] = image.get("newName", name) + new_tag
    return objects


def _rename_references(obj: Obj, kind: str, old: str, new: str) -> None:
    for spec in pod_templates(obj):
        for volume in spec.get("volumes", []):
            if kind == "ConfigMap" and volume.get("configMap", {}).get("name") == old:
                volume["configMap"]["name"] = new
            if kind == "Secret" and volume.get("secret", {}).get("secretName") == old:
                volume["secret"]["secretName"] = new
            for source in volume.get("projected", {}).get("sources", []):
                ref = source.get("configMap" if kind == "ConfigMap" else "secret", {})
                if ref.get("name") == old:
                    ref["name"] = new
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            key = "configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get(key, {})
                if ref.get("name") == old:
                    ref["name"] = new
            for env_from in c.get("envFrom", []):
                ref = env_from.get("configMapRef" if kind == "ConfigMap" else "secretRef", {})
                if ref.get("name") == old:
                    ref["name"] = new


def render(base: Path) -> list[Obj]:
    """`kustomize build base`."""
    objects = copy.deepcopy(_build(base))
    for obj in objects:
        original = obj.pop(_ORIGINAL, None)
        if original is None:
            continue
        new = f"{original}-{content_hash(obj)}"
        obj["metadata"]["name"] = new
        for other in objects:
            _rename_references(other, obj["kind"], original, new)
    return objects
