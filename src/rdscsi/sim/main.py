"""`rdscsi sim` (run a simulator until SIGINT/SIGTERM) and `rdscsi sim-fault` (control it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncssh

from rdscsi.signals import until_stopped
from rdscsi.sim import control
from rdscsi.sim.render import RENDERS
from rdscsi.sim.simulator import SimConfig, Simulator
from rdscsi.sim.units import parse_size

DEFAULT_DATA_DIR = Path(".rdscsi/sim")
CLIENT_KEY_NAME = "client_ed25519_key"
AUTHORIZED_KEYS_NAME = "authorized_keys"
ENDPOINT_NAME = "endpoint.json"


def _size_arg(text: str) -> int:
    size = parse_size(text)
    if size is None or size <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a K/M/G/T suffix)")
    return size


def _sim_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdscsi sim", description="Run the RDS simulator (an SSH server) until interrupted."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="state directory (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port for SSH; 0 picks a free one")
    parser.add_argument(
        "--authorized-keys",
        type=Path,
        help="authorized_keys file; default: a client key pair created in the data dir",
    )
    parser.add_argument("--pool-name", default="storage-pool", help="name of the storage pool")
    parser.add_argument(
        "--pool-size",
        type=_size_arg,
        default=_size_arg("1T"),
        help="pool size in bytes, or K/M/G/T",
    )
    parser.add_argument("--render", choices=RENDERS, default="detail", help="print output shape")
    parser.add_argument(
        "--date-style", choices=("iso", "legacy"), default="iso", help="how dates are printed"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="milliseconds added to every command"
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=10,
        help="SSH sessions per connection (count; OpenSSH's default is 10)",
    )
    parser.add_argument(
        "--relay-socket",
        type=Path,
        help="also answer commands a real sshd relays here (its ForceCommand: see endpoint.json)",
    )
    parser.add_argument(
        "--error-exit-status", type=int, default=1, help="exit status of a failed command"
    )
    parser.add_argument("--crlf", action="store_true", help="end output lines with CR LF")
    parser.add_argument(
        "--refuse-remove-in-use",
        action="store_true",
        help="refuse to remove a disk with an NVMe/TCP host session (`failure: disk is in use`)",
    )
    return parser


def ensure_client_key(data_dir: Path) -> tuple[Path, Path]:
    """A client key pair and an authorized_keys file holding it, created once."""
    key_path = data_dir / CLIENT_KEY_NAME
    if not key_path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="rdscsi-sim-client")
        tmp = key_path.with_name(key_path.name + ".tmp")
        key.write_private_key(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, key_path)
        key.write_public_key(key_path.with_name(key_path.name + ".pub"))
    authorized = data_dir / AUTHORIZED_KEYS_NAME
    if not authorized.exists():
        public = asyncssh.read_private_key(key_path).export_public_key("openssh").decode()
        authorized.write_text(public)
    return key_path, authorized


def sim_main(argv: list[str]) -> int:
    args = _sim_parser().parse_args(argv)
    try:
        return asyncio.run(_serve(args))
    except (OSError, ValueError) as error:  # busy data dir, bad key file, corrupt state
        print(f"rdscsi sim: {error}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    client_key: Path | None = None
    authorized: Path = args.authorized_keys
    if authorized is None:
        client_key, authorized = ensure_client_key(data_dir)
    sim = Simulator(
        SimConfig(
            data_dir=data_dir,
            host=args.host,
            port=args.port,
            authorized_keys_file=authorized,
            pool_name=args.pool_name,
            pool_size=args.pool_size,
            render=args.render,
            date_style=args.date_style,
            latency=args.latency_ms / 1000.0,
            max_sessions=args.max_sessions,
            error_exit_status=args.error_exit_status,
            line_ending="\r\n" if args.crlf else "\n",
            refuse_remove_in_use=args.refuse_remove_in_use,
            relay_socket=None if args.relay_socket is None else args.relay_socket.resolve(),
        )
    )
    await sim.start()
    ctl = control.ControlServer(sim, data_dir / control.CONTROL_SOCKET)
    try:
        await ctl.start()
    except OSError:
        await sim.stop()
        raise
    endpoint = {
        "host": sim.host,
        "port": sim.port,
        "host_key": sim.host_key,
        "known_hosts": sim.known_hosts_line(),
        "client_key": None if client_key is None else str(client_key),
        "authorized_keys": str(authorized),
        "control_socket": str(ctl.path),
        "relay_socket": None if args.relay_socket is None else str(sim.config.relay_socket),
        "relay_command": None if args.relay_socket is None else sim.relay_command,
        "pid": os.getpid(),
    }
    _write_json(data_dir / ENDPOINT_NAME, endpoint)
    print(f"rdscsi sim: listening on {sim.host}:{sim.port}")
    print(f"host key: {sim.host_key}")
    if client_key is not None:
        print(f"client key: {client_key}")
    print(f"authorized keys: {authorized}")
    print(f"control socket: {ctl.path}")
    print(f"endpoint: {data_dir / ENDPOINT_NAME}", flush=True)
    try:
        await until_stopped()
    finally:
        await ctl.stop()
        await sim.stop()
        (data_dir / ENDPOINT_NAME).unlink(missing_ok=True)
    print("rdscsi sim: stopped", flush=True)
    return 0


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("on or off")
    return text == "on"


def _fault_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdscsi sim-fault", description="Change a running simulator's faults."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the simulator's state directory (default: %(default)s, as `rdscsi run` uses)",
    )
    sub = parser.add_subparsers(dest="fault", required=True)
    sub.add_parser("status", help="print the simulator's state and faults")
    sub.add_parser("drop", help="close every client connection now")
    drop_mid = sub.add_parser("drop-mid", help="drop the connection during the next N commands")
    drop_mid.add_argument("count", type=int, nargs="?", default=1)
    drop_mid.add_argument("--no-apply", action="store_true", help="drop before the command runs")
    latency = sub.add_parser("latency", help="seconds added to every command")
    latency.add_argument("seconds", type=float)
    fail = sub.add_parser("fail-next", help="the next N commands answer `failure: TEXT`")
    fail.add_argument("count", type=int)
    fail.add_argument("text", nargs="?", default="not enough space")
    hang = sub.add_parser("hang-next", help="the next N commands never answer")
    hang.add_argument("count", type=int, nargs="?", default=1)
    hang_match = sub.add_parser("hang-match", help="commands containing TEXT never answer")
    hang_match.add_argument("text", help="`off` to stop")
    sub.add_parser("release", help="let hanging commands answer")
    kill_mid = sub.add_parser(
        "kill-mid", help="the next N commands print part of their answer, then die (KILL)"
    )
    kill_mid.add_argument("count", type=int, nargs="?", default=1)
    refuse_channels = sub.add_parser(
        "refuse-channels", help="refuse the next N channel opens (as past MaxSessions)"
    )
    refuse_channels.add_argument("count", type=int, nargs="?", default=1)
    stderr = sub.add_parser("stderr", help="every command prints TEXT on stderr first")
    stderr.add_argument("text", help="`off` to stop")
    malformed = sub.add_parser("malformed-next", help="the next N commands answer garbage")
    malformed.add_argument("count", type=int, nargs="?", default=1)
    pool_full = sub.add_parser("pool-full", help="every allocation fails: not enough space")
    pool_full.add_argument("state", type=_on_off)
    refuse = sub.add_parser("refuse", help="close new connections at accept")
    refuse.add_argument("state", type=_on_off)
    sub.add_parser("restart", help="stop and start again on the same port, reloading state")
    sub.add_parser("clear", help="every fault off")
    connect = sub.add_parser("connect-host", help="make an NVMe/TCP host session appear")
    connect.add_argument("slot")
    connect.add_argument("host_nqn")
    connect.add_argument("--address", default="127.0.0.1", help="the host's address")
    connect.add_argument("--port", type=int, default=0, help="the host's TCP port")
    disconnect = sub.add_parser("disconnect-host", help="remove NVMe/TCP host sessions")
    disconnect.add_argument("--id", type=int, help="the session's id (`status` lists them)")
    disconnect.add_argument("--slot", help="every session of this disk")
    disconnect.add_argument("--host-nqn", help="every session of this host NQN")
    render = sub.add_parser("render", help="switch the print output shape")
    render.add_argument("render", choices=RENDERS)
    pool_size = sub.add_parser("pool-size", help="change the pool size")
    pool_size.add_argument("size")
    traffic = sub.add_parser("traffic", help="set monitor-traffic counters: key=value ...")
    traffic.add_argument("slot")
    traffic.add_argument("values", nargs="+")
    return parser


def _fault_request(args: argparse.Namespace) -> dict[str, Any]:
    fault: str = args.fault
    message: dict[str, Any] = {"op": fault}
    if fault == "drop-mid":
        message.update(count=args.count, apply=not args.no_apply)
    elif fault == "latency":
        message["seconds"] = args.seconds
    elif fault == "fail-next":
        message.update(count=args.count, text=args.text)
    elif fault in ("hang-next", "malformed-next", "kill-mid", "refuse-channels"):
        message["count"] = args.count
    elif fault in ("hang-match", "stderr"):
        message["text"] = None if args.text == "off" else args.text
    elif fault in ("pool-full", "refuse"):
        message["on"] = args.state
    elif fault == "connect-host":
        message.update(
            slot=args.slot,
            host_nqn=args.host_nqn,
            remote_address=args.address,
            remote_port=args.port,
        )
    elif fault == "disconnect-host":
        message.update(id=args.id, slot=args.slot, host_nqn=args.host_nqn)
    elif fault == "render":
        message["render"] = args.render
    elif fault == "pool-size":
        message["size"] = args.size
    elif fault == "traffic":
        values = {}
        for item in args.values:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"rdscsi sim-fault: expected key=value, got {item!r}")
            values[key.replace("-", "_")] = value
        message.update(slot=args.slot, values=values)
    return message


def sim_fault_main(argv: list[str]) -> int:
    args = _fault_parser().parse_args(argv)
    path = args.data_dir.resolve() / control.CONTROL_SOCKET
    try:
        answer = asyncio.run(control.request(path, _fault_request(args)))
    except (OSError, ValueError) as error:
        print(f"rdscsi sim-fault: no simulator answering at {path}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=1, sort_keys=True))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(sim_main(sys.argv[1:]))
