"""A running simulator and an adapter wired to the real machines, on an injected clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import Machines, build_machines
from rdscsi.io.rds.connection import CommandMetrics, RDSConfig, RDSConnection
from rdscsi.sim import SimConfig, Simulator


@dataclass
class Bench:
    sim: Simulator
    clock: ManualClock
    sink: MemorySink
    triggers: list[str]
    machines: Machines
    registry: CollectorRegistry
    key_file: Path
    tmp: Path
    opened: list[RDSConnection] = field(default_factory=list)

    def config(self, **overrides: object) -> RDSConfig:
        base: dict[str, object] = {
            "address": "127.0.0.1",
            "port": self.sim.port,
            "client_keys": [str(self.key_file)],
            "host_keys": [self.sim.host_key],
        }
        base.update(overrides)
        return RDSConfig(**base)  # type: ignore[arg-type]

    def connection(self, **overrides: object) -> RDSConnection:
        conn = RDSConnection(
            self.config(**overrides),
            self.machines.connection,
            self.clock,
            random.Random(7),
            CommandMetrics(self.registry),
        )
        self.opened.append(conn)
        return conn


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
    registry = CollectorRegistry()
    triggers: list[str] = []
    machines = build_machines(clock, sink, triggers.append, registry)
    bench = Bench(sim, clock, sink, triggers, machines, registry, key_file, tmp_path)
    try:
        yield bench
    finally:
        for conn in bench.opened:  # a failed test must not leave a dialler behind
            await conn.close()
        await sim.stop()
