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

    return asyncio.run(
        run(RunOptions(Path(args.state_dir), args.endpoint, args.metrics_address, args.node_id))
    )


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, generated from `rdscsi.config.settings()`: a setting cannot
    exist without its flag, and a flag cannot be dropped on the way to the config."""
    from .config import settings

    for st in settings():
        dest = "setting__" + "__".join(st.path)
        help_text = st.doc or st.key
        if st.is_list:
            parser.add_argument(
                st.flag,
                dest=dest,
                action="append",
                default=None,
                metavar=st.path[-1].upper().removesuffix("S"),
                help=f"{help_text} (repeat)",
            )
        elif st.field.type is bool or st.field.type == "bool":
            parser.add_argument(
                st.flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {'on' if st.default else 'off'})",
            )
        else:
            parser.add_argument(
                st.flag,
                dest=dest,
                default=None,
                metavar=st.path[-1].upper(),
                help=f"{help_text} (default: {st.default!r})",
            )


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The flags given on the command line, as the nested mapping `config.load` layers."""
    flags: dict[str, object] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("setting__") or value is None:
            continue
        path = dest.removeprefix("setting__").split("__")
        node = flags
        for part in path[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[path[-1]] = value
    return flags


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from .config import ConfigError, load

    try:
        config = load(args.config, flags_from_args(args))
    except ConfigError as exc:
        print(f"rdscsi serve: configuration: {exc}", file=sys.stderr)
        return 2
    from .serve import serve

    return asyncio.run(serve(config))


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from .demo import demo

    return asyncio.run(demo(args.endpoint, args.node_id))


def _config_reference(args: argparse.Namespace) -> int:
    from .config import reference_markdown

    text = reference_markdown()
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(
                f"{out}: differs from src/rdscsi/config.py; run `rdscsi config-reference`",
                file=sys.stderr,
            )
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


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
    p.add_argument("--endpoint", default="", help="unix:///PATH (default <state-dir>/csi.sock)")
    p.add_argument("--node-id", default="", help="this node's id (default: host name)")
    p.add_argument(
        "--metrics-address",
        default="127.0.0.1:9809",
        help="HOST:PORT for /metrics; empty to disable",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("serve", help="serve CSI in a cluster (production entry point)")
    p.add_argument("--config", help="YAML file (RDSCSI_* variables and flags override it)")
    add_setting_flags(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="drive a volume through its life on a running endpoint")
    p.add_argument("--endpoint", default="unix://.rdscsi/csi.sock", help="CSI endpoint")
    p.add_argument("--node-id", default="", help="node to publish to (default: host name)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("config-reference", help="write docs/configuration.md from the settings")
    p.add_argument("--out", default="docs/configuration.md")
    p.add_argument("--check", action="store_true", help="fail when the file is out of date")
    p.set_defaults(func=_config_reference)

    from .io.host.identity import add_parser as add_node_init

    add_node_init(sub)  # `node-init`: the node plugin's init container (io/host/identity.py)

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
