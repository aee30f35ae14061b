"""`rdscsi run`: the embedded default, everything in one process with no appliance.

It starts the RDS simulator (state under `--state-dir`; `--appliances N` starts N of them, a
fleet: `sim`, the default appliance, then `sim-2`…), then the CSI Identity and Controller
services on a unix socket, and the Node service too when this host allows it (root and loop
devices): the controller reaches the simulator over real SSH through the Connection machine,
and the node attaches the simulator's backing files as loop devices, so staging formats and
mounts real filesystems. It fences at the appliance (`rds.fence: allow-host`): this host has
an NVMe host NQN of its own (made once under `<state-dir>/host`, as `rdscsi node-init` makes
one on a node), each publish puts it on the disk's allow-list, and the loop transport asks
the simulator to admit each connect by that list. It serves Prometheus metrics and logs every
transition and cluster event, until SIGINT or SIGTERM. While it runs, `rdscsi demo` drives a
volume through its life, and `rdscsi sim-fault drop` shows a reconnect.

The state directory is locked while a run uses it: a second run on it is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client import REGISTRY, CollectorRegistry

from .app import ControllerApp, NodeApp, build_controller
from .clock import LoopClock
from .config import ApplianceConfig, ConfigError, DriverConfig
from .explain.service import Explainer, for_controller
from .hooks.events import MemorySink
from .io.host.identity import ensure_identity, nvme_dir
from .observe import Explain, MetricsServer, split_address
from .signals import until_stopped
from .sim import SimConfig, Simulator
from .sim.control import CONTROL_SOCKET, ControlServer
from .sim.main import DEFAULT_DATA_DIR, ensure_client_key
from .sim.store import DEFAULT_POOL

log = logging.getLogger("rdscsi.run")

DEFAULT_STATE_DIR = Path(".rdscsi")
SOCKET_NAME = "csi.sock"
LOCK_NAME = "run.lock"
HOST_DIR = "host"  # this host's NVMe identity for the run: <state-dir>/host/etc/nvme
# What staging a volume on a loop device runs (the ext4 path of `rdscsi demo`).
NODE_PROGRAMS = ("losetup", "blkid", "mount", "umount", "mkfs.ext4")


class StartError(RuntimeError):
    """An operational failure at start (a port or directory in use): the message is one line
    that says what to do."""


@dataclass(frozen=True)
class RunOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    endpoint: str = ""  # default: unix://<state-dir>/csi.sock, absolute
    metrics_address: str = "127.0.0.1:9809"  # empty: no metrics endpoint
    node_id: str = ""  # default: this host's name
    kubelet_dir: Path | None = None  # default: <state-dir>/kubelet (node paths must lie inside)
    appliances: int = 1  # simulators, each an appliance of the fleet


__all__ = [
    "RunOptions",
    "StartError",
    "default_endpoint",
    "health_of",
    "node_support",
    "run",
    "split_address",
    "start_metrics",
]


def default_endpoint(state_dir: Path = DEFAULT_STATE_DIR) -> str:
    """The socket `rdscsi run --state-dir <state_dir>` serves, as an absolute `unix:///`."""
    return f"unix://{state_dir.resolve() / SOCKET_NAME}"


def node_support() -> tuple[bool, str]:
    """Whether this process can serve the Node service on loop devices, and if not, why."""
    if os.geteuid() != 0:
        return False, f"it needs root to attach loop devices and mount (this is uid {os.geteuid()})"
    if not Path("/dev/loop-control").exists():
        return False, "this host has no /dev/loop-control (no loop devices, e.g. in a container)"
    missing = [p for p in NODE_PROGRAMS if shutil.which(p) is None]
    if missing:
        return False, f"{', '.join(missing)} not found (packages util-linux, mount, e2fsprogs)"
    return True, ""


def health_of(app: ControllerApp | NodeApp) -> Callable[[], tuple[bool, str]]:
    """`/healthz`: a controller is healthy while an appliance connection is `connected` (the
    body names those that are not); a node-only process while it runs."""
    if isinstance(app, ControllerApp):
        return app.appliances.readiness
    return lambda: (True, "ok")


async def start_metrics(
    address: str,
    registry: CollectorRegistry,
    app: ControllerApp | NodeApp | Callable[[], tuple[bool, str]],
    *,
    live: Callable[[], tuple[bool, str]] | None = None,
    scoped: tuple[frozenset[str], Callable[[], bool]] | None = None,
    explain: Explain | None = None,
) -> MetricsServer | None:
    """The `/metrics` and `/healthz` endpoint on this loop; None when `address` is empty.
    `app` is the app whose health `/healthz` reports, or the health check itself. A port
    that cannot be bound is a `StartError` saying what to do."""
    if not address:
        return None
    health = app if callable(app) else health_of(app)
    server = MetricsServer(address, registry, health, live, scoped, explain)
    try:
        await server.start()
    except OSError as exc:
        why = {
            errno.EADDRINUSE: "is in use by another process",
            errno.EACCES: "needs privileges (ports below 1024)",
            errno.EADDRNOTAVAIL: "is not an address of this host",
        }.get(exc.errno or 0, f"cannot be bound ({exc.strerror or exc})")
        raise StartError(
            f"metrics address {address} {why}: choose another with --metrics-address "
            "HOST:PORT, or --metrics-address '' for none"
        ) from None
    return server


MAX_APPLIANCES = 8


def appliance_name(index: int) -> str:
    """The name of the simulated appliance `index` (0-based): `sim`, then `sim-2`…"""
    return "sim" if index == 0 else f"sim-{index + 1}"


def _config(
    options: RunOptions,
    state_dir: Path,
    node: bool,
    rds: ApplianceConfig,
    loop_root: Path,
    host_nqn: str,
    others: dict[str, ApplianceConfig] | None = None,
    controls: list[Path] | None = None,
) -> DriverConfig:
    node_id = options.node_id or socket.gethostname()
    return DriverConfig(
        controller=True,
        node=node,
        endpoint=options.endpoint or default_endpoint(state_dir),
        node_id=node_id,
        metrics_address=options.metrics_address,
        rds=rds,
        appliances=others or {},
        transport="loop",
        known_nodes=[f"{node_id}={host_nqn}"],
        state_dir=str(state_dir),
        node_state_dir=str(state_dir / "node"),
        kubelet_dir=str(kubelet_dir(options, state_dir)),
        loop_root=str(loop_root),
        host_nqn_file=str(nvme_dir(state_dir / HOST_DIR) / "hostnqn"),
        # The simulators' control sockets: the loop transport asks each in turn to admit a
        # connect, the one holding the export answers (by its disk's allow-list).
        loop_control=",".join(str(c) for c in controls or [loop_root.parent / CONTROL_SOCKET]),
    ).validate()


def kubelet_dir(options: RunOptions, state_dir: Path) -> Path:
    """Where the Node service takes staging and target paths: kubelet's root in a cluster."""
    return (options.kubelet_dir or state_dir / "kubelet").resolve()


