"""LoopTransport with real loop devices (root only): attach, reuse, grow, detach.

Every loop device attached to a file under the test's tmp_path is detached at teardown,
whatever happened in the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdscsi.io.host import fs
from rdscsi.io.host.loop import LoopTransport
from rdscsi.io.host.transport import (
    InvalidTarget,
    Session,
    Target,
    TargetMissing,
    TransportError,
)

from .conftest import NQN

SYS_BLOCK = Path("/sys/block")
MIB = 1 << 20


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "loop devices need root"
    if not Path("/dev/loop-control").exists():
        return "/dev/loop-control is missing"
    return None


REASON = _why_not()
if REASON:
    print(f"tests/transport/test_loop_real.py skipped: {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def attached_under(root: Path) -> list[str]:
    """Loop devices whose backing file lies under ``root`` (deleted ones included)."""
    found = []
    for entry in SYS_BLOCK.glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if Path(backing.removesuffix(" (deleted)")).is_relative_to(root):
            found.append(f"/dev/{entry.name}")
    return found


def device_size(device: Path) -> int:
    out = subprocess.run(
        ["blockdev", "--getsize64", str(device)], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    real = tmp_path.resolve()
    try:
        yield real
    finally:
        for device in attached_under(real):
            subprocess.run(["umount", "-l", str(device)], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        left = attached_under(real)
        assert left == [], f"loop devices left attached: {left}"


@pytest.fixture
def files(root: Path) -> Path:
    return root / "files"


@pytest.fixture
def loop(files: Path) -> LoopTransport:
    return LoopTransport(files, timeout=20.0)


def volume(files: Path, name: str, size: int = 8 * MIB) -> Target:
    path = files / "storage-pool" / "k8s" / "vol" / f"{name}.img"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)  # sparse
    return Target(name, NQN, file_path=f"/storage-pool/k8s/vol/{name}.img")


async def test_connect_attaches_the_file(loop: LoopTransport, files: Path, root: Path) -> None:
    target = volume(files, "pvc-1", 8 * MIB)
    device = await loop.connect(target)
    assert device.name.startswith("loop") and device.exists()
    assert device_size(device) == 8 * MIB
    assert attached_under(root) == [str(device)]
    assert await loop.find(target) == device


async def test_connect_twice_reuses_the_device(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    target = volume(files, "pvc-1")
    first = await loop.connect(target)
    second = await loop.connect(target)
    assert first == second
    assert attached_under(root) == [str(first)]  # no second loop device


async def test_refresh_after_growth(loop: LoopTransport, files: Path) -> None:
    target = volume(files, "pvc-1", 8 * MIB)
    device = await loop.connect(target)
    os.truncate(files / "storage-pool/k8s/vol/pvc-1.img", 24 * MIB)
    assert device_size(device) == 8 * MIB  # the kernel does not notice by itself
    assert await loop.refresh(target) == device
    assert device_size(device) == 24 * MIB
    sectors = int((SYS_BLOCK / device.name / "size").read_text())
    assert sectors * 512 == 24 * MIB


async def test_disconnect_detaches_and_is_idempotent(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    target = volume(files, "pvc-1")
    assert await loop.connect(target) is not None
    await loop.disconnect(target)
    # (The number itself may be taken at once by someone else's loop device: not checked.)
    assert attached_under(root) == []
    assert await loop.find(target) is None
    await loop.disconnect(target)  # again: fine


async def test_refresh_when_not_attached(loop: LoopTransport, files: Path) -> None:
    target = volume(files, "pvc-1")
    with pytest.raises(TransportError, match="not attached"):
        await loop.refresh(target)


async def test_missing_file(loop: LoopTransport, files: Path, root: Path) -> None:
    target = Target("pvc-9", NQN, file_path="/storage-pool/k8s/vol/pvc-9.img")
    with pytest.raises(TransportError, match="does not exist") as info:
        await loop.connect(target)
    assert "pvc-9" in str(info.value)
    assert attached_under(root) == []


async def test_sessions_lists_ours_and_never_touches_foreign_devices(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    foreign_file = root / "foreign.img"  # outside files_root
    foreign_file.write_bytes(b"")
    os.truncate(foreign_file, 4 * MIB)
    foreign = subprocess.run(
        ["losetup", "--find", "--show", str(foreign_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    a = volume(files, "pvc-a")
    b = volume(files, "pvc-b")
    dev_a = await loop.connect(a)
    dev_b = await loop.connect(b)

    assert sorted(await loop.sessions(), key=lambda s: s.key) == [
        Session("/storage-pool/k8s/vol/pvc-a.img", dev_a),
        Session("/storage-pool/k8s/vol/pvc-b.img", dev_b),
    ]
    assert loop.key(a) == "/storage-pool/k8s/vol/pvc-a.img"

    for session in await loop.sessions():  # as the start-up orphan cleanup does
        await loop.disconnect_session(session)
    assert attached_under(root) == [foreign]  # ours gone, the foreign one untouched
    assert await loop.sessions() == []


async def test_deleted_backing_file_is_listed_but_never_reused(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    target = volume(files, "pvc-1")
    old = await loop.connect(target)
    (files / "storage-pool/k8s/vol/pvc-1.img").unlink()
    assert await loop.find(target) is None  # it serves a file that no longer exists
    assert await loop.sessions() == [Session("/storage-pool/k8s/vol/pvc-1.img", None)]

    volume(files, "pvc-1")  # a new file at the same path is a different volume
    new = await loop.connect(target)
    assert new != old
    await loop.disconnect(target)  # detaches both: they are ours
    assert attached_under(root) == []


async def test_paths_escaping_the_files_root_are_refused(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    (root / "outside.img").write_bytes(b"\0" * 4096)
    (files / "storage-pool").mkdir(parents=True)
    (files / "storage-pool" / "link.img").symlink_to(root / "outside.img")
    for path in ("/../outside.img", "/storage-pool/../../outside.img", "/storage-pool/link.img"):
        with pytest.raises(InvalidTarget) as info:
            await loop.connect(Target("pvc-1", NQN, file_path=path))
        assert info.value.field == "file_path"
    for path in ("", "/", "/storage-pool/a\nb.img"):
        with pytest.raises(InvalidTarget):
            await loop.connect(Target("pvc-1", NQN, file_path=path))
    assert attached_under(root) == []


async def test_open_device_is_not_reported_detached(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    target = volume(files, "pvc-1")
    device = await loop.connect(target)
    fd = os.open(device, os.O_RDONLY)
    try:
        # `losetup -d` succeeds on an open device but only marks it for auto-clear.
        fast = LoopTransport(files, attempts=3, interval=0.05)
        with pytest.raises(TransportError, match="still attached"):
            await fast.disconnect(target)
        assert attached_under(root) == [str(device)]
    finally:
        os.close(fd)


async def test_mounted_device_is_never_detached(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    target = volume(files, "pvc-1", 32 * MIB)
    device = await loop.connect(target)
    mountpoint = root / "mnt"
    mountpoint.mkdir()
    made = subprocess.run(["mkfs.ext4", "-q", str(device)], capture_output=True, check=False)
    mounted = subprocess.run(["mount", str(device), str(mountpoint)], capture_output=True)
    if made.returncode or mounted.returncode:
        pytest.skip(f"cannot mount here: {mounted.stderr!r}")
    try:
        with pytest.raises(TransportError, match=r"not detaching: .* is mounted at"):
            await loop.disconnect(target)
        assert (SYS_BLOCK / device.name / "loop").exists()
        assert (SYS_BLOCK / device.name / "loop" / "autoclear").read_text().strip() == "0"
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    await loop.disconnect(target)
    assert attached_under(root) == []


async def test_a_bound_device_node_is_never_detached(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    # A raw block publish binds the device node onto a file: the bind shows devtmpfs, not
    # the loop device, and would outlive the device (and reach whatever reuses its number).
    target = volume(files, "pvc-1")
    device = await loop.connect(target)
    bound = root / "pod-device"
    bound.touch()
    subprocess.run(["mount", "--bind", str(device), str(bound)], check=True)
    try:
        # the backing file goes (the volume was deleted on the appliance): still refused
        (files / "storage-pool" / "k8s" / "vol" / "pvc-1.img").unlink()
        with pytest.raises(TransportError, match=r"not detaching: .* is bound at"):
            await loop.disconnect(target)
        assert attached_under(root) == [str(device)]
    finally:
        subprocess.run(["umount", str(bound)], check=True)
    await loop.disconnect(target)
    assert attached_under(root) == []


async def test_a_detached_device_goes_back_writable(
    loop: LoopTransport, files: Path, root: Path
) -> None:
    target = volume(files, "pvc-1")
    device = await loop.connect(target)
    fs.set_read_only(device, True)  # a read-only attachment's flag
    await loop.disconnect(target)
    assert not fs.is_read_only(device)  # the next user of this loop number can write


async def test_missing_file_is_told_apart(loop: LoopTransport, files: Path) -> None:
    target = Target("pvc-9", NQN, file_path="/storage-pool/k8s/vol/pvc-9.img")
    with pytest.raises(TargetMissing):
        await loop.connect(target)
    loop.check(target)  # a well-formed target: only the appliance lacks it
    with pytest.raises(InvalidTarget):
        loop.check(Target("pvc-9", NQN, file_path="/storage-pool/../etc/passwd"))
