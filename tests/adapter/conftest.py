"""The adapter against a running server, wired to the real machines, on an injected clock.

Every suite here runs against both servers (`bench` is parametrised): the simulator's own
asyncssh server, and a real OpenSSH server whose `ForceCommand` relays each command to the
same simulator (`rdscsi.sim.relay`), so both answer from one appliance state and faults.
The OpenSSH runs skip, with the reason, only where sshd is not installed.
"""

from __future__ import annotations

import asyncio
import getpass
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import grpc
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.app import ControllerApp, build_controller
from rdscsi.clock import Clock, ManualClock
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.csi import csi_pb2 as pb
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import Machines, build_machines
from rdscsi.io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from rdscsi.sim import SimConfig, Simulator
from rdscsi.testing.openssh import Sshd, unavailable_reason

SERVERS = ("sim", "openssh")
WATCHDOG_S = 60.0  # no test here takes a tenth of this; past it, show what every task waits on


@pytest.fixture(autouse=True)
async def watchdog() -> AsyncIterator[None]:
    """Set up first, torn down last: if a test (or a fixture's teardown) hangs, print where
    every asyncio task is waiting (past the output capture), so a hang is never silent."""

    async def bark() -> None:
        await asyncio.sleep(WATCHDOG_S)
        out = sys.__stderr__
        print(f"=== watchdog: still running after {WATCHDOG_S:g}s; the tasks:", file=out)
        for task in asyncio.all_tasks():
            print(f"--- {task.get_name()}: {task.get_coro()}", file=out)
            task.print_stack(file=out)

    dog = asyncio.ensure_future(bark())
    yield
    dog.cancel()


@dataclass
class Server:
    """The appliance's SSH side: the simulator itself, or a real sshd relaying to it."""

    kind: str
    sim: Simulator
    sshd: Sshd | None = None

    @property
    def port(self) -> int:
        return self.sshd.port if self.sshd is not None else self.sim.port

    @property
    def host_key(self) -> str:
        return self.sshd.host_key if self.sshd is not None else self.sim.host_key

    @property
    def user(self) -> str:
        # sshd logs in real users; the simulator accepts any name
        return getpass.getuser() if self.sshd is not None else "admin"

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key}"

    async def stop(self) -> None:
        """The appliance goes away: no listener, every connection closed."""
        if self.sshd is not None:
            await self.sshd.stop(connections=True)
        else:
            await self.sim.stop()

    async def start(self) -> None:
        if self.sshd is not None:
            await self.sshd.start()
        else:
            await self.sim.start()

    async def drop_connections(self) -> int:
        """Kill the appliance side of every link (sshd: the per-connection processes)."""
        if self.sshd is not None:
            return await self.sshd.kill_connections()
        return self.sim.drop_connections()

    async def set_max_sessions(self, count: int) -> None:
        if self.sshd is not None:
            await self.sshd.restart(max_sessions=count)
        else:
            self.sim.config.max_sessions = count


