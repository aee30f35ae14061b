"""rdscsi: a Kubernetes CSI driver for MikroTik ROSE Data Server, built from state machines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

# `rdscsi --help` lists every command with the help it was added with; these are listed apart.
DEVELOPER_COMMANDS = ("diagrams", "config-reference")
# `rdscsi demo --scenario NAME` (rdscsi.scenarios; named here so that help loads nothing)
SCENARIOS = {
    "node-death": "a node dies with a volume attached",
    "appliance-restart": "the appliance restarts under an attached volume",
    "live-migration": "a raw block volume moves between nodes while in use (KubeVirt)",
}


def _diagrams(args: argparse.Namespace) -> int:
    from .machines import diagrams

    out = Path(args.out)
    try:
        diagrams.expected_text()
    except diagrams.Unexplained as exc:
        print(f"rdscsi diagrams: {exc}", file=sys.stderr)
        return 1
    if args.check:
        report = diagrams.check(out)
        for line in report.notes:
            print(line)
        for line in report.stale:
            print(line, file=sys.stderr)
        if report.stale:
            print("run `rdscsi diagrams` and commit the result", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    try:
        written = diagrams.write(out)
    except diagrams.RenderError as exc:
        print(f"rdscsi diagrams: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .run import RunOptions, run

    return asyncio.run(
        run(
            RunOptions(
                Path(args.state_dir),
                args.endpoint,
                args.metrics_address,
                args.node_id,
                Path(args.kubelet_dir) if args.kubelet_dir else None,
                args.appliances,
            )
        )
    )


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, generated from `rdscsi.config.settings()`: a setting cannot
    exist without its flag, and a flag cannot be dropped on the way to the config."""
    from .config import APPLIANCE_FLAG, settings

    templated = [st.path[-1] for st in settings() if st.templated]
    parser.add_argument(
        APPLIANCE_FLAG,
        dest="appliance_settings",
        action="append",
        default=None,
        metavar="NAME.SETTING=VALUE",
        help="a setting of appliance NAME under `appliances:` (repeat; a list setting's items "
        f"one per flag): {', '.join(templated)}",
    )
    for st in settings():
        if st.templated:
            continue  # all under --appliance
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
            shown = "none" if st.default == "" else f"{st.default}"
            parser.add_argument(
                st.flag,
                dest=dest,
                default=None,
                metavar=st.path[-1].upper(),
                help=f"{help_text} (default: {shown})",
            )


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The flags given on the command line, as the nested mapping `config.load` layers."""
    from .config import appliance_flags

    flags: dict[str, object] = {}
    if getattr(args, "appliance_settings", None):
        flags["appliances"] = appliance_flags(args.appliance_settings)
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

    from .config import load
    from .serve import serve

    config = load(args.config, flags_from_args(args)).prepare()
    return asyncio.run(serve(config))


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from .demo import demo
    from .run import default_endpoint

    if args.scenario:
        from .scenarios import run_scenario

        extra = [f for f in ("endpoint", "node_id", "kubelet_dir") if getattr(args, f)]
        if extra:
            flags = ", ".join("--" + f.replace("_", "-") for f in extra)
            print(
                f"rdscsi demo: --scenario runs its own cluster; {flags} cannot apply to it",
                file=sys.stderr,
            )
            return 2

        return asyncio.run(run_scenario(args.scenario, Path(args.state_dir)))
    endpoint = args.endpoint or default_endpoint(Path(args.state_dir))
    kubelet = Path(args.kubelet_dir) if args.kubelet_dir else None
    return asyncio.run(demo(endpoint, args.node_id, kubelet_dir=kubelet))


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


def _listing(helps: dict[str, str]) -> str:
    width = max(len(n) for n in helps) + 2
    users = [n for n in helps if n not in DEVELOPER_COMMANDS]
    return "\n".join(
        [
            "commands:",
            *(f"  {name:<{width}}{helps[name]}" for name in users),
            "",
            "developer commands (for work on rdscsi itself):",
            *(f"  {name:<{width}}{helps[name]}" for name in DEVELOPER_COMMANDS),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdscsi",
        usage="rdscsi [-h] [--version] COMMAND ...",
        epilog="Start with `rdscsi run`, then `rdscsi demo` in another shell; "
        "`rdscsi COMMAND --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rdscsi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "run",
        help="run the driver on the built-in RDS simulator (no cluster, no appliance)",
        description="Run the RDS simulator and the driver against it, in one process, until "
        "Ctrl-C. The Node service needs root and loop devices; without them the banner says so.",
    )
    p.add_argument(
        "--state-dir",
        default=".rdscsi",
        help="directory for the simulator's disks and the driver's state (default: .rdscsi)",
    )
    p.add_argument(
        "--endpoint",
        default="",
        help="CSI socket, unix:///ABSOLUTE/PATH (default: unix://<state dir>/csi.sock)",
    )
    p.add_argument("--node-id", default="", help="this node's id (default: the host name)")
    p.add_argument(
        "--kubelet-dir",
        default="",
        help="the only directory the Node service takes staging and target paths in, as "
        "kubelet's root in a cluster (default: <state dir>/kubelet)",
    )
    p.add_argument(
        "--metrics-address",
        default="127.0.0.1:9809",
        metavar="HOST:PORT",
        help="TCP address for /metrics and /healthz; '' disables them (default: 127.0.0.1:9809)",
    )
    p.add_argument(
        "--appliances",
        type=int,
        default=1,
        metavar="N",
        help="simulated appliances (count, 1..8), a fleet: sim (the default appliance), "
        "sim-2, ... each with its own state and sim-fault socket (default: 1)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "demo",
        help="drive a volume through its whole life on a running `rdscsi run`",
        description="Create, attach, snapshot, expand, restore, stage, publish, write, and "
        "clean up a volume over CSI, printing each call. Everything it creates is removed at "
        "the end, even when a step fails. With --scenario, it watches a recovery instead, on "
        "a small cluster of its own, narrating every state machine transition.",
    )
    p.add_argument(
        "--state-dir",
        default=".rdscsi",
        help="the state directory `rdscsi run` was given; its socket is the endpoint "
        "(default: .rdscsi)",
    )
    p.add_argument(
        "--endpoint",
        default="",
        help="CSI socket, unix:///ABSOLUTE/PATH (default: unix://<state dir>/csi.sock)",
    )
    p.add_argument(
        "--node-id", default="", help="node to attach and publish to (default: the host name)"
    )
    p.add_argument(
        "--kubelet-dir",
        default="",
        help="where to stage and publish: the --kubelet-dir `rdscsi run` was given "
        "(default: kubelet/ beside the endpoint's socket)",
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="",
        help="instead, watch a recovery on its own small cluster (no `rdscsi run` needed): "
        "a built-in Kubernetes API, the simulator, the controller and two node plugins "
        "(root: loop devices), in <state dir>/scenarios/NAME; "
        + "; ".join(f"{name}: {title}" for name, title in SCENARIOS.items()),
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "serve",
        help="serve CSI in a cluster (the production entry point)",
        description="Serve the CSI Controller and/or Node service. Settings: YAML file "
        "(--config), then RDSCSI_* variables, then these flags; a wrong value is refused at "
        "start with its field named.",
    )
    p.add_argument(
        "--config", metavar="FILE", help="YAML settings file (RDSCSI_* variables and flags win)"
    )
    add_setting_flags(p)
    p.set_defaults(func=_serve)

    from .explain.client import add_parser as add_explain

    add_explain(sub)  # `explain`: asks a running driver's /debug/explain (explain/client.py)

    from .io.host.identity import add_parser as add_node_init

    add_node_init(sub)  # `node-init`: the node plugin's init container (io/host/identity.py)

    # Listed for --help; `main` hands their arguments to rdscsi.sim.main unparsed.
    sub.add_parser("sim", help="run the RDS simulator alone (`rdscsi sim --help`)")
    sub.add_parser(
        "sim-fault", help="inject a fault into a running simulator (`rdscsi sim-fault --help`)"
    )

    text = "write specs/ from the state machines (Markdown table, .dot, .svg)"
    p = sub.add_parser("diagrams", help=text, description=text)
    p.add_argument("--out", default="specs", help="directory to write (default: specs)")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; fail naming each file that differs from the machines",
    )
    p.set_defaults(func=_diagrams)

    text = "write docs/configuration.md from the settings"
    p = sub.add_parser("config-reference", help=text, description=text)
    p.add_argument(
        "--out",
        default="docs/configuration.md",
        help="file to write (default: docs/configuration.md)",
    )
    p.add_argument(
        "--check", action="store_true", help="write nothing; fail when the file is out of date"
    )
    p.set_defaults(func=_config_reference)

    # Each command's own help is its line in `rdscsi --help` (argparse's list is suppressed).
    helps = {a.dest: a.help or "" for a in getattr(sub, "_choices_actions", [])}
    for name, command in sub.choices.items():
        command.prog = f"rdscsi {name}"
        helps.setdefault(name, "")
    parser.description = f"{__doc__}\n\n{_listing(helps)}"
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "explain":
        return int(args.func(args))  # a client only: it starts nothing (no driver imports)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """Runs the command; what a user can fix is one line on stderr, never a traceback."""
    from .config import ConfigError
    from .run import StartError

    name = f"rdscsi {args.command}"
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{name}: {problem}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        if args.command != "run":
            raise
        # files of a run started by another user (often root, for the Node service)
        print(
            f"{name}: {exc.strerror}: {exc.filename}: run as the user who made it, or give this "
            "run its own --state-dir",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
