"""Parsers for every output shape of the RouterOS CLI the driver reads.

Every parser first runs :func:`classify`, so device error output raises the classified
exception rather than parsing; output in no known shape raises UnparseableOutputError.

Shapes understood (see the protocol reference):

- detail form: one item, ``key=value`` pairs, continuation lines indented;
- list form: items start with an index, optional flag letters, optional ``;;; comment``,
  separated by blank lines or by the next index line; a ``Flags:`` legend may come first;
- ``key: value`` per line (unconfirmed), one item per blank-line-separated block;
- tables with a ``#  NAME  NAME`` header (only for NVMe connections, unconfirmed).

Values are quoted (RouterOS escapes decoded) or bare. A bare value runs until the next
`` key=`` so ``type=.img file``, dates and grouped byte counts (``53 687 091 200``) stay
whole. Continuation lines are joined with a space before tokenising, so a grouped number
wrapped across lines still reads whole.
"""

from __future__ import annotations

import datetime
import itertools
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from rdscsi.io.rds.errors import UnparseableOutputError, classify
from rdscsi.io.rds.records import (
    DiskInfo,
    FileInfo,
    NvmeConnection,
    PoolInfo,
    PrintEntry,
    TrafficStats,
)
from rdscsi.io.rds.sizes import parse_size

if TYPE_CHECKING:
    from rdscsi.io.rds.commands import Command

T = TypeVar("T")

_KEY = r"[A-Za-z][A-Za-z0-9_.-]*"
_KEY_EQ = re.compile(rf"({_KEY})=")
# Where a bare value ends: whitespace followed by the next key=.
_NEXT_KEY = re.compile(rf"[ \t]+(?={_KEY}=)")
_FIELD_START = re.compile(rf"{_KEY}(?:=|:(?:[ \t]|$))")
# key="value" (no escape inside) or key=word, then the next key= or the end: the common case,
# read in one match. Anything else takes the general path below.
_PLAIN_PAIR = re.compile(rf'({_KEY})=(?:"([^"\\]*)"|([^\s"=][^\s=]*))(?:[ \t]+(?={_KEY}=)|[ \t]*$)')
_COLON_LINE = re.compile(rf"[ \t]*({_KEY}):(?:[ \t]+(.*))?")
_TERSE_LINE = re.compile(r" {0,3}([0-9]+)[ \t]+(?:([A-Z*]+)[ \t]+)?(\S.*)")
_INDEX = re.compile(r"([ \t]*)([0-9]+)(?=[ \t]|$)")
_FLAGS = re.compile(r"[ \t]+([A-Z*]+)(?=[ \t]|$)")
_LEGEND_START = re.compile(r"(?:Flags|Columns):")
_LEGEND_MORE = re.compile(r"[ \t]+[A-Z*]+ - ")
_TABLE_HEADER = re.compile(r"[ \t]*#(?:[ \t]+[A-Z][A-Z0-9-]*)+[ \t]*")
_HEX_ESCAPE = re.compile(r"[0-9A-F]{2}")
_QUOTED_WHOLE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_ACK_LINE = re.compile(r"\*[0-9A-Fa-f]+")
_DIGITS = re.compile(r"[0-9]+")
# Only ASCII blanks are layout: other whitespace (no-break space, ...) may be value text.
_BLANK = " \t"
_BLANKS = re.compile(r"[ \t]+")

# RouterOS escapes inside double quotes; `\XX` (uppercase hex) is handled separately.
_NAMED_ESCAPES: Final = {
    "\\": "\\",
    '"': '"',
    "$": "$",
    "?": "?",
    "_": " ",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}


class _ShapeError(Exception):
    """Raised inside the tokeniser; the public functions turn it into UnparseableOutput."""


@attrs.define
class _Draft:
    index: int | None
    flags: str
    field_col: int  # column of the item's first field: deeper lines are continuations
    lines: list[str]


