"""The interpreter without SSH: every command, both output shapes, sizes and the store."""

from __future__ import annotations

import calendar
import json
import os
from pathlib import Path

import pytest

from rdscsi.sim.cli import Interpreter
from rdscsi.sim.sparse import allocated_bytes
from rdscsi.sim.store import Store
from rdscsi.sim.units import GIB, MIB, TIB
from tests.sim.sim_helpers import add_line

REFERENCE_DETAIL = """\
type=file slot="pvc-test-123" slot-default="" parent="" fs=-
               model="/storage-pool/test.img"
               size=53 687 091 200 mount-filesystem=yes mount-read-only=no
               compress=no sector-size=512 raid-master=none
               nvme-tcp-export=yes nvme-tcp-server-port=4420
               nvme-tcp-server-nqn="nqn.2000-02.com.mikrotik:pvc-test-123"
               nvme-tcp-server-allow-host-name="" iscsi-export=no
               file-path=/storage-pool/test.img
               file-size=50.0GiB file-offset=0
"""

REFERENCE_POOL = (
    "slot=storage-pool type=partition mount-point=storage-pool file-system=btrfs "
    "size=7 949 127 950 336 free=5 963 595 964 416 use=25%"
)

# The reference's file listing, with `<uuid>` spelled as a same-length name.
REFERENCE_FILES = """\
 0   name=storage-pool/k8s type=directory last-modified=2025-11-11 16:47:07
 1   name=storage-pool/k8s/pvc-abcdef.img type=.img file size=10.0GiB
     last-modified=2025-11-11 14:32:41
"""


class Device:
    """An interpreter on a fresh store, with a pool-full switch."""

    def __init__(self, data_dir: Path, pool_size: int = 8 * TIB) -> None:
        self.data_dir = data_dir
        self.full = False
        self.store = Store.open(data_dir, pool_size=pool_size)
        self.cli = Interpreter(self.store, render="plain", pool_full=lambda: self.full)

    async def ok(self, line: str) -> str:
        outcome = await self.cli.run(line)
        assert outcome.ok, (line, outcome.output)
        return outcome.output

    async def fails(self, line: str) -> str:
        outcome = await self.cli.run(line)
        assert not outcome.ok, (line, outcome.output)
        return outcome.output.rstrip("\n")


@pytest.fixture
def dev(tmp_path: Path) -> Device:
    return Device(tmp_path / "data")


async def test_detail_is_byte_exact_with_the_reference(dev: Device) -> None:
    await dev.ok(add_line("pvc-test-123", "50G", "/storage-pool/test.img"))
    assert await dev.ok("/disk print detail where slot=pvc-test-123") == REFERENCE_DETAIL


async def test_list_form_with_index_flags_and_blank_lines(dev: Device) -> None:
    dev.cli.render = "detail"
    await dev.ok(add_line("pvc-test-1", "50G"))
    await dev.ok(add_line("pvc-test-2", "100G"))
    out = await dev.ok('/disk print detail where slot~"^pvc-test-"')
    lines = out.split("\n")
    assert lines[0] == "Flags: X - disabled"
    assert lines[1] == ' 0  type=file slot="pvc-test-1" slot-default="" parent="" fs=-'
    assert "               size=53 687 091 200 mount-filesystem=yes mount-read-only=no" in lines
    second = lines.index(' 1  type=file slot="pvc-test-2" slot-default="" parent="" fs=-')
    assert lines[second - 1] == ""
    assert "               size=107 374 182 400 mount-filesystem=yes mount-read-only=no" in lines
    assert out.endswith("file-size=100.0GiB file-offset=0\n\n")
    assert all(line.startswith((" ", "Flags:")) or not line for line in lines)


async def test_no_match_prints_only_the_legend_or_nothing(dev: Device) -> None:
    assert await dev.ok("/disk print detail where slot=nope") == ""
    dev.cli.render = "detail"
    assert await dev.ok("/disk print detail where slot=nope") == "Flags: X - disabled\n"
    dev.cli.render = "colon"
    assert await dev.ok("/disk print detail where slot=nope") == ""


