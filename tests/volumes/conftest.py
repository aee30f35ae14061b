"""A running simulator, an adapter on an injected clock, and a VolumeStore over real SSH."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.rds.commands import Command
from rdscsi.io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from rdscsi.io.rds.volumes import StoreSettings, VolumeStore
from rdscsi.sim import SimConfig, Simulator


@dataclass
class Wall:
    """A wall clock the test sets (snapshot creation times come from it)."""

    now: float = 1_700_000_000.123

    def __call__(self) -> float:
        return self.now


@dataclass
class Bench:
    sim: Simulator
    clock: ManualClock
    sink: MemorySink
    conn: RDSConnection
    store: VolumeStore
    wall: Wall
    opened: list[RDSConnection] = field(default_factory=list)

    @property
    def pool_dir(self) -> Path:
        """Where the simulator keeps the pool's files."""
        return self.sim.store.files_root / self.sim.store.pool_name

    def files(self) -> list[str]:
        """Every file under the pool, relative to it (``k8s/vol/pvc-1.img``)."""
        return sorted(str(p.relative_to(self.pool_dir)) for p in self.pool_dir.rglob("*.img"))

    def disks(self) -> list[str]:
        return sorted(self.sim.store.disks)

    def sent(self, fragment: str) -> int:
        """How many lines containing ``fragment`` the simulator received."""
        return sum(fragment in line for line in self.sim.commands)

    def before(self, verb: str, action: Callable[[Command], Awaitable[None]]) -> None:
        """Run ``action`` once, just before the store sends its next command with ``verb``."""
        run = self.conn.run
        done = False

        async def hooked(command: Command, timeout: float | None = None) -> str:
            nonlocal done
            if command.verb == verb and not done:
                done = True
                await action(command)
            return await run(command, timeout)

        self.conn.run = hooked  # type: ignore[method-assign]

    def drop_on(self, verb: str) -> None:
        """The next command with this verb takes effect, then the connection drops.

        Armed just before that command is sent: the fault counts commands, and the store
        sends lookups first.
        """

        async def arm(_command: Command) -> None:
            self.sim.faults.drop_mid_next(1)

        self.before(verb, arm)

    async def reconnected(self) -> None:
        """Until the connection has come back after the drop (ManualClock: no backoff wait)."""
        await until(
            self.conn,
            lambda: self.conn.state == "connected" and "RDSReconnected" in self.sink.reasons(),
        )


async def until(conn: RDSConnection, predicate: Callable[[], bool]) -> None:
    await asyncio.wait_for(conn.wait_until(predicate), 10)


def _connection(
    sim: Simulator, key_file: Path, clock: ManualClock, sink: MemorySink
) -> RDSConnection:
    registry = CollectorRegistry()
    machines = build_machines(clock, sink, lambda _trigger: None, registry)
    config = RDSConfig(
        address="127.0.0.1",
        port=sim.port,
        client_keys=[str(key_file)],
        host_keys=[sim.host_key],
    )
    return RDSConnection(
        config, machines.connection, clock, random.Random(7), CommandMetrics(registry)
    )


@pytest.fixture
async def bench(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[Bench]:
    key_file = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_file))
    sim = Simulator(
        SimConfig(
            data_dir=tmp_path / "sim",
            authorized_keys=[client_key.export_public_key().decode()],
        )
    )
    await sim.start()
    clock = ManualClock()
    sink = MemorySink()
    conn = _connection(sim, key_file, clock, sink)
    wall = Wall()
    bench = Bench(sim, clock, sink, conn, VolumeStore(conn, StoreSettings(), wall), wall)
    bench.opened.append(conn)
    try:
        await conn.start()
        await until(conn, lambda: conn.state == "connected")
        yield bench
    finally:
        for opened in bench.opened:  # a failed test must not leave a dialler behind
            await opened.close()
        await sim.stop()
