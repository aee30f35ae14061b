"""NvmeTransport.find and .sessions against fake sysfs trees (no nvme-cli involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.io.host.nvme import NvmeTransport
from rdscsi.io.host.transport import InvalidTarget, Session, Target, Transport
from tests.transport.fakesys import FakeNvmeSys

from .conftest import (
    DISCOVERY_NQN,
    FOREIGN_NQN,
    NQN,
    OTHER_NQN,
    PREFIX,
    ROOT_DISK_NQN,
)

TARGET = Target("pvc-1", NQN, "10.0.0.5")


def test_is_a_transport(nvme: NvmeTransport) -> None:
    transport: Transport = nvme
    assert transport.name == "nvme-tcp"
    assert transport.key(TARGET) == NQN


async def test_nothing_connected(nvme: NvmeTransport) -> None:
    assert await nvme.find(TARGET) is None
    assert await nvme.sessions() == []


async def test_no_nvme_class_at_all(tmp_path: Path) -> None:
    transport = NvmeTransport(PREFIX, sysfs=tmp_path / "empty", dev=tmp_path / "dev")
    assert await transport.find(TARGET) is None
    assert await transport.sessions() == []


async def test_kernel_layout_uses_symlinks(fake: FakeNvmeSys) -> None:
    fake.add(NQN, multipath=True)
    assert (fake.sysfs / "class/nvme/nvme0").is_symlink()
    assert (fake.sysfs / "class/nvme-subsystem/nvme-subsys0").is_symlink()
    assert (fake.sysfs / "class/nvme/nvme0/nvme0c0n1").is_dir()
    assert (fake.sysfs / "class/nvme-subsystem/nvme-subsys0/nvme0n1").is_dir()


async def test_single_path_namespace(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(ROOT_DISK_NQN, transport="pcie", address="0000:01:00.0")  # nvme0: the root disk
    fake.add(NQN)  # nvme1
    assert await nvme.find(TARGET) == fake.dev / "nvme1n1"


async def test_multipath_head_is_the_device(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(ROOT_DISK_NQN, transport="pcie")  # nvme0, nvme-subsys0
    fake.add(NQN, ctrl=1, subsys=1, multipath=True)  # path nvme1c1n1, head nvme1n1
    fake.add(OTHER_NQN, ctrl=2, subsys=3, multipath=True)  # path nvme3c2n1, head nvme3n1
    assert await nvme.find(TARGET) == fake.dev / "nvme1n1"
    assert await nvme.find(Target("pvc-2", OTHER_NQN)) == fake.dev / "nvme3n1"
    assert not (fake.dev / "nvme3c2n1").exists()  # hidden paths never have a node


async def test_multipath_path_maps_to_head_without_subsystem_entry(
    fake: FakeNvmeSys, nvme: NvmeTransport
) -> None:
    # Even if the subsystem class were unreadable, nvmeXcYnZ alone gives /dev/nvmeXnZ.
    fake.add(NQN, ctrl=4, subsys=2, multipath=True)
    link = fake.sysfs / "class/nvme-subsystem/nvme-subsys2"
    link.rename(link.with_name("hidden"))
    assert await nvme.find(TARGET) == fake.dev / "nvme2n1"


async def test_two_paths_one_head(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(NQN, ctrl=0, multipath=True)
    fake.add(NQN, ctrl=1, multipath=True)  # a second path into the same subsystem
    assert fake.subsystems(NQN) == ["nvme-subsys0"]
    assert await nvme.find(TARGET) == fake.dev / "nvme0n1"
    assert await nvme.sessions() == [Session(NQN, fake.dev / "nvme0n1")]


async def test_lowest_namespace_wins(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(NQN, namespaces=(3, 2))
    assert await nvme.find(TARGET) == fake.dev / "nvme0n2"


async def test_missing_device_node_is_not_found(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(NQN, devnodes=False)  # sysfs knows it, /dev does not (yet)
    assert await nvme.find(TARGET) is None
    assert await nvme.sessions() == [Session(NQN, None)]


async def test_controller_without_namespace(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(NQN, namespaces=())
    assert await nvme.find(TARGET) is None


@pytest.mark.parametrize("multipath", [False, True])
async def test_renumbering_between_calls(
    fake: FakeNvmeSys, nvme: NvmeTransport, multipath: bool
) -> None:
    fake.add(NQN, ctrl=0, subsys=0, multipath=multipath)
    assert await nvme.find(TARGET) == fake.dev / "nvme0n1"
    # The controller is lost and comes back under new numbers (as after ctrl_loss_tmo and a
    # reconnect), while another session took the old ones.
    fake.remove(NQN)
    fake.add(OTHER_NQN, ctrl=0, subsys=0, multipath=multipath)
    fake.add(NQN, ctrl=2, subsys=2, multipath=multipath)
    assert await nvme.find(TARGET) == fake.dev / "nvme2n1"
    assert await nvme.find(Target("pvc-2", OTHER_NQN)) == fake.dev / "nvme0n1"


async def test_sessions_lists_ours_only(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(ROOT_DISK_NQN, transport="pcie", address="0000:01:00.0")
    fake.add(DISCOVERY_NQN, namespaces=())
    fake.add(FOREIGN_NQN)
    fake.add(NQN, multipath=True)
    fake.add(OTHER_NQN, namespaces=())
    fake.add(PREFIX, namespaces=())  # the bare prefix is no volume of ours
    fake.add(PREFIX + "Not A Volume", namespaces=())  # nor is a name we could never make
    nqn_dev = await nvme.find(TARGET)
    assert nqn_dev is not None
    assert await nvme.sessions() == [Session(NQN, nqn_dev), Session(OTHER_NQN, None)]


async def test_find_refuses_foreign_nqns(fake: FakeNvmeSys, nvme: NvmeTransport) -> None:
    fake.add(ROOT_DISK_NQN)
    with pytest.raises(InvalidTarget) as info:
        await nvme.find(Target("pvc-x", FOREIGN_NQN))
    assert info.value.field == "nqn"
    assert "pvc-x" in str(info.value)