@dataclass
class Bench:
    server: Server
    clock: ManualClock
    sink: MemorySink
    triggers: list[str]
    machines: Machines
    registry: CollectorRegistry
    key_file: Path
    tmp: Path
    opened: list[RDSConnection] = field(default_factory=list)

    @property
    def sim(self) -> Simulator:
        return self.server.sim

    def config(self, **overrides: object) -> RDSConfig:
        base: dict[str, object] = {
            "address": "127.0.0.1",
            "port": self.server.port,
            "user": self.server.user,
            "client_keys": [str(self.key_file)],
            "host_keys": [self.server.host_key],
        }
        base.update(overrides)
        return RDSConfig(**base)  # type: ignore[arg-type]

    def connection(self, clock: Clock | None = None, **overrides: object) -> RDSConnection:
        conn = RDSConnection(
            self.config(**overrides),
            self.machines.connection,
            clock or self.clock,
            random.Random(7),
            CommandMetrics(self.registry),
        )
        self.opened.append(conn)
        return conn

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of the samples `name` whose labels include `labels` (so a series labelled
        with its appliance is read whatever the appliance's name)."""
        wanted = (labels or {}).items()
        return sum(
            s.value
            for metric in self.registry.collect()
            for s in metric.samples
            if s.name == name and wanted <= s.labels.items()
        )


async def started(bench: Bench, clock: Clock | None = None, **overrides: object) -> RDSConnection:
    conn = bench.connection(clock, **overrides)
    await conn.start()
    await asyncio.wait_for(conn.wait_for("connected", "backoff", "misconfigured"), 15)
    return conn


async def hanging(bench: Bench, count: int, timeout: float = 15) -> None:
    """Until `count` commands hang in the simulator (0: until none does); bounded, so a
    command that never arrives fails the test instead of stalling the suite."""
    faults = bench.sim.faults
    wait = faults.wait_hanging(count) if count else faults.wait_not_hanging()
    await asyncio.wait_for(wait, timeout)


async def until(conn: RDSConnection, predicate: Callable[[], bool], timeout: float = 15) -> None:
    await asyncio.wait_for(conn.wait_until(predicate), timeout)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rds-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def make_server(
    kind: str, tmp_path: Path, short_dir: Path, client_key: asyncssh.SSHKey
) -> Server:
    if kind == "openssh" and (reason := unavailable_reason()) is not None:
        pytest.skip(reason)
    public = client_key.export_public_key().decode()
    sim = Simulator(
        SimConfig(
            data_dir=tmp_path / "sim",
            authorized_keys=[public],
            relay_socket=short_dir / "relay.sock" if kind == "openssh" else None,
        )
    )
    await sim.start()
    if kind == "sim":
        return Server(kind, sim)
    sshd = Sshd(tmp_path / "sshd", sim.relay_command, [public])
    try:
        await sshd.start()
    except BaseException:
        await sim.stop()
        raise
    return Server(kind, sim, sshd)


async def stop_server(server: Server) -> None:
    if server.sshd is not None:
        await server.sshd.stop(connections=True)
    await server.sim.stop()


@pytest.fixture(params=SERVERS)
async def bench(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    short_dir: Path,
    client_key: asyncssh.SSHKey,
) -> AsyncIterator[Bench]:
    server = await make_server(request.param, tmp_path, short_dir, client_key)
    key_file = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_file))
    clock = ManualClock()
    sink = MemorySink()
    registry = CollectorRegistry()
    triggers: list[str] = []
    machines = build_machines(clock, sink, triggers.append, registry)
    bench = Bench(server, clock, sink, triggers, machines, registry, key_file, tmp_path)
    try:
        yield bench
    finally:
        for conn in bench.opened:  # a failed test must not leave a dialler behind
            await conn.close()
        await stop_server(server)


@asynccontextmanager
async def controller(
    bench: Bench, short_dir: Path, **rds: object
) -> AsyncIterator[tuple[ControllerApp, grpc.aio.Channel]]:
    """The controller as shipped (`build_controller`) against the bench's server, on the
    bench's clock, and a gRPC channel to its CSI socket."""
    settings: dict[str, object] = {
        "address": "127.0.0.1",
        "port": bench.server.port,
        "user": bench.server.user,
        "key_file": str(bench.key_file),
        "host_keys": [bench.server.host_key],
    }
    settings.update(rds)
    config = DriverConfig(
        controller=True,
        endpoint=f"unix://{short_dir / 'csi.sock'}",
        rds=ApplianceConfig(**settings),  # type: ignore[arg-type]
        known_nodes=["node-a"],
    ).validate()
    app = build_controller(config, bench.clock, MemorySink(), CollectorRegistry())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(config.endpoint) as channel:
            yield app, channel
    finally:
        await app.stop()


def create_request(name: str) -> pb.CreateVolumeRequest:
    return pb.CreateVolumeRequest(
        name=name,
        volume_capabilities=[
            pb.VolumeCapability(
                mount=pb.VolumeCapability.MountVolume(),
                access_mode=pb.VolumeCapability.AccessMode(
                    mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                ),
            )
        ],
        capacity_range=pb.CapacityRange(required_bytes=1 << 20),
    )
