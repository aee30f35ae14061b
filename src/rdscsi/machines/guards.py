"""What each guard checks, said next to the guard: the explanations `rdscsi explain` prints.

A guard is declared with `@explained(holds, *parts)`: `holds` says in a sentence what it
means when true, and the parts are the conditions it is the conjunction of, each of a kind
that says what could change it:

- `Fact`: about the request or the volume (which node asks, what kind of volume). Time and
  the cluster do not change it; another request might.
- `Evidence`: a fact from the world the driver waits for (a node deleted or tainted
  out-of-service, nothing in use on the node).
- `After`: holds once a time has come (a grace period over, a deadline passed).
- `Before`: holds only until a time (a window that closes for good).

Texts are `str.format` templates over `model` and `p` (the machine's model and input). A
time part gives `remaining(model, p)`, the seconds left until it holds (`After`) or until it
stops holding (`Before`), None when no clock runs; remaining <= 0 and remaining > 0 are
exactly the comparisons the guards make, so the explanation and the guard never disagree at
a boundary. `tests/machines/test_guards.py` checks that every guard of every machine has an
explanation and that the conjunction of its parts is the guard itself; `rdscsi diagrams`
lists them in `specs/` and refuses a guard without one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
Test = Callable[[Any, Any], Any]
Remaining = Callable[[Any, Any], float | None]
Kind = Literal["fact", "evidence", "after", "before"]


@dataclass(frozen=True)
class Part:
    """One condition of a guard. `text` says what must hold, as a template."""

    kind: Kind
    text: str
    test: Test | None = None  # fact, evidence
    remaining: Remaining | None = None  # after, before

    def holds(self, model: Any, p: Any) -> bool:
        if self.remaining is not None:
            left = self.remaining(model, p)
            if left is None:
                return False
            return left <= 0 if self.kind == "after" else left > 0
        assert self.test is not None
        return bool(self.test(model, p))


def Fact(test: Test, text: str) -> Part:
    """Something about the request or the volume: no waiting changes it."""
    return Part("fact", text, test=test)


def Evidence(test: Test, text: str) -> Part:
    """A fact from the world the driver waits for."""
    return Part("evidence", text, test=test)


def After(remaining: Remaining, text: str) -> Part:
    """Holds once `remaining` seconds have passed (<= 0)."""
    return Part("after", text, remaining=remaining)


def Before(remaining: Remaining, text: str) -> Part:
    """Holds while `remaining` seconds are left (> 0): a window that closes for good."""
    return Part("before", text, remaining=remaining)


@dataclass(frozen=True)
class GuardDoc:
    name: str
    holds: str  # template: what the guard means when true
    parts: tuple[Part, ...]


ATTRIBUTE = "__guard_doc__"


def explained(holds: str, *parts: Part) -> Callable[[F], F]:
    """Declare what a guard checks. Put it under `@staticmethod`, over the function."""

    def mark(fn: F) -> F:
        setattr(fn, ATTRIBUTE, GuardDoc(fn.__name__, holds, parts))
        return fn

    return mark


def doc_of(cls: type, guard: str) -> GuardDoc | None:
    """The explanation declared for `guard` on machine class `cls`, if any."""
    fn = getattr(cls, guard, None)
    doc = getattr(fn, ATTRIBUTE, None)
    return doc if isinstance(doc, GuardDoc) else None


def guard_names(transitions: Any) -> list[str]:
    """Every guard the transitions name, in order of first use."""
    out: list[str] = []
    for t in transitions:
        for name, _ in t.conds:
            if name not in out:
                out.append(name)
    return out


def unexplained(cls: type, transitions: Any) -> list[str]:
    """The guards of `cls` that have no `@explained` declaration."""
    return [g for g in guard_names(transitions) if doc_of(cls, g) is None]


def fill(template: str, model: Any, p: Any) -> str:
    """A template with the model and input filled in; a field that cannot be read is shown
    as its name rather than failing the explanation."""
    try:
        return template.format(model=model, p=p)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return template.replace("{", "").replace("}", "")


def plain(template: str) -> str:
    """A template as read in specs/, with no model at hand: `{p.node}` -> `p.node`."""
    return re.sub(r"\{([^{}:!]+)(?:[:!][^{}]*)?\}", r"`\1`", template)
