"""Reading one RouterOS command line into a `Command`, with the device's error texts.

Only the subset of the grammar the driver uses is accepted: a menu path, a verb,
`name=value` arguments, bare words, `[find <conditions>]` and `where <conditions>`.
Everything RouterOS would interpret (variables, `;`, blocks, escapes outside quotes)
is a syntax error here, so nothing a client sends is ever executed beyond this subset.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdscsi.sim.errors import bad_command, syntax_error

# Menu path -> verbs it implements. Intermediate menus (`/interface`) exist but offer none.
MENUS: dict[tuple[str, ...], frozenset[str]] = {
    ("disk",): frozenset({"add", "set", "remove", "print", "monitor-traffic"}),
    ("file",): frozenset({"print", "remove", "set"}),
    ("interface",): frozenset(),
    ("interface", "nvme-tcp"): frozenset(),
    ("interface", "nvme-tcp", "connection"): frozenset({"print"}),
}

# Characters RouterOS gives a meaning outside quotes; a value containing one must be quoted.
_SPECIAL = frozenset('"[]{}();$\\`')
_OPERATOR_START = frozenset("=~!<>")
_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "_": " ",
    '"': '"',
    "\\": "\\",
    "$": "$",
    "?": "?",
}
_HEX = frozenset("0123456789ABCDEFabcdef")


@dataclass(frozen=True)
class Condition:
    """`name op value` in a `where` clause or a `[find ...]`; op `flag` has no value."""

    name: str
    op: str
    value: str
    negate: bool
    column: int


@dataclass(frozen=True)
class Find:
    conditions: tuple[Condition, ...]
    column: int


@dataclass(frozen=True)
class Value:
    text: str
    column: int
    quoted: bool = False
    find: Find | None = None


@dataclass(frozen=True)
class Arg:
    """`name=value` (name set) or a positional value / flag word (name None)."""

    name: str | None
    value: Value
    column: int


@dataclass(frozen=True)
class Command:
    menu: tuple[str, ...]
    verb: str
    verb_column: int
    args: tuple[Arg, ...]
    where: tuple[Condition, ...] | None


class _Scanner:
    def __init__(self, line: str) -> None:
        self.text = line
        self.pos = 0

    @property
    def column(self) -> int:
        return self.pos + 1

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_ws(self) -> bool:
        start = self.pos
        while self.peek() in (" ", "\t") and not self.at_end():
            self.pos += 1
        return self.pos > start

    def at_separator(self, in_find: bool) -> bool:
        char = self.peek()
        return char in ("", " ", "\t") or (in_find and char == "]")

    def read_run(self, stop: frozenset[str]) -> str:
        start = self.pos
        while not self.at_end():
            char = self.peek()
            if char in (" ", "\t") or char in stop:
                break
            self.pos += 1
        return self.text[start : self.pos]


_WORD_STOP = _SPECIAL | _OPERATOR_START | {"/"}
_NAME_STOP = _SPECIAL | _OPERATOR_START


def parse(line: str) -> Command | None:
    """Parse one line; None for a line that does nothing (empty, or only a menu path)."""
    if line.endswith("\r\n"):
        line = line[:-2]
    elif line.endswith("\n"):
        line = line[:-1]
    for index, char in enumerate(line):
        # Control characters (a second line included) have no place on a command line.
        if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
            raise syntax_error(index + 1)
    scanner = _Scanner(line)
    scanner.skip_ws()
    if scanner.at_end():
        return None
    menu, verb, verb_column = _parse_path(scanner)
    if verb is None:
        return None
    args: list[Arg] = []
    where: tuple[Condition, ...] | None = None
    while True:
        had_ws = scanner.skip_ws()
        if scanner.at_end():
            break
        column = scanner.column
        if not had_ws:
            raise syntax_error(column)
        char = scanner.peek()
        if char in ('"', "["):
            args.append(Arg(None, _parse_value(scanner, in_find=False), column))
            continue
        if char in _SPECIAL or char in _OPERATOR_START:
            raise syntax_error(column)
        name = scanner.read_run(_NAME_STOP)
        if scanner.peek() == "=":
            scanner.pos += 1
            args.append(Arg(name, _parse_value(scanner, in_find=False), column))
        elif scanner.at_separator(in_find=False):
            if name == "where" and verb == "print":
                where = _parse_conditions(scanner, in_find=False, open_column=column)
                break
            args.append(Arg(None, Value(name, column), column))
        else:
            raise syntax_error(scanner.column)
    return Command(menu, verb, verb_column, tuple(args), where)


def _parse_path(scanner: _Scanner) -> tuple[tuple[str, ...], str | None, int]:
    if scanner.peek() == "/":
        scanner.pos += 1
    menu: tuple[str, ...] = ()
    while True:
        scanner.skip_ws()
        if scanner.at_end():
            return menu, None, scanner.column
        column = scanner.column
        word = scanner.read_run(_WORD_STOP)
        if not word:
            raise syntax_error(column)
        if (*menu, word) in MENUS:
            menu = (*menu, word)
            if scanner.peek() == "/":
                scanner.pos += 1
            continue
        if word not in MENUS.get(menu, frozenset()):
            raise bad_command(word, column)
        return menu, word, column


def _parse_value(scanner: _Scanner, in_find: bool) -> Value:
    column = scanner.column
    char = scanner.peek()
    if char == '"':
        text = _parse_quoted(scanner)
        if not scanner.at_separator(in_find):
            raise syntax_error(scanner.column)
        return Value(text, column, quoted=True)
    if char == "[":
        if in_find:
            raise syntax_error(column)
        return Value("", column, find=_parse_find(scanner))
    start = scanner.pos
    while not scanner.at_separator(in_find):
        if scanner.peek() in _SPECIAL:
            raise syntax_error(scanner.column)
        scanner.pos += 1
    return Value(scanner.text[start : scanner.pos], column)


def _parse_quoted(scanner: _Scanner) -> str:
    open_column = scanner.column
    scanner.pos += 1
    out: list[str] = []
    while True:
        if scanner.at_end():
            raise syntax_error(open_column)
        char = scanner.peek()
        if char == '"':
            scanner.pos += 1
            return "".join(out)
        follower = scanner.peek(1)
        if char == "$" and follower and (follower.isalnum() or follower in "_([{"):
            # `$name`, `$(...)`, `$[...]` substitute inside quotes: unsupported, so refused.
            # A `$` before anything else stays literal (the end anchor of `~"img$"`).
            raise syntax_error(scanner.column)
        if char == "\\":
            escape_column = scanner.column
            code = scanner.peek(1)
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                scanner.pos += 2
                continue
            if code in _HEX and scanner.peek(2) in _HEX:
                out.append(chr(int(code + scanner.peek(2), 16)))
                scanner.pos += 3
                continue
            raise syntax_error(escape_column)
        out.append(char)
        scanner.pos += 1


def _parse_find(scanner: _Scanner) -> Find:
    open_column = scanner.column
    scanner.pos += 1
    scanner.skip_ws()
    column = scanner.column
    word = scanner.read_run(_WORD_STOP)
    if not word:
        raise syntax_error(open_column if scanner.at_end() else column)
    if word != "find":
        raise bad_command(word, column)
    return Find(_parse_conditions(scanner, in_find=True, open_column=open_column), open_column)


def _parse_conditions(scanner: _Scanner, in_find: bool, open_column: int) -> tuple[Condition, ...]:
    conditions: list[Condition] = []
    # After `where` or `and` a condition must follow; `[find]` alone matches everything.
    pending_keyword = not in_find
    while True:
        had_ws = scanner.skip_ws()
        if scanner.at_end():
            if in_find:
                raise syntax_error(open_column)
            if pending_keyword:
                raise syntax_error(scanner.column)
            return tuple(conditions)
        if in_find and scanner.peek() == "]":
            if pending_keyword:
                raise syntax_error(scanner.column)
            scanner.pos += 1
            return tuple(conditions)
        column = scanner.column
        if not had_ws:
            raise syntax_error(column)
        negate = scanner.peek() == "!"
        if negate:
            scanner.pos += 1
        name = scanner.read_run(_NAME_STOP)
        if not name:
            raise syntax_error(scanner.column)
        if not negate and name in ("and", "where") and scanner.at_separator(in_find):
            # `[find where ...]` is allowed as the first word; `and` joins conditions.
            if name == "where" and not (in_find and not conditions and not pending_keyword):
                raise syntax_error(column)
            if name == "and" and (not conditions or pending_keyword):
                raise syntax_error(column)
            pending_keyword = True
            continue
        op = _read_operator(scanner)
        if op == "flag":
            if not scanner.at_separator(in_find):
                raise syntax_error(scanner.column)
            conditions.append(Condition(name, op, "", negate, column))
        else:
            value = _parse_value(scanner, in_find=True)
            conditions.append(Condition(name, op, value.text, negate, column))
        pending_keyword = False


def _read_operator(scanner: _Scanner) -> str:
    for op in ("!=", "<=", ">=", "=", "~", "<", ">"):
        if scanner.text.startswith(op, scanner.pos):
            scanner.pos += len(op)
            return op
    return "flag"


__all__ = ["MENUS", "Arg", "Command", "Condition", "Find", "Value", "parse"]