def _bytes_text(pending: bytearray) -> str:
    # The device prints non-ASCII as one \XX escape per byte: decode runs as UTF-8,
    # and bytes that are not UTF-8 one to one.
    try:
        return pending.decode("utf-8")
    except UnicodeDecodeError:
        return pending.decode("latin-1")


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Decode the quoted string opening at ``text[start]``; return it and the end offset."""
    end = text.find('"', start + 1)
    if end >= 0 and text.find("\\", start + 1, end) < 0:
        return text[start + 1 : end], end + 1  # no escape before the first quote: it closes
    out: list[str] = []
    pending = bytearray()  # a run of \XX escapes
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and _HEX_ESCAPE.fullmatch(text, i + 1, i + 3):
            pending.append(int(text[i + 1 : i + 3], 16))
            i += 3
            continue
        if pending:
            out.append(_bytes_text(pending))
            pending.clear()
        if ch == '"':
            return "".join(out), i + 1
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            break
        nxt = text[i + 1]
        # An unknown escape stands for the character itself.
        out.append(_NAMED_ESCAPES.get(nxt, nxt))
        i += 2
    raise _ShapeError("unterminated quoted string")


def _kv_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    pos = 0
    n = len(text)
    key_eq, pair = _KEY_EQ.match, _PLAIN_PAIR.match
    while pos < n:
        # The common case in one step: a quoted value without escapes, or a one-word value.
        plain = pair(text, pos)
        if plain is not None:
            quoted = plain.group(2)
            fields[plain.group(1)] = quoted if quoted is not None else plain.group(3)
            pos = plain.end()
            continue
        match = key_eq(text, pos)
        if match is None:
            raise _ShapeError(f"expected key=value at {text[pos : pos + 40]!r}")
        key = match.group(1)
        pos = match.end()
        if pos < n and text[pos] == '"':
            value, pos = _read_quoted(text, pos)
            if pos < n and text[pos] not in " \t":
                raise _ShapeError(f"text directly after the quoted value of {key}")
        else:
            nxt = _NEXT_KEY.search(text, pos)
            end = n if nxt is None else nxt.start()
            # Joined continuation lines may leave runs of spaces inside a bare value.
            value = _BLANKS.sub(" ", text[pos:end]).strip(_BLANK)
            pos = end
        while pos < n and text[pos] in " \t":
            pos += 1
        fields[key] = value
    return fields


def _colon_value(text: str) -> str:
    text = text.strip(_BLANK)
    if _QUOTED_WHOLE.fullmatch(text):
        return _read_quoted(text, 0)[0]
    return text


def _colon_fields(lines: list[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    last: str | None = None
    for line in lines:
        match = _COLON_LINE.fullmatch(line)
        if match is not None:
            last = match.group(1)
            texts[last] = match.group(2) or ""
        elif last is not None:
            # A wrapped value: the line carries on the previous field.
            texts[last] = f"{texts[last]} {line}"
        else:
            raise _ShapeError(f"expected key: value at {line[:40]!r}")
    return {key: _colon_value(text) for key, text in texts.items()}


def _index_line(line: str) -> tuple[int, str, int, int] | None:
    """(index, flags, index column, first field column) if ``line`` opens a list item."""
    match = _INDEX.match(line)
    if match is None:
        return None
    pos = match.end()
    flags = ""
    flag_match = _FLAGS.match(line, pos)
    if flag_match is not None:
        flags = flag_match.group(1)
        pos = flag_match.end()
    rest = line[pos:].lstrip(_BLANK)
    rest_col = len(line) - len(rest)
    if rest and not rest.startswith(";;;") and not _FIELD_START.match(rest):
        return None
    return int(match.group(2)), flags, len(match.group(1)), rest_col


def _lines(output: str) -> list[str]:
    return [line.rstrip(" \t\r") for line in output.split("\n")]


def _split_items(lines: list[str]) -> list[_Draft]:
    drafts: list[_Draft] = []
    current: _Draft | None = None
    in_legend = False
    for line in lines:
        stripped = line.lstrip(_BLANK)
        if not stripped:
            current = None
            in_legend = False
            continue
        if current is not None and not in_legend and not stripped[0].isdigit():
            # The common case, a continuation line: only a line opening with digits can
            # open an item (an index), so no pattern needs to look at this one.
            current.lines.append(stripped)
            continue
        if current is None and _LEGEND_START.match(stripped):
            in_legend = True
            continue
        if current is None and in_legend and _LEGEND_MORE.match(line):
            continue
        in_legend = False
        opened = _index_line(line)
        # An index line opens a new item only left of the current item's fields: a wrapped
        # grouped number ("   200 mount-filesystem=yes") sits deeper and continues it.
        if opened is not None and (current is None or opened[2] < current.field_col):
            index, flags, _, field_col = opened
            rest = line[field_col:]
            current = _Draft(index, flags, field_col, [rest] if rest else [])
            drafts.append(current)
        elif current is None:
            stripped = line.lstrip(_BLANK)
            current = _Draft(None, "", len(line) - len(stripped), [stripped])
            drafts.append(current)
        else:
            current.lines.append(line.strip(_BLANK))
    return drafts


def _finish(draft: _Draft) -> PrintEntry:
    comments: list[str] = []
    content: list[str] = []
    for line in draft.lines:
        if line.startswith(";;;"):
            comments.append(line[3:].strip(_BLANK))
        else:
            content.append(line)
    fields: dict[str, str] = {}
    if content:
        if _COLON_LINE.fullmatch(content[0]):
            fields = _colon_fields(content)
        else:
            fields = _kv_fields(" ".join(content))
    comment = " ".join(comments) if comments else None
    return PrintEntry(draft.index, draft.flags, MappingProxyType(fields), comment)


def _raise_if_error(output: str, command: Command | None) -> None:
    error = classify(output, command)
    if error is not None:
        raise error


def _terse_entries(lines: list[str]) -> list[PrintEntry] | None:
    """`print terse` output: one item per line, its index at most three blanks in (a wrapped
    line of the other forms sits deeper). None when the output is not that: the general path."""
    out: list[PrintEntry] = []
    line_match = _TERSE_LINE.fullmatch
    for line in lines:
        if not line:
            continue
        m = line_match(line)
        if m is None:
            return None
        rest = m.group(3)
        if rest.startswith(";;;") or _COLON_LINE.fullmatch(rest):
            return None
        flags = m.group(2) or ""
        out.append(PrintEntry(int(m.group(1)), flags, MappingProxyType(_kv_fields(rest))))
    return out


_UNREAD: Final = object()
# A `print terse` item line with none of the characters other than LF that `str.splitlines`
# (the error classifier's view) breaks lines at: every line of such a listing opens with its
# index, and no device error line opens with a digit, so the listing holds no error.
_TERSE_ITEM_LINE = re.compile(
    r" {0,3}([0-9]+)[ \t]+(?:([A-Z*]+)[ \t]+)?(\S[^\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]*)"
)


class ListingMemo:
    """The items of a listing's last reading, by line (less the item's index).

    The sweep re-reads the same few listings (every disk, every file, every session) each
    pass, and between passes they barely change: a line read before is not parsed again.
    It holds one reading (what the last one did not list is dropped), and only for
    `print terse` output, whose items are one line each; the converters it is used with
    do not depend on an item's index.
    """

    __slots__ = ("hits", "items")

    def __init__(self) -> None:
        self.items: dict[str, object] = {}
        self.hits = 0  # lines of the last reading not parsed again


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _terse_converted(
    lines: list[str], convert: Callable[[PrintEntry], T], memo: ListingMemo
) -> list[T] | None:
    """`_terse_entries` converted, each line read before taken from `memo`."""
    last, fresh = memo.items, {}
    out: list[T] = []
    line_match = _TERSE_ITEM_LINE.fullmatch
    hits = 0
    for line in lines:
        if not line:
            continue
        # The key: flags and fields, what follows the index (which moves as items come
        # and go). A line whose key was read before needs only its index checked.
        stripped = line.lstrip(" ")
        index, _, key = stripped.partition(" ")
        item = last.get(key, _UNREAD)
        if item is not _UNREAD and _is_index(index) and len(line) - len(stripped) <= 3:
            hits += 1
            fresh[key] = item
        else:
            m = line_match(line)
            if m is None:
                return None
            rest = m.group(3)
            if rest.startswith(";;;") or _COLON_LINE.fullmatch(rest):
                return None
            fields = MappingProxyType(_kv_fields(rest))
            item = convert(PrintEntry(int(m.group(1)), m.group(2) or "", fields))
            if index == m.group(1):  # the key is all that follows the index
                fresh[key] = item
        out.append(item)  # type: ignore[arg-type]  # what `convert` made for this line
    memo.items, memo.hits = fresh, hits
    return out


def _convert(
    output: str,
    command: Command | None,
    convert: Callable[[PrintEntry], T],
    checked: bool = False,
    memo: ListingMemo | None = None,
) -> list[T]:
    try:
        lines = _lines(output)
        if memo is not None:
            items = _terse_converted(lines, convert, memo)
            if items is not None:
                return items  # every line an item: no error line (see _TERSE_ITEM_LINE)
        if not checked:
            _raise_if_error(output, command)
        terse = _terse_entries(lines)
        if terse is not None:
            return [convert(entry) for entry in terse]
        return [convert(_finish(draft)) for draft in _split_items(lines)]
    except _ShapeError as exc:
        raise UnparseableOutputError(str(exc), output, command=command) from None


def parse_entries(output: str, command: Command | None = None) -> list[PrintEntry]:
    """Every item of ``print`` output (any form), fields unquoted; [] for no match."""
    return _convert(output, command, lambda entry: entry)


def parse_ack(output: str, command: Command | None = None) -> None:
    """Check the reply to a mutating command: silence (or a bare ``*id``) is success."""
    _raise_if_error(output, command)
    for line in _lines(output):
        if line.strip() and _ACK_LINE.fullmatch(line.strip()) is None:
            raise UnparseableOutputError(
                "unexpected output from a command that prints nothing", output, command=command
            )


# -- disks --------------------------------------------------------------------------------


def _optional(fields: Mapping[str, str], key: str) -> str | None:
    value = fields.get(key)
    return value if value else None


def _exact_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text, exact=True)
    except ValueError:
        return None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and _DIGITS.fullmatch(text) else None


def _disk(entry: PrintEntry) -> DiskInfo:
    fields = entry.fields
    slot = fields.get("slot")
    if slot is None:
        raise _ShapeError("disk item without slot=")
    return DiskInfo(
        slot=slot,
        type=fields.get("type", ""),
        size=_exact_bytes(fields.get("size")),
        file_path=_optional(fields, "file-path"),
        file_size_text=_optional(fields, "file-size"),
        nvme_export=fields.get("nvme-tcp-export") == "yes",
        nvme_port=_int_or_none(fields.get("nvme-tcp-server-port")),
        nvme_nqn=_optional(fields, "nvme-tcp-server-nqn"),
        flags=entry.flags,
        raw=fields,
        # `;;; text` above the item in list and detail forms; `comment: text` in the
        # key-per-line form.
        comment=entry.comment if entry.comment is not None else _optional(fields, "comment"),
    )


def parse_disks(
    output: str, command: Command | None = None, memo: ListingMemo | None = None
) -> list[DiskInfo]:
    """Disks from ``/disk print detail`` output; [] when nothing matched."""
    return _convert(output, command, _disk, memo=memo)


def _name(entry: PrintEntry) -> str:
    return entry.fields.get("name", "")


def parse_names(
    output: str, command: Command | None = None, memo: ListingMemo | None = None
) -> list[str]:
    """The ``name`` of each item ('' for an item without one)."""
    return _convert(output, command, _name, memo=memo)


def parse_disk(output: str, command: Command | None = None) -> DiskInfo | None:
    """The one disk of a by-slot print, or None; a different or second disk is an error."""
    disks = parse_disks(output, command)
    if len(disks) > 1:
        raise UnparseableOutputError(
            f"expected at most one disk, got {len(disks)}", output, command=command
        )
    if not disks:
        return None
    disk = disks[0]
    if command is not None and command.slot is not None and disk.slot != command.slot:
        raise UnparseableOutputError(
            f"asked for slot {command.slot}, got {disk.slot}", output, command=command
        )
    return disk


# -- pool ---------------------------------------------------------------------------------


def _pool(entry: PrintEntry) -> PoolInfo:
    fields = entry.fields
    exact = True
    sizes: list[int] = []
    for key in ("size", "free"):
        text = fields.get(key)
        if text is None:
            raise _ShapeError(f"pool item without {key}=")
        try:
            sizes.append(parse_size(text, exact=True))
        except ValueError:
            exact = False
            try:
                sizes.append(parse_size(text))
            except ValueError:
                raise _ShapeError(f"pool {key}= is not a size: {text!r}") from None
    use = fields.get("use", "").removesuffix("%")
    return PoolInfo(
        slot=_optional(fields, "slot"),
        mount_point=_optional(fields, "mount-point"),
        size=sizes[0],
        free=sizes[1],
        exact=exact,
        use_percent=_int_or_none(use),
        file_system=_optional(fields, "file-system"),
        raw=fields,
    )


def parse_pool(output: str, command: Command | None = None) -> PoolInfo | None:
    """The pool partition's capacity, or None if no such partition was printed."""
    pools = _convert(output, command, _pool)
    if len(pools) > 1:
        raise UnparseableOutputError(
            f"expected one pool partition, got {len(pools)}", output, command=command
        )
    return pools[0] if pools else None


