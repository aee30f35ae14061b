"""Fixtures for the simulator tests: a running simulator and an SSH client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from rdscsi.sim import SimConfig, Simulator
from rdscsi.sim.units import TIB
from tests.sim.sim_helpers import connect


@pytest.fixture
def sim_config(tmp_path: Path, client_key: asyncssh.SSHKey) -> SimConfig:
    return SimConfig(
        data_dir=tmp_path / "sim",
        authorized_keys=[client_key.export_public_key().decode()],
        pool_size=8 * TIB,
    )


@pytest.fixture
async def sim(sim_config: SimConfig) -> AsyncIterator[Simulator]:
    async with Simulator(sim_config) as simulator:
        yield simulator


@pytest.fixture
async def ssh(
    sim: Simulator, client_key: asyncssh.SSHKey
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    conn = await connect(sim, client_key)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()
