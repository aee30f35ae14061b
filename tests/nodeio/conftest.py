"""Real loop devices and mounts for the node I/O tests.

Every device is a sparse file attached with ``losetup --find --show``; teardown always
unmounts what a test left under its work directory (deepest first) and detaches its loop
devices, whether the test passed or not. Tests that need this skip with the reason when not
run as root or when the machine has no loop devices.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rdscsi.io.host.mounts import read_mounts

MiB = 1 << 20


def _no_loop_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices and mounts)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control on this machine"
    return None


@dataclass
class Loop:
    device: Path
    backing: Path

    def resize(self, size: int) -> None:
        """Grow the backing file and tell the loop driver (`losetup -c`)."""
        os.truncate(self.backing, size)
        subprocess.run(["losetup", "-c", str(self.device)], check=True)


@dataclass
class Node:
    """A scratch area: `work` for mount points, `loop(size)` for devices."""

    work: Path
    loop: Callable[[int], Loop]


def _unmount_everything_under(root: Path) -> None:
    # Test cleanup only: unmount what a failed test left behind, deepest (latest) first,
    # so a leftover mount never reaches pytest's recursive tmp_path removal.
    base = Path(os.path.realpath(root))
    for _ in range(20):
        left = [
            m.mount_point
            for m in read_mounts()
            if m.mount_point == base or base in m.mount_point.parents
        ]
        if not left:
            return
        subprocess.run(["umount", str(left[-1])], check=False, capture_output=True)
    raise RuntimeError(f"could not clean up mounts under {root}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    reason = _no_loop_reason()
    if reason is not None:
        pytest.skip(reason)
    made: list[Loop] = []
    images = tmp_path / "images"
    images.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    def loop(size: int) -> Loop:
        backing = images / f"disk{len(made)}.img"
        with backing.open("wb"):
            pass
        os.truncate(backing, size)
        out = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            check=True,
            capture_output=True,
            text=True,
        )
        attached = Loop(Path(out.stdout.strip()), backing)
        made.append(attached)
        # The read-only flag survives detach: never inherit one, never leave one behind.
        subprocess.run(["blockdev", "--setrw", str(attached.device)], check=True)
        return attached

    try:
        yield Node(work, loop)
    finally:
        try:
            _unmount_everything_under(tmp_path)
        finally:
            for attached in reversed(made):
                for argv in (["blockdev", "--setrw"], ["losetup", "-d"]):
                    subprocess.run([*argv, str(attached.device)], check=False, capture_output=True)
