"""LoopTransport's reading of sysfs, on fake trees (runs without root too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.io.host.loop import Attached, LoopTransport
from rdscsi.io.host.proc import NotInstalled
from rdscsi.io.host.transport import InvalidTarget, Session, Target, Transport

from .conftest import NQN


def attach(sysfs: Path, dev: Path, name: str, backing: str | None) -> None:
    entry = sysfs / "block" / name
    entry.mkdir(parents=True)
    (entry / "size").write_text("0\n")
    if backing is not None:  # the kernel creates loop/ only while a file is attached
        (entry / "loop").mkdir()
        (entry / "loop" / "backing_file").write_text(backing + "\n")
    (dev / name).write_text("")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    files = (tmp_path / "files").resolve()
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    dev.mkdir()
    (sysfs / "block").mkdir(parents=True)
    vol = files / "storage-pool/k8s/vol"
    attach(sysfs, dev, "loop0", None)
    attach(sysfs, dev, "loop1", "/var/lib/snapd/snaps/core_1.snap")
    attach(sysfs, dev, "loop2", f"{vol}/pvc-old.img (deleted)")
    attach(sysfs, dev, "loop10", f"{vol}/pvc-b.img")
    attach(sysfs, dev, "loop3", f"{vol}/pvc-a.img")
    attach(sysfs, dev, "nvme0n1", None)
    attach(sysfs, dev, "loop4", f"{files}-other/pvc-x.img")  # a sibling dir, not under it
    return files, sysfs, dev


def transport(tree: tuple[Path, Path, Path]) -> LoopTransport:
    files, sysfs, dev = tree
    return LoopTransport(files, sysfs=sysfs, dev=dev, losetup="/nonexistent/losetup")


def target(name: str) -> Target:
    return Target(name, NQN, file_path=f"/storage-pool/k8s/vol/{name}.img")


def test_is_a_transport(tree: tuple[Path, Path, Path]) -> None:
    loop: Transport = transport(tree)
    assert loop.name == "loop"
    assert loop.key(target("pvc-a")) == "/storage-pool/k8s/vol/pvc-a.img"
    assert loop.key(Target("v", NQN, file_path="storage-pool/x.img")) == "/storage-pool/x.img"


def test_attached_reads_every_loop_device(tree: tuple[Path, Path, Path]) -> None:
    files = tree[0]
    vol = files / "storage-pool/k8s/vol"
    assert transport(tree).attached() == [
        Attached("loop1", "/var/lib/snapd/snaps/core_1.snap", False),
        Attached("loop2", f"{vol}/pvc-old.img", True),
        Attached("loop3", f"{vol}/pvc-a.img", False),
        Attached("loop4", f"{files}-other/pvc-x.img", False),
        Attached("loop10", f"{vol}/pvc-b.img", False),
    ]


async def test_find(tree: tuple[Path, Path, Path]) -> None:
    loop, dev = transport(tree), tree[2]
    assert await loop.find(target("pvc-a")) == dev / "loop3"
    assert await loop.find(target("pvc-b")) == dev / "loop10"
    assert await loop.find(target("pvc-old")) is None  # deleted: serves a stale file
    assert await loop.find(target("pvc-none")) is None
    (dev / "loop3").unlink()
    assert await loop.find(target("pvc-a")) is None  # no device node, no device


async def test_sessions_are_ours_only(tree: tuple[Path, Path, Path]) -> None:
    dev = tree[2]
    assert await transport(tree).sessions() == [
        Session("/storage-pool/k8s/vol/pvc-old.img", None),
        Session("/storage-pool/k8s/vol/pvc-a.img", dev / "loop3"),
        Session("/storage-pool/k8s/vol/pvc-b.img", dev / "loop10"),
    ]


async def test_no_sysfs(tmp_path: Path) -> None:
    loop = LoopTransport(tmp_path / "files", sysfs=tmp_path / "nothing")
    assert await loop.sessions() == []
    assert await loop.find(target("pvc-a")) is None


async def test_losetup_missing(tree: tuple[Path, Path, Path]) -> None:
    files = tree[0]
    path = files / "storage-pool/k8s/vol/pvc-new.img"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with pytest.raises(NotInstalled):
        await transport(tree).connect(target("pvc-new"))


@pytest.mark.parametrize(
    "path", ["", "/", "//", "/a/../b.img", "/./a.img", "/a//b.img", "/a/\x00.img", "/a\tb"]
)
async def test_bad_file_paths(tree: tuple[Path, Path, Path], path: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        await transport(tree).find(Target("pvc-1", NQN, file_path=path))
    assert info.value.field == "file_path"
    assert "pvc-1" in str(info.value)
