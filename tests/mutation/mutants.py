"""Mutants of the machines, their hooks and the reconciler, generated with `ast` alone.

The standard (GUIDE.md): retargeting, deleting or unguarding a transition, dropping a hook,
or changing a constant in `machines/`, `hooks/` or `control/` must fail a test. Each operator
below makes one such change. A mutant is the module's text with one span replaced (comments
and layout elsewhere untouched), so its line numbers name the original line; a replacement
whose syntax tree equals the original's is a no-op and is never produced.

Operators:
- `retarget`: a transition `a.to(b)` goes to another state of its machine instead.
- `delete-transition`: one `a.to(b)` of an event is removed (the event itself when alone).
- `drop-guard`, `negate-guard`: a `cond=`/`unless=`/`validators=` (or one name in its list)
  removed, or moved to the opposite kind (`cond` <-> `unless`).
- `drop-hook`: an `on=`/`after=`/`before=`/`enter=`/`exit=` (or one name in its list) removed.
- `state-flag`: `initial=`/`final=` removed from a `State(...)` (not `initial=` from the
  first state: python-statemachine makes the first state initial anyway).
- `drop-action-stmt`: one statement of a machine's action (a method named by `on=` ...).
- `drop-conjunct`: one operand of an `and`/`or` in a machine's guard method.
- `empty-listener`: a hook listener method's body (after its docstring) becomes `pass`.
- `constant`: a number becomes x*2, x+1 or 0.
- `compare`: `<`<->`<=`, `>`<->`>=`, `==`->`!=`/`is`, `!=`->`==`/`is not`, `is`<->`is not`,
  `is`->`==`, `in`<->`not in`.
- `unguard-if`: an `if`'s condition becomes `True` (engine, hooks and reconciler code).
- `jitter-sign`: in an expression naming jitter, `+`<->`-`, a unary minus dropped, or
  `min`<->`max`.

Left out as provably equivalent (never generated): anything in a docstring or in the
arguments of a logging call; `x is None` -> `x == None` (no type here overrides `==`);
`==` -> `is` against a literal (literals are interned: identity is equality for them, and
such a comparison is a SyntaxWarning no one would write); a number inside a `log.*(...)`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCOPE = ("src/rdscsi/machines", "src/rdscsi/hooks", "src/rdscsi/control")

GUARD_KWARGS = ("cond", "unless", "validators")
HOOK_KWARGS = ("on", "after", "before", "enter", "exit")
STATE_FLAGS = ("initial", "final")
# Listener methods the engine calls on every listener (see `machines.engine.Listener`).
LISTENER_METHODS = frozenset({"after_transition", "on_track", "on_forget", "on_bind", "on_retire"})
# `if`s are unguarded everywhere but in the spec exporter (a layout choice there is no guard).
NO_UNGUARD = ("src/rdscsi/machines/diagrams.py",)
LOGGERS = frozenset({"log", "logger", "logging"})
OPERATORS = (
    "retarget",
    "delete-transition",
    "drop-guard",
    "negate-guard",
    "drop-hook",
    "state-flag",
    "drop-action-stmt",
    "drop-conjunct",
    "empty-listener",
    "constant",
    "compare",
    "unguard-if",
    "jitter-sign",
)


@dataclass(frozen=True)
class Mutant:
    file: str  # relative to the repository root
    line: int  # 1-based, of the original text changed
    operator: str
    description: str  # stable across edits elsewhere in the file (no line numbers)
    original: str  # the original line(s), stripped
    mutated: str  # the same line(s) after the change, stripped
    source: str = field(repr=False, compare=False)  # the whole mutated module

    @property
    def key(self) -> str:
        """What the allow-list names a mutant by."""
        return f"{self.file}::{self.operator}::{self.description}"

    def summary(self) -> dict[str, object]:
        return {
            "key": self.key,
            "file": self.file,
            "line": self.line,
            "operator": self.operator,
            "description": self.description,
            "original": self.original,
            "mutated": self.mutated,
        }


def scope_files(root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for d in SCOPE:
        out.extend(sorted((root / d).glob("*.py")))
    return out


class _Text:
    """A module's text with byte offsets (ast positions are UTF-8 byte columns)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.data = source.encode()
        self.starts = [0]
        for i, b in enumerate(self.data):
            if b == 0x0A:
                self.starts.append(i + 1)
        self.tree = ast.parse(source)
        self.dump = ast.dump(self.tree)

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        start = self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        return start, end

    def seg(self, node: ast.AST) -> str:
        a, b = self.span(node)
        return self.data[a:b].decode()

    def lines(self, first: int, last: int) -> str:
        a = self.starts[first - 1]
        b = self.starts[last] if last < len(self.starts) else len(self.data)
        return self.data[a:b].decode()


