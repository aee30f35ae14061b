"""The SSH adapter against the simulator over real SSH, with time injected."""

from __future__ import annotations

import asyncio
import logging

import asyncssh
import pytest

from rdscsi.io.rds import parse
from rdscsi.io.rds.connection import RDSConnection
from rdscsi.io.rds.errors import (
    ApplianceFailureError,
    CommandTimeoutError,
    NotEnoughSpaceError,
    NotFoundError,
    TransportLostError,
    UnavailableError,
    UnparseableOutputError,
)

from .conftest import Bench

GIB = 1 << 30


async def started(bench: Bench, **overrides: object) -> RDSConnection:
    conn = bench.connection(**overrides)
    await conn.start()
    await asyncio.wait_for(conn.wait_for("connected", "backoff"), 10)
    return conn


async def until(conn: RDSConnection, predicate: object) -> None:
    await asyncio.wait_for(conn.wait_until(predicate), 10)  # type: ignore[arg-type]


async def test_volume_commands_round_trip(bench: Bench) -> None:
    conn = await started(bench)
    assert conn.state == "connected"
    b = conn.commands
    size = 3 * GIB + 1  # never rounded
    await conn.run(
        b.disk_add(
            slot="pvc-1",
            file_path="/storage-pool/k8s/pvc-1.img",
            file_size=size,
            nvme_port=4420,
            nvme_nqn="nqn.2000-02.com.mikrotik:pvc-1",
        )
    )
    disk = parse.parse_disk(await conn.run(b.disk_print("pvc-1")))
    assert disk is not None and disk.size == size and disk.slot == "pvc-1"
    await conn.run(b.disk_grow("pvc-1", 5 * GIB))
    disk = parse.parse_disk(await conn.run(b.disk_print("pvc-1")))
    assert disk is not None and disk.size == 5 * GIB
    pool = parse.parse_pool(await conn.run(b.pool_print()))
    assert pool is not None and pool.free == pool.size - 5 * GIB
    await conn.run(b.disk_remove("pvc-1"))
    await conn.run(b.file_remove("/storage-pool/k8s/pvc-1.img"))
    assert parse.parse_disk(await conn.run(b.disk_print("pvc-1"))) is None
    with pytest.raises(NotFoundError, match="pvc-2"):
        await conn.run(b.disk_grow("pvc-2", GIB))
    await conn.close()
    assert conn.state == "closed"


async def test_errors_are_classified(bench: Bench) -> None:
    conn = await started(bench)
    b = conn.commands
    bench.sim.faults.fail_next(1, "not enough space")
    with pytest.raises(NotEnoughSpaceError):
        await conn.run(b.pool_print())
    bench.sim.faults.fail_next(1, "something odd happened")
    with pytest.raises(ApplianceFailureError, match="something odd"):
        await conn.run(b.pool_print())
    bench.sim.faults.malformed_next(1)
    with pytest.raises(UnparseableOutputError):
        parse.parse_pool(await conn.run(b.pool_print()))
    counted = bench.registry.get_sample_value(
        "rds_csi_rds_command_errors_total", {"verb": "pool-print", "error": "NotEnoughSpaceError"}
    )
    assert counted == 1
    await conn.close()


async def test_unreachable_at_start_is_backoff_not_a_crash(bench: Bench) -> None:
    await bench.sim.stop()
    conn = await started(bench)
    assert conn.state == "backoff"
    assert 0.9 <= conn.model.delay <= 1.1
    with pytest.raises(UnavailableError, match="backoff"):
        await conn.run(conn.commands.pool_print())
    await bench.sim.start()
    bench.clock.advance(conn.model.delay)
    await until(conn, lambda: conn.state == "connected")
    assert bench.triggers == ["connection:succeeded"]
    await conn.close()


