"""Command builders: exact lines, allowlists, and injection-proofness.

The property tests tokenise each built line with a RouterOS CLI tokeniser written here,
independently of the module under test, and check that no accepted value changes the
token structure and every value reads back exactly; rejected values must name the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdscsi.io.rds import (
    VERBS,
    Command,
    CommandBuilder,
    InvalidValueError,
    escape_regex,
    quote,
)

T = TypeVar("T")

BUILDER = CommandBuilder("/storage-pool/")
NQN = "nqn.2000-02.com.mikrotik:pvc-1"
PATH = "/storage-pool/k8s/pvc-1.img"

# Each property sees 10,000 generated values: 1,000 examples of 10 values each. Batching
# keeps a field to about a second; Hypothesis's cost is mostly per example, not per value.
BATCH = 10
MANY = settings(
    max_examples=1_000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def batches(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[list[T]]:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


# -- an independent RouterOS CLI tokeniser ---------------------------------------------------


class CliError(Exception):
    pass


@dataclass(frozen=True)
class Tok:
    kind: str  # word | str | open | close | special
    text: str  # the word, the decoded string, the bracket or special character
    glued: bool  # no whitespace before this token


_NAMED = {"\\": "\\", '"': '"', "$": "$", "?": "?", "_": " ", "n": "\n", "r": "\r", "t": "\t"}
_NAMED |= {"a": "\a", "b": "\b", "f": "\f", "v": "\v"}
# Characters that mean something to the CLI outside quotes each become their own token,
# so any that leaks out of a value changes the structure.
_TOKEN = re.compile(
    r""" (?P<ws>[ ]+)
       | "(?P<str>(?:[^"\\]|\\.)*)"
       | (?P<open>\[) | (?P<close>\])
       | (?P<special>[;${}\\?\n\r\t"])
       | (?P<word>[^ ;${}\\?\n\r\t"\[\]]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_STRING_PART = re.compile(r"\\([0-9A-F]{2}|.)|([\n\r$?])|([^\\\n\r$?]+)", re.DOTALL)


def _decode(content: str) -> str:
    out: list[str] = []
    for match in _STRING_PART.finditer(content):
        escape, bare_special, text = match.groups()
        if bare_special is not None:
            # A raw line break ends the command; raw $ substitutes; raw ? asks for help.
            raise CliError(f"unescaped {bare_special!r} inside a string")
        if text is not None:
            out.append(text)
        elif len(escape) == 2:
            out.append(chr(int(escape, 16)))
        elif escape in _NAMED:
            out.append(_NAMED[escape])
        else:
            raise CliError(f"unknown escape \\{escape}")
    return "".join(out)


def tokenize_cli(line: str) -> list[Tok]:
    toks: list[Tok] = []
    glued = False
    pos = 0
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        assert match is not None  # the alternatives cover every character
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind == "ws":
            glued = False
            continue
        text = _decode(match.group("str")) if kind == "str" else match.group()
        toks.append(Tok(kind, text, glued))
        glued = True
    return toks


def shape(line: str) -> list[tuple[str, str | None, bool]]:
    """The structure: every token except the content of strings."""
    return [(t.kind, None if t.kind == "str" else t.text, t.glued) for t in tokenize_cli(line)]


def strings(line: str) -> list[str]:
    return [t.text for t in tokenize_cli(line) if t.kind == "str"]


def test_tokenizer_itself() -> None:
    toks = tokenize_cli('/disk set [find slot="a\\"b"] file-size="1"')
    kinds = [t.kind for t in toks]
    assert kinds == ["word", "word", "open", "word", "word", "str", "close", "word", "str"]
    assert toks[5].text == 'a"b' and toks[5].glued
    assert shape('a="x"') != shape('a="x" "y"')
    assert shape('a="x"') != shape('a="x";b')
    with pytest.raises(CliError):
        tokenize_cli('a="$x"')


# -- exact lines ---------------------------------------------------------------------------


EXACT_LINES: list[tuple[Callable[[], Command], str, str, bool]] = [
    (
        lambda: BUILDER.disk_add(
            slot="pvc-1", file_path=PATH, file_size=53687091200, nvme_port=4420, nvme_nqn=NQN
        ),
        "disk-add",
        '/disk add type=file file-path="/storage-pool/k8s/pvc-1.img" file-size="53687091200" '
        'slot="pvc-1" nvme-tcp-export=yes nvme-tcp-server-port="4420" '
        'nvme-tcp-server-nqn="nqn.2000-02.com.mikrotik:pvc-1"',
        True,
    ),
    (
        lambda: BUILDER.disk_add_copy(
            source_slot="pvc-1", slot="snap-1", file_path="/storage-pool/k8s/snap-1.img"
        ),
        "disk-copy",
        '/disk add type=file copy-from=[find slot="pvc-1"] '
        'file-path="/storage-pool/k8s/snap-1.img" slot="snap-1"',
        True,
    ),
    (
        lambda: BUILDER.disk_add_copy(
            source_slot="snap-1",
            slot="pvc-2",
            file_path="/storage-pool/k8s/pvc-2.img",
            file_size=107374182400,
            nvme_port=4420,
            nvme_nqn="nqn.2000-02.com.mikrotik:pvc-2",
        ),
        "disk-copy",
        '/disk add type=file copy-from=[find slot="snap-1"] '
        'file-path="/storage-pool/k8s/pvc-2.img" slot="pvc-2" file-size="107374182400" '
        'nvme-tcp-export=yes nvme-tcp-server-port="4420" '
        'nvme-tcp-server-nqn="nqn.2000-02.com.mikrotik:pvc-2"',
        True,
    ),
    (
        lambda: BUILDER.disk_grow("pvc-1", 107374182400),
        "disk-grow",
        '/disk set [find slot="pvc-1"] file-size="107374182400"',
        True,
    ),
    (
        lambda: BUILDER.disk_comment("pvc-1", "pvc=ns/data-0 pv=pvc-1"),
        "disk-comment",
        '/disk set [find slot="pvc-1"] comment="pvc=ns/data-0 pv=pvc-1"',
        True,
    ),
    (
        lambda: BUILDER.disk_remove("pvc-1"),
        "disk-remove",
        '/disk remove [find slot="pvc-1"]',
        True,
    ),
    (
        lambda: BUILDER.disk_allow_hosts(
            "pvc-1", ["nqn.2014-08.org.nvmexpress:uuid:b", "nqn.2014-08.org.example:a"]
        ),
        "disk-fence",
        '/disk set [find slot="pvc-1"] nvme-tcp-server-allow-host-name='
        '"nqn.2014-08.org.example:a,nqn.2014-08.org.nvmexpress:uuid:b"',
        True,
    ),
    (
        lambda: BUILDER.disk_allow_hosts("pvc-1", []),  # nobody: never an empty list
        "disk-fence",
        '/disk set [find slot="pvc-1"] '
        'nvme-tcp-server-allow-host-name="nqn.2000-02.com.mikrotik:rdscsi-no-host"',
        True,
    ),
    (
        lambda: BUILDER.disk_rename("pvc-1", PATH, "q1750000000000.pvc-1", export=False),
        "disk-rename",
        '/disk set [find slot="pvc-1" file-path="/storage-pool/k8s/pvc-1.img"] '
        'slot="q1750000000000.pvc-1" nvme-tcp-export=no',
        True,
    ),
    (
        lambda: BUILDER.disk_rename("q1.pvc-1", PATH, "pvc-1", export=True),
        "disk-rename",
        '/disk set [find slot="q1.pvc-1" file-path="/storage-pool/k8s/pvc-1.img"] '
        'slot="pvc-1" nvme-tcp-export=yes',
        True,
    ),
    (
        lambda: BUILDER.disk_remove_exact("q1.pvc-1", PATH),
        "disk-remove",
        '/disk remove [find slot="q1.pvc-1" file-path="/storage-pool/k8s/pvc-1.img"]',
        True,
    ),
    (
        lambda: BUILDER.file_rename(PATH, "/storage-pool/k8s/q1.pvc-1.img"),
        "file-rename",
        '/file set [find name="storage-pool/k8s/pvc-1.img"] name="storage-pool/k8s/q1.pvc-1.img"',
        True,
    ),
    (
        lambda: BUILDER.file_remove(PATH),
        "file-remove",
        '/file remove [find name="storage-pool/k8s/pvc-1.img"]',
        True,
    ),
    (
        lambda: BUILDER.disk_print("pvc-1"),
        "disk-print",
        '/disk print detail where slot="pvc-1"',
        False,
    ),
    (
        lambda: BUILDER.disk_print_prefix("pvc-"),
        "disk-print-prefix",
        '/disk print detail where slot~"^pvc-"',
        False,
    ),
    (
        lambda: BUILDER.disk_print_prefix("pvc.a"),
        "disk-print-prefix",
        '/disk print detail where slot~"^pvc\\\\.a"',
        False,
    ),
    (
        lambda: BUILDER.disk_inventory("pvc-"),
        "disk-inventory",
        "/disk print terse proplist=slot,file-path,nvme-tcp-export,nvme-tcp-server-nqn,"
        'nvme-tcp-server-allow-host-name where slot~"^pvc-"',
        False,
    ),
    (
        lambda: BUILDER.file_inventory("/storage-pool/k8s/"),
        "file-inventory",
        '/file print terse proplist=name where name~"^storage-pool/k8s/"',
        False,
    ),
    (
        lambda: BUILDER.nvme_connections(terse=True),
        "nvme-connections",
        "/interface nvme-tcp connection print terse",
        False,
    ),
    (
        lambda: BUILDER.pool_print(),
        "pool-print",
        '/disk print detail where mount-point="storage-pool"',
        False,
    ),
    (
        lambda: BUILDER.file_print_prefix("/storage-pool/k8s/pvc-"),
        "file-print",
        '/file print detail where name~"^storage-pool/k8s/pvc-"',
        False,
    ),
    (
        lambda: BUILDER.disk_traffic("pvc-1"),
        "disk-traffic",
        '/disk monitor-traffic "pvc-1" once',
        False,
    ),
    (
        lambda: BUILDER.nvme_connections(),
        "nvme-connections",
        "/interface nvme-tcp connection print",
        False,
    ),
    (
        lambda: BUILDER.health(),
        "health",
        '/disk print detail where slot="__rdscsi_health__"',
        False,
    ),
]


@pytest.mark.parametrize(("build", "verb", "line", "mutating"), EXACT_LINES)
def test_exact_lines(build: Callable[[], Command], verb: str, line: str, mutating: bool) -> None:
    command = build()
    assert command.line == line
    assert command.verb == verb
    assert command.mutating is mutating
    tokenize_cli(command.line)  # parses as a single well-formed CLI line


def test_verbs_are_exactly_those_built() -> None:
    # Metric labels are pre-registered from VERBS: no verb without a builder or vice versa.
    assert {build().verb for build, _, _, _ in EXACT_LINES} == VERBS


def test_command_metadata() -> None:
    copy = BUILDER.disk_add_copy(
        source_slot="pvc-1", slot="snap-1", file_path="/storage-pool/k8s/snap-1.img"
    )
    assert (copy.slot, copy.source_slot) == ("snap-1", "pvc-1")
    assert copy.describe() == "disk-copy slot=snap-1 from=pvc-1"
    assert BUILDER.file_remove(PATH).target == "storage-pool/k8s/pvc-1.img"
    assert BUILDER.disk_remove("pvc-1").describe() == "disk-remove slot=pvc-1"


def test_pool_root_normalised_and_mount_point() -> None:
    builder = CommandBuilder("/data/k8s")
    assert builder.pool_root == "/data/k8s/"
    assert builder.mount_point == "data"
    assert builder.pool_print().line == '/disk print detail where mount-point="data"'
    with pytest.raises(InvalidValueError, match="file path"):
        builder.file_remove("/data/other.img")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: BUILDER.disk_print("a;b"), "slot"),
        (lambda: BUILDER.disk_print("PVC-1"), "slot"),
        (lambda: BUILDER.disk_print(""), "slot"),
        (lambda: BUILDER.disk_print("a" * 65), "slot"),
        (lambda: BUILDER.disk_print_prefix(""), "slot prefix"),
        (lambda: BUILDER.file_remove("/storage-pool/../etc/x.img"), "file path"),
        (lambda: BUILDER.file_remove("/storage-pool//x.img"), "file path"),
        (lambda: BUILDER.file_remove("/storage-pool/x.raw"), "file path"),
        (lambda: BUILDER.file_remove("/storage-pool/.img"), "file path"),
        (lambda: BUILDER.file_remove("/other/x.img"), "file path"),
        (lambda: BUILDER.file_remove("storage-pool/x.img"), "file path"),
        (lambda: BUILDER.file_print_prefix("/storage-pool/a//b"), "path prefix"),
        (lambda: BUILDER.file_print_prefix("/storage-pool/.."), "path prefix"),
        (lambda: BUILDER.file_print_prefix("/"), "path prefix"),
        (lambda: BUILDER.disk_grow("pvc-1", 0), "size"),
        (lambda: BUILDER.disk_grow("pvc-1", 2**63), "size"),
        (lambda: BUILDER.disk_grow("pvc-1", True), "size"),
        (lambda: BUILDER.disk_grow("pvc-1", 1.0), "size"),  # type: ignore[arg-type]
        (lambda: _add(nvme_port=0), "nvme port"),
        (lambda: _add(nvme_port=65536), "nvme port"),
        (lambda: _add(nvme_nqn="nqn.2000-02.com.MikroTik:x"), "nvme nqn"),
        (lambda: _add(nvme_nqn="nqn.2000-13.com.mikrotik:x"), "nvme nqn"),
        (lambda: _add(nvme_nqn="nqn.2000-02.com.mikrotik:" + "a" * 200), "nvme nqn"),
        (
            lambda: BUILDER.disk_add_copy(
                source_slot="x;", slot="a", file_path=PATH, nvme_port=1, nvme_nqn=NQN
            ),
            "source slot",
        ),
        (
            lambda: BUILDER.disk_add_copy(source_slot="a", slot="b", file_path=PATH, nvme_port=1),
            "nvme export",
        ),
        (lambda: BUILDER.disk_comment("pvc-1", 'a"b'), "comment"),
        (lambda: BUILDER.disk_comment("pvc-1", "a\nb"), "comment"),
        (lambda: BUILDER.disk_comment("pvc-1", "x" * 256), "comment"),
        (lambda: BUILDER.disk_allow_hosts("pvc-1", ["nqn.2014-08.org.a:b,c"]), "host nqn"),
        (lambda: BUILDER.disk_allow_hosts("pvc-1", ['nqn.2014-08.org.a:"b']), "host nqn"),
        (lambda: BUILDER.disk_allow_hosts("pvc-1", ["nqn.2014-08.org.a:b c"]), "host nqn"),
        (lambda: BUILDER.disk_allow_hosts("pvc-1", ["host-a"]), "host nqn"),
        (lambda: BUILDER.disk_allow_hosts("pvc-1", ["nqn.2014-08.a:" + "b" * 220]), "host nqn"),
        (lambda: BUILDER.disk_allow_hosts("pvc-1", [None]), "host nqn"),  # type: ignore[list-item]
        (lambda: BUILDER.disk_rename("pvc-1", PATH, "Q;x", export=False), "new slot"),
        (lambda: BUILDER.disk_rename("pvc-1", "/etc/x.img", "q1", export=False), "file path"),
        (lambda: BUILDER.file_rename(PATH, "/storage-pool/../x.img"), "new file path"),
        (lambda: CommandBuilder("relative/"), "pool root"),
        (lambda: CommandBuilder("/"), "pool root"),
        (lambda: CommandBuilder("/a/../b"), "pool root"),
    ],
)
def test_rejections_name_the_field(call: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        call()
    assert info.value.field == field
    assert str(info.value).startswith(f"invalid {field} ")


def test_invalid_value_message_shape() -> None:
    with pytest.raises(InvalidValueError, match=r"^invalid slot 'a;b': "):
        BUILDER.disk_remove("a;b")


def test_nqn_length_limit_is_bytes() -> None:
    prefix = "nqn.2000-02.com.mikrotik:"
    ok = prefix + "a" * (223 - len(prefix))
    assert _add(nvme_nqn=ok).line.endswith(f'nvme-tcp-server-nqn="{ok}"')
    with pytest.raises(InvalidValueError, match="223"):
        _add(nvme_nqn=ok + "a")


# -- quote ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("", '""'),
        ("plain", '"plain"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("$x", '"\\$x"'),
        ("$[find]", '"\\$[find]"'),
        ("why?", '"why\\?"'),
        ("a\nb\r\t", '"a\\nb\\r\\t"'),
        ("\x00\x1f\x7f", '"\\00\\1F\\7F"'),
        ("a b;c[d]{e}", '"a b;c[d]{e}"'),
        ("žluť", '"žluť"'),
    ],
)
def test_quote_examples(text: str, quoted: str) -> None:
    assert quote(text) == quoted


@MANY
@given(batches(st.text()))
def test_quote_any_text_is_one_string_token(texts: list[str]) -> None:
    for text in texts:
        assert tokenize_cli(quote(text)) == [Tok("str", text, False)]


@settings(max_examples=2000, derandomize=True, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list('$[];"\\ \n\t{}?=~\r\x00_'))))
def test_quote_special_characters(text: str) -> None:
    line = f"/disk print detail where slot={quote(text)}"
    toks = tokenize_cli(line)
    assert shape(line) == shape('/disk print detail where slot="x"')
    assert toks[-1].text == text