@dataclass
class _Gen:
    file: str
    text: _Text
    seen: dict[str, int] = field(default_factory=dict)
    out: list[Mutant] = field(default_factory=list)

    def add(
        self,
        operator: str,
        description: str,
        start: int,
        end: int,
        replacement: str,
        shown: str | None = None,
        at: ast.AST | None = None,
    ) -> None:
        data = self.text.data
        new = data[:start] + replacement.encode() + data[end:]
        try:
            source = new.decode()
            tree = ast.parse(source)
        except SyntaxError:
            return
        if ast.dump(tree) == self.text.dump:
            return  # the same program: a no-op, not a mutant
        if at is not None:  # the line(s) to name: the part removed, not the whole event
            start_, end_ = self.text.span(at)
        else:
            start_, end_ = start, end
        line = data.count(b"\n", 0, start_) + 1
        last = data.count(b"\n", 0, max(start_, end_ - 1)) + 1
        original = " ".join(s.strip() for s in self.text.lines(line, last).splitlines())
        a = self.text.starts[line - 1]
        tail_end = self.text.starts[last] if last < len(self.text.starts) else len(data)
        mutated_text = (data[a:start] + replacement.encode() + data[end:tail_end]).decode()
        mutated = " ".join(s.strip() for s in mutated_text.splitlines()) or "(removed)"
        if shown is not None:
            mutated = shown
        description = " ".join(description.split())
        n = self.seen.get(f"{operator}::{description}", 0)
        self.seen[f"{operator}::{description}"] = n + 1
        if n:
            description = f"{description} #{n + 1}"
        self.out.append(Mutant(self.file, line, operator, description, original, mutated, source))

    def replace(
        self,
        operator: str,
        description: str,
        node: ast.AST,
        text: str,
        shown: str | None = None,
        at: ast.AST | None = None,
    ) -> None:
        a, b = self.text.span(node)
        self.add(operator, description, a, b, text, shown, at)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.add(id(body[0]))
    return out


def _is_log_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in LOGGERS


def _walk(tree: ast.AST) -> Iterator[tuple[ast.AST, tuple[ast.AST, ...]]]:
    """Every node with its ancestors, skipping docstrings and logging calls' arguments."""
    skip = _docstring_nodes(tree)

    def rec(
        node: ast.AST, parents: tuple[ast.AST, ...]
    ) -> Iterator[tuple[ast.AST, tuple[ast.AST, ...]]]:
        if id(node) in skip or _is_log_call(node):
            return
        yield node, parents
        for child in ast.iter_child_nodes(node):
            yield from rec(child, (*parents, node))

    yield from rec(tree, ())


# --- machine declarations ----------------------------------------------------------------------


def _is_machine(cls: ast.ClassDef) -> bool:
    return any(
        (isinstance(b, ast.Name) and b.id in ("StateMachine", "StateChart"))
        or (isinstance(b, ast.Attribute) and b.attr in ("StateMachine", "StateChart"))
        for b in cls.bases
    )


