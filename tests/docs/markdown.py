"""What the documentation says, read out of the Markdown: fenced blocks, commands, links.

A shell block preceded by the line `<!-- runnable -->` is run by the tests against
`rdscsi run`, in order, from the clone's root; every other block and inline command must
only name commands, flags, files and cluster objects that exist.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
SHELLS = ("sh", "bash", "shell", "console")


def documents() -> list[Path]:
    """The hand-written documentation (specs/ is generated from the machines)."""
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "deploy").rglob("*.md")),
    ]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = m.group("indent"), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        runnable = start > 0 and lines[start - 1].strip() == MARKER
        out.append(Block(path, start + 1, m.group("lang"), "\n".join(body) + "\n", runnable))
        i += 1
    return out


def markers(path: Path) -> list[tuple[int, str]]:
    """(line, the line after it) of each runnable marker."""
    lines = path.read_text().splitlines()
    return [
        (n + 1, lines[n + 1] if n + 1 < len(lines) else "")
        for n, line in enumerate(lines)
        if line.strip() == MARKER
    ]


def prose(path: Path) -> str:
    """The text outside fenced blocks."""
    out, inside = [], False
    for line in path.read_text().splitlines():
        if _FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


def inline_code(path: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(path))


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(path))


# Placeholders a reader replaces: `<node>`, `$(NODE_NAME)`, `$VAR`; read as PLACEHOLDER.
_PLACEHOLDER = re.compile(r"<[^<>\s]+>|\$\([^)]*\)|\$\{?\w+\}?")
PLACEHOLDER = "PLACEHOLDER"


def commands(text: str) -> list[list[str]]:
    """Each simple command of a shell text (pipes, `&&`, `;` split), as argv lists, with
    comments dropped and placeholders replaced by `PLACEHOLDER`."""
    text = text.replace("\\\n", " ")
    out: list[list[str]] = []
    for line in text.splitlines():
        line = _PLACEHOLDER.sub(PLACEHOLDER, line)
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
        except ValueError:
            continue
        argv: list[str] = []
        for token in tokens:
            if token and set(token) <= set(";&|"):
                if argv:
                    out.append(argv)
                argv = []
            else:
                argv.append(token)
        if argv:
            out.append(argv)
    return out


def rdscsi_args(argv: list[str]) -> list[str] | None:
    """The arguments of an `rdscsi` invocation in any spelling, or None."""
    while argv and (argv[0] == "sudo" or "=" in argv[0]):
        argv = argv[1:]
    if not argv:
        return None
    if argv[0] in ("rdscsi", ".venv/bin/rdscsi"):
        return argv[1:]
    if Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "rdscsi"]:
        return argv[3:]
    return None


REPO_PATH = re.compile(r"^(?:src|tests|docs|deploy|specs|bench|\.ci)/[\w./-]*$")


def repo_paths(token: str) -> list[str]:
    """`token` when it names a file or directory of the repository."""
    token = token.rstrip(".,:;)")
    if REPO_PATH.match(token) and "…" not in token and PLACEHOLDER not in token:
        return [token]
    if token in ("Makefile", "Dockerfile", "pyproject.toml", "README.md"):
        return [token]
    return []


def ignored(path: str) -> bool:
    """Whether `.gitignore` keeps `path` out of the repository: a directory the user makes
    while following the docs (`deploy/site`), never one the docs may assume exists."""
    import fnmatch

    for line in (ROOT / ".gitignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith(("#", "!")):
            continue
        pattern = pattern.lstrip("/").rstrip("/")
        if path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern):
            return True
    return False


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+\s+(.+)$", prose(path), re.M)}