def test_escape_regex_is_literal() -> None:
    literal = "a.b*c+d?e(f)g[h]i{j}k|l^m$n\\o"
    assert re.fullmatch(escape_regex(literal), literal)
    assert not re.fullmatch(escape_regex("a.b"), "axb")


# -- injection properties ------------------------------------------------------------------

SPECIALS = [*"$[];\"\\ \n\t{}?=~^.*/:`'\r\x00\x7f#!@,()", "..", "//", "é", "\u2028", "A"]
SPECIAL_CHARS = [c for c in SPECIALS if len(c) == 1]


def _insert(args: tuple[str, int, str]) -> str:
    base, at, extra = args
    at = at % (len(base) + 1)
    return base[:at] + extra + base[at:]


def near(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid values with one special or out-of-set character inserted."""
    return st.tuples(valid, st.integers(0, 300), st.sampled_from(SPECIALS)).map(_insert)


def candidates(valid: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    return st.one_of(
        valid,
        valid,  # weight: half of the draws are near or inside the allowlist
        near(valid),
        st.text(),
        st.text(alphabet=st.sampled_from(SPECIAL_CHARS)),
        valid.map(str.upper),
        valid.map(lambda v: v + v),  # pushes past length limits
        st.integers(),
        st.none(),
        st.binary(max_size=8),
    )


def chars(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    # Cheaper than st.from_regex, which dominates runtime at these example counts.
    return st.text(alphabet=alphabet, min_size=low, max_size=high)


LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
SEG_CHARS = LOWER + "ABCDEFGHIJKLMNOPQRSTUVWXYZ._-"
SLOT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SLOTS = st.builds(str.__add__, chars(LOWER, 1, 1), chars(LOWER + "._-", 0, 63))
SEGMENT = chars(SEG_CHARS, 1, 12).filter(lambda s: s not in (".", ".."))
PATHS = st.builds(
    lambda segs, stem: "/storage-pool/" + "/".join([*segs, stem + ".img"]),
    st.lists(SEGMENT, max_size=3),
    chars(SEG_CHARS, 1, 12),
)
LABEL = chars(LOWER, 1, 1) | st.builds(
    lambda a, mid, b: a + mid + b, chars(LOWER, 1, 1), chars(LOWER + "-", 0, 8), chars(LOWER, 1, 1)
)
NQNS = st.builds(
    lambda year, month, labels, suffix: f"nqn.{year:04d}-{month:02d}.{'.'.join(labels)}:{suffix}",
    st.integers(0, 9999),
    st.integers(1, 12),
    st.lists(LABEL, min_size=1, max_size=3),
    chars(LOWER + ".:-", 1, 30),
)
PATH_PREFIXES = st.builds(
    lambda segs, tail: "/storage-pool/" + "/".join(segs) + tail,
    st.lists(SEGMENT, min_size=1, max_size=3),
    st.sampled_from(["", "/"]),
) | st.just("/storage-pool/")
POOL_ROOTS = st.builds(
    lambda segs, tail: "/" + "/".join(segs) + tail,
    st.lists(SEGMENT, min_size=1, max_size=3),
    st.sampled_from(["", "/"]),
)

REGEX_META = set("\\.^$|?*+()[]{}")


def regex_literal(text: str) -> str:
    return "".join("\\" + c if c in REGEX_META else c for c in text)


def _add(**overrides: object) -> Command:
    args: dict[str, object] = {
        "slot": "pvc-1",
        "file_path": PATH,
        "file_size": 1024,
        "nvme_port": 4420,
        "nvme_nqn": NQN,
    }
    args.update(overrides)
    return BUILDER.disk_add(**args)  # type: ignore[arg-type]


def _copy(**overrides: object) -> Command:
    args: dict[str, object] = {
        "source_slot": "pvc-1",
        "slot": "pvc-2",
        "file_path": PATH,
        "file_size": 1024,
        "nvme_port": 4420,
        "nvme_nqn": NQN,
    }
    args.update(overrides)
    return BUILDER.disk_add_copy(**args)  # type: ignore[arg-type]


# For each field: builders taking a value for it, the string index of the value in the
# built line, and how the value must read back.
Use = tuple[Callable[[object], Command], int, Callable[[object], str]]
FIELD_USES: dict[str, list[Use]] = {
    "slot": [
        (lambda v: _add(slot=v), 2, str),
        (lambda v: _copy(slot=v), 2, str),
        (lambda v: BUILDER.disk_grow(v, 1), 0, str),  # type: ignore[arg-type]
        (lambda v: BUILDER.disk_remove(v), 0, str),  # type: ignore[arg-type]
        (lambda v: BUILDER.disk_print(v), 0, str),  # type: ignore[arg-type]
        (lambda v: BUILDER.disk_traffic(v), 0, str),  # type: ignore[arg-type]
        (lambda v: BUILDER.disk_comment(v, "c"), 0, str),  # type: ignore[arg-type]
    ],
    "comment": [(lambda v: BUILDER.disk_comment("pvc-1", v), 1, str)],  # type: ignore[arg-type]
    "source slot": [(lambda v: _copy(source_slot=v), 0, str)],
    "file path": [
        (lambda v: _add(file_path=v), 0, str),
        (lambda v: _copy(file_path=v), 1, str),
        (lambda v: BUILDER.file_remove(v), 0, lambda v: str(v)[1:]),  # type: ignore[arg-type]
    ],
    "nvme nqn": [(lambda v: _add(nvme_nqn=v), 4, str), (lambda v: _copy(nvme_nqn=v), 5, str)],
    "size": [
        (lambda v: _add(file_size=v), 1, str),
        (lambda v: _copy(file_size=v), 3, str),
        (lambda v: BUILDER.disk_grow("pvc-1", v), 1, str),  # type: ignore[arg-type]
    ],
    "nvme port": [(lambda v: _add(nvme_port=v), 3, str), (lambda v: _copy(nvme_port=v), 4, str)],
    "slot prefix": [
        (
            lambda v: BUILDER.disk_print_prefix(v),  # type: ignore[arg-type]
            0,
            lambda v: "^" + regex_literal(str(v)),
        )
    ],
    "path prefix": [
        (
            lambda v: BUILDER.file_print_prefix(v),  # type: ignore[arg-type]
            0,
            lambda v: "^" + regex_literal(str(v)[1:]),
        )
    ],
}
# A copy given only one of port/nqn reports the pair, not the member.
ALSO_ACCEPTED_FIELD = {"nvme nqn": "nvme export", "nvme port": "nvme export"}
REFERENCE: dict[str, object] = {
    "slot": "pvc-ref",
    "source slot": "pvc-ref",
    "file path": PATH,
    "nvme nqn": NQN,
    "size": 1,
    "nvme port": 1,
    "slot prefix": "pvc-",
    "path prefix": "/storage-pool/k8s/",
    "comment": "pvc=default/data-0 pv=pvc-ref",
}


@cache
def reference_shape(field: str, use: int) -> list[tuple[str, str | None, bool]]:
    return shape(FIELD_USES[field][use][0](REFERENCE[field]).line)


def check_field(field: str, value: object) -> bool:
    """Check every builder with ``value`` for ``field``; True if the value was accepted."""
    accepted = False
    for use, (build, position, expected) in enumerate(FIELD_USES[field]):
        try:
            line = build(value).line
        except InvalidValueError as exc:
            assert exc.field in (field, ALSO_ACCEPTED_FIELD.get(field))
            assert str(exc).startswith(f"invalid {exc.field} ")
            continue
        accepted = True
        assert shape(line) == reference_shape(field, use), (value, line)
        assert strings(line)[position] == expected(value)
        if field.endswith("prefix"):
            # The regex matches the literal itself: no metacharacter survived unescaped.
            regex = strings(line)[position]
            literal = str(value) if field == "slot prefix" else str(value)[1:]
            assert re.fullmatch(regex[1:], literal)
    return accepted


def test_field_uses_point_at_the_value() -> None:
    for field, uses in FIELD_USES.items():
        for build, position, expected in uses:
            assert strings(build(REFERENCE[field]).line)[position] == expected(REFERENCE[field])


def test_valid_strategies_are_accepted() -> None:
    # The "valid" strategies really generate accepted values, so the properties below
    # exercise the accepted path as well as the rejected one.
    for field, value in [
        ("slot", "a"),
        ("slot", "pvc-0f3e.x_y"),
        ("file path", "/storage-pool/a/b/c.img"),
        ("nvme nqn", "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        ("size", 2**63 - 1),
        ("nvme port", 65535),
        ("slot prefix", "p"),
        ("path prefix", "/storage-pool/"),
    ]:
        assert check_field(field, value), (field, value)


@MANY
@given(batches(candidates(SLOTS)))
def test_slot_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        accepted = check_field("slot", value)
        assert accepted == (isinstance(value, str) and SLOT_RE.fullmatch(value) is not None)
        check_field("source slot", value)


@MANY
@given(batches(candidates(PATHS)))
def test_file_path_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        check_field("file path", value)


COMMENTS = chars(LOWER + "ABCXYZ ./:=_-", 0, 80)


@MANY
@given(batches(candidates(COMMENTS)))
def test_comment_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        accepted = check_field("comment", value)
        assert accepted == (
            isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9 ./:=_-]{0,255}", value) is not None
        )


@MANY
@given(batches(candidates(NQNS)))
def test_nqn_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        check_field("nvme nqn", value)


@MANY
@given(
    batches(
        st.one_of(
            st.integers(),
            st.integers(-5, 5),
            st.integers(2**63 - 5, 2**63 + 5),
            st.booleans(),
            st.floats(),
            st.text(),
        )
    )
)
def test_size_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        accepted = check_field("size", value)
        assert accepted == (type(value) is int and 1 <= value <= 2**63 - 1)


@MANY
@given(
    batches(st.one_of(st.integers(), st.integers(-2, 70000), st.booleans(), st.text(), st.floats()))
)
def test_port_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        accepted = check_field("nvme port", value)
        assert accepted == (type(value) is int and 1 <= value <= 65535)


@MANY
@given(batches(candidates(SLOTS)))
def test_slot_prefix_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        check_field("slot prefix", value)


@MANY
@given(batches(candidates(PATH_PREFIXES)))
def test_path_prefix_cannot_change_structure(values: list[object]) -> None:
    for value in values:
        check_field("path prefix", value)


@settings(MANY, max_examples=200)  # configuration, not per-request input: fewer examples
@given(batches(candidates(POOL_ROOTS)))
def test_pool_root_cannot_change_structure(values: list[object]) -> None:
    reference = shape(BUILDER.pool_print().line)
    for value in values:
        try:
            builder = CommandBuilder(value)  # type: ignore[arg-type]
        except InvalidValueError as exc:
            assert exc.field == "pool root"
            continue
        assert isinstance(value, str)
        assert builder.pool_root == value.rstrip("/") + "/"
        line = builder.pool_print().line
        assert shape(line) == reference
        assert strings(line) == [value.split("/")[1]]
        path = builder.pool_root + "x.img"
        assert strings(builder.file_remove(path).line) == [path[1:]]
