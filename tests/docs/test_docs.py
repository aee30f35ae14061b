"""The documentation is tested like code.

- Every shell block marked `<!-- runnable -->` (README.md, docs/, deploy/) runs, in order,
  against a real `rdscsi run` started from a copy of the clone, as root (Node service) and
  as an unprivileged user (no Node service: the banner must say why; the blocks run as that
  user too); the run's log must show what the README says it shows.
- Every other command must exist as written: each `rdscsi …` parses with the real parsers,
  each `make` target exists, each repository path and Markdown link resolves, each `kubectl`
  names the namespace, workloads, containers and labels the manifests define.
- StorageClass examples pass the driver's own parameter validation; the parameters table
  lists exactly what the driver accepts, with its ranges and defaults.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdscsi.run import node_support
from tests.docs.markdown import (
    PLACEHOLDER,
    ROOT,
    SHELLS,
    anchors,
    blocks,
    commands,
    documents,
    ignored,
    inline_code,
    links,
    markers,
    rdscsi_args,
    repo_paths,
)

DOCS = documents()
IDS = [str(p.relative_to(ROOT)) for p in DOCS]


def _shell_blocks() -> list[Any]:
    return [b for p in DOCS for b in blocks(p) if b.lang in SHELLS]


def _runnable() -> list[Any]:
    return [b for b in _shell_blocks() if b.runnable]


# --- every command exists as written -------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_runnable_markers_sit_right_above_a_shell_block(path: Path) -> None:
    for line, after in markers(path):
        assert re.match(r"^\s*```(sh|bash)\s*$", after), (
            f"{path.name}:{line}: marker before {after!r}"
        )


def test_the_readme_has_runnable_blocks() -> None:
    assert [b for b in _runnable() if b.path.name == "README.md"], "the tour is not tested"


def _parse_error(args: list[str]) -> str | None:
    """None when the real parser accepts `args` (or prints help), else what it said."""
    from rdscsi.cli import build_parser
    from rdscsi.sim.main import _fault_parser, _sim_parser

    parser, rest = build_parser(), args
    if args and args[0] == "sim":
        parser, rest = _sim_parser(), args[1:]
    elif args and args[0] == "sim-fault":
        parser, rest = _fault_parser(), args[1:]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            parser.parse_args(rest)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1]
    return None


def _all_commands() -> Iterator[tuple[str, list[str]]]:
    for block in _shell_blocks():
        for argv in commands(block.text):
            yield block.where, argv
    for path in DOCS:
        for code in inline_code(path):
            for argv in commands(code):
                if rdscsi_args(argv) is not None or argv[0] == "make":
                    yield f"{path.relative_to(ROOT)} (`{code}`)", argv


def test_every_rdscsi_command_parses() -> None:
    seen = 0
    for where, argv in _all_commands():
        args = rdscsi_args(argv)
        if args is None:
            continue
        seen += 1
        error = _parse_error(args)
        assert error is None, f"{where}: `{' '.join(argv)}`: {error}"
    assert seen > 10


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w-]+):", text, re.M))


def test_every_make_target_exists() -> None:
    targets = _make_targets()
    for where, argv in _all_commands():
        if argv[0] == "make":
            for word in argv[1:]:
                if "=" not in word and not word.startswith("-"):
                    assert word in targets, f"{where}: `make {word}`: no such target"


def test_every_repository_path_exists() -> None:
    for path in DOCS:
        texts = [(f"`{c}`", c) for c in inline_code(path)]
        texts += [(b.where, b.text) for b in blocks(path) if b.lang in (*SHELLS, "")]
        for where, text in texts:
            for argv in commands(text):
                if argv[0] == "kubectl":  # `deploy/<name>` is a Deployment there
                    argv = [v for k, v in itertools.pairwise(argv) if k in ("-k", "-f")]
                for token in (t for word in argv for t in re.split(r"[=\"']+", word)):
                    for found in repo_paths(token):
                        where_ = f"{path.relative_to(ROOT)}: {where}"
                        assert (ROOT / found).exists() or ignored(found), f"{where_}: {found}"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_every_link_resolves(path: Path) -> None:
    for target in links(path):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.relative_to(ROOT)}: link {target}: no such file"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{path.relative_to(ROOT)}: link {target}"


# --- kubectl names what the manifests define -------------------------------------------------


def _objects() -> list[dict[str, Any]]:
    from tests.deploy.test_manifests import BASE, render

    return render(BASE)


_KINDS = {
    "deploy": "Deployment",
    "deployment": "Deployment",
    "ds": "DaemonSet",
    "daemonset": "DaemonSet",
    "sc": "StorageClass",
    "storageclass": "StorageClass",
    "csidriver": "CSIDriver",
}


def _containers(obj: dict[str, Any]) -> set[str]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return {c["name"] for key in ("containers", "initContainers") for c in spec.get(key, [])}


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    template = obj.get("spec", {}).get("template", {}).get("metadata", {})
    return {**obj["metadata"].get("labels", {}), **template.get("labels", {})}


def test_kubectl_commands_name_what_the_manifests_define() -> None:
    objects = _objects()
    driver = next(o["metadata"]["name"] for o in objects if o["kind"] == "CSIDriver")
    namespaces = {o["metadata"].get("namespace") for o in objects} - {None}
    workloads = [o for o in objects if o["kind"] in ("Deployment", "DaemonSet")]
    seen = 0
    for where, argv in _all_commands():
        if argv[0] != "kubectl":
            continue
        if "--" in argv:  # what follows runs in a container, it is not kubectl's
            argv = argv[: argv.index("--")]
        seen += 1
        said = f"{where}: `{' '.join(argv)}`"
        named: list[dict[str, Any]] = []
        for i, word in enumerate(argv):
            value = argv[i + 1] if i + 1 < len(argv) else ""
            if word in ("-n", "--namespace"):
                assert value in namespaces, f"{said}: no namespace {value}"
            if word == "-k":
                assert (ROOT / value).is_dir() or ignored(value), f"{said}: no {value}"
            kind, _, name = word.partition("/")
            is_path = i > 0 and argv[i - 1] in ("-k", "-f")
            if kind in _KINDS and name and name != PLACEHOLDER and not is_path:
                found = [
                    o
                    for o in objects
                    if o["kind"] == _KINDS[kind] and o["metadata"]["name"] == name
                ]
                assert found, f"{said}: no {_KINDS[kind]} {name}"
                named += found
            if word in ("sc", "storageclass", "csidriver") and value and value != PLACEHOLDER:
                assert any(o["metadata"]["name"] == value for o in objects), said
            if word == "lease" and value:
                assert value == f"{driver}-controller", f"{said}: the Lease is {driver}-controller"
            if word == "-l":
                key, _, want = value.partition("=")
                assert any(_labels(o).get(key) == want for o in workloads), f"{said}: no {value}"
        for i, word in enumerate(argv):
            if word == "-c":
                pool = named or workloads
                assert any(argv[i + 1] in _containers(o) for o in pool), f"{said}: no container"
    assert seen > 5


# --- StorageClasses ------------------------------------------------------------------------------


def _yaml_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in DOCS:
        for block in blocks(path):
            if block.lang in ("yaml", "yml"):
                out += [(block.where, d) for d in yaml.safe_load_all(block.text) if d]
    return out


def test_storageclass_examples_pass_the_driver_s_validation() -> None:
    from rdscsi.csi.params import FS_TYPES, volume_parameters
    from rdscsi.io.host.fs import validate_mkfs_options

    objects = _objects()
    driver = next(o["metadata"]["name"] for o in objects if o["kind"] == "CSIDriver")
    docs = _yaml_docs()
    classes = {o["metadata"]["name"] for o in objects if o["kind"] == "StorageClass"}
    classes |= {d["metadata"]["name"] for _, d in docs if d.get("kind") == "StorageClass"}
    checked = 0
    for where, doc in docs:
        if doc.get("kind") == "StorageClass":
            checked += 1
            assert doc["provisioner"] == driver, where
            params = {str(k): str(v) for k, v in doc.get("parameters", {}).items()}
            volume_parameters(params)  # raises naming the parameter
            fs = params.get("csi.storage.k8s.io/fstype", "ext4")
            assert fs in FS_TYPES, where
            if "mkfsOptions" in params:
                validate_mkfs_options(fs, params["mkfsOptions"])
        if doc.get("kind") == "PersistentVolumeClaim":
            assert doc["spec"]["storageClassName"] in classes, where
            if "ReadWriteMany" in doc["spec"]["accessModes"]:
                assert doc["spec"].get("volumeMode") == "Block", f"{where}: RWX needs Block"
    assert checked >= 3


def test_the_parameters_table_lists_what_the_driver_accepts() -> None:
    from rdscsi.csi import params
    from rdscsi.io.host import transport

    text = (ROOT / "docs" / "storageclasses.md").read_text()
    table = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = {
        m.group(1): [c.strip() for c in m.group(2).split("|")]
        for m in re.finditer(r"^\| `([^`]+)` \|(.*)\|$", table, re.M)
    }
    defaults = {
        "nvmeCtrlLossTmo": transport.DEFAULT_CTRL_LOSS_TMO,
        "nvmeReconnectDelay": transport.DEFAULT_RECONNECT_DELAY,
        "nvmeKeepAliveTmo": transport.DEFAULT_KEEP_ALIVE_TMO,
    }
    ints: dict[str, tuple[int, int]] = params._INT_PARAMS
    assert set(ints) == set(defaults)
    for key, (low, high) in ints.items():
        values, default = rows[key][0], rows[key][1]
        assert f"{low}..{high}" in values and default == str(defaults[key]), rows[key]
        with pytest.raises(params.RPCError):
            params.volume_parameters({key: str(high + 1)})
    assert {"mkfsOptions", "csi.storage.k8s.io/fstype", params.APPLIANCE} <= set(rows)
    with pytest.raises(params.RPCError):  # an appliance is named as the configuration does
        params.volume_parameters({params.APPLIANCE: "RDS B"})
    for key in rows:
        if "*" not in key:
            value = "-L x" if key == "mkfsOptions" else "ext4" if "fstype" in key else "5"
            params.volume_parameters({key: value})  # every listed key is accepted


# --- the runnable blocks, against a real `rdscsi run` --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--user", "true"], capture_output=True)
    return done.returncode == 0


def _clone(tmp_path: Path) -> Path:
    """The clone as a user has it after `make run`: the repository, and `.venv` the
    environment these tests run in; `.rdscsi` (the run's state) is its own."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".venv", ".rdscsi"):
            (clone / entry.name).symlink_to(entry)
    (clone / ".venv").symlink_to(Path(sys.prefix))
    return clone


class Run:
    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            assert self.popen.poll() is None, f"exited:\n{self.output}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.output}"
            time.sleep(0.05)


@pytest.mark.parametrize("who", ["root", "unprivileged"])
def test_the_runnable_blocks_work_as_written(who: str, tmp_path: Path) -> None:
    root = os.geteuid() == 0
    prefix: list[str] = []
    if who == "root" and not root:
        pytest.skip("the Node service needs root")
    if who == "unprivileged" and root:
        if not _userns_works():
            pytest.skip("no user namespaces here to run without root")
        prefix = ["unshare", "--user"]  # uid 65534 inside: no root, no loop devices
    clone = _clone(tmp_path)
    port = _free_port()
    # only the clone's .venv/bin/rdscsi, never one on the PATH
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not (Path(p) / "rdscsi").exists()
    )
    env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}
    # what `make run` runs; only the metrics port differs (other test runs share the host)
    run = Run(
        [*prefix, ".venv/bin/rdscsi", "run", "--metrics-address", f"127.0.0.1:{port}"],
        clone,
        env,
    )
    try:
        run.wait_for("Ctrl-C to stop")
        banner = run.output
        assert f"on unix://{clone}/.rdscsi/csi.sock" in banner
        assert "`.venv/bin/rdscsi demo` drives a volume" in banner
        assert "`.venv/bin/rdscsi sim-fault drop` drops" in banner
        # as root, the Node service runs where this host has loop devices and the programs
        node = who == "root" and node_support()[0]
        if node:
            assert "CSI Identity, Controller and Node on" in banner
        elif who == "root":
            assert f"no Node service: {node_support()[1]}" in banner
        else:
            assert "rdscsi run: CSI Identity and Controller on" in banner
            assert re.search(
                r"no Node service: it needs root to attach loop devices and mount "
                r"\(this is uid 65534\); `demo` skips staging and publishing",
                banner,
            ), banner
        for block in _runnable():
            text = block.text.replace("127.0.0.1:9809", f"127.0.0.1:{port}")
            done = subprocess.run(
                # the blocks run as the same user as `rdscsi run`
                [*prefix, "bash", "-e", "-o", "pipefail", "-c", text],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            said = f"{block.where}:\n{block.text}\n{done.stdout}{done.stderr}"
            assert done.returncode == 0, said
            if "rdscsi demo --scenario" in text:
                # its own cluster: node plugins wherever this user may have them
                # (✗ may be quoted: `rdscsi explain` marks the guards that refuse)
                assert not re.search(r"^\s*✗", done.stdout, re.M), said
                assert "\n✓ done" in done.stdout, said
                shown = "✓ data verified" in done.stdout
                assert shown == (who == "root" and node_support()[0]), said
            elif "rdscsi demo" in text:
                assert "✗" not in done.stdout and "· cleanup: removed" in done.stdout, said
                node_steps = "✓ NodeStageVolume" in done.stdout
                assert node_steps == node, said
        # what the README says the first shell shows
        run.wait_for(r"connected --lost--> disconnected")
        run.wait_for(r"RDS \S+: backoff: next attempt in \d+\.\d s")
        run.wait_for(r"reconnecting --succeeded--> connected[\s\S]*reconnecting --succeeded-->")
        run.wait_for(r"attachment pvc-\S+: detached --publish--> attached")
    finally:
        if run.popen.poll() is None:
            run.popen.send_signal(signal.SIGINT)
        code = run.popen.wait(timeout=30)
        run._reader.join(10)
    assert code == 0, run.output
    assert "rdscsi run: stopped" in run.output and "Traceback" not in run.output


def test_the_readme_layout_names_every_package() -> None:
    """A reader looking for where something lives finds every package of the driver."""
    text = (ROOT / "README.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    named = {line.split()[0].rstrip("/") for line in layout.splitlines() if line[:1] not in " "}
    src = ROOT / "src" / "rdscsi"
    packages = {
        str(p.parent.relative_to(ROOT))
        for p in src.rglob("__init__.py")
        if p.parent != src and "__pycache__" not in p.parts
    }
    # A nested package counts as named when it, a parent or a child of it is named.
    missing = sorted(
        p
        for p in packages
        if not any(p == n or p.startswith(n + "/") or n.startswith(p + "/") for n in named if n)
    )
    assert not missing, f"README's Layout does not name {missing}"
