"""The command-line reader: accepted forms, refused forms and the device's error texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdscsi.sim.errors import DeviceError
from rdscsi.sim.render import quote
from rdscsi.sim.syntax import parse
from rdscsi.sim.units import GIB, KIB, MIB, TIB, group_digits, humanize, parse_size


def error_of(line: str) -> str:
    with pytest.raises(DeviceError) as caught:
        parse(line)
    return caught.value.text


@pytest.mark.parametrize(
    "line",
    ["/disk print", "/disk/print", "disk print", "  /disk   print  ", "/disk print\n"],
)
def test_path_forms(line: str) -> None:
    command = parse(line)
    assert command is not None
    assert (command.menu, command.verb) == (("disk",), "print")


def test_nested_menu() -> None:
    command = parse("/interface nvme-tcp connection print detail")
    assert command is not None
    assert command.menu == ("interface", "nvme-tcp", "connection")
    assert [arg.value.text for arg in command.args] == ["detail"]


@pytest.mark.parametrize("line", ["", "   ", "/disk", "/interface nvme-tcp"])
def test_lines_that_do_nothing(line: str) -> None:
    assert parse(line) is None


def test_arguments_quoted_and_bare() -> None:
    command = parse('/disk add slot=pvc-1 file-path="/storage-pool/a b.img" file-size=10G')
    assert command is not None
    named = {arg.name: arg.value for arg in command.args}
    assert named["slot"].text == "pvc-1" and not named["slot"].quoted
    assert named["file-path"].text == "/storage-pool/a b.img" and named["file-path"].quoted
    assert named["file-size"].text == "10G"


def test_find_and_where() -> None:
    command = parse('/disk set [find slot="pvc-1"] file-size=2G')
    assert command is not None
    find = command.args[0].value.find
    assert find is not None
    assert [(c.name, c.op, c.value) for c in find.conditions] == [("slot", "=", "pvc-1")]
    command = parse('/disk print detail where slot~"^pvc-" and !nvme-tcp-export size>=5')
    assert command is not None and command.where is not None
    assert [(c.name, c.op, c.value, c.negate) for c in command.where] == [
        ("slot", "~", "^pvc-", False),
        ("nvme-tcp-export", "flag", "", True),
        ("size", ">=", "5", False),
    ]
    command = parse("/disk remove [find where slot=a slot!=b]")
    assert command is not None
    found = command.args[0].value.find
    assert found is not None and [c.op for c in found.conditions] == ["=", "!="]
    command = parse("/file remove [find]")
    assert command is not None
    assert command.args[0].value.find is not None
    assert command.args[0].value.find.conditions == ()


def test_quoted_escapes() -> None:
    command = parse(r'/disk print where slot="a\"b\\c\$d\_e\41"')
    assert command is not None and command.where is not None
    assert command.where[0].value == 'a"b\\c$d eA'


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("/disk frob", "bad command name frob (line 1 column 7)"),
        ("/disks print", "bad command name disks (line 1 column 2)"),
        ("/interface print", "bad command name print (line 1 column 12)"),
        (":put 1", "bad command name :put (line 1 column 1)"),
        ("/disk add foo=bar", None),  # unknown argument names are the interpreter's call
        ('/disk print where slot="pvc', "syntax error (line 1 column 24)"),
        ("/disk remove [find slot=a", "syntax error (line 1 column 14)"),
        ("/disk remove [find slot=a]]", "syntax error (line 1 column 27)"),
        ("/disk remove find slot=a]", "syntax error (line 1 column 25)"),
        ("/disk print; /system reset", "syntax error (line 1 column 12)"),
        ("/disk print\n/system reset", "syntax error (line 1 column 12)"),
        ("/disk add slot=$x", "syntax error (line 1 column 16)"),
        ('/disk add slot="a$x"', "syntax error (line 1 column 18)"),
        ("/disk add slot=a`id`", "syntax error (line 1 column 17)"),
        ("/disk add slot=a\\b", "syntax error (line 1 column 17)"),
        ("/disk add slot={a}", "syntax error (line 1 column 16)"),
        ('/disk add slot="a"b', "syntax error (line 1 column 19)"),
        ('/disk add slot="\\q"', "syntax error (line 1 column 17)"),
        ("/disk remove [/system reset]", "syntax error (line 1 column 15)"),
        ("/disk remove [put 1]", "bad command name put (line 1 column 15)"),
        ("/disk remove [find [find]]", "syntax error (line 1 column 20)"),
        ("/disk print where", "syntax error (line 1 column 18)"),
        ("/disk print where slot=a and", "syntax error (line 1 column 29)"),
        ("/disk print where =a", "syntax error (line 1 column 19)"),
        ("/disk print where slot=[find]", "syntax error (line 1 column 24)"),
        ('/disk print"x"', "syntax error (line 1 column 12)"),
        ("/disk add slot~a", "syntax error (line 1 column 15)"),
        ("/disk print \x00", "syntax error (line 1 column 13)"),
    ],
)
def test_refused_lines(line: str, text: str | None) -> None:
    if text is None:
        assert parse(line) is not None
    else:
        assert error_of(line) == text


@given(st.text(max_size=80))
def test_any_text_parses_or_fails_like_the_device(line: str) -> None:
    try:
        parse(line)
    except DeviceError as error:
        assert error.text.startswith(("syntax error (line 1 column ", "bad command name "))


@given(st.text(max_size=40))
def test_quoted_values_round_trip(value: str) -> None:
    command = parse(f"/disk print where slot={quote(value)}")
    assert command is not None and command.where is not None
    assert command.where[0].value == value


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("512", 512),
        ("4K", 4 * KIB),
        ("4k", 4 * KIB),
        ("10M", 10 * MIB),
        ("50G", 50 * GIB),
        ("2T", 2 * TIB),
        ("3GiB", 3 * GIB),
        ("1649267441665", 3 * TIB // 2 + 1),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1", "1X", "1 G", "0x10"])
def test_parse_size_refuses(text: str) -> None:
    assert parse_size(text) is None


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (50 * GIB, "50.0GiB"),
        (3 * TIB // 2, "1.5TiB"),
        (3 * TIB // 2 + 1, "1.5TiB"),
        (512 * MIB, "512.0MiB"),
        (GIB - 1, "1023.9MiB"),
        (1000, "1000B"),
        (10 * GIB, "10.0GiB"),
    ],
)
def test_humanize(size: int, text: str) -> None:
    assert humanize(size) == text


@given(st.integers(min_value=0, max_value=2**64))
def test_grouped_digits_read_back(value: int) -> None:
    assert int(group_digits(value).replace(" ", "")) == value


def test_dollar_inside_quotes() -> None:
    command = parse('/file print where name~"img$" slot~"a$|b"')
    assert command is not None and command.where is not None
    assert [c.value for c in command.where] == ["img$", "a$|b"]
    for line in ('/disk add slot="$(id)"', '/disk add slot="$[x]"', '/disk add slot="a$_"'):
        assert error_of(line).startswith("syntax error"), line
