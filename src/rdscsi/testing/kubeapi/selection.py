"""Label and field selectors, with the apimachinery grammar and matching rules.

Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k`
(does not exist); `!=` and `notin` also match objects without the label.
Fields: `f=v`, `f==v`, `f!=v` on the labels the kind supports (no backslash escapes).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .kinds import qualified_name


class Requirement(NamedTuple):
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str]


class FieldRequirement(NamedTuple):
    field: str
    op: str  # "=", "!="
    value: str


_LABEL_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[^\s!=(),]+)"
    r"|(?P<key>[^\s!=(),]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<set>[^()]*)\))?)\s*"
)


def _split(text: str) -> list[str]:
    """Commas separate requirements, except inside an `in (...)` set."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_labels(text: str) -> list[Requirement]:
    if not text.strip():
        return []
    requirements = []
    for part in _split(text):
        match = _LABEL_TERM.fullmatch(part)
        if match is None:
            raise ValueError(f"unable to parse requirement: {part.strip()!r}")
        if match["not"]:
            key, op, values = match["nkey"], "!", frozenset[str]()
        elif match["op"]:
            key, op, values = (
                match["key"],
                "!=" if match["op"] == "!=" else "=",
                frozenset({match["value"]}),
            )
        elif match["setop"]:
            key, op = match["key"], match["setop"]
            values = frozenset(v.strip() for v in match["set"].split(","))
        else:
            key, op, values = match["key"], "exists", frozenset()
        if qualified_name("key", key):
            raise ValueError(f"unable to parse requirement: invalid label key {key!r}")
        requirements.append(Requirement(key, op, values))
    return requirements


def labels_match(requirements: list[Requirement], labels: dict[str, str]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        ok = {
            "=": present and labels.get(key) in values,
            "in": present and labels.get(key) in values,
            "!=": not present or labels.get(key) not in values,
            "notin": not present or labels.get(key) not in values,
            "exists": present,
            "!": not present,
        }[op]
        if not ok:
            return False
    return True


def parse_fields(text: str, supported: set[str]) -> list[FieldRequirement]:
    if not text.strip():
        return []
    requirements = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([^\s!=]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if match is None:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = match.groups()
        if field not in supported:
            raise ValueError(f"field label not supported: {field}")
        requirements.append(FieldRequirement(field, "!=" if op == "!=" else "=", value))
    return requirements