def _lock(state_dir: Path) -> IO[str]:
    """Holds `<state_dir>/run.lock` for this process (released when it exits)."""
    path = state_dir / LOCK_NAME
    if not os.access(state_dir, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.R_OK | os.W_OK)
    ):
        raise StartError(
            f"{state_dir} belongs to another user (made by a run as root?): run as that user, "
            "or give this run its own --state-dir"
        )
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip()
        handle.close()
        who = f"(pid {pid})" if pid else ""
        raise StartError(
            f"{state_dir} is in use by another `rdscsi run` {who}: stop that one, or give "
            "this one its own --state-dir"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _program() -> str:
    """How the user started us, to show commands they can paste: `.venv/bin/rdscsi`."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith("__main__.py"):
        return f"{os.path.relpath(sys.executable)} -m rdscsi"
    found = shutil.which("rdscsi")
    if found and argv0 and Path(found).resolve() == Path(argv0).resolve():
        return "rdscsi"
    if argv0 and Path(argv0).is_file():
        relative = os.path.relpath(argv0)
        return relative if not relative.startswith("..") else str(Path(argv0).resolve())
    return "rdscsi"


async def run(options: RunOptions, stop: asyncio.Event | None = None) -> int:
    if not 1 <= options.appliances <= MAX_APPLIANCES:  # a usage mistake: exit status 2
        raise ConfigError(
            f"--appliances {options.appliances}: expected 1..{MAX_APPLIANCES} simulated appliances"
        )
    state_dir = options.state_dir.resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"state dir {state_dir} cannot be created: {exc.strerror}") from None
    lock = _lock(state_dir)
    try:
        async with contextlib.AsyncExitStack() as stack:
            return await _run(options, state_dir, stack, stop)
    finally:
        lock.close()


async def _run(
    options: RunOptions,
    state_dir: Path,
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event | None,
) -> int:
    node, why_not = node_support()
    sim_dir = state_dir / "sim"
    sim_dir.mkdir(parents=True, exist_ok=True)
    if node:
        kubelet_dir(options, state_dir).mkdir(parents=True, exist_ok=True)
    # The options first, before anything starts (the appliance is not known yet).
    host_nqn = ensure_identity(state_dir / HOST_DIR).hostnqn
    placeholder = ApplianceConfig(address="127.0.0.1", insecure_skip_host_key_check=True)
    _config(options, state_dir, node, placeholder, sim_dir, host_nqn).prepare()
    apps: list[ControllerApp] = []

    explainers: list[Explainer] = []

    async def explain(query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        if not apps:
            return 503, {"error": "starting"}
        if not explainers:
            explainers.append(for_controller(apps[0]))
        return await explainers[0].answer(query)

    metrics = await start_metrics(
        options.metrics_address,
        REGISTRY,
        lambda: health_of(apps[0])() if apps else (False, "starting"),
        explain=explain,
    )
    if metrics is not None:
        stack.push_async_callback(metrics.stop)

    key_file, authorized = ensure_client_key(sim_dir)
    files_root = sim_dir / "files"  # shared: each simulator's pool is its own directory
    sims: list[tuple[str, Path, Simulator]] = []
    for index in range(options.appliances):
        name = appliance_name(index)
        data_dir = sim_dir if index == 0 else state_dir / name
        pool = DEFAULT_POOL if index == 0 else f"{DEFAULT_POOL}-{index + 1}"
        sim = Simulator(
            SimConfig(
                data_dir=data_dir,
                authorized_keys_file=authorized,
                pool_name=pool,
                files_root=files_root,
            )
        )
        await sim.start()
        stack.push_async_callback(sim.stop)
        control = ControlServer(sim, data_dir / CONTROL_SOCKET)
        await control.start()
        stack.push_async_callback(control.stop)
        sims.append((name, data_dir, sim))

    fleet = [
        ApplianceConfig(
            address=sim.host,
            port=sim.port,
            key_file=str(key_file),
            host_keys=[sim.host_key],
            name=name,
            pool_root=f"/{sim.store.pool_name}/",
        )
        for name, _, sim in sims
    ]
    others = {a.name: a for a in fleet[1:]}
    controls = [data_dir / CONTROL_SOCKET for _, data_dir, _ in sims]  # each asked in turn
    config = _config(
        options, state_dir, node, fleet[0], files_root, host_nqn, others, controls
    ).prepare()
    node_id = config.node_id
    app = build_controller(config, LoopClock(), MemorySink(log_events=True), REGISTRY)
    apps.append(app)
    stack.push_async_callback(app.stop)
    await app.start()

    prog = _program()
    here = state_dir == DEFAULT_STATE_DIR.resolve()
    demo = f"{prog} demo" + ("" if here else f" --state-dir {state_dir}")
    fault = f"{prog} sim-fault" + (
        "" if sim_dir == DEFAULT_DATA_DIR.resolve() else f" --data-dir {sim_dir}"
    )
    say = _say
    if len(sims) == 1:
        say(f"simulator on {sim.host}:{sim.port} (state in {sim_dir})")
    else:
        for name, data_dir, one in sims:
            default = " (the default appliance)" if name == config.default_appliance else ""
            where = f"{one.host}:{one.port} (state in {data_dir})"
            say(f"appliance {name}{default}: simulator on {where}")
    if node:
        say(
            f"CSI Identity, Controller and Node on {config.endpoint} (node {node_id}; volumes "
            "attach as loop devices)"
        )
    else:
        say(f"CSI Identity and Controller on {config.endpoint}")
        say(f"no Node service: {why_not}; `demo` skips staging and publishing")
    if metrics is not None:
        say(f"metrics on {metrics.url}/metrics, health on {metrics.url}/healthz")
    say(f"in another shell: `{demo}` drives a volume through its life,")
    say(f"`{fault} drop` drops the appliance connection (watch it reconnect)", indent=True)
    if len(sims) > 1:
        say(
            f"`{prog} sim-fault --data-dir {sims[1][1]} drop` drops {sims[1][0]}'s alone; "
            f"a StorageClass parameter appliance: {sims[1][0]} puts volumes there",
            indent=True,
        )
    say("Ctrl-C to stop")
    await until_stopped(stop, "rdscsi run")
    await stack.aclose()
    say("stopped")
    return 0


def _say(text: str, indent: bool = False) -> None:
    print(("            " if indent else "rdscsi run: ") + text, flush=True)
