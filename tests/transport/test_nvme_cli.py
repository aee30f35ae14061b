"""NvmeTransport.connect/disconnect/refresh through a fake nvme-cli run as a real process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rdscsi.io.host.nvme import NvmeTransport
from rdscsi.io.host.proc import CommandFailed, CommandTimeout, NotInstalled
from rdscsi.io.host.transport import InvalidTarget, Session, Target, TransportError
from tests.transport.fakesys import FakeNvmeSys

from .conftest import FIXTURES, FOREIGN_NQN, NQN, OTHER_NQN, PREFIX, FakeCli, Naps

TARGET = Target("pvc-1", NQN, "10.0.0.5")


def connect_call(nqn: str = NQN, **opts: str) -> list[str]:
    options = {"-l": "60", "-c": "5", "-k": "15"} | opts
    call = ["connect", "-t", "tcp", "-a", "10.0.0.5", "-s", "4420", "-n", nqn]
    for flag, value in options.items():
        call += [flag, value]
    return call


# --- connect ---------------------------------------------------------------------------


async def test_connect_runs_nvme_connect_with_documented_defaults(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    device = await nvme.connect(TARGET)
    assert device == fake.dev / "nvme0n1"
    assert cli.calls() == [connect_call()]


async def test_connect_passes_the_targets_options(nvme: NvmeTransport, cli: FakeCli) -> None:
    target = Target(
        "pvc-1", NQN, "10.0.0.5", 4420, ctrl_loss_tmo=0, reconnect_delay=2, keep_alive_tmo=30
    )
    await nvme.connect(target)
    assert cli.calls() == [connect_call(**{"-l": "0", "-c": "2", "-k": "30"})]


async def test_connect_multipath(nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys) -> None:
    cli.configure(connect="multipath")
    assert await nvme.connect(TARGET) == fake.dev / "nvme0n1"
    assert (fake.sysfs / "class/nvme/nvme0/nvme0c0n1").is_dir()


async def test_connect_is_idempotent(nvme: NvmeTransport, cli: FakeCli) -> None:
    first = await nvme.connect(TARGET)
    second = await nvme.connect(TARGET)
    assert first == second
    assert len(cli.calls()) == 1  # reused, no second session


async def test_existing_session_is_reused_without_running_anything(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN, ctrl=3)
    assert await nvme.connect(TARGET) == fake.dev / "nvme3n1"
    assert cli.calls() == []


async def test_already_connected_is_success_when_the_device_resolves(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    cli.configure(connect="already")
    assert await nvme.connect(TARGET) == fake.dev / "nvme0n1"


async def test_already_connected_without_device_fails(
    nvme: NvmeTransport, cli: FakeCli, naps: Naps
) -> None:
    cli.configure(connect="already-nodevice")
    with pytest.raises(TransportError, match="already connected") as info:
        await nvme.connect(TARGET)
    assert "pvc-1" in str(info.value) and NQN in str(info.value)
    assert len(naps.waits) == 4  # bounded: 5 checks, 4 waits


async def test_connect_failure_names_volume_nqn_and_reason(
    nvme: NvmeTransport, cli: FakeCli
) -> None:
    cli.configure(connect="fail")
    with pytest.raises(TransportError) as info:
        await nvme.connect(TARGET)
    message = str(info.value)
    assert message.startswith(f"volume pvc-1 ({NQN}): ")
    assert "Connection refused" in message
    assert isinstance(info.value.__cause__, CommandFailed)
    assert info.value.__cause__.returncode == 1


async def test_no_device_after_connect_cleans_up(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys, naps: Naps
) -> None:
    cli.configure(connect="nodevice")
    with pytest.raises(TransportError, match="no block device appeared within 1s"):
        await nvme.connect(TARGET)
    assert cli.calls() == [connect_call(), ["disconnect", "-n", NQN]]
    assert fake.controllers() == []  # nothing half-made left behind


async def test_deviceless_session_is_restarted(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN, namespaces=())  # left by an earlier, interrupted attempt
    assert await nvme.connect(TARGET) == fake.dev / "nvme0n1"
    assert cli.calls() == [["disconnect", "-n", NQN], connect_call()]


async def test_connect_timeout_kills_nvme(
    fake: FakeNvmeSys, cli: FakeCli, naps: Naps, tmp_path: Path
) -> None:
    pidfile = tmp_path / "nvme.pid"
    cli.configure(connect="sleep", sleep=60, pidfile=str(pidfile))
    nvme = NvmeTransport(
        PREFIX, sysfs=fake.sysfs, dev=fake.dev, nvme=str(cli.exe), timeout=2.0, sleep=naps
    )
    with pytest.raises(CommandTimeout) as info:
        await nvme.connect(TARGET)
    assert info.value.argv[1] == "connect"
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_nvme_cli_missing(fake: FakeNvmeSys, tmp_path: Path) -> None:
    nvme = NvmeTransport(PREFIX, sysfs=fake.sysfs, dev=fake.dev, nvme=str(tmp_path / "nope"))
    with pytest.raises(NotInstalled):
        await nvme.connect(TARGET)


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "field"),
    [
        (Target("pvc-1", FOREIGN_NQN, "10.0.0.5"), "nqn"),
        (Target("pvc-1", PREFIX, "10.0.0.5"), "nqn"),
        (Target("pvc-1", NQN.upper(), "10.0.0.5"), "nqn"),
        (Target("pvc-1", NQN + " -l -1", "10.0.0.5"), "nqn"),
        (Target("pvc-1", NQN + "x" * 200, "10.0.0.5"), "nqn"),
        (Target("pvc-1", NQN, ""), "address"),
        (Target("pvc-1", NQN, "10.0.0.5,hostnqn=nqn.x:y"), "address"),
        (Target("pvc-1", NQN, "--help"), "address"),
        (Target("pvc-1", NQN, "10.0.0.5", 0), "port"),
        (Target("pvc-1", NQN, "10.0.0.5", 70000), "port"),
        (Target("pvc-1", NQN, "10.0.0.5", True), "port"),
        (Target("pvc-1", NQN, "10.0.0.5", ctrl_loss_tmo=-1), "ctrl_loss_tmo"),
        (Target("pvc-1", NQN, "10.0.0.5", ctrl_loss_tmo=10**9), "ctrl_loss_tmo"),
        (Target("pvc-1", NQN, "10.0.0.5", reconnect_delay=0), "reconnect_delay"),
        (Target("pvc-1", NQN, "10.0.0.5", keep_alive_tmo=0), "keep_alive_tmo"),
    ],
)
async def test_bad_targets_are_refused_before_running_anything(
    nvme: NvmeTransport, cli: FakeCli, target: Target, field: str
) -> None:
    with pytest.raises(InvalidTarget) as info:
        await nvme.connect(target)
    assert info.value.field == field
    assert f"invalid {field}" in str(info.value)
    assert "pvc-1" in str(info.value)
    assert cli.calls() == []


async def test_foreign_nqns_are_never_touched(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(FOREIGN_NQN)
    foreign = Target("pvc-x", FOREIGN_NQN, "10.0.0.5")
    for operation in (nvme.connect, nvme.disconnect, nvme.find, nvme.refresh):
        with pytest.raises(InvalidTarget, match="prefix"):
            await operation(foreign)
    assert cli.calls() == []
    assert fake.controllers(FOREIGN_NQN) == ["nvme0"]


def test_prefix_must_be_specific() -> None:
    with pytest.raises(ValueError):
        NvmeTransport("")
    with pytest.raises(ValueError):
        NvmeTransport("nqn.")


# --- disconnect ----------------------------------------------------------------------------


async def test_disconnect_removes_the_session(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN, multipath=True)
    fake.add(OTHER_NQN)
    await nvme.disconnect(TARGET)
    assert cli.calls() == [["disconnect", "-n", NQN]]
    assert fake.controllers(NQN) == [] and fake.subsystems(NQN) == []
    assert fake.controllers(OTHER_NQN) == ["nvme1"]  # the neighbour is untouched


async def test_disconnect_when_absent_runs_nothing(nvme: NvmeTransport, cli: FakeCli) -> None:
    await nvme.disconnect(TARGET)
    await nvme.disconnect(TARGET)
    assert cli.calls() == []


async def test_disconnect_twice(nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys) -> None:
    fake.add(NQN)
    await nvme.disconnect(TARGET)
    await nvme.disconnect(TARGET)
    assert cli.calls() == [["disconnect", "-n", NQN]]


async def test_disconnect_that_leaves_the_session_fails(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys, naps: Naps
) -> None:
    fake.add(NQN)
    cli.configure(disconnect="stuck")  # exits 0, yet the controller stays
    with pytest.raises(TransportError, match="still connected 1s after") as info:
        await nvme.disconnect(TARGET)
    assert "pvc-1" in str(info.value)
    assert naps.waits == [0.25] * 4  # re-checked a bounded number of times
    assert fake.controllers(NQN) == ["nvme0"]


async def test_failed_disconnect_that_left_the_session_fails_with_its_reason(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN)
    cli.configure(disconnect="fail")
    with pytest.raises(TransportError, match="Device or resource busy") as info:
        await nvme.disconnect(TARGET)
    assert isinstance(info.value.__cause__, TransportError)


async def test_failed_disconnect_that_removed_the_session_succeeds(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN)
    cli.configure(disconnect="fail-but-gone")
    await nvme.disconnect(TARGET)  # sysfs, not the exit status, decides
    assert fake.controllers(NQN) == []


async def test_disconnect_timeout_with_session_left_is_a_timeout(
    fake: FakeNvmeSys, cli: FakeCli, naps: Naps
) -> None:
    fake.add(NQN)
    cli.configure(disconnect="sleep", sleep=60)
    nvme = NvmeTransport(
        PREFIX, sysfs=fake.sysfs, dev=fake.dev, nvme=str(cli.exe), timeout=1.0, sleep=naps
    )
    with pytest.raises(CommandTimeout):
        await nvme.disconnect(TARGET)


async def test_disconnect_refuses_a_mounted_device(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys, mountinfo: Path
) -> None:
    fake.add(NQN, multipath=True)
    number = (fake.sysfs / "class/block/nvme0n1/dev").read_text().strip()
    with mountinfo.open("a") as f:
        f.write(f"95 22 {number} / /var/lib/kubelet/plugins/staging/pvc-1 rw - ext4 x rw\n")
    with pytest.raises(TransportError, match="not disconnecting: /dev/nvme0n1 is mounted at"):
        await nvme.disconnect(TARGET)
    assert cli.calls() == []
    assert fake.controllers(NQN) == ["nvme0"]


async def test_disconnect_refuses_a_held_device(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN)
    (fake.sysfs / "class/block/nvme0n1/holders/dm-3").mkdir()
    with pytest.raises(TransportError, match="held by dm-3"):
        await nvme.disconnect(TARGET)
    assert cli.calls() == []


# --- refresh, list-subsys --------------------------------------------------------------------


async def test_refresh_rescans_every_controller(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(NQN, ctrl=1, subsys=0, multipath=True)
    fake.add(NQN, ctrl=4, multipath=True)
    assert await nvme.refresh(TARGET) == fake.dev / "nvme0n1"
    assert cli.calls() == [
        ["ns-rescan", str(fake.dev / "nvme1")],
        ["ns-rescan", str(fake.dev / "nvme4")],
    ]


async def test_refresh_when_not_connected(nvme: NvmeTransport, cli: FakeCli) -> None:
    with pytest.raises(TransportError, match="not connected"):
        await nvme.refresh(TARGET)
    assert cli.calls() == []


async def test_list_subsys_is_filtered_to_our_prefix(nvme: NvmeTransport, cli: FakeCli) -> None:
    cli.configure(list_subsys=str(FIXTURES / "list-subsys-v2.json"))
    found = await nvme.list_subsys()
    assert [s.nqn for s in found] == [NQN, OTHER_NQN]
    assert cli.calls() == [["list-subsys", "-o", "json"]]


async def test_list_subsys_garbage(nvme: NvmeTransport, cli: FakeCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("Segmentation fault\n")
    cli.configure(list_subsys=str(bad))
    with pytest.raises(TransportError, match="not JSON"):
        await nvme.list_subsys()


async def test_orphan_sessions_are_disconnected_without_a_context(
    nvme: NvmeTransport, cli: FakeCli, fake: FakeNvmeSys
) -> None:
    fake.add(FOREIGN_NQN)
    fake.add(NQN, multipath=True)
    fake.add(OTHER_NQN, namespaces=())
    for session in await nvme.sessions():
        await nvme.disconnect_session(session)
    assert await nvme.sessions() == []
    assert cli.calls() == [["disconnect", "-n", NQN], ["disconnect", "-n", OTHER_NQN]]
    assert fake.controllers(FOREIGN_NQN) == ["nvme0"]


async def test_disconnect_session_refuses_foreign_keys(nvme: NvmeTransport, cli: FakeCli) -> None:
    with pytest.raises(InvalidTarget, match="prefix"):
        await nvme.disconnect_session(Session(FOREIGN_NQN, None))
    assert cli.calls() == []