async def test_drop_is_seen_at_once_and_reconnects(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.drop_connections()
    # no clock advance: loss is seen from the closed connection, the first redial is immediate
    await until(conn, lambda: conn.state == "connected" and len(bench.sink.events) >= 2)
    assert bench.sink.reasons() == ["RDSDisconnected", "RDSReconnected"]
    assert bench.triggers == ["connection:succeeded", "connection:succeeded"]
    assert await conn.run(conn.commands.pool_print())
    await conn.close()


async def test_restart_backoff_sequence(bench: Bench) -> None:
    conn = await started(bench)
    port = bench.sim.port
    await bench.sim.stop()
    await until(conn, lambda: conn.state == "backoff")
    delays = [conn.model.delay]
    for _ in range(6):
        attempts = conn.model.attempt
        bench.clock.advance(conn.model.delay)
        await until(conn, lambda a=attempts: conn.model.attempt == a + 1)  # type: ignore[misc]
        delays.append(conn.model.delay)
    bases = [1, 2, 4, 8, 16, 16, 16]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.9 <= delay <= base * 1.1, (delays, bases)
    await bench.sim.start()
    assert bench.sim.port == port
    bench.clock.advance(conn.model.delay)
    await until(conn, lambda: conn.state == "connected")
    assert conn.model.attempt == 0
    assert bench.sink.reasons() == ["RDSDisconnected", "RDSReconnected"]
    failures = bench.registry.get_sample_value("rds_csi_rds_reconnect_total", {"status": "failure"})
    assert failures == 7  # the immediate redial plus six on the timer
    await conn.close()


async def test_host_key_mismatch_is_refused(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    conn = await started(bench, host_keys=[other])
    assert conn.state == "backoff"
    assert "dial failed" in caplog.text
    await conn.close()


async def test_rotated_host_keys_accept_either(bench: Bench) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    conn = await started(bench, host_keys=[other, bench.sim.host_key])
    assert conn.state == "connected"
    await conn.close()


async def test_wrong_client_key_is_refused(bench: Bench) -> None:
    wrong = bench.tmp / "wrong_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
    conn = await started(bench, client_keys=[str(wrong)])
    assert conn.state == "backoff"
    await conn.close()


async def test_skipping_host_key_check_warns_every_start(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    conn = await started(bench, host_keys=[], insecure_skip_host_key_check=True)
    assert conn.state == "connected"
    assert "host key verification is DISABLED" in caplog.text
    await conn.close()


def test_host_key_verification_is_required(bench: Bench) -> None:
    with pytest.raises(ValueError, match="host key"):
        bench.config(host_keys=[]).validate()


async def test_fifty_concurrent_commands_stay_under_the_cap(bench: Bench) -> None:
    conn = await started(bench)
    active = peak = 0
    real_run = bench.sim.interpreter.run

    async def counting(line: str):  # type: ignore[no-untyped-def]
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.01)
            return await real_run(line)
        finally:
            active -= 1

    bench.sim.interpreter.run = counting  # type: ignore[method-assign]
    outputs = await asyncio.gather(*(conn.run(conn.commands.pool_print()) for _ in range(50)))
    assert len(outputs) == 50 and all("free=" in o for o in outputs)
    assert peak == conn.config.max_concurrency
    await conn.close()


async def test_hung_command_times_out_and_connection_stays_usable(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.hang_next(1)
    hung = asyncio.create_task(conn.run(conn.commands.pool_print(), timeout=2.0))
    await bench.sim.faults.wait_hanging(1)
    bench.clock.advance(2.0)
    with pytest.raises(CommandTimeoutError, match="2s"):
        await hung
    assert conn.state == "connected"
    assert "free=" in await conn.run(conn.commands.pool_print())
    await conn.close()


async def test_drop_mid_command_is_transport_lost(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.drop_mid_next(1)
    with pytest.raises((TransportLostError, UnavailableError)):
        await conn.run(conn.commands.pool_print())
    await until(conn, lambda: conn.state == "connected" and len(bench.sink.events) >= 2)
    await conn.close()


async def test_half_open_link_found_by_health_check(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.hang_next(1)  # the next command (the health check) never answers
    bench.clock.advance(conn.config.health_interval)
    await bench.sim.faults.wait_hanging(1)
    bench.clock.advance(conn.config.health_timeout)
    await until(conn, lambda: "RDSDisconnected" in bench.sink.reasons())
    await until(conn, lambda: conn.state == "connected")
    await conn.close()


async def test_output_cap(bench: Bench) -> None:
    conn = await started(bench, output_limit=64)
    with pytest.raises(UnparseableOutputError, match="longer than 64 bytes"):
        await conn.run(conn.commands.pool_print())
    await conn.close()
