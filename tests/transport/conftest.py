"""Fixtures for the transport tests: a fake NVMe sysfs, a fake nvme-cli, a sleep that does
not sleep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rdscsi.io.host.nvme import NvmeTransport
from tests.transport import fake_nvme
from tests.transport.fakesys import FakeNvmeSys

PREFIX = "nqn.2000-02.com.mikrotik:"
NQN = PREFIX + "pvc-0b7f3c2e-5a61-4d8e-9f7a-2c4b1e6d9a10"
OTHER_NQN = PREFIX + "pvc-7d2e9a41-3c85-4f10-b6e2-91a0c4d5f3b8"
FOREIGN_NQN = "nqn.2014-08.org.nvmexpress:uuid:5c8e1d3a-2b47-4f69-8a0e-d1c3b5a7e902"
ROOT_DISK_NQN = "nqn.2014.08.org.nvmexpress:144d144dS4EVNF0M712345R     Samsung SSD 970"
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
FIXTURES = Path(__file__).parent / "fixtures"


class Naps:
    """An injected sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.waits.append(delay)


@dataclass
class FakeCli:
    exe: Path
    control: Path
    log: Path

    def configure(self, **changes: object) -> None:
        fake_nvme.configure(self.control, **changes)

    def calls(self) -> list[list[str]]:
        return fake_nvme.calls(self.log)


@pytest.fixture
def fake(tmp_path: Path) -> FakeNvmeSys:
    return FakeNvmeSys(tmp_path / "root")


@pytest.fixture
def naps() -> Naps:
    return Naps()


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n")
    return path


@pytest.fixture
def cli(tmp_path: Path, fake: FakeNvmeSys) -> FakeCli:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    return FakeCli(*fake_nvme.install(bindir, fake.root))


@pytest.fixture
def nvme(fake: FakeNvmeSys, cli: FakeCli, naps: Naps, mountinfo: Path) -> NvmeTransport:
    return NvmeTransport(
        PREFIX,
        sysfs=fake.sysfs,
        dev=fake.dev,
        nvme=str(cli.exe),
        timeout=20.0,
        attempts=5,
        interval=0.25,
        sleep=naps,
        mountinfo=mountinfo,
    )
