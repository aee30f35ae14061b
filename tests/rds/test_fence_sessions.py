"""The allow-list's one adapter (every assumption about it in rdscsi.io.rds.fence), the
session listing as evidence (whole or not at all), and the sweep's inventory read from the
simulator's own output shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.io.rds import CommandBuilder, UnparseableOutputError, parse_nvme_connections
from rdscsi.io.rds.fence import ALLOW_PROPERTY as ALLOW
from rdscsi.io.rds.fence import NO_HOST, OPEN, AllowList, allow_list_value, parse_allow_list
from rdscsi.io.rds.records import NvmeConnection
from rdscsi.io.rds.sessions import SessionListing, SessionsUnavailable
from rdscsi.sim.cli import Interpreter
from rdscsi.sim.render import RENDERS
from rdscsi.sim.store import Store
from rdscsi.sim.units import TIB

A = "nqn.2014-08.org.nvmexpress:uuid:0a0a0a0a-0000-4000-8000-00000000000a"
B = "nqn.2014-08.org.example:host-b"


def test_the_allow_list_reads_back_what_it_writes() -> None:
    assert parse_allow_list("") == OPEN and parse_allow_list(None) == OPEN
    assert OPEN.open and not OPEN.closed
    assert allow_list_value([]) == NO_HOST  # nobody: never the empty (open) list
    closed = parse_allow_list(NO_HOST)
    assert closed == AllowList(frozenset(), open=False) and closed.closed
    assert allow_list_value([A, B, A]) == f"{B},{A}"  # sorted, once each
    assert parse_allow_list(allow_list_value([A, B])) == AllowList(frozenset({A, B}), False)
    assert parse_allow_list(f" {A} , {NO_HOST} ,") == AllowList(frozenset({A}), False)
    assert allow_list_value([NO_HOST]) == NO_HOST


def connection(**fields: str) -> NvmeConnection:
    return NvmeConnection(
        slot=fields.get("slot"),
        nqn=fields.get("nqn"),
        host_nqn=fields.get("host"),
        remote_address=None,
        raw=dict(fields),
    )


def test_a_listing_is_evidence_only_when_read_whole() -> None:
    listing = SessionListing.of(
        1.0,
        [
            connection(slot="pvc-1", nqn="nqn.2000-02.com.mikrotik:pvc-1", host=A),
            connection(nqn="nqn.2000-02.com.mikrotik:pvc-2", host=B),
        ],
    )
    assert listing.count == 2
    assert listing.connected(A, "nqn.2000-02.com.mikrotik:pvc-1", "pvc-1")
    assert listing.connected(A, "nqn.x:other", "pvc-1")  # by its slot alone
    assert listing.connected(B, "nqn.2000-02.com.mikrotik:pvc-2", "pvc-2")
    assert not listing.connected(B, "nqn.2000-02.com.mikrotik:pvc-1", "pvc-1")
    assert SessionListing.of(0.0, []).by_export == {}
    # a session that names no host, or no export, makes the whole listing useless
    for bad in (connection(slot="pvc-1"), connection(host=A)):
        with pytest.raises(SessionsUnavailable, match="names no host or no export"):
            SessionListing.of(0.0, [connection(slot="pvc-9", host=B), bad])


@pytest.mark.parametrize("render", RENDERS)
async def test_the_listing_parses_every_shape_the_simulator_prints(
    tmp_path: Path, render: str
) -> None:
    store = Store.open(tmp_path, pool_size=TIB)
    cli = Interpreter(store, render=render)  # type: ignore[arg-type]
    for slot in ("pvc-1", "pvc-2"):
        line = (
            f'/disk add type=file file-path="/storage-pool/k8s/vol/{slot}.img" '
            f'file-size=1M slot="{slot}" nvme-tcp-export=yes '
            f'nvme-tcp-server-nqn="nqn.2000-02.com.mikrotik:{slot}"'
        )
        assert (await cli.run(line)).ok
    store.add_connection("pvc-1", A, "10.0.0.1", 50000)
    store.add_connection("pvc-2", B, "10.0.0.2", 50001)
    command = CommandBuilder().nvme_connections()
    out = await cli.run(command.line)
    listing = SessionListing.of(0.0, parse_nvme_connections(out.output, command))
    assert listing.connected(A, "nqn.2000-02.com.mikrotik:pvc-1", "pvc-1")
    assert listing.connected(B, "nqn.2000-02.com.mikrotik:pvc-2", "pvc-2")
    assert not listing.connected(A, "nqn.2000-02.com.mikrotik:pvc-2", "pvc-2")


@pytest.mark.parametrize(
    "text",
    [
        "no such thing here\n",
        ' 0  slot="pvc-1" host-nqn="unterminated\n',
        "#  SLOT  HOST-NQN\nx  pvc-1  a\n",
    ],
)
def test_an_unknown_shape_fails_loudly(text: str) -> None:
    with pytest.raises(UnparseableOutputError):
        parse_nvme_connections(text, CommandBuilder().nvme_connections())


class _Device:
    """The simulator's CLI behind a VolumeStore, optionally refusing `print terse` the way a
    device without it would (a syntax error), and counting what it was sent."""

    def __init__(self, cli: Interpreter, refuse_terse: bool) -> None:
        self.cli, self.refuse_terse, self.lines = cli, refuse_terse, []  # type: list[str]

    async def run(self, command: object) -> str:
        line: str = command.line  # type: ignore[attr-defined]
        self.lines.append(line)
        if self.refuse_terse and " terse" in line:
            return "expected end of command (line 1 column 13)\n"
        return (await self.cli.run(line)).output


@pytest.mark.parametrize("refuse_terse", [False, True])
@pytest.mark.parametrize("render", RENDERS)
async def test_the_sweep_reads_the_short_listing_or_falls_back_to_the_whole_one(
    tmp_path: Path, render: str, refuse_terse: bool
) -> None:
    from rdscsi.io.rds.volumes import StoreSettings, VolumeStore

    store = Store.open(tmp_path, pool_size=TIB)
    cli = Interpreter(store, render=render)  # type: ignore[arg-type]
    for slot in ("pvc-1", "pvc-2"):
        line = (
            f'/disk add type=file file-path="/storage-pool/k8s/vol/{slot}.img" '
            f'file-size=1M slot="{slot}" nvme-tcp-export=yes '
            f'nvme-tcp-server-nqn="nqn.2000-02.com.mikrotik:{slot}"'
        )
        assert (await cli.run(line)).ok
    assert (await cli.run(f'/disk set [find slot="pvc-1"] {ALLOW}="{A},{B}"')).ok
    store.add_connection("pvc-1", A, "10.0.0.1", 50000)
    store.add_connection("pvc-2", B, "10.0.0.2", 50001)
    device = _Device(cli, refuse_terse)
    volumes = VolumeStore(device, StoreSettings())  # type: ignore[arg-type]
    for _ in range(2):  # the second pass: a refusal is remembered, never retried
        disks = {d.slot: d for d in await volumes.read_disks("pvc-")}
        assert set(disks) == {"pvc-1", "pvc-2"}
        assert disks["pvc-1"].file_path == "/storage-pool/k8s/vol/pvc-1.img"
        assert disks["pvc-1"].nvme_export is True
        assert disks["pvc-2"].nvme_nqn == "nqn.2000-02.com.mikrotik:pvc-2"
        assert parse_allow_list(disks["pvc-1"].raw.get(ALLOW)).hosts == {A, B}
        names = await volumes.read_file_names("/storage-pool/k8s/")
        assert {"storage-pool/k8s/vol/pvc-1.img", "storage-pool/k8s/vol/pvc-2.img"} <= set(names)
        listing = SessionListing.of(0.0, await volumes.sessions())
        assert listing.connected(A, "nqn.2000-02.com.mikrotik:pvc-1", "pvc-1")
        assert listing.connected(B, "nqn.2000-02.com.mikrotik:pvc-2", "pvc-2")
    terse = [line for line in device.lines if " terse" in line]
    # Refused once per kind of read on the first pass (each falls back at once), then never.
    assert len(terse) == (1 if refuse_terse else 6)
    assert len(device.lines) == (7 if refuse_terse else 6)


def test_terse_output_with_an_unknown_shape_still_fails_loudly() -> None:
    command = CommandBuilder().nvme_connections(terse=True)
    for bad in (' 0 slot="pvc-1" =x\n', ' 0 slot="pvc-1"\n 1 host-nqn="open\n'):
        with pytest.raises(UnparseableOutputError):
            parse_nvme_connections(bad, command)