def _chain(node: ast.expr) -> list[ast.expr] | None:
    """The `a.to(b) | c.to(d) | ...` terms of an event, or None if it is not one."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left = _chain(node.left)
        right = _chain(node.right)
        if left is None or right is None:
            return None
        return left + right
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "to"
        and isinstance(node.func.value, ast.Name)
        and node.args
        and isinstance(node.args[0], ast.Name)
    ):
        return [node]
    return None


def _names_in(value: ast.expr) -> list[ast.expr]:
    """The names a callback keyword gives: one string, or a list of them."""
    if isinstance(value, ast.List | ast.Tuple):
        return list(value.elts)
    return [value]


def _call_text(t: _Text, call: ast.Call, keywords: Sequence[tuple[str, str]]) -> str:
    parts = [t.seg(a) for a in call.args] + [f"{k}={v}" for k, v in keywords]
    return f"{t.seg(call.func)}({', '.join(parts)})"


def _kw_text(t: _Text, kw: ast.keyword) -> tuple[str, str]:
    assert kw.arg is not None
    return kw.arg, t.seg(kw.value)


def _list_text(t: _Text, elts: Sequence[ast.expr]) -> str:
    if len(elts) == 1:
        return t.seg(elts[0])
    return "[" + ", ".join(t.seg(e) for e in elts) + "]"


def _const_name(node: ast.expr) -> str:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "?"


def _machine_mutants(g: _Gen, cls: ast.ClassDef) -> tuple[set[str], set[str]]:
    """Mutants of one machine class; returns (action names, guard names) it uses."""
    t = g.text
    states: list[str] = []
    for stmt in cls.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name)
            and stmt.value.func.id == "State"
        ):
            states.append(stmt.targets[0].id)
            for kw in stmt.value.keywords:
                if kw.arg == "initial" and len(states) == 1:
                    continue  # the library makes the first state initial anyway: equivalent
                if kw.arg in STATE_FLAGS:
                    kept = [_kw_text(t, k) for k in stmt.value.keywords if k is not kw]
                    g.replace(
                        "state-flag",
                        f"{stmt.targets[0].id}: drop {kw.arg}=",
                        stmt.value,
                        _call_text(t, stmt.value, kept),
                    )
    actions: set[str] = set()
    guards: set[str] = set()
    for stmt in cls.body:
        if not (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            continue
        terms = _chain(stmt.value)
        if terms is None:
            continue
        event = stmt.targets[0].id
        for i, call in enumerate(terms):
            assert isinstance(call, ast.Call)
            src = call.func.value.id  # type: ignore[attr-defined]
            target = call.args[0].id  # type: ignore[attr-defined]
            where = f"{event}[{i}] {src}->{target}"
            for s in states:
                if s != target:
                    g.replace("retarget", f"{where}: target {s}", call.args[0], s)
            if len(terms) > 1:
                others_text = [t.seg(c) for c in terms if c is not call]
                g.replace(
                    "delete-transition",
                    where,
                    stmt.value,
                    "(" + " | ".join(others_text) + ")",
                    "(removed)",
                    call,
                )
            else:
                a = t.starts[stmt.lineno - 1]
                end = stmt.end_lineno or stmt.lineno
                b = t.starts[end] if end < len(t.starts) else len(t.data)
                g.add("delete-transition", where, a, b, "")
            by_kind: dict[str, ast.keyword] = {
                kw.arg: kw for kw in call.keywords if kw.arg is not None
            }
            for kw in call.keywords:
                if kw.arg is None:
                    continue
                names = _names_in(kw.value)
                others = [_kw_text(t, k) for k in call.keywords if k is not kw]
                if kw.arg in GUARD_KWARGS:
                    guards.update(_const_name(n) for n in names)
                    op_drop = "drop-guard"
                elif kw.arg in HOOK_KWARGS:
                    if kw.arg in ("on", "before"):
                        actions.update(_const_name(n) for n in names)
                    op_drop = "drop-hook"
                else:
                    continue
                g.replace(op_drop, f"{where}: drop {kw.arg}=", call, _call_text(t, call, others))
                if len(names) > 1:
                    for n in names:
                        rest = [e for e in names if e is not n]
                        kws = [
                            (k.arg, _list_text(t, rest)) if k is kw else _kw_text(t, k)
                            for k in call.keywords
                            if k.arg is not None
                        ]
                        g.replace(
                            op_drop,
                            f"{where}: drop {kw.arg}={_const_name(n)}",
                            call,
                            _call_text(t, call, kws),
                        )
                if kw.arg in ("cond", "unless"):
                    opposite = "unless" if kw.arg == "cond" else "cond"
                    if opposite not in by_kind:
                        kws = [
                            (opposite, t.seg(k.value)) if k is kw else _kw_text(t, k)
                            for k in call.keywords
                            if k.arg is not None
                        ]
                        g.replace(
                            "negate-guard",
                            f"{where}: {kw.arg}= -> {opposite}=",
                            call,
                            _call_text(t, call, kws),
                        )
                    if len(names) > 1 or opposite in by_kind:
                        for n in names:
                            rest = [e for e in names if e is not n]
                            moved = (
                                [*_names_in(by_kind[opposite].value)]
                                if (opposite in by_kind)
                                else []
                            )
                            kws = []
                            for k in call.keywords:
                                if k.arg is None or k.arg == opposite:
                                    continue
                                if k is kw:
                                    if rest:
                                        kws.append((k.arg, _list_text(t, rest)))
                                else:
                                    kws.append(_kw_text(t, k))
                            kws.append((opposite, _list_text(t, [*moved, n])))
                            g.replace(
                                "negate-guard",
                                f"{where}: {_const_name(n)} {kw.arg}= -> {opposite}=",
                                call,
                                _call_text(t, call, kws),
                            )
    return actions, guards


def _body_start(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        return 1
    return 0


def _methods(cls: ast.ClassDef) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            yield stmt


def _action_and_guard_mutants(
    g: _Gen, cls: ast.ClassDef, actions: set[str], guards: set[str]
) -> None:
    t = g.text
    for fn in _methods(cls):
        if fn.name in actions:
            for stmt in fn.body[_body_start(fn) :]:
                g.replace("drop-action-stmt", f"{fn.name}: drop `{t.seg(stmt)}`", stmt, "pass")
        if fn.name in guards:
            for node in ast.walk(fn):
                if isinstance(node, ast.BoolOp) and len(node.values) > 1:
                    word = " and " if isinstance(node.op, ast.And) else " or "
                    for v in node.values:
                        rest = [t.seg(x) for x in node.values if x is not v]
                        g.replace(
                            "drop-conjunct",
                            f"{fn.name}: drop `{t.seg(v)}`",
                            node,
                            "(" + word.join(rest) + ")",
                        )


def hook_names(root: Path = ROOT) -> set[str]:
    """Every name a machine's transitions give in `after=` (what listeners implement)."""
    out: set[str] = set()
    for path in sorted((root / "src/rdscsi/machines").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in ("after", "before", "enter", "exit"):
                out.update(_const_name(n) for n in _names_in(node.value))
    out.discard("?")
    return out


# --- any code -----------------------------------------------------------------------------------


_CMP_SWAPS: dict[type[ast.cmpop], tuple[tuple[type[ast.cmpop], str], ...]] = {
    ast.Lt: ((ast.LtE, "<="),),
    ast.LtE: ((ast.Lt, "<"),),
    ast.Gt: ((ast.GtE, ">="),),
    ast.GtE: ((ast.Gt, ">"),),
    ast.Eq: ((ast.NotEq, "!="), (ast.Is, "is")),
    ast.NotEq: ((ast.Eq, "=="), (ast.IsNot, "is not")),
    ast.Is: ((ast.IsNot, "is not"), (ast.Eq, "==")),
    ast.IsNot: ((ast.Is, "is"), (ast.NotEq, "!=")),
    ast.In: ((ast.NotIn, "not in"),),
    ast.NotIn: ((ast.In, "in"),),
}
_CMP_TEXT = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


def _compare_mutants(g: _Gen, node: ast.Compare, context: str) -> None:
    t = g.text
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        left, right = operands[i], operands[i + 1]
        literal = isinstance(left, ast.Constant) or isinstance(right, ast.Constant)
        singleton = any(
            isinstance(x, ast.Constant) and (x.value is None or x.value is True or x.value is False)
            for x in (left, right)
        )
        for new, text in _CMP_SWAPS[type(op)]:
            if new in (ast.Is, ast.IsNot) and type(op) in (ast.Eq, ast.NotEq) and literal:
                continue  # identity with an interned literal: equivalent
            if new in (ast.Eq, ast.NotEq) and type(op) in (ast.Is, ast.IsNot) and singleton:
                continue  # `x is None` -> `x == None`: equivalent
            parts = [t.seg(operands[0])]
            for j, o in enumerate(node.ops):
                parts.append(text if j == i else _CMP_TEXT[type(o)])
                parts.append(t.seg(operands[j + 1]))
            g.replace(
                "compare",
                f"{context}`{t.seg(node)}`: {_CMP_TEXT[type(op)]} -> {text}",
                node,
                " ".join(parts),
            )


def _number_text(v: int | float) -> str:
    return repr(v)


def _constant_mutants(g: _Gen, node: ast.Constant, context: str, negative: bool) -> None:
    v = node.value
    assert isinstance(v, int | float) and not isinstance(v, bool)
    shown = f"-{v!r}" if negative else repr(v)
    done: set[str] = {repr(v)}
    for label, new in (("x2", v * 2), ("+1", v + 1), ("0", type(v)(0))):
        text = _number_text(new)
        if text in done:
            continue
        done.add(text)
        g.replace("constant", f"{context}{shown} {label}", node, text)


def _mentions_jitter(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and "jitter" in n.id.lower():
            return True
        if isinstance(n, ast.Attribute) and "jitter" in n.attr.lower():
            return True
    return False


def _jitter_mutants(g: _Gen, stmt: ast.stmt, context: str) -> None:
    t = g.text
    value = getattr(stmt, "value", None)
    if not isinstance(value, ast.expr) or not _mentions_jitter(value):
        return
    for node in ast.walk(value):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            sign = "-" if isinstance(node.op, ast.Add) else "+"
            right = t.seg(node.right)
            if isinstance(node.right, ast.BinOp | ast.BoolOp | ast.Compare | ast.IfExp):
                right = f"({right})"
            g.replace(
                "jitter-sign",
                f"{context}`{t.seg(node)}`: {'+' if sign == '-' else '-'} -> {sign}",
                node,
                f"{t.seg(node.left)} {sign} {right}",
            )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            g.replace("jitter-sign", f"{context}`{t.seg(node)}`: drop -", node, t.seg(node.operand))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("min", "max")
        ):
            other = "max" if node.func.id == "min" else "min"
            g.replace(
                "jitter-sign",
                f"{context}`{t.seg(node)}`: {node.func.id} -> {other}",
                node.func,
                other,
            )


def _context(parents: tuple[ast.AST, ...]) -> str:
    names = [
        p.name
        for p in parents
        if isinstance(p, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    return ".".join(names) + ": " if names else ""


def mutants_of(path: Path, root: Path = ROOT, hooks: set[str] | None = None) -> list[Mutant]:
    """Every mutant of one module, in source order per operator pass."""
    rel = path.resolve().relative_to(root).as_posix()
    g = _Gen(rel, _Text(path.read_text()))
    tree = g.text.tree
    hooks = hook_names(root) if hooks is None else hooks
    listener_names = hooks | LISTENER_METHODS
    # Machine classes: transitions, their guards and hooks, actions and guard methods.
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and _is_machine(node):
            actions, guards = _machine_mutants(g, node)
            _action_and_guard_mutants(g, node, actions, guards)
    # Hook listeners (hooks/ and control/): a method named for a hook does nothing.
    if not rel.startswith("src/rdscsi/machines/"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not _is_machine(node):
                for fn in _methods(node):
                    if fn.name in listener_names:
                        start = _body_start(fn)
                        body = fn.body[start:]
                        if not body:
                            continue
                        a, _ = g.text.span(body[0])
                        _, b = g.text.span(body[-1])
                        g.add("empty-listener", f"{node.name}.{fn.name}", a, b, "pass")
    unguard = rel not in NO_UNGUARD
    for node, parents in _walk(tree):
        ctx = _context(parents)
        if isinstance(node, ast.Compare):
            _compare_mutants(g, node, ctx)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            neg = (
                bool(parents)
                and isinstance(parents[-1], ast.UnaryOp)
                and isinstance(parents[-1].op, ast.USub)
            )
            _constant_mutants(g, node, ctx, neg)
        elif isinstance(node, ast.If) and unguard:
            g.replace("unguard-if", f"{ctx}if `{g.text.seg(node.test)}`", node.test, "True")
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Return | ast.Expr):
            _jitter_mutants(g, node, ctx)
    return g.out


def all_mutants(root: Path = ROOT, only: Sequence[str] = ()) -> list[Mutant]:
    hooks = hook_names(root)
    out: list[Mutant] = []
    for path in scope_files(root):
        rel = path.relative_to(root).as_posix()
        if only and not any(_matches(rel, o) for o in only):
            continue
        out.extend(mutants_of(path, root, hooks))
    return out


def _matches(rel: str, pattern: str) -> bool:
    pattern = pattern.strip().removeprefix("./")
    if rel == pattern or rel.endswith("/" + pattern):
        return True
    try:
        return re.fullmatch(pattern, rel) is not None
    except re.error:
        return False
