"""Loss detection that does not depend on load, and a health check that never kills a
healthy link: both servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from rdscsi.io.rds.errors import TransportLostError
from rdscsi.testing.partition import PartitionProxy

from .conftest import Bench, hanging, started, until


async def eventually(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def health(bench: Bench, outcome: str) -> float:
    return bench.sample("rds_csi_rds_health_checks_total", {"outcome": outcome})


async def test_health_check_has_its_own_channel(bench: Bench) -> None:
    """Every command slot is taken by a hung command; the health check still runs at once."""
    conn = await started(bench)
    bench.sim.faults.hang_match = "mount-point"  # every pool print hangs
    hung = [
        asyncio.ensure_future(conn.run(conn.commands.pool_print()))
        for _ in range(conn.config.max_concurrency)
    ]
    await hanging(bench, conn.config.max_concurrency)
    bench.clock.advance(conn.config.health_interval)
    await eventually(lambda: health(bench, "ok") == 1)
    bench.sim.faults.hang_match = None
    bench.sim.faults.release_hangs()
    assert all("free=" in o for o in await asyncio.gather(*hung))


async def _check_while_advancing(bench: Bench, check: asyncio.Future[str]) -> str:
    # the refusal retries wait on the injected clock: move it, slowly enough (5 s in 1 s)
    # that a real sshd answering in ~0.1 s is never outrun
    while not check.done():
        await asyncio.sleep(0.01)
        bench.clock.advance(0.05)
    return await check


async def test_a_refused_health_check_keeps_the_link(bench: Bench) -> None:
    """The server's sessions are full (MaxSessions 2, both held by hung commands): the
    health command's channel is refused, which says nothing about the link."""
    await bench.server.set_max_sessions(2)
    conn = await started(bench)
    bench.sim.faults.hang_next(2)
    hung = [asyncio.ensure_future(conn.run(conn.commands.pool_print())) for _ in "ab"]
    await hanging(bench, 2)
    outcome = await _check_while_advancing(bench, asyncio.ensure_future(conn.check_health()))
    assert outcome == "refused"
    assert health(bench, "refused") >= 1
    assert bench.sample("rds_csi_rds_channel_refused_total") > 0
    assert conn.state == "connected" and bench.sink.reasons() == []
    bench.sim.faults.release_hangs()
    assert all("free=" in o for o in await asyncio.gather(*hung))
    assert await _check_while_advancing(bench, asyncio.ensure_future(conn.check_health())) == "ok"


async def test_an_unanswered_health_check_keeps_the_link(bench: Bench) -> None:
    """A slow or hung appliance is not a dead link: nothing in flight is torn down."""
    conn = await started(bench)
    bench.sim.faults.hang_next(1)
    check = asyncio.ensure_future(conn.check_health())
    await hanging(bench, 1)
    bench.clock.advance(conn.config.health_timeout)
    assert await check == "timeout"
    assert conn.state == "connected" and bench.sink.reasons() == []
    assert "free=" in await conn.run(conn.commands.pool_print())
    bench.sim.faults.release_hangs()


async def test_the_health_loop_cannot_die_silently(bench: Bench) -> None:
    conn = await started(bench)
    real = conn.check_health
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the health check")
        return await real()

    conn.check_health = flaky  # type: ignore[method-assign]
    bench.clock.advance(conn.config.health_interval)
    await eventually(lambda: bench.sample("rds_csi_rds_health_loop_restarts_total") == 1)
    for _ in range(2):  # the restart waits one interval, then the loop runs again
        await asyncio.sleep(0.01)
        bench.clock.advance(conn.config.health_interval)
    await eventually(lambda: health(bench, "ok") >= 1)
    assert calls >= 2 and conn.state == "connected"


async def test_silent_partition_with_every_slot_busy(bench: Bench) -> None:
    """The network goes silent (no FIN, no RST) while every command slot is busy: SSH
    keepalive finds it within (keepalive_count + 1) x keepalive_interval, however busy."""
    proxy = PartitionProxy("127.0.0.1", bench.server.port)
    await proxy.start()
    try:
        conn = await started(bench, port=proxy.port, keepalive_interval=0.2, keepalive_count=2)
        bound = conn.config.loss_bound
        bench.sim.faults.hang_match = "mount-point"
        busy = [
            asyncio.ensure_future(conn.run(conn.commands.pool_print()))
            for _ in range(conn.config.max_concurrency)
        ]
        await hanging(bench, conn.config.max_concurrency)
        proxy.partition()
        cut = time.monotonic()
        await until(conn, lambda: conn.state != "connected", timeout=bound + 5)
        detected = time.monotonic() - cut
        print(
            f"{bench.server.kind}: silent partition detected in {detected * 1000:.0f} ms "
            f"(bound {bound * 1000:.0f} ms) with {len(busy)} slots busy"
        )
        assert detected <= bound + 0.5, (detected, bound)
        for task in busy:
            with pytest.raises(TransportLostError):
                await task  # sent, outcome unknown
        # the network heals; the appliance still holds the dead link's sessions, the new
        # link has its own
        bench.sim.faults.hang_match = None
        proxy.heal()
        while conn.state != "connected":
            await asyncio.sleep(0.02)
            bench.clock.advance(1.0)  # a dial that started during the partition times out
        assert "free=" in await conn.run(conn.commands.pool_print())
        assert bench.sink.reasons()[:2] == ["RDSDisconnected", "RDSReconnected"]
    finally:
        bench.sim.faults.release_hangs()
        await proxy.stop()
