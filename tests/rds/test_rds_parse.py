"""Parsers: every shape from the protocol reference, tricky layouts, and round trips.

The fixtures in ``fixtures/`` are the reference document's samples (``<uuid>`` filled in).
``disk_list_reference.txt`` keeps the document's literal ``...`` elision; ``disk_list.txt``
completes it. The round-trip properties render records with a small renderer written here
and check the parsers read them back exactly.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdscsi.io.rds import (
    AlreadyExistsError,
    CommandBuilder,
    CommandSyntaxError,
    DiskInfo,
    InUseError,
    NotEnoughSpaceError,
    NotFoundError,
    RDSError,
    UnparseableOutputError,
    humanize_size,
    parse_ack,
    parse_disk,
    parse_disks,
    parse_entries,
    parse_files,
    parse_nvme_connections,
    parse_pool,
    parse_traffic,
)

FIXTURES = Path(__file__).parent / "fixtures"
BUILDER = CommandBuilder()


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- the reference samples -----------------------------------------------------------------


def test_detail_form() -> None:
    (disk,) = parse_disks(fixture("disk_detail.txt"))
    assert disk.slot == "pvc-test-123"
    assert disk.type == "file"
    assert disk.size == 53_687_091_200
    assert disk.file_path == "/storage-pool/test.img"
    assert disk.file_size_text == "50.0GiB"
    assert disk.nvme_export is True
    assert disk.nvme_port == 4420
    assert disk.nvme_nqn == "nqn.2000-02.com.mikrotik:pvc-test-123"
    assert disk.raw["slot-default"] == ""
    assert disk.raw["fs"] == "-"
    assert disk.raw["model"] == "/storage-pool/test.img"
    assert disk.raw["nvme-tcp-server-allow-host-name"] == ""
    assert disk.raw["file-offset"] == "0"
    assert len(disk.raw) == 20


def test_detail_form_by_slot() -> None:
    command = BUILDER.disk_print("pvc-test-123")
    disk = parse_disk(fixture("disk_detail.txt"), command)
    assert disk is not None and disk.size == 53_687_091_200


def test_list_form() -> None:
    disks = parse_disks(fixture("disk_list.txt"))
    assert [d.slot for d in disks] == ["pvc-test-1", "pvc-test-2", "snap-test-3"]
    assert [d.size for d in disks] == [53_687_091_200, 107_374_182_400, 1_073_741_824]
    assert [d.flags for d in disks] == ["", "", "X"]
    assert disks[1].nvme_nqn == "nqn.2000-02.com.mikrotik:pvc-test-2"
    assert disks[2].nvme_export is False
    assert disks[2].nvme_port is None and disks[2].nvme_nqn is None
    entries = parse_entries(fixture("disk_list.txt"))
    assert [e.index for e in entries] == [0, 1, 2]


def test_list_form_literal_reference_sample() -> None:
    # The document elides the second item with "...": still two items, and a size that is
    # not a clean byte count is reported as unknown, never guessed.
    disks = parse_disks(fixture("disk_list_reference.txt"))
    assert [d.slot for d in disks] == ["pvc-test-1", "pvc-test-2"]
    assert disks[0].size == 53_687_091_200
    assert disks[1].size is None
    assert disks[1].raw["size"] == "107 374 182 400 ..."


def test_colon_form() -> None:
    (disk,) = parse_disks(fixture("disk_colon.txt"))
    (detail,) = parse_disks(fixture("disk_detail.txt"))
    for name in ("slot", "type", "size", "file_path", "file_size_text", "nvme_export"):
        assert getattr(disk, name) == getattr(detail, name)
    assert disk.nvme_port == 4420
    assert disk.nvme_nqn == detail.nvme_nqn
    assert disk.raw["slot-default"] == ""


@pytest.mark.parametrize("name", ["pool.txt", "pool_one_line.txt"])
def test_pool(name: str) -> None:
    pool = parse_pool(fixture(name), BUILDER.pool_print())
    assert pool is not None
    assert pool.size == 7_949_127_950_336
    assert pool.free == 5_963_595_964_416
    assert pool.exact is True
    assert pool.use_percent == 25
    assert pool.mount_point == "storage-pool"
    assert pool.file_system == "btrfs"


def test_pool_missing_and_humanised() -> None:
    assert parse_pool("") is None
    pool = parse_pool("slot=p mount-point=p size=7.2TiB free=5.4TiB use=25%")
    assert pool is not None and pool.exact is False
    assert pool.size == round(7.2 * 2**40)
    with pytest.raises(UnparseableOutputError, match="free="):
        parse_pool("slot=p size=1")


@pytest.mark.parametrize("name", ["file_list.txt", "file_list_old_dates.txt"])
def test_file_listing(name: str) -> None:
    directory, image = parse_files(fixture(name))
    assert directory.name == "storage-pool/k8s"
    assert directory.type == "directory"
    assert directory.size is None
    assert directory.last_modified == datetime.datetime(2025, 11, 11, 16, 47, 7)
    assert image.name == "storage-pool/k8s/pvc-5a0e7c8e-2c41-4c87-9e8e-3f1c0b1d2e4f.img"
    assert image.type == ".img file"  # an unquoted value with a space in it
    assert image.size == 10 * 2**30
    assert image.size_exact is False  # humanised: approximate
    assert image.last_modified == datetime.datetime(2025, 11, 11, 14, 32, 41)


def test_monitor_traffic() -> None:
    stats = parse_traffic(fixture("monitor_traffic.txt"), BUILDER.disk_traffic("pvc-test-1"))
    assert stats.slot == "pvc-test-1"
    assert stats.raw["write-rate"] == "12.8Mbps"
    assert stats.values["write-rate"] == pytest.approx(12_800_000)
    assert stats.values["read-rate"] == 0
    assert stats.values["read-time"] == 0
    assert stats.values["write-time"] == pytest.approx(0.003)
    assert stats.values["write-ops-per-second"] == 210
    assert stats.values["in-flight-ops"] == 1
    assert "slot" not in stats.values


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.5kbps", 1500.0),
        ("2Gbps", 2e9),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("00:01:02", 62.0),
        ("45%", 45.0),
        ("1 234 567", 1234567.0),
        ("running", None),
    ],
)
def test_traffic_value_units(text: str, value: float | None) -> None:
    stats = parse_traffic(f"x: {text}\n")
    if value is None:
        assert "x" not in stats.values
    else:
        assert stats.values["x"] == pytest.approx(value)


def test_traffic_in_key_value_form_and_empty() -> None:
    stats = parse_traffic("read-rate=1kbps write-rate=0bps")
    assert stats.values == {"read-rate": 1000.0, "write-rate": 0.0}
    with pytest.raises(UnparseableOutputError):
        parse_traffic("")


@pytest.mark.parametrize("name", ["nvme_connections_list.txt", "nvme_connections_table.txt"])
def test_nvme_connections(name: str) -> None:
    first, second = parse_nvme_connections(fixture(name), BUILDER.nvme_connections())
    assert first.slot == "pvc-test-1"
    assert first.nqn == "nqn.2000-02.com.mikrotik:pvc-test-1"
    assert first.host_nqn == "nqn.2014-08.org.nvmexpress:uuid:6f1c2d3e-0000-4000-8000-000000000001"
    assert first.remote_address == "10.0.0.21:51234"
    assert second.remote_address == "10.0.0.22:40110"


def test_nvme_connections_table_with_blank_cell_and_colon_form() -> None:
    table = (
        "#  SLOT        NQN                      REMOTE-ADDRESS\n"
        "0  pvc-a       nqn.2000-02.x.y:pvc-a    10.0.0.1:1\n"
        "1              nqn.2000-02.x.y:pvc-b    10.0.0.2:2\n"
    )
    first, second = parse_nvme_connections(table)
    assert (first.slot, first.remote_address) == ("pvc-a", "10.0.0.1:1")
    assert (second.slot, second.nqn) == (None, "nqn.2000-02.x.y:pvc-b")
    assert second.host_nqn is None
    split = parse_nvme_connections('slot="a" remote-address=10.0.0.5 remote-port=51234')
    assert (split[0].remote_address, split[0].remote_port) == ("10.0.0.5", 51234)
    colon = "  slot: pvc-a\n  host-nqn: nqn.h:x\n\n  slot: pvc-b\n"
    assert [c.slot for c in parse_nvme_connections(colon)] == ["pvc-a", "pvc-b"]
    assert parse_nvme_connections("") == []
    assert parse_nvme_connections("Flags: X - disabled\n") == []


@pytest.mark.parametrize("output", ["", "\n", "   \n\n", "Flags: X - disabled\n", "Flags: X - d"])
def test_no_match_is_empty(output: str) -> None:
    assert parse_disks(output) == []
    assert parse_files(output) == []
    assert parse_disk(output) is None


# -- tricky layouts ------------------------------------------------------------------------


def test_grouped_number_wrapped_across_lines() -> None:
    detail = 'type=file slot="a" size=53 687\n               091 200 fs=-\n'
    assert parse_disks(detail)[0].size == 53_687_091_200
    # A continuation that starts with a group looks like a list index; it is not one.
    listing = ' 0  type=file slot="a" size=53 687 091\n               200 fs=-\n 1  slot="b"\n'
    disks = parse_disks(listing)
    assert [d.slot for d in disks] == ["a", "b"]
    assert disks[0].size == 53_687_091_200
    assert disks[0].raw["fs"] == "-"
    lone_group = 'slot="a" size=53 687 091\n     200\n     fs=-\n'
    assert parse_disks(lone_group)[0].size == 53_687_091_200


def test_quoted_values() -> None:
    output = (
        'slot="a" model="two words" empty="" esc="q\\"b\\\\s\\$d\\?u\\_x" hex="\\41\\0A"'
        ' eq="k=v other=1" fs=-'
    )
    fields = parse_entries(output)[0].fields
    assert fields["model"] == "two words"
    assert fields["empty"] == ""
    assert fields["esc"] == 'q"b\\s$d?u x'
    assert fields["hex"] == "A\n"
    assert fields["eq"] == "k=v other=1"
    assert fields["fs"] == "-"


def test_hex_escaped_bytes_decode_as_utf8() -> None:
    fields = parse_entries('a="caf\\C3\\A9" b="\\FF\\41" c="\\E2\\82\\AC\\22"')[0].fields
    assert dict(fields) == {"a": "café", "b": "\xffA", "c": '€"'}


def test_bare_values_run_to_the_next_key() -> None:
    fields = parse_entries("name=a b c type=.img file last-modified=2025-11-11 16:47:07 e=")[
        0
    ].fields
    assert dict(fields) == {
        "name": "a b c",
        "type": ".img file",
        "last-modified": "2025-11-11 16:47:07",
        "e": "",
    }


def test_list_items_without_blank_lines_flags_and_comments() -> None:
    output = (
        "Flags: X - disabled, I - invalid\n"
        ' 0 X ;;; keep me\n      slot="a" size=1\n'
        ' 1    slot="b" size=2\n'
        '10 XI slot="c"\n'
        "      size=3\n"
    )
    entries = parse_entries(output)
    assert [(e.index, e.flags, e.comment) for e in entries] == [
        (0, "X", "keep me"),
        (1, "", None),
        (10, "XI", None),
    ]
    assert [e.fields["size"] for e in entries] == ["1", "2", "3"]


def test_crlf_line_endings() -> None:
    crlf = fixture("disk_detail.txt").replace("\n", "\r\n")
    assert parse_disks(crlf) == parse_disks(fixture("disk_detail.txt"))


def test_parse_disk_checks_count_and_slot() -> None:
    with pytest.raises(UnparseableOutputError, match="at most one"):
        parse_disk(fixture("disk_list.txt"))
    with pytest.raises(UnparseableOutputError, match="asked for slot other"):
        parse_disk(fixture("disk_detail.txt"), BUILDER.disk_print("other"))


@pytest.mark.parametrize(
    "output",
    [
        "hello world",
        "#  SLOT  NQN\n0  a  b",
        'slot="unterminated',
        'slot="a"b=1',
        "   = value",
        "slot: a\n\n0 = 1",
    ],
)
def test_unknown_shapes_are_unparseable(output: str) -> None:
    with pytest.raises(UnparseableOutputError) as info:
        parse_disks(output, BUILDER.disk_print_prefix("pvc-"))
    assert "disk-print-prefix" in str(info.value)


def test_unparseable_excerpt_is_truncated() -> None:
    with pytest.raises(UnparseableOutputError) as info:
        parse_disks("x" * 5000)
    assert len(info.value.excerpt) < 300
    assert len(str(info.value)) < 500


def test_item_without_slot_is_unparseable() -> None:
    with pytest.raises(UnparseableOutputError, match="without slot"):
        parse_disks("type=file size=1")


# -- errors instead of results -------------------------------------------------------------

PARSERS: list[Callable[..., object]] = [
    parse_disks,
    parse_disk,
    parse_pool,
    parse_files,
    parse_traffic,
    parse_nvme_connections,
    parse_entries,
    parse_ack,
]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("failure: no such item\n", NotFoundError),
        ('slot="a"\nfailure: not enough space\n', NotEnoughSpaceError),
        ("failure: file already exists", AlreadyExistsError),
        ("failure: disk is in use", InUseError),
        ("bad command name frobnicate (line 1 column 7)", CommandSyntaxError),
        ("syntax error (line 1 column 12)", CommandSyntaxError),
    ],
)
def test_parsers_raise_classified_errors(
    parser: Callable[..., object], output: str, error: type[RDSError]
) -> None:
    command = BUILDER.disk_remove("pvc-1")
    with pytest.raises(error) as info:
        parser(output, command)
    assert info.value.command is command
    assert "disk-remove slot=pvc-1" in str(info.value)


def test_parse_ack() -> None:
    command = BUILDER.disk_remove("pvc-1")
    parse_ack("", command)
    parse_ack("\n  \n", command)
    parse_ack("*1A\n", command)
    with pytest.raises(UnparseableOutputError):
        parse_ack("something unexpected", command)


# -- round trips ---------------------------------------------------------------------------

ROUND_TRIP = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "?": "\\?", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def ros_quote(text: str, hex_all: bool) -> str:
    """Quote as the device would; ``hex_all`` writes every escaped character as \\XX."""
    out = []
    for c in text:
        special = c in _ESCAPES or ord(c) < 0x20 or ord(c) == 0x7F
        if special and (hex_all or c not in _ESCAPES):
            out.append(f"\\{ord(c):02X}")
        elif special:
            out.append(_ESCAPES[c])
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def grouped(n: int) -> str:
    return f"{n:,}".replace(",", " ")


# A field to render: key, value, and whether it is written quoted.
Field = tuple[str, str, bool]


def render_kv(
    items: Sequence[tuple[int | None, str, list[Field]]],
    width: int,
    extra_indent: int,
    hex_all: bool,
    blank_between: bool,
    legend: bool,
) -> str:
    """Detail form (index None) or list form, wrapped greedily at ``width`` columns.

    Bare values may break between their words, as a wrapped grouped number would.
    """
    lines: list[str] = ["Flags: X - disabled"] if legend else []
    for n, (index, flags, fields) in enumerate(items):
        if n and blank_between:
            lines.append("")
        prefix = "" if index is None else f"{index:>3} " + (f"{flags} " if flags else "") + " "
        indent = " " * (len(prefix) + extra_indent)
        atoms: list[str] = []  # a line may break before any atom
        for key, value, quoted in fields:
            if quoted:
                atoms.append(f"{key}={ros_quote(value, hex_all)}")
            else:
                first, *rest = value.split(" ")
                atoms.append(f"{key}={first}")
                atoms.extend(rest)
        line = prefix
        fresh = True
        for text in atoms:
            if not fresh and len(line) + 1 + len(text) > width:
                lines.append(line)
                line = indent + text
            else:
                line = line + ("" if fresh else " ") + text
            fresh = False
        lines.append(line)
    return "\n".join(lines) + "\n"


_BARE_COLON = re.compile(r'[^\s"\\]([^"\\\x00-\x1f\x7f]*[^\s"\\])?')


def render_colon(items: list[list[Field]], indexed: bool, hex_all: bool) -> str:
    blocks = []
    for n, fields in enumerate(items):
        width = max(len(key) for key, _, _ in fields)
        lines = []
        for key, value, _ in fields:
            shown = value if _BARE_COLON.fullmatch(value) else ros_quote(value, hex_all)
            lines.append(f"{key:>{width}}: {shown}")
        if indexed:
            lines[0] = f"{n:>2}  " + lines[0].lstrip()
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
SLOTS = st.builds(
    str.__add__,
    st.text(LOWER, min_size=1, max_size=1),
    st.text(LOWER + "._-", max_size=63),
)
SIZES = st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 10**6), st.just(2**63 - 1))
WORDS = st.lists(st.text(LOWER + ".:/-", min_size=1, max_size=10), min_size=1, max_size=4)


@st.composite
def disks(draw: st.DrawFn) -> tuple[DiskInfo, list[Field]]:
    slot = draw(SLOTS)
    size = draw(SIZES)
    export = draw(st.booleans())
    port = draw(st.integers(1, 65535))
    nqn = "nqn.2000-02.com.mikrotik:" + slot
    path = "/storage-pool/k8s/" + slot + ".img"
    fields: list[Field] = [
        ("type", "file", False),
        ("slot", slot, True),
        ("slot-default", "", True),
        ("fs", "-", False),
        ("model", draw(st.text(max_size=30)), True),
        ("size", draw(st.sampled_from([grouped(size), str(size)])), False),
        ("nvme-tcp-export", "yes" if export else "no", False),
        ("nvme-tcp-server-port", str(port), False),
        ("nvme-tcp-server-nqn", nqn, True),
        ("file-path", path, draw(st.booleans())),
        ("file-size", humanize_size(size), False),
        ("note", " ".join(draw(WORDS)), False),
        ("comment", comment := draw(st.text(max_size=20)), True),
    ]
    fields = [fields[1], *draw(st.permutations([f for i, f in enumerate(fields) if i != 1]))]
    flags = draw(st.sampled_from(["", "X", "XB"]))
    disk = DiskInfo(
        slot=slot,
        type="file",
        size=size,
        file_path=path,
        file_size_text=humanize_size(size),
        nvme_export=export,
        nvme_port=port,
        nvme_nqn=nqn,
        flags=flags,
        raw={key: value for key, value, _ in fields},
        comment=comment or None,  # an inline comment= (print as-value) is the comment too
    )
    return disk, fields


@ROUND_TRIP
@given(disks(), st.integers(20, 160), st.integers(0, 12), st.booleans())
def test_detail_form_round_trip(
    item: tuple[DiskInfo, list[Field]], width: int, extra: int, hex_all: bool
) -> None:
    disk, fields = item
    output = render_kv([(None, "", fields)], width, extra, hex_all, False, False)
    assert parse_disks(output) == [attrs.evolve(disk, flags="")]


@ROUND_TRIP
@given(
    st.lists(disks(), min_size=1, max_size=4),
    st.integers(20, 160),
    st.integers(0, 12),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_list_form_round_trip(
    items: list[tuple[DiskInfo, list[Field]]],
    width: int,
    extra: int,
    hex_all: bool,
    blank_between: bool,
    legend: bool,
) -> None:
    rendered = [(i, disk.flags, fields) for i, (disk, fields) in enumerate(items)]
    output = render_kv(rendered, width, extra, hex_all, blank_between, legend)
    assert parse_disks(output) == [disk for disk, _ in items]


@ROUND_TRIP
@given(st.lists(disks(), min_size=1, max_size=3), st.booleans(), st.booleans())
def test_colon_form_round_trip(
    items: list[tuple[DiskInfo, list[Field]]], indexed: bool, hex_all: bool
) -> None:
    output = render_colon([fields for _, fields in items], indexed, hex_all)
    assert parse_disks(output) == [attrs.evolve(disk, flags="") for disk, _ in items]


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


@st.composite
def files(draw: st.DrawFn) -> tuple[dict[str, object], list[Field]]:
    name = "storage-pool/" + "/".join(draw(st.lists(st.text(LOWER, min_size=1), min_size=1)))
    kind = draw(st.sampled_from(["directory", ".img file", "file", "some odd type"]))
    size = draw(st.integers(0, 2**63 - 1))
    exact = draw(st.booleans())
    when = draw(st.datetimes(datetime.datetime(1970, 1, 1), datetime.datetime(2099, 12, 31)))
    when = when.replace(microsecond=0)
    if draw(st.booleans()):
        stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    else:
        months = [
            "jan",
            "feb",
            "mar",
            "apr",
            "may",
            "jun",
            "jul",
            "aug",
            "sep",
            "oct",
            "nov",
            "dec",
        ]
        stamp = f"{months[when.month - 1]}/{when.day:02d}/{when.year} {when:%H:%M:%S}"
    fields: list[Field] = [
        ("name", name, draw(st.booleans())),
        ("type", kind, False),
        ("size", grouped(size) if exact else humanize_size(size), False),
        ("last-modified", stamp, False),
    ]
    expected = {"name": name, "type": kind, "size": size, "exact": exact, "when": when}
    return expected, fields


@ROUND_TRIP
@given(st.lists(files(), min_size=1, max_size=4), st.integers(20, 120), st.booleans())
def test_file_listing_round_trip(
    items: list[tuple[dict[str, object], list[Field]]], width: int, blank_between: bool
) -> None:
    output = render_kv(
        [(i, "", fields) for i, (_, fields) in enumerate(items)],
        width,
        1,
        False,
        blank_between,
        False,
    )
    parsed = parse_files(output)
    assert len(parsed) == len(items)
    for info, (expected, _) in zip(parsed, items, strict=True):
        assert info.name == expected["name"]
        assert info.type == expected["type"]
        assert info.last_modified == expected["when"]
        assert info.size_exact == expected["exact"]
        size = expected["size"]
        assert isinstance(size, int) and info.size is not None
        if expected["exact"]:
            assert info.size == size
        else:
            assert abs(info.size - size) <= max(size, 1024) * 0.05