# -- files --------------------------------------------------------------------------------

_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")
_OLD_DATE = re.compile(r"([A-Za-z]{3})/([0-9]{2})/([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2})")


def parse_device_time(text: str) -> datetime.datetime | None:
    """``2025-11-11 16:47:07`` or ``nov/11/2025 16:47:07`` as a naive datetime, else None."""
    text = text.strip()
    try:
        iso = _ISO_DATE.fullmatch(text)
        if iso is not None:
            y, mo, d, h, mi, s = (int(part) for part in iso.groups())
            return datetime.datetime(y, mo, d, h, mi, s)
        old = _OLD_DATE.fullmatch(text)
        if old is not None:
            month = _MONTHS.get(old.group(1).lower())
            if month is None:
                return None
            d, y, h, mi, s = (int(part) for part in old.groups()[1:])
            return datetime.datetime(y, month, d, h, mi, s)
    except ValueError:  # out-of-range fields such as month 13
        return None
    return None


def _file(entry: PrintEntry) -> FileInfo:
    fields = entry.fields
    name = fields.get("name")
    if name is None:
        raise _ShapeError("file item without name=")
    size_text = fields.get("size")
    size = _exact_bytes(size_text)
    size_exact = size is not None
    if size is None and size_text is not None:
        try:
            size = parse_size(size_text)
        except ValueError:
            size = None
    modified = fields.get("last-modified")
    return FileInfo(
        name=name,
        type=_optional(fields, "type"),
        size=size,
        size_exact=size_exact,
        last_modified=parse_device_time(modified) if modified else None,
        raw=fields,
    )


