"""The simulator as strict as the device is assumed to be about what fencing and the sweep
use: the allow-list decides who connects, a disk's slot and a file's name can be changed,
and nothing is renamed onto something that exists or away from a disk using it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.io.host.transport import Target, TargetMissing, TransportError
from rdscsi.sim import SimConfig, Simulator
from rdscsi.sim.admission import SimAdmission
from rdscsi.sim.cli import Interpreter
from rdscsi.sim.control import CONTROL_SOCKET, ControlServer
from rdscsi.sim.errors import DeviceError
from rdscsi.sim.store import Store
from rdscsi.sim.units import TIB

NQN = "nqn.2000-02.com.mikrotik:pvc-f"
A = "nqn.2014-08.org.example:host-a"
B = "nqn.2014-08.org.example:host-b"
ADD = (
    '/disk add type=file file-path="/storage-pool/k8s/vol/pvc-f.img" file-size=1M '
    f'slot="pvc-f" nvme-tcp-export=yes nvme-tcp-server-nqn="{NQN}"'
)


@pytest.fixture
async def dev(tmp_path: Path) -> tuple[Store, Interpreter]:
    store = Store.open(tmp_path, pool_size=TIB)
    cli = Interpreter(store, render="plain")
    assert (await cli.run(ADD)).ok
    return store, cli


async def test_the_allow_list_decides_who_connects(dev: tuple[Store, Interpreter]) -> None:
    store, cli = dev
    # empty: every host (what every capture of a device shows)
    assert store.admit_host(NQN, A, "10.0.0.1").host_nqn == A
    fence = f'/disk set [find slot="pvc-f"] nvme-tcp-server-allow-host-name="{B}"'
    assert (await cli.run(fence)).ok
    with pytest.raises(DeviceError, match=f"host {A} is not allowed"):
        store.admit_host(NQN, A, "10.0.0.1")
    first = store.admit_host(NQN, B, "10.0.0.2")
    assert store.admit_host(NQN, B, "10.0.0.2") == first  # connecting twice: one session
    both = f'/disk set [find slot="pvc-f"] nvme-tcp-server-allow-host-name="{A},{B}"'
    assert (await cli.run(both)).ok
    store.admit_host(NQN, A, "10.0.0.1")
    # the export off, or no such export: nobody
    assert (await cli.run('/disk set [find slot="pvc-f"] nvme-tcp-export=no')).ok
    with pytest.raises(DeviceError, match="no such item"):
        store.admit_host(NQN, B, "10.0.0.2")
    with pytest.raises(DeviceError, match="no such item"):
        store.admit_host("nqn.2000-02.com.mikrotik:nope", B, "10.0.0.2")


async def test_a_disk_keeps_its_file_and_sessions_under_a_new_slot(
    dev: tuple[Store, Interpreter],
) -> None:
    store, cli = dev
    store.add_connection("pvc-f", A, "10.0.0.1", 1)
    line = (
        '/disk set [find slot="pvc-f" file-path="/storage-pool/k8s/vol/pvc-f.img"] '
        'slot="q1.pvc-f" nvme-tcp-export=no'
    )
    assert (await cli.run(line)).ok
    assert list(store.disks) == ["q1.pvc-f"]
    disk = store.disks["q1.pvc-f"]
    assert disk.file_path == "/storage-pool/k8s/vol/pvc-f.img" and not disk.nvme_tcp_export
    assert [c.slot for c in store.connections] == ["q1.pvc-f"]
    # the find must match both: a wrong path changes nothing
    wrong = '/disk set [find slot="q1.pvc-f" file-path="/storage-pool/x.img"] slot="pvc-f"'
    assert (await cli.run(wrong)).output == "failure: no such item\n"
    assert (await cli.run(ADD.replace("pvc-f.img", "other.img").replace('"pvc-f"', '"x"'))).ok
    taken = '/disk set [find slot="q1.pvc-f"] slot="x"'
    assert (await cli.run(taken)).output == "failure: invalid parameter\n"
    two = '/disk set [find slot~"^(x|q1)"] slot="y"'
    assert (await cli.run(two)).output == "failure: invalid parameter\n"


async def test_a_file_is_renamed_only_when_no_disk_uses_it(dev: tuple[Store, Interpreter]) -> None:
    store, cli = dev
    used = (
        '/file set [find name="storage-pool/k8s/vol/pvc-f.img"] name="storage-pool/k8s/vol/q1.img"'
    )
    assert (await cli.run(used)).output == "failure: disk is in use\n"
    loose = store.real_path("storage-pool/k8s/vol/pvc-l.img")
    loose.write_bytes(b"left")
    rename = (
        '/file set [find name="storage-pool/k8s/vol/pvc-l.img"] '
        'name="storage-pool/k8s/vol/q1.pvc-l.img"'
    )
    assert (await cli.run(rename)).ok
    assert store.real_path("storage-pool/k8s/vol/q1.pvc-l.img").read_bytes() == b"left"
    assert not loose.exists()
    again = (
        '/file set [find name="storage-pool/k8s/vol/q1.pvc-l.img"] '
        'name="storage-pool/k8s/vol/pvc-f.img"'
    )
    assert (await cli.run(again)).output == "failure: file already exists\n"
    outside = '/file set [find name="storage-pool/k8s/vol/q1.pvc-l.img"] name="etc/x.img"'
    assert (await cli.run(outside)).output == "failure: invalid parameter\n"
    none = '/file set [find name="storage-pool/nope.img"] name="storage-pool/x.img"'
    assert (await cli.run(none)).output == "failure: no such item\n"


async def test_the_loop_transport_asks_over_the_control_socket(
    tmp_path: Path, sim_config: SimConfig
) -> None:
    async with Simulator(sim_config) as sim:
        control = ControlServer(sim, sim.data_dir / CONTROL_SOCKET)
        await control.start()
        try:
            assert (await sim.execute(ADD)).ok
            target = Target(volume_id="pvc-f", nqn=NQN)
            a = SimAdmission(control.path, A)
            await a.admit(target)
            assert [(c.slot, c.host_nqn) for c in sim.store.connections] == [("pvc-f", A)]
            await sim.execute(
                f'/disk set [find slot="pvc-f"] nvme-tcp-server-allow-host-name="{B}"'
            )
            with pytest.raises(TransportError, match=r"refused the connection.*not allowed"):
                await SimAdmission(control.path, A).admit(target)
            await a.leave(target)
            assert sim.store.connections == []
            await SimAdmission(control.path, B).admit(target)
            with pytest.raises(TargetMissing, match="no export"):
                await a.admit(Target(volume_id="pvc-x", nqn="nqn.2000-02.com.mikrotik:pvc-x"))
        finally:
            await control.stop()
        with pytest.raises(TransportError, match="did not answer"):
            await SimAdmission(control.path, B).admit(target)
