"""Command-line entry point (`rdscsi`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _diagrams(args: argparse.Namespace) -> int:
    from .machines import diagrams

    out = Path(args.out)
    if args.check:
        stale = diagrams.check(out)
        for line in stale:
            print(line, file=sys.stderr)
        if stale:
            print("run `rdscsi diagrams` and commit the result", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    for path in diagrams.write(out):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdscsi", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rdscsi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("diagrams", help="export every state machine into specs/")
    p.add_argument("--out", default="specs", help="directory to write (default: specs)")
    p.add_argument("--check", action="store_true", help="fail when the files are out of date")
    p.set_defaults(func=_diagrams)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
