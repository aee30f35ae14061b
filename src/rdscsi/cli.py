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


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .run import RunOptions, run

    return asyncio.run(run(RunOptions(Path(args.state_dir), args.metrics_address)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdscsi", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rdscsi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("diagrams", help="export every state machine into specs/")
    p.add_argument("--out", default="specs", help="directory to write (default: specs)")
    p.add_argument("--check", action="store_true", help="fail when the files are out of date")
    p.set_defaults(func=_diagrams)

    p = sub.add_parser("run", help="run the driver on the built-in RDS simulator")
    p.add_argument("--state-dir", default=".rdscsi", help="where state lives (default .rdscsi)")
    p.add_argument(
        "--metrics-address",
        default="127.0.0.1:9809",
        help="HOST:PORT for /metrics; empty to disable",
    )
    p.set_defaults(func=_run)

    # Listed for --help; `main` hands their arguments to rdscsi.sim.main unparsed.
    sub.add_parser("sim", help="run the RDS simulator alone (`rdscsi sim --help`)")
    sub.add_parser("sim-fault", help="inject a fault into a running simulator")
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # per-channel chatter
    argv = sys.argv[1:] if argv is None else argv
    # The simulator commands own their whole argument list (options included).
    if argv and argv[0] == "sim":
        from .sim.main import sim_main

        return sim_main(argv[1:])
    if argv and argv[0] == "sim-fault":
        from .sim.main import sim_fault_main

        return sim_fault_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