async def test_colon_render(dev: Device) -> None:
    dev.cli.render = "colon"
    await dev.ok(add_line("pvc-a", "1.5T".replace("1.5T", str(3 * TIB // 2 + 1))))
    await dev.ok(add_line("pvc-b", "512M"))
    out = await dev.ok('/disk print detail where slot~"^pvc-"')
    first, second = out.split("\n\n")
    lines = first.split("\n")
    width = len("nvme-tcp-server-allow-host-name")
    assert lines[0] == "  " + "type".rjust(width) + ": file"
    assert "  " + "slot".rjust(width) + ": pvc-a" in lines
    assert "  " + "size".rjust(width) + ": 1 649 267 441 665" in lines
    assert "  " + "file-size".rjust(width) + ": 1.5TiB" in lines
    assert "  " + "slot-default".rjust(width) + ":" in lines
    assert "  " + "file-path".rjust(width) + ": /storage-pool/k8s/pvc-a.img" in lines
    assert "file-size: 512.0MiB" in second
    pool = await dev.ok('/disk print detail where mount-point="storage-pool"')
    assert pool.splitlines()[0] == "         slot: storage-pool"
    assert "         free: " in pool


async def test_exact_sizes_and_suffixes(dev: Device) -> None:
    cases = {"s1": ("1649267441665", 3 * TIB // 2 + 1), "s2": ("4K", 4096), "s3": ("7M", 7 * MIB)}
    for slot, (text, size) in cases.items():
        await dev.ok(add_line(slot, text))
        assert dev.store.backing_path(slot).stat().st_size == size
        out = await dev.ok(f"/disk print detail where slot={slot}")
        grouped = f"{size:,}".replace(",", " ")
        assert f"size={grouped} " in out
    await dev.ok("/disk set [find slot=s2] file-size=1G")
    assert dev.store.backing_path("s2").stat().st_size == GIB
    assert "file-size=1.0GiB" in await dev.ok("/disk print detail where slot=s2")


async def test_pool_line_matches_the_reference(tmp_path: Path) -> None:
    dev = Device(tmp_path / "d", pool_size=7_949_127_950_336)
    await dev.ok(add_line("big", str(7_949_127_950_336 - 5_963_595_964_416)))
    out = await dev.ok('/disk print detail where mount-point="storage-pool"')
    assert out.splitlines()[1].startswith(" " * 15 + "size=")
    assert " ".join(out.split()) == " ".join(REFERENCE_POOL.split())


async def test_pool_accounting_and_not_enough_space(tmp_path: Path) -> None:
    dev = Device(tmp_path / "d", pool_size=10 * GIB)
    await dev.ok(add_line("a", "6G"))
    assert dev.store.free_bytes() == 4 * GIB
    assert await dev.fails(add_line("b", "5G")) == "failure: not enough space"
    assert await dev.fails("/disk set [find slot=a] file-size=11G") == "failure: not enough space"
    await dev.ok("/disk set [find slot=a] file-size=10G")
    assert dev.store.free_bytes() == 0
    assert await dev.fails(add_line("c", "1")) == "failure: not enough space"
    assert "use=100%" in await dev.ok("/disk print detail where slot=storage-pool")
    # A removed disk's file still holds its space until the file goes too.
    await dev.ok("/disk remove [find slot=a]")
    assert dev.store.free_bytes() == 0
    await dev.ok('/file remove [find name="storage-pool/k8s/a.img"]')
    assert dev.store.free_bytes() == 10 * GIB
    dev.full = True
    assert await dev.fails(add_line("d", "1")) == "failure: not enough space"


async def test_copy_from_preserves_data_and_sparseness(dev: Device) -> None:
    await dev.ok(add_line("src", "64M"))
    src = dev.store.backing_path("src")
    with open(src, "r+b") as handle:
        handle.seek(MIB)
        handle.write(b"hello" * 1000)
        handle.seek(40 * MIB)
        handle.write(b"\x01" * 4096)
    await dev.ok(
        "/disk add type=file copy-from=[find slot=src] file-path=/storage-pool/k8s/snap.img "
        "slot=snap"
    )
    snap = dev.store.backing_path("snap")
    assert snap.read_bytes() == src.read_bytes()
    assert allocated_bytes(snap) < 4 * MIB  # only the written regions took blocks
    assert "size=67 108 864 " in await dev.ok("/disk print detail where slot=snap")
    await dev.ok(
        "/disk add type=file copy-from=[find slot=src] file-path=/storage-pool/k8s/big.img "
        "slot=big file-size=128M nvme-tcp-export=yes"
    )
    big = dev.store.backing_path("big")
    assert big.stat().st_size == 128 * MIB
    assert big.read_bytes()[: 64 * MIB] == src.read_bytes()
    assert dev.store.disks["big"].nvme_tcp_server_nqn == "nqn.2000-02.com.mikrotik:big"
    # The copy is a copy: writing the source leaves it alone.
    with open(src, "r+b") as handle:
        handle.write(b"changed")
    assert snap.read_bytes()[:7] == b"\x00" * 7
    small = "/disk add type=file copy-from=[find slot=src] file-path=/storage-pool/s.img slot=s"
    assert await dev.fails(small + " file-size=1M") == "failure: invalid parameter"
    missing = "/disk add type=file copy-from=[find slot=nope] file-path=/storage-pool/m.img slot=m"
    assert await dev.fails(missing) == "failure: no such item"
    assert not (dev.store.files_root / "storage-pool/m.img").exists()
    assert list(dev.store.tmp_dir.iterdir()) == []


async def test_grow_and_shrink(dev: Device) -> None:
    await dev.ok(add_line("g", "1G"))
    await dev.ok("/disk set [find slot=g] file-size=2G")
    await dev.ok("/disk set g file-size=2G")  # same size: nothing to do
    assert await dev.fails("/disk set [find slot=g] file-size=1G") == "failure: invalid parameter"
    assert dev.store.backing_path("g").stat().st_size == 2 * GIB
    assert await dev.fails("/disk set [find slot=nope] file-size=3G") == "failure: no such item"
    assert await dev.fails("/disk set nope file-size=3G") == "failure: no such item"
    await dev.ok("/disk set [find slot=g] nvme-tcp-export=no")
    assert "nvme-tcp-export=no " in await dev.ok("/disk print detail where slot=g")


async def test_remove_keeps_the_file(dev: Device) -> None:
    await dev.ok(add_line("r", "1G"))
    path = dev.store.backing_path("r")
    await dev.ok("/disk remove [find slot=r]")
    assert path.exists()
    assert await dev.ok("/disk print detail where slot=r") == ""
    assert await dev.ok("/disk remove [find slot=r]") == ""  # no match: silent success
    assert await dev.fails("/disk remove r") == "failure: no such item"
    assert await dev.fails(add_line("r2", "1G", "/storage-pool/k8s/r.img")) == (
        "failure: file already exists"
    )
    await dev.ok('/file remove [find name="storage-pool/k8s/r.img"]')
    assert not path.exists()
    assert await dev.ok('/file remove [find name="storage-pool/k8s/r.img"]') == ""
    assert await dev.fails('/file remove "storage-pool/k8s/r.img"') == "failure: no such item"


async def test_add_refusals(dev: Device) -> None:
    await dev.ok(add_line("x", "1G"))
    assert await dev.fails(add_line("x", "1G", "/storage-pool/other.img")) == (
        "failure: file already exists"
    )
    assert await dev.fails(add_line("y", "1G", "/storage-pool/k8s")) == (
        "failure: file already exists"
    )
    for path in ("/other-pool/y.img", "/storage-pool/../y.img", "/storage-pool//y.img", "/y"):
        assert await dev.fails(add_line("y", "1G", path)) == "failure: invalid parameter", path
    assert await dev.fails(add_line("y", "1G", "/storage-pool/k8s/x.img/y.img")) == (
        "failure: invalid parameter"
    )
    assert await dev.fails("/disk add type=file file-path=/storage-pool/y.img slot=y") == (
        "failure: invalid parameter"
    )
    assert await dev.fails("/disk add file-path=/storage-pool/y.img slot=y file-size=1G") == (
        "failure: invalid parameter"
    )
    assert await dev.fails(add_line("y", "lots")) == "invalid value for argument file-size"
    assert await dev.fails(add_line("y", "0")) == "invalid value for argument file-size"
    assert await dev.fails("/disk add type=floppy") == "input does not match any value of type"
    assert await dev.fails("/disk add type=file nvme-tcp-export=maybe") == (
        "input does not match any value of nvme-tcp-export"
    )
    assert await dev.fails("/disk add type=file nvme-tcp-server-port=70000") == (
        "invalid value for argument nvme-tcp-server-port"
    )
    assert await dev.fails("/disk add type=file foo=bar") == (
        "expected end of command (line 1 column 21)"
    )
    assert await dev.fails("/disk print detail extra") == (
        "expected end of command (line 1 column 20)"
    )
    assert await dev.fails("/disk print where colour=red") == "syntax error (line 1 column 19)"
    assert await dev.fails('/disk print where slot~"("') == "syntax error (line 1 column 19)"
    assert set(dev.store.disks) == {"x"}


async def test_where_conditions(dev: Device) -> None:
    for slot, size in (("pvc-1", "1G"), ("pvc-2", "2G"), ("snap-1", "3G")):
        await dev.ok(add_line(slot, size))
    await dev.ok("/disk set pvc-2 nvme-tcp-export=no")

    async def slots(where: str) -> list[str]:
        out = await dev.ok(f"/disk print detail where {where}")
        return [line.split('"')[1] for line in out.splitlines() if line.startswith("type=")]

    assert await slots('slot~"^pvc-"') == ["pvc-1", "pvc-2"]
    assert await slots('slot~"^pvc-" and nvme-tcp-export') == ["pvc-1"]
    assert await slots("slot!=pvc-1 type=file") == ["pvc-2", "snap-1"]
    assert await slots(f"size>{GIB}") == ["pvc-2", "snap-1"]
    assert await slots('file-path="/storage-pool/k8s/snap-1.img"') == ["snap-1"]
    assert await dev.ok('/disk print count-only where slot~"^pvc-"') == "2\n"
    everything = await dev.ok("/disk print detail")
    assert everything.startswith("slot=storage-pool type=partition")


async def test_file_listing_is_byte_exact_with_the_reference(dev: Device) -> None:
    await dev.ok(add_line("pvc-abcdef", "10G"))
    k8s = dev.store.files_root / "storage-pool/k8s"
    img = k8s / "pvc-abcdef.img"
    os.utime(img, (0, calendar.timegm((2025, 11, 11, 14, 32, 41))))
    os.utime(k8s, (0, calendar.timegm((2025, 11, 11, 16, 47, 7))))
    assert await dev.ok('/file print detail where name~"^storage-pool/k8s"') == REFERENCE_FILES
    dev.cli.date_style = "legacy"
    out = await dev.ok('/file print detail where name="storage-pool/k8s"')
    assert out.endswith("last-modified=nov/11/2025 16:47:07\n")
    dev.cli.render = "colon"
    out = await dev.ok('/file print detail where name~"img$"')
    assert out.splitlines() == [
        "           name: storage-pool/k8s/pvc-abcdef.img",
        "           type: .img file",
        "           size: 10.0GiB",
        "  last-modified: nov/11/2025 14:32:41",
    ]
    listing = await dev.ok("/file print detail")
    assert listing.startswith(" 0   name=storage-pool type=disk") or "name: storage-pool\n" in (
        listing
    )


async def test_file_remove_refuses_files_in_use(dev: Device) -> None:
    await dev.ok(add_line("busy", "1G"))
    name = "storage-pool/k8s/busy.img"
    assert await dev.fails(f'/file remove [find name="{name}"]') == "failure: disk is in use"
    assert await dev.fails('/file remove "storage-pool/k8s"') == "failure: disk is in use"
    assert await dev.fails('/file remove "storage-pool"') == "failure: invalid parameter"
    await dev.ok("/disk remove busy")
    await dev.ok('/file remove "storage-pool/k8s"')
    assert not (dev.store.files_root / "storage-pool/k8s").exists()


async def test_monitor_traffic(dev: Device) -> None:
    await dev.ok(add_line("m", "1G"))
    dev.store.disks["m"].traffic.write_rate = 12_800_000
    dev.store.disks["m"].traffic.in_flight_ops = 3
    out = await dev.ok("/disk monitor-traffic m once")
    assert out.splitlines() == [
        "                  slot: m",
        "   read-ops-per-second: 0",
        "  write-ops-per-second: 0",
        "             read-rate: 0bps",
        "            write-rate: 12.8Mbps",
        "             read-time: 0ms",
        "            write-time: 0ms",
        "         in-flight-ops: 3",
    ]
    assert await dev.ok("/disk monitor-traffic [find slot=m] once") == out
    assert await dev.fails("/disk monitor-traffic nope once") == "failure: no such item"
    streaming = await dev.cli.run("/disk monitor-traffic m")
    assert streaming.stream is not None and streaming.stream() == out


async def test_connection_print(dev: Device) -> None:
    await dev.ok(add_line("pvc-c", "1G"))
    assert await dev.ok("/interface nvme-tcp connection print") == ""
    dev.store.add_connection("pvc-c", "nqn.2014-08.org.nvmexpress:uuid:host-1", "10.0.0.7", 51234)
    dev.cli.render = "detail"
    out = await dev.ok("/interface nvme-tcp connection print detail")
    assert out == (
        ' 0  slot="pvc-c" nqn="nqn.2000-02.com.mikrotik:pvc-c"\n'
        '               host-nqn="nqn.2014-08.org.nvmexpress:uuid:host-1"\n'
        "               remote-address=10.0.0.7 remote-port=51234 local-port=4420\n"
        "               state=connected\n"
        "\n"
    )
    where = '/interface nvme-tcp connection print where host-nqn~"host-2"'
    assert await dev.ok(where) == ""
    # Removing the disk ends its sessions.
    await dev.ok("/disk remove pvc-c")
    assert dev.store.connections == []


async def test_remove_of_a_connected_disk_can_be_refused(dev: Device) -> None:
    dev.cli.refuse_remove_in_use = True
    await dev.ok(add_line("pvc-u", "1G"))
    dev.store.add_connection("pvc-u", "nqn.host", "10.0.0.8", 1)
    assert await dev.fails("/disk remove [find slot=pvc-u]") == "failure: disk is in use"
    dev.store.remove_connections(slot="pvc-u")
    await dev.ok("/disk remove [find slot=pvc-u]")


async def test_state_is_saved_atomically_and_reloaded(dev: Device) -> None:
    await dev.ok(add_line("keep", "3G"))
    dev.store.add_connection("keep", "nqn.host", "10.0.0.9", 7)
    state = json.loads((dev.data_dir / "state.json").read_text())
    assert [disk["slot"] for disk in state["disks"]] == ["keep"]
    assert not (dev.data_dir / "state.json.tmp").exists()
    again = Store.open(dev.data_dir, pool_size=8 * TIB)
    assert again.disks == dev.store.disks
    assert again.connections == dev.store.connections
    assert again.next_connection_id == 2


async def test_empty_line_and_pool_item_protection(dev: Device) -> None:
    assert await dev.ok("") == ""
    assert await dev.fails("/disk remove storage-pool") == "failure: invalid parameter"
    assert await dev.fails("/disk set storage-pool file-size=1G") == "failure: invalid parameter"


def test_sparse_copy_without_seek_data_or_reflink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdscsi.sim import sparse

    source = tmp_path / "src.img"
    with open(source, "wb") as handle:
        handle.write(b"\x00" * (8 * MIB))  # written zeros: allocated, but worth a hole
        handle.write(b"data" * 1024)
        handle.truncate(32 * MIB)
    monkeypatch.setattr(sparse, "_reflink", lambda src, dst: False)
    monkeypatch.setattr(sparse, "_data_regions", lambda fd, length: [(0, length)])
    target = tmp_path / "dst.img"
    sparse.sparse_copy(source, target, 40 * MIB)
    assert target.stat().st_size == 40 * MIB
    assert target.read_bytes()[: 32 * MIB] == source.read_bytes()
    assert allocated_bytes(target) < MIB < allocated_bytes(source)


async def test_backing_file_lost_behind_the_simulators_back(dev: Device) -> None:
    await dev.ok(add_line("lost", "1G"))
    dev.store.backing_path("lost").unlink()
    assert await dev.fails("/disk set lost file-size=2G") == "failure: no such file or directory"
    assert "size=1 073 741 824 " in await dev.ok("/disk print detail where slot=lost")
