"""The SSH adapter's lifecycle against both servers: commands, loss and reconnection,
backoff, host-key pinning and known_hosts, with time injected."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os

import asyncssh
import pytest

from rdscsi.io.rds import parse
from rdscsi.io.rds.errors import (
    ApplianceFailureError,
    NotEnoughSpaceError,
    NotFoundError,
    TransportLostError,
    UnavailableError,
    UnparseableOutputError,
)

from .conftest import Bench, hanging, started, until

GIB = 1 << 30


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


async def test_crlf_replies_parse(bench: Bench) -> None:
    bench.sim.config.line_ending = "\r\n"  # a device writing CR LF
    conn = await started(bench)
    pool = parse.parse_pool(await conn.run(conn.commands.pool_print()))
    assert pool is not None and pool.size > 0
    with pytest.raises(NotFoundError):
        await conn.run(conn.commands.disk_grow("pvc-none", GIB))


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
    counted = bench.sample(
        "rds_csi_rds_command_errors_total", {"verb": "pool-print", "error": "NotEnoughSpaceError"}
    )
    assert counted == 1


async def test_unreachable_at_start_is_backoff_not_a_crash(bench: Bench) -> None:
    await bench.server.stop()
    conn = await started(bench)
    assert conn.state == "backoff"
    assert 0.9 <= conn.model.delay <= 1.1
    with pytest.raises(UnavailableError, match="backoff"):
        await conn.run(conn.commands.pool_print())
    await bench.server.start()
    bench.clock.advance(conn.model.delay)
    await until(conn, lambda: conn.state == "connected")
    assert bench.triggers == ["connection:succeeded"]


async def test_drop_is_seen_at_once_and_reconnects(bench: Bench) -> None:
    """The appliance side of the link dies (sshd: its per-connection process is killed)."""
    conn = await started(bench)
    assert await bench.server.drop_connections() == 1
    # no clock advance: loss is seen from the closed connection, the first redial is immediate
    await until(conn, lambda: conn.state == "connected" and len(bench.sink.events) >= 2)
    assert bench.sink.reasons() == ["RDSDisconnected", "RDSReconnected"]
    assert bench.triggers == ["connection:succeeded", "connection:succeeded"]
    assert await conn.run(conn.commands.pool_print())


async def test_a_lost_link_is_never_reported_as_connected(bench: Bench) -> None:
    """Between the loss and the redial nobody is told "connected, not connected"."""
    await bench.server.stop()
    conn = bench.connection()
    bench.clock.advance(0)
    await bench.server.start()
    await conn.start()
    await until(conn, lambda: conn.state == "connected")
    seen: list[str] = []
    real = conn._transition

    def spy(event: str, **payload: str) -> None:
        real(event, **payload)
        if event == "lost":
            # the very moment the machine hears of the loss, commands are refused honestly
            try:
                conn._live(conn.commands.pool_print())
            except UnavailableError as exc:
                seen.append(str(exc))

    conn._transition = spy  # type: ignore[method-assign]
    await bench.server.stop()
    await until(conn, lambda: conn.state == "backoff")
    assert seen and "is disconnected, not connected" in seen[0], seen
    with pytest.raises(UnavailableError, match="is backoff, not connected"):
        await conn.run(conn.commands.pool_print())


async def test_restart_backoff_sequence(bench: Bench) -> None:
    conn = await started(bench)
    port = bench.server.port
    await bench.server.stop()
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
    # the jitter spreads both ways around each step (a one-sided jitter fails here)
    assert any(d < b for d, b in zip(delays, bases, strict=True)), delays
    assert any(d > b for d, b in zip(delays, bases, strict=True)), delays
    await bench.server.start()
    assert bench.server.port == port
    bench.clock.advance(conn.model.delay)
    await until(conn, lambda: conn.state == "connected")
    assert conn.model.attempt == 0
    assert bench.sink.reasons() == ["RDSDisconnected", "RDSReconnected"]
    failures = bench.sample("rds_csi_rds_reconnect_total", {"status": "failure"})
    assert failures == 7  # the immediate redial plus six on the timer


async def test_drop_mid_command_is_transport_lost(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.drop_mid_next(1)
    with pytest.raises((TransportLostError, UnavailableError)):
        await conn.run(conn.commands.pool_print())
    await until(conn, lambda: conn.state == "connected" and len(bench.sink.events) >= 2)


async def test_output_cap(bench: Bench) -> None:
    conn = await started(bench, output_limit=64)
    with pytest.raises(UnparseableOutputError, match="longer than 64 bytes"):
        await conn.run(conn.commands.pool_print())
    assert conn.state == "connected"
    await hanging(bench, 0)


# --- host keys -------------------------------------------------------------------------------


async def test_rotated_host_keys_accept_either(bench: Bench) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    conn = await started(bench, host_keys=[other, bench.server.host_key])
    assert conn.state == "connected"


def _hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize("entry", ["plain", "hashed", "wildcard"])
async def test_known_hosts_file(bench: Bench, entry: str) -> None:
    port = bench.server.port
    key = bench.server.host_key
    line = {
        "plain": f"[127.0.0.1]:{port} {key}",
        "hashed": f"{_hashed(f'[127.0.0.1]:{port}')} {key}",
        "wildcard": f"[127.0.0.?]:{port} {key}",
    }[entry]
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    path = bench.tmp / "known_hosts"
    path.write_text(f"# comment\nother.example {stranger}\n{line}\n")
    conn = await started(bench, host_keys=[], known_hosts=str(path))
    assert conn.state == "connected"
    assert await conn.run(conn.commands.pool_print())


async def test_skipping_host_key_check_warns_every_start(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    conn = await started(bench, host_keys=[], insecure_skip_host_key_check=True)
    assert conn.state == "connected"
    assert "host key verification is DISABLED" in caplog.text


def test_host_key_verification_is_required(bench: Bench) -> None:
    with pytest.raises(ValueError, match="host key"):
        bench.config(host_keys=[]).validate()


# --- the real sshd's own lifecycle ----------------------------------------------------------


@pytest.mark.parametrize("bench", ["openssh"], indirect=True)
async def test_restarting_only_the_listener_keeps_the_link(bench: Bench) -> None:
    """`systemctl restart ssh` on an OpenSSH server restarts the listener only: established
    links (their per-connection processes) live on, and the adapter never notices."""
    assert bench.server.sshd is not None
    conn = await started(bench)
    await bench.server.sshd.restart(connections=False)
    assert await conn.run(conn.commands.pool_print())
    assert conn.state == "connected" and bench.sink.reasons() == []
