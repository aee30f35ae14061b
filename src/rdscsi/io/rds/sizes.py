"""Byte counts as the device writes and reads them.

Exact forms are plain digits (``53687091200``) and digits grouped by spaces
(``53 687 091 200``); commands always carry plain digits. Humanised forms (``50.0GiB``)
are lossy: they are parsed for display and rough reporting only and never used for a size
decision (creation, growth, idempotency checks). All units are binary (K = 1024).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

from rdscsi.io.rds.errors import InvalidValueError

MAX_SIZE: Final = 2**63 - 1

_PLAIN = re.compile(r"[0-9]+")
_GROUPED = re.compile(r"[0-9]{1,3}(?: [0-9]{3})+")
_BYTES = re.compile(r"([0-9]+) ?B")
_UNIT = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([KMGTPEkmgtpe])(?:iB|B)?")
_POWER: Final = {letter: i + 1 for i, letter in enumerate("KMGTPE")}
_HUMAN_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def _round_half_up(value: Fraction) -> int:
    return (2 * value.numerator + value.denominator) // (2 * value.denominator)


def parse_size(text: str, *, exact: bool = False) -> int:
    """Bytes from a device size text; raises ValueError if ``text`` is not a size.

    Accepts plain bytes, space-grouped bytes, ``<n>B``, and ``<n>[.<d>]`` followed by
    K/M/G/T/P/E with optional ``iB`` or ``B`` (binary multiples; fractions round to the
    nearest byte). With ``exact=True`` only plain or grouped digits are accepted, since
    only those are byte-exact.
    """
    text = text.strip()
    if _PLAIN.fullmatch(text) or _GROUPED.fullmatch(text):
        return int(text.replace(" ", ""))
    if exact:
        raise ValueError(f"not an exact byte count: {text!r}")
    match = _BYTES.fullmatch(text)
    if match is not None:
        return int(match.group(1))
    match = _UNIT.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    value = Fraction(match.group(1)) * 1024 ** _POWER[match.group(2).upper()]
    return _round_half_up(value)


def validate_size(value: object, field: str = "size") -> int:
    """``value`` if it is a byte count the device can be asked for (1 .. 2**63-1)."""
    # bool is an int subclass; True as a size is always a caller bug.
    if type(value) is not int:
        raise InvalidValueError(field, value, f"must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_SIZE:
        raise InvalidValueError(field, value, f"must be between 1 and {MAX_SIZE}")
    return value


def format_size_exact(n: int) -> str:
    """``n`` bytes as a command carries it: plain decimal digits, never rounded, no unit."""
    return str(validate_size(n))


def humanize_size(n: int) -> str:
    """``n`` bytes the way the device displays sizes (``50.0GiB``); lossy, display only."""
    if type(n) is not int or n < 0:
        raise ValueError(f"not a byte count: {n!r}")
    power = 0
    while power + 1 < len(_HUMAN_UNITS) and n >= 1024 ** (power + 1):
        power += 1
    if power == 0:
        return f"{n}B"
    tenths = _round_half_up(Fraction(n * 10, 1024**power))
    # 1023.96GiB rounds to 1024.0GiB: show it as 1.0TiB instead.
    if tenths >= 10240 and power + 1 < len(_HUMAN_UNITS):
        power += 1
        tenths = _round_half_up(Fraction(n * 10, 1024**power))
    return f"{tenths // 10}.{tenths % 10}{_HUMAN_UNITS[power]}"
