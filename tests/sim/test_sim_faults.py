"""Every fault: latency, hang, drop now, drop mid-command, fail-next, pool full,
malformed output, refused connections, restart."""

from __future__ import annotations

import asyncio
import time

import asyncssh
import pytest

from rdscsi.sim import Simulator
from tests.sim.sim_helpers import DROPPED, add_line, assert_lost, connect, run


async def test_latency_delays_each_command(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    sim.faults.latency = 0.15
    started = time.monotonic()
    assert (await run(ssh, "/disk print count-only")) == ("1\n", 0)
    assert time.monotonic() - started >= 0.15
    sim.faults.latency = 0.0


async def test_hang_until_the_connection_closes(
    sim: Simulator, client_key: asyncssh.SSHKey
) -> None:
    victim = await connect(sim, client_key)
    sim.faults.hang_next(1)
    hung = asyncio.ensure_future(victim.run(add_line("pvc-h", "1G")))
    await sim.faults.wait_hanging(1)
    assert not hung.done()
    # Other commands (the hang was for one only) still answer, on another connection too.
    other = await connect(sim, client_key)
    async with other:
        assert (await run(other, "/disk print count-only")) == ("1\n", 0)
    victim.close()
    await assert_lost(hung)
    await sim.faults.wait_not_hanging()
    assert "pvc-h" not in sim.store.disks  # it never ran


async def test_hang_matching_and_release(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    sim.faults.hang_match = "monitor-traffic"
    await run(ssh, add_line("pvc-m", "1G"))
    first = asyncio.ensure_future(run(ssh, "/disk monitor-traffic pvc-m once"))
    second = asyncio.ensure_future(run(ssh, "/disk monitor-traffic pvc-m once"))
    await sim.faults.wait_hanging(2)
    assert (await run(ssh, "/disk print count-only")) == ("2\n", 0)
    sim.faults.hang_match = None
    sim.faults.release_hangs()
    for outcome in await asyncio.gather(first, second):
        assert outcome[1] == 0 and "slot: pvc-m" in outcome[0]


async def test_drop_all_connections_now(sim: Simulator, client_key: asyncssh.SSHKey) -> None:
    one = await connect(sim, client_key)
    two = await connect(sim, client_key)
    await run(one, "/disk print")
    await run(two, "/disk print")
    assert sim.faults.drop_connections() == 2
    for conn in (one, two):
        await conn.wait_closed()
        with pytest.raises(DROPPED):
            await conn.run("/disk print")
    fresh = await connect(sim, client_key)  # the server still listens
    async with fresh:
        assert (await run(fresh, "/disk print count-only"))[1] == 0


@pytest.mark.parametrize("apply", [True, False])
async def test_drop_in_the_middle_of_a_command(
    sim: Simulator, client_key: asyncssh.SSHKey, apply: bool
) -> None:
    conn = await connect(sim, client_key)
    sim.faults.drop_mid_next(1, apply=apply)
    await assert_lost(conn.run(add_line("pvc-d", "1G")))
    await conn.wait_closed()
    # With `apply` the disk was made although the client never heard so.
    assert ("pvc-d" in sim.store.disks) is apply
    again = await connect(sim, client_key)
    async with again:
        out, _ = await run(again, "/disk print count-only where slot=pvc-d")
        assert out == ("1\n" if apply else "0\n")


async def test_fail_next_n_with_text(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    sim.faults.fail_next(2, "not enough space")
    for slot in ("pvc-f1", "pvc-f2"):
        assert await run(ssh, add_line(slot, "1G")) == ("failure: not enough space\n", 1)
    assert sim.store.disks == {}  # failed commands did nothing
    assert await run(ssh, add_line("pvc-f3", "1G")) == ("", 0)
    sim.faults.fail_next(1, "failure: disk is in use")
    assert await run(ssh, "/disk print") == ("failure: disk is in use\n", 1)


async def test_pool_full(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    await run(ssh, add_line("pvc-p", "1G"))
    sim.faults.pool_full = True
    assert await run(ssh, add_line("pvc-q", "1G")) == ("failure: not enough space\n", 1)
    assert await run(ssh, "/disk set pvc-p file-size=2G") == ("failure: not enough space\n", 1)
    copy = "/disk add type=file copy-from=[find slot=pvc-p] file-path=/storage-pool/c.img slot=c"
    assert await run(ssh, copy) == ("failure: not enough space\n", 1)
    sim.faults.pool_full = False
    assert await run(ssh, add_line("pvc-q", "1G")) == ("", 0)


async def test_malformed_output(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    sim.faults.malformed_next(2)
    garbage, status = await run(ssh, "/disk print detail")
    assert status == 0 and garbage and "slot=" not in garbage and "Flags:" not in garbage
    out, _ = await run(ssh, add_line("pvc-g", "1G"))
    assert out == garbage  # it ran, but answered garbage
    assert "pvc-g" in sim.store.disks
    assert (await run(ssh, "/disk print count-only")) == ("2\n", 0)


async def test_refuse_new_connections(sim: Simulator, client_key: asyncssh.SSHKey) -> None:
    existing = await connect(sim, client_key)
    sim.faults.refuse = True
    with pytest.raises(DROPPED):
        await connect(sim, client_key)
    assert (await run(existing, "/disk print count-only"))[1] == 0  # open ones keep working
    sim.faults.refuse = False
    fresh = await connect(sim, client_key)
    async with fresh, existing:
        assert (await run(fresh, "/disk print count-only"))[1] == 0


async def test_restart_drops_clients_and_reloads_state(
    sim: Simulator, client_key: asyncssh.SSHKey
) -> None:
    conn = await connect(sim, client_key)
    await run(conn, add_line("pvc-r", "1G"))
    sim.register_host_connection("pvc-r", "nqn.host-a", "10.1.1.1", 4000)
    old_store, port = sim.store, sim.port
    await sim.restart()
    await conn.wait_closed()
    with pytest.raises(DROPPED):
        await conn.run("/disk print")
    assert sim.store is not old_store and sim.port == port
    assert set(sim.store.disks) == {"pvc-r"}
    fresh = await connect(sim, client_key)
    async with fresh:
        out, _ = await run(fresh, "/interface nvme-tcp connection print")
        assert 'host-nqn="nqn.host-a"' in out
        assert sim.unregister_host_connection(slot="pvc-r") == 1
        assert await run(fresh, "/interface nvme-tcp connection print") == ("", 0)


async def test_stop_ends_hanging_commands_without_running_them(
    sim: Simulator, client_key: asyncssh.SSHKey
) -> None:
    conn = await connect(sim, client_key)
    sim.faults.hang_next(3)
    hung = [asyncio.ensure_future(conn.run(add_line(f"pvc-{i}", "1G"))) for i in range(3)]
    await sim.faults.wait_hanging(3)
    await sim.stop()
    assert sim.faults.hanging == 0
    assert sim.store.disks == {}
    for future in hung:
        await assert_lost(future)


async def test_clear_and_status(sim: Simulator) -> None:
    faults = sim.faults
    faults.latency = 1.0
    faults.pool_full = faults.refuse = True
    faults.hang_next(2)
    faults.fail_next(3, "x")
    faults.malformed_next(4)
    faults.drop_mid_next(5, apply=False)
    status = faults.status()
    assert (status["hang_next"], status["fail_next"], status["fail_text"]) == (2, 3, "failure: x")
    assert (status["malformed_next"], status["drop_mid_next"], status["drop_mid_apply"]) == (
        4,
        5,
        False,
    )
    faults.clear()
    assert faults.plan("/disk print") == type(faults.plan("/disk print"))()
    assert not faults.pool_full and not faults.refuse