def parse_files(output: str, command: Command | None = None) -> list[FileInfo]:
    """Files from ``/file print detail`` output; [] when nothing matched."""
    return _convert(output, command, _file)


# -- traffic ------------------------------------------------------------------------------

_NUM = r"[0-9]+(?:\.[0-9]+)?"
_PLAIN_NUMBER = re.compile(rf"-?{_NUM}")
_GROUPED_NUMBER = re.compile(r"[0-9]{1,3}(?: [0-9]{3})+")
_PERCENT = re.compile(rf"({_NUM}) ?%")
_RATE = re.compile(rf"({_NUM}) ?([kKMGT]?)bps")
_RATE_FACTOR: Final = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_DURATION = re.compile(rf"(?:{_NUM}(?:ms|us|µs|ns|w|d|h|m|s))+")
_DURATION_PART = re.compile(rf"({_NUM})(ms|us|µs|ns|w|d|h|m|s)")
_DURATION_FACTOR: Final = {
    "w": Fraction(604800),
    "d": Fraction(86400),
    "h": Fraction(3600),
    "m": Fraction(60),
    "s": Fraction(1),
    "ms": Fraction(1, 10**3),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "ns": Fraction(1, 10**9),
}
_CLOCK = re.compile(rf"([0-9]+):([0-9]{{2}}):({_NUM})")


