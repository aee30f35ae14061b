"""Sizes: exact both ways up to 2**63-1; humanised forms only approximately."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdscsi.io.rds import (
    MAX_SIZE,
    InvalidValueError,
    format_size_exact,
    humanize_size,
    parse_size,
)

SIZES = settings(max_examples=2_000, derandomize=True, deadline=None, database=None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("53687091200", 53_687_091_200),
        ("53 687 091 200", 53_687_091_200),
        ("9 223 372 036 854 775 807", MAX_SIZE),
        ("512B", 512),
        ("1K", 1024),
        ("1k", 1024),
        ("10M", 10 * 2**20),
        ("50G", 50 * 2**30),
        ("2T", 2 * 2**40),
        ("1KiB", 1024),
        ("50.0GiB", 50 * 2**30),
        ("1.5TiB", 3 * 2**39),
        ("7.99EiB", round(Fraction(799, 100) * 2**60)),  # exact arithmetic, no float
        (" 4 096 ", 4096),
    ],
)
def test_parse_size_examples(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text", ["", "G", "1.5", "-1", "1 0", "12 34", "1,024", "1.5X", "0x10", "١٢"]
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_exact_only() -> None:
    assert parse_size("1 024", exact=True) == 1024
    for text in ("1K", "50.0GiB", "512B"):
        with pytest.raises(ValueError, match="exact"):
            parse_size(text, exact=True)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1.0KiB"),
        (53_687_091_200, "50.0GiB"),
        (10 * 2**30 + 2**29, "10.5GiB"),
        (2**40 - 1, "1.0TiB"),
        (MAX_SIZE, "8.0EiB"),
    ],
)
def test_humanize_examples(n: int, text: str) -> None:
    assert humanize_size(n) == text


def test_format_size_exact_validates() -> None:
    assert format_size_exact(MAX_SIZE) == "9223372036854775807"
    for bad in (0, -1, MAX_SIZE + 1, True, 1.0, "1"):
        with pytest.raises(InvalidValueError, match=r"^invalid size "):
            format_size_exact(bad)  # type: ignore[arg-type]


@SIZES
@given(st.one_of(st.integers(1, MAX_SIZE), st.integers(1, 10**7), st.just(MAX_SIZE)))
def test_exact_round_trip(n: int) -> None:
    assert parse_size(format_size_exact(n), exact=True) == n
    assert parse_size(f"{n:,}".replace(",", " "), exact=True) == n


@SIZES
@given(st.integers(0, MAX_SIZE))
def test_humanised_is_close(n: int) -> None:
    # Lossy by design: one decimal of the unit, so within 5% (exact below 1 KiB).
    back = parse_size(humanize_size(n))
    if n < 1024:
        assert back == n
    else:
        assert abs(back - n) <= n * 0.05
