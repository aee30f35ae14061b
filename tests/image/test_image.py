"""The container image carries every program the code runs.

The programs are found in the code itself: every argv list the node-side modules build
(`argv = [...]` or `run([...])`), with `self.<binary>` resolved to the constructor's default.
A program the Dockerfile does not install fails here before it fails on a node.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "src" / "rdscsi" / "io").rglob("*.py"))

# program -> the Debian package that provides it (the image is Debian-based)
PACKAGES = {
    "nvme": "nvme-cli",
    "losetup": "util-linux",
    "blkid": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "mkfs.ext4": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "xfs_growfs": "xfsprogs",
}


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


def test_every_program_the_code_runs_is_known() -> None:
    programs = set().union(*(programs_in(p) for p in SOURCES))
    assert programs, "the scan found no program at all: it is broken"
    assert programs == set(PACKAGES), (
        f"programs run by the code: {sorted(programs)}; update PACKAGES (and the Dockerfile)"
    )


def test_dockerfile_installs_them() -> None:
    text = (ROOT / "Dockerfile").read_text()
    installs = " ".join(re.findall(r"apt-get install[^&]*", text.replace("\\\n", " ")))
    missing = sorted(
        {
            pkg
            for pkg in PACKAGES.values()
            if not re.search(rf"(?<![\w.-]){re.escape(pkg)}(?![\w.-])", installs)
        }
    )
    assert not missing, f"the Dockerfile does not install {missing}"


def test_dockerfile_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["rdscsi"]' in text
    assert re.search(r"pip install[^\n]*\.", text), (
        "the package is installed from the build context"
    )