def parse_metric(text: str) -> float | None:
    """A monitor value in base units (bits/s, seconds, plain number), or None if not one."""
    text = text.strip()
    if _PLAIN_NUMBER.fullmatch(text) or _GROUPED_NUMBER.fullmatch(text):
        return float(text.replace(" ", ""))
    match = _PERCENT.fullmatch(text)
    if match is not None:
        return float(match.group(1))
    match = _RATE.fullmatch(text)
    if match is not None:
        return float(Fraction(match.group(1)) * _RATE_FACTOR[match.group(2)])
    if _DURATION.fullmatch(text):
        total = sum(
            (Fraction(n) * _DURATION_FACTOR[unit] for n, unit in _DURATION_PART.findall(text)),
            Fraction(0),
        )
        return float(total)
    match = _CLOCK.fullmatch(text)
    if match is not None:
        h, m, s = match.groups()
        return float(int(h) * 3600 + int(m) * 60 + Fraction(s))
    return None


def parse_traffic(output: str, command: Command | None = None) -> TrafficStats:
    """One ``/disk monitor-traffic <slot> once`` sample (``key: value`` or ``key=value``)."""
    entries = parse_entries(output, command)
    raw: dict[str, str] = {}
    for entry in entries:
        raw.update(entry.fields)
    if not raw:
        raise UnparseableOutputError("no traffic fields", output, command=command)
    values = {key: v for key, text in raw.items() if (v := parse_metric(text)) is not None}
    slot = raw.get("slot") or raw.get("name")
    if slot is None and command is not None:
        slot = command.slot
    return TrafficStats(slot, MappingProxyType(values), MappingProxyType(raw))


