"""Output shapes of `print`: the device's wrapped `key=value` form and a `key: value` form.

An item is a list of groups of properties. In the `key=value` forms every group starts a
new line and a group wraps onto continuation lines when it would pass the line width;
that reproduces the device captures in the protocol reference byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rdscsi.sim.units import group_digits, humanize

Render = Literal["detail", "plain", "colon"]
RENDERS: tuple[Render, ...] = ("detail", "plain", "colon")

LINE_WIDTH = 79  # a line never reaches the last column of an 80-column terminal
DISK_INDENT = " " * 15
FILE_INDENT = " " * 5
FLAGS_LEGEND = "Flags: X - disabled"

_BARE = re.compile(r"[A-Za-z0-9_./:+@-]+")


@dataclass(frozen=True)
class Prop:
    """One property: `shown` in the key=value form, `plain` in the colon form, `raw` to match."""

    key: str
    shown: str
    plain: str
    raw: str


Group = tuple[Prop, ...]
Item = tuple[Group, ...]


def quote(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\$':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\{ord(char):02X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def string(key: str, text: str) -> Prop:
    """A string property, always quoted (`slot="pvc-1"`)."""
    return Prop(key, quote(text), text, text)


def word(key: str, text: str) -> Prop:
    """A property printed bare unless it holds characters that need quoting (`file-path=`)."""
    shown = text if _BARE.fullmatch(text) else quote(text)
    return Prop(key, shown, text, text)


def literal(key: str, text: str) -> Prop:
    """Printed exactly as given (`type=.img file`, `last-modified=2025-11-11 16:47:07`)."""
    return Prop(key, text, text, text)


def flag(key: str, value: bool) -> Prop:
    text = "yes" if value else "no"
    return Prop(key, text, text, text)


def number(key: str, value: int) -> Prop:
    return Prop(key, str(value), str(value), str(value))


def byte_count(key: str, value: int) -> Prop:
    """Exact bytes, grouped by thousands (`size=53 687 091 200`)."""
    return Prop(key, group_digits(value), group_digits(value), str(value))


def human_size(key: str, value: int) -> Prop:
    """Humanised bytes (`file-size=50.0GiB`); matching still sees the exact count."""
    return Prop(key, humanize(value), humanize(value), str(value))


COMMENT = "comment"


def comment(text: str) -> Prop:
    """An item's comment: a `;;; text` line above its fields (nothing when empty)."""
    return Prop(COMMENT, text, text, text)


def item_props(item: Item) -> dict[str, str]:
    """The raw values `where` and `[find]` compare against."""
    return {prop.key: prop.raw for group in item for prop in group}


def _wrap(item: Item, first_prefix: str, indent: str) -> list[str]:
    lines: list[str] = []
    line = first_prefix
    empty = True
    for group in item:
        for position, prop in enumerate(group):
            if prop.key == COMMENT:
                if prop.shown:  # its own line, as the device prints it; fields follow below
                    lines.append(f"{first_prefix};;; {prop.shown}")
                    line = indent if first_prefix else ""
                continue
            token = f"{prop.key}={prop.shown}"
            if empty:
                line += token
                empty = False
            elif position > 0 and len(line) + 1 + len(token) <= LINE_WIDTH:
                line += " " + token
            else:
                lines.append(line)
                line = indent + token
    if not empty:
        lines.append(line)
    return lines


def _colon(item: Item) -> list[str]:
    props = [prop for group in item for prop in group if prop.key != COMMENT or prop.plain]
    width = max((len(prop.key) for prop in props), default=0)
    return [f"  {prop.key.rjust(width)}: {prop.plain}".rstrip() for prop in props]


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def restrict(item: Item, keys: Sequence[str] | None) -> Item:
    """`print proplist=…`: only the named properties (in the item's own order)."""
    if keys is None:
        return item
    wanted = set(keys)
    return tuple(g for g in (tuple(p for p in group if p.key in wanted) for group in item) if g)


def render_terse(items: Sequence[Item]) -> str:
    """`print terse`: one line per item, its index then every `key=value`, never wrapped."""
    lines = []
    for index, item in enumerate(items):
        pairs = " ".join(f"{p.key}={p.shown}" for group in item for p in group if p.key != COMMENT)
        lines.append(f"{index:>2} {pairs}")
    return _join(lines)


def render_items(items: Sequence[Item], render: Render, *, flags_legend: bool = True) -> str:
    """Disks, the pool and NVMe/TCP connections.

    `detail`: the device's list form (legend line, index, blank line after each entry);
    `plain`: the single-entry detail form of the reference (no index), blank lines between;
    `colon`: `key: value` per line, blank lines between entries.
    """
    lines: list[str] = []
    if render == "detail":
        if flags_legend:
            lines.append(FLAGS_LEGEND)
        for index, item in enumerate(items):
            lines.extend(_wrap(item, f"{index:>2}  ", DISK_INDENT))
            lines.append("")
        return _join(lines)
    for index, item in enumerate(items):
        if index:
            lines.append("")
        lines.extend(_colon(item) if render == "colon" else _wrap(item, "", DISK_INDENT))
    return _join(lines)


def render_files(items: Sequence[Item], render: Render) -> str:
    """`/file print detail`: indexed entries, continuation lines under the first field."""
    lines: list[str] = []
    for index, item in enumerate(items):
        if render == "colon":
            if index:
                lines.append("")
            lines.extend(_colon(item))
        else:
            lines.extend(_wrap(item, f"{index:>2}   ", FILE_INDENT))
    return _join(lines)


def render_monitor(props: Sequence[Prop]) -> str:
    """`monitor-traffic ... once`: always `key: value` lines, keys right-aligned."""
    return _join(_colon((tuple(props),)))
