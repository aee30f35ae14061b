"""Byte counts as the device reads and prints them."""

from __future__ import annotations

import re

KIB = 1024
MIB = KIB**2
GIB = KIB**3
TIB = KIB**4
PIB = KIB**5

_MULTIPLIERS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB, "P": PIB}
_SIZE = re.compile(r"([0-9]+)(?:([KMGTP])(?:i?B)?)?", re.IGNORECASE)
_UNITS = (("PiB", PIB), ("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB))


def parse_size(text: str) -> int | None:
    """Plain bytes or a number with a binary K/M/G/T/P suffix; None when malformed."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    return int(match.group(1)) * _MULTIPLIERS[(match.group(2) or "").upper()]


def group_digits(value: int) -> str:
    """`53 687 091 200`: the device groups byte counts by thousands with spaces."""
    return f"{value:,}".replace(",", " ")


def humanize(value: int) -> str:
    """`50.0GiB`, `1.5TiB`: one decimal, truncated so a size never reads larger than it is."""
    for unit, scale in _UNITS:
        if value >= scale:
            tenths = value * 10 // scale
            return f"{tenths // 10}.{tenths % 10}{unit}"
    return f"{value}B"


def percent(part: int, whole: int) -> str:
    if whole <= 0:
        return "0%"
    return f"{(part * 100 + whole // 2) // whole}%"


def bits_per_second(value: int) -> str:
    """`12.8Mbps`: decimal multiples, one decimal, like RouterOS traffic rates."""
    for unit, scale in (("Gbps", 10**9), ("Mbps", 10**6), ("kbps", 10**3)):
        if value >= scale:
            tenths = value * 10 // scale
            return f"{tenths // 10}.{tenths % 10}{unit}"
    return f"{value}bps"
