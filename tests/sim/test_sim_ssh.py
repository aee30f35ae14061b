"""The simulator over real SSH: login, host key, exec channels, concurrency, restart."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncssh
import pytest

from rdscsi.clock import LoopClock
from rdscsi.sim import SimConfig, Simulator
from tests.sim.sim_helpers import add_line, connect, run


async def test_commands_over_ssh(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    assert await run(ssh, add_line("pvc-1", "50G")) == ("", 0)
    out, status = await run(ssh, "/disk print detail where slot=pvc-1")
    assert status == 0
    assert out.startswith('Flags: X - disabled\n 0  type=file slot="pvc-1"')
    assert "file-size=50.0GiB file-offset=0\n\n" in out
    assert await run(ssh, "/disk set [find slot=nope] file-size=1G") == (
        "failure: no such item\n",
        1,
    )
    assert await run(ssh, "/disk frob") == ("bad command name frob (line 1 column 7)\n", 1)
    assert await run(ssh, "/disk remove [find slot=nope]") == ("", 0)
    assert sim.commands[0] == add_line("pvc-1", "50G")
    assert sim.backing_path("pvc-1").stat().st_size == 50 * 2**30


async def test_render_switch_and_crlf(sim_config: SimConfig, client_key: asyncssh.SSHKey) -> None:
    config = replace(sim_config, render="colon", line_ending="\r\n", error_exit_status=0)
    async with Simulator(config) as sim:
        conn = await connect(sim, client_key)
        async with conn:
            await run(conn, add_line("pvc-c", "1G"))
            out, _ = await run(conn, "/disk print detail where slot=pvc-c")
            assert out.startswith("  " + "type".rjust(31) + ": file\r\n")
            assert "\n" not in out.replace("\r\n", "")
            assert await run(conn, "/disk frob") == (
                "bad command name frob (line 1 column 7)\r\n",
                0,
            )
            sim.render = "plain"
            out, _ = await run(conn, "/disk print detail where slot=pvc-c")
            assert out.startswith('type=file slot="pvc-c"')


async def test_wrong_client_key_is_refused(sim: Simulator) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(sim, stranger)
    sim.authorize_key(stranger.export_public_key().decode())
    conn = await connect(sim, stranger)
    async with conn:
        assert (await run(conn, "/disk print"))[1] == 0


async def test_password_login_is_not_offered(sim: Simulator) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            sim.host,
            sim.port,
            username="admin",
            password="admin",
            known_hosts=None,
            client_keys=None,
        )


async def test_shell_is_refused(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    with pytest.raises(asyncssh.ChannelOpenError):
        await ssh.create_process()


async def test_host_key_and_state_survive_restart(
    sim_config: SimConfig, client_key: asyncssh.SSHKey
) -> None:
    async with Simulator(sim_config) as first:
        host_key = first.host_key
        assert host_key.startswith("ssh-ed25519 ")
        assert (first.data_dir / "ssh_host_ed25519_key").exists()
        conn = await connect(first, client_key)
        async with conn:
            await run(conn, add_line("pvc-keep", "2G"))
        port = first.port
        await first.restart()
        assert (first.port, first.host_key) == (port, host_key)
        conn = await connect(first, client_key)  # pinned to the same key
        async with conn:
            out, _ = await run(conn, "/disk print detail where slot=pvc-keep")
            assert 'slot="pvc-keep"' in out
    # A new process on the same data dir: same key, same disks.
    async with Simulator(sim_config) as second:
        assert second.host_key == host_key
        conn = await connect(second, client_key)
        async with conn:
            out, _ = await run(conn, "/disk print detail where slot=pvc-keep")
            assert "size=2 147 483 648 " in out


async def test_twenty_concurrent_commands_on_one_connection(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    sim.config.max_sessions = 32  # beyond OpenSSH's default of 10, as configured
    adds = [run(ssh, add_line(f"pvc-{i:02d}", f"{i + 1}M")) for i in range(20)]
    assert await asyncio.gather(*adds) == [("", 0)] * 20
    prints = [run(ssh, f"/disk print detail where slot=pvc-{i:02d}") for i in range(20)]
    for i, (out, status) in enumerate(await asyncio.gather(*prints)):
        assert status == 0 and f'slot="pvc-{i:02d}"' in out
    assert len(sim.store.disks) == 20


async def test_latency_overlaps_between_channels(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    """The latency of each command is spent in its own channel: 8 commands wait together
    (counted where they wait, not timed, so a busy machine cannot fail it)."""

    class Counting(LoopClock):
        active = peak = 0

        async def sleep(self, delay: float) -> None:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await super().sleep(delay)
            finally:
                self.active -= 1

    await run(ssh, "/disk print")  # warm up the connection
    clock = sim.config.clock = Counting()
    sim.faults.latency = 0.2
    results = await asyncio.gather(*(run(ssh, "/disk print count-only") for _ in range(8)))
    assert results == [("1\n", 0)] * 8
    assert clock.peak == 8  # 8 x 0.2 s overlapped, not 1.6 s in a row


async def test_session_cap_per_connection(
    sim_config: SimConfig, client_key: asyncssh.SSHKey
) -> None:
    async with Simulator(replace(sim_config, max_sessions=2)) as sim:
        conn = await connect(sim, client_key)
        async with conn:
            sim.faults.hang_next(2)
            hanging = [asyncio.ensure_future(conn.run("/disk print")) for _ in range(2)]
            await sim.faults.wait_hanging(2)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.run("/disk print")
            sim.faults.release_hangs()
            assert [result.exit_status for result in await asyncio.gather(*hanging)] == [0, 0]
            assert (await run(conn, "/disk print count-only")) == ("1\n", 0)


async def test_control_characters_and_injection_never_run(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    for line in (
        '/disk remove [find slot="x"]; /disk add slot=y',
        "/disk print\n/disk add type=file file-path=/storage-pool/z.img file-size=1 slot=z",
        "/disk add slot=$(touch /tmp/pwned)",
        "/disk add type=file file-path=/storage-pool/`id`.img file-size=1 slot=q",
    ):
        out, status = await run(ssh, line)
        assert out.startswith("syntax error (line 1 column "), line
        assert status == 1
    assert sim.store.disks == {}


async def test_concurrent_allocations_are_atomic(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    sim.pool_size = 10 * 2**30
    sim.config.max_sessions = 16  # all at once on one connection
    results = await asyncio.gather(*(run(ssh, add_line(f"pvc-{i}", "1G")) for i in range(16)))
    assert sorted(results) == [("", 0)] * 10 + [("failure: not enough space\n", 1)] * 6
    assert len(sim.store.disks) == 10 and sim.store.free_bytes() == 0


async def test_monitor_traffic_streams_without_once(
    sim_config: SimConfig, client_key: asyncssh.SSHKey
) -> None:
    async with Simulator(replace(sim_config, monitor_interval=0.01)) as sim:
        conn = await connect(sim, client_key)
        async with conn:
            await run(conn, add_line("pvc-t", "1G"))
            process = await conn.create_process("/disk monitor-traffic pvc-t")
            first = await process.stdout.readuntil("in-flight-ops: 0\n")
            sim.set_traffic("pvc-t", read_ops_per_second=7)
            while "read-ops-per-second: 7" not in (
                block := await process.stdout.readuntil("in-flight-ops: 0\n")
            ):
                pass
            assert "read-ops-per-second: 0" in first and "slot: pvc-t" in block
            process.close()
            await process.wait_closed()