# -- NVMe/TCP connections (format unconfirmed) ---------------------------------------------


def _first(fields: Mapping[str, str], *keys: str) -> str | None:
    for key in keys:
        value = fields.get(key)
        if value:
            return value
    return None


def _connection(fields: Mapping[str, str]) -> NvmeConnection:
    return NvmeConnection(
        slot=_first(fields, "slot", "disk", "name"),
        nqn=_first(fields, "nqn", "subsystem-nqn", "server-nqn", "nvme-tcp-server-nqn"),
        host_nqn=_first(fields, "host-nqn", "hostnqn", "host-name", "host"),
        remote_address=_first(fields, "remote-address", "address", "remote", "client-address"),
        remote_port=_int_or_none(_first(fields, "remote-port")),
        raw=fields,
    )


def _table_rows(lines: list[str], header_at: int) -> list[dict[str, str]]:
    header = lines[header_at]
    columns = [(m.start(), m.group().lower()) for m in re.finditer(r"[A-Z][A-Z0-9-]*", header)]
    names = [name for _, name in columns]
    rows: list[dict[str, str]] = []
    for line in lines[header_at + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith(";;;"):
            continue
        tokens = stripped.split()
        if not _DIGITS.fullmatch(tokens[0]):
            raise _ShapeError(f"table row without index: {line[:40]!r}")
        values = tokens[1:]
        if len(values) == len(names) + 1 and re.fullmatch(r"[A-Z*]+", values[0]):
            values = values[1:]  # flag letters
        if len(values) != len(names):
            # Blank cells or values with spaces: cut the row at the header's columns.
            starts = [start for start, _ in columns] + [len(line)]
            values = [line[a:b].strip() for a, b in itertools.pairwise(starts)]
        rows.append(dict(zip(names, values, strict=True)))
    return rows


def _connection_of(entry: PrintEntry) -> NvmeConnection:
    return _connection(entry.fields)


def parse_nvme_connections(
    output: str, command: Command | None = None, memo: ListingMemo | None = None
) -> list[NvmeConnection]:
    """Connected hosts from ``/interface nvme-tcp connection print``; [] if none.

    Tolerates list/detail form, ``key: value`` form and a ``#  SLOT  NQN ...`` table.
    """
    _raise_if_error(output, command)
    lines = _lines(output)
    for at, line in enumerate(lines):
        if _TABLE_HEADER.fullmatch(line):
            try:
                rows = _table_rows(lines, at)
            except _ShapeError as exc:
                raise UnparseableOutputError(str(exc), output, command=command) from None
            return [_connection(MappingProxyType(row)) for row in rows]
        stripped = line.strip(_BLANK)
        if stripped and not _LEGEND_START.match(stripped) and not _LEGEND_MORE.match(line):
            break  # the first item: a table's header would have come before it
    return _convert(output, command, _connection_of, checked=True, memo=memo)
