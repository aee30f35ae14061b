"""The sweep's listings read again: a line read before is not parsed again (`ListingMemo`),
and what comes out is exactly what a fresh parse gives, whatever changed in between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdscsi.io.rds import CommandBuilder, UnparseableOutputError
from rdscsi.io.rds.errors import ApplianceFailureError, NotFoundError
from rdscsi.io.rds.parse import ListingMemo, parse_disks, parse_names, parse_nvme_connections
from rdscsi.sim.cli import Interpreter
from rdscsi.sim.store import Store
from rdscsi.sim.units import TIB

B = CommandBuilder()
DISKS = B.disk_inventory("pvc-")


def disk_line(index: int, slot: str, allow: str = "", flags: str = "") -> str:
    flag = f"{flags} " if flags else ""
    return (
        f'{index:>2} {flag}slot="{slot}" nvme-tcp-export=yes nvme-tcp-server-allow-host-name='
        f'"{allow}" file-path=/storage-pool/k8s/vol/{slot}.img'
    )


def listing(items: list[tuple[str, str, str]]) -> str:
    return "\n".join(disk_line(i, *item) for i, item in enumerate(items)) + "\n"


ITEMS = st.lists(
    st.tuples(
        st.sampled_from([f"pvc-{n}" for n in range(6)]),
        st.sampled_from(["", "host-a", "host-a,host-b"]),
        st.sampled_from(["", "X", "*"]),
    ),
    max_size=8,
)


@given(st.lists(ITEMS, min_size=1, max_size=5))
def test_read_again_it_gives_what_a_fresh_parse_gives(readings: list[list[Any]]) -> None:
    memo = ListingMemo()
    for items in readings:  # items come, go, move (their index changes) and change
        text = listing(items)
        assert parse_disks(text, DISKS, memo) == parse_disks(text, DISKS)


def test_unchanged_lines_are_not_parsed_again_even_when_their_index_moves() -> None:
    memo = ListingMemo()
    first = parse_disks(listing([("pvc-1", "a", ""), ("pvc-2", "b", "")]), DISKS, memo)
    assert memo.hits == 0
    again = parse_disks(
        listing([("pvc-0", "", ""), ("pvc-1", "a", ""), ("pvc-2", "b", "")]), DISKS, memo
    )
    assert memo.hits == 2 and again[1] is first[0] and again[2] is first[1]
    changed = parse_disks(listing([("pvc-1", "c", "")]), DISKS, memo)
    assert memo.hits == 0 and changed[0].raw["nvme-tcp-server-allow-host-name"] == "c"
    # The memo holds the last reading only: what it no longer lists is gone.
    assert len(memo.items) == 1


def test_a_key_is_all_that_follows_the_index() -> None:
    """A line whose index is followed by a tab is parsed, never keyed by a part of itself:
    otherwise `5 y=z` could be taken for the item `0<TAB>slot=x y=z`."""
    memo = ListingMemo()
    command = B.file_inventory("/storage-pool/k8s/")
    assert parse_names(' 0\tname=a kind="x"\n', command, memo) == ["a"]
    assert parse_names(' 5 kind="x"\n', command, memo) == [""]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (disk_line(0, "pvc-1") + "\nfailure: no such item\n", NotFoundError),
        (disk_line(0, "pvc-1") + "\n" + "interrupted\n", ApplianceFailureError),
        # a line break `str.splitlines` sees inside an item line: the classifier's lines
        (disk_line(0, "pvc-1") + "\x0bfailure: something\n", ApplianceFailureError),
        (disk_line(0, "pvc-1") + "\u2028no such item\n", NotFoundError),
    ],
)
def test_an_error_line_is_the_device_s_error_read_again_or_not(
    text: str, error: type[Exception]
) -> None:
    memo = ListingMemo()
    parse_disks(disk_line(0, "pvc-1") + "\n", DISKS, memo)  # the item line is known
    with pytest.raises(error):
        parse_disks(text, DISKS, memo)
    with pytest.raises(error):
        parse_disks(text, DISKS)


def test_an_unknown_shape_still_fails_loudly_with_a_memo() -> None:
    command = B.nvme_connections(terse=True)
    memo = ListingMemo()
    parse_nvme_connections(' 0 slot="pvc-1" host-nqn="h"\n', command, memo)
    for bad in (' 0 slot="pvc-1" =x\n', ' 0 slot="pvc-1" host-nqn="h"\n 1 host-nqn="open\n'):
        with pytest.raises(UnparseableOutputError):
            parse_nvme_connections(bad, command, memo)


def test_a_line_indented_as_a_continuation_is_not_taken_from_the_memo() -> None:
    memo = ListingMemo()
    parse_disks(disk_line(0, "pvc-1") + "\n", DISKS, memo)
    deep = "     " + disk_line(0, "pvc-1").lstrip() + "\n"  # not a `print terse` item line
    assert memo.items
    parse_disks(deep, DISKS, memo)
    assert memo.hits == 0


async def test_the_sweep_s_readings_again_equal_fresh_ones(tmp_path: Path) -> None:
    """Through the simulator: inventory and sessions read by one store across changes (a
    disk removed and then its file, an allow-list changed, disks added and removed,
    sessions come and go) equal what a store reading them for the first time finds."""
    from rdscsi.io.rds.orphans import OrphanStore
    from rdscsi.io.rds.sessions import SessionListing, read_sessions
    from rdscsi.io.rds.volumes import StoreSettings, VolumeStore

    store = Store.open(tmp_path, pool_size=TIB)
    cli = Interpreter(store)

    class Device:
        async def run(self, command: Any) -> str:
            return (await cli.run(command.line)).output

    async def add(slot: str) -> None:
        line = (
            f'/disk add type=file file-path="/storage-pool/k8s/vol/{slot}.img" '
            f'file-size=1M slot="{slot}" nvme-tcp-export=yes '
            f'nvme-tcp-server-nqn="nqn.2000-02.com.mikrotik:{slot}"'
        )
        assert (await cli.run(line)).ok

    async def same() -> None:
        fresh = VolumeStore(Device(), StoreSettings())  # type: ignore[arg-type]
        assert await kept.inventory() == await OrphanStore(fresh).inventory()
        listing = await read_sessions(volumes, 1.0)
        assert listing.by_export == SessionListing.of(1.0, await fresh.sessions()).by_export
        assert listing.count == len(store.connections)

    volumes = VolumeStore(Device(), StoreSettings())  # type: ignore[arg-type]
    kept = OrphanStore(volumes)
    for slot in ("pvc-1", "pvc-2", "pvc-3"):
        await add(slot)
    store.add_connection("pvc-1", "host-a", "10.0.0.1", 1)
    await same()
    await same()  # nothing changed
    assert (await cli.run('/disk remove [find slot="pvc-2"]')).ok  # its file stays
    assert (await cli.run('/disk set [find slot="pvc-1"] nvme-tcp-server-allow-host-name="h"')).ok
    store.add_connection("pvc-3", "host-b", "10.0.0.2", 2)
    await same()
    assert (await cli.run('/disk remove [find slot="pvc-1"]')).ok
    await add("pvc-0")
    store.remove_connections(slot="pvc-1")
    await same()
    assert (await cli.run('/file remove "storage-pool/k8s/vol/pvc-2.img"')).ok
    await same()
    store.remove_connections(slot="pvc-3")  # as many sessions, others
    store.add_connection("pvc-0", "host-c", "10.0.0.3", 3)
    await same()
