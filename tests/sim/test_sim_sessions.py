"""The simulator behaves like a real server where the driver can tell: sessions per
connection, sessions held by unfinished commands, stderr, replies cut by a killed process,
refused channel opens, and the relay a real sshd hands its commands to."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest

from rdscsi.sim import SimConfig, Simulator
from rdscsi.sim.relay_server import RELAY_PROGRAM
from tests.sim.sim_helpers import add_line, connect, run


async def test_ten_sessions_per_connection_by_default(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    assert sim.config.max_sessions == 10  # OpenSSH's default MaxSessions
    sim.faults.hang_next(10)
    hung = [asyncio.ensure_future(ssh.run("/disk print")) for _ in range(10)]
    await sim.faults.wait_hanging(10)
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        await ssh.run("/disk print")
    assert refused.value.code == asyncssh.OPEN_CONNECT_FAILED  # as OpenSSH: "open failed"
    sim.faults.release_hangs()
    assert [r.exit_status for r in await asyncio.gather(*hung)] == [0] * 10


async def test_a_closed_channel_holds_its_session_until_the_command_ends(
    sim_config: SimConfig, client_key: asyncssh.SSHKey
) -> None:
    async with Simulator(replace(sim_config, max_sessions=2)) as sim:
        conn = await connect(sim, client_key)
        async with conn:
            sim.faults.hang_next(2)
            first = await conn.create_process(add_line("pvc-a"))
            second = await conn.create_process("/disk print")
            await sim.faults.wait_hanging(2)
            first.close()  # the client gives up (a timeout) ...
            await first.wait_closed()
            with pytest.raises(asyncssh.ChannelOpenError):  # ... the session is still held
                await conn.run("/disk print")
            sim.faults.release_hangs()  # the command goes on and finishes
            await second.wait_closed()
            for _ in range(100):
                if "pvc-a" in sim.store.disks:
                    break
                await asyncio.sleep(0.01)
            assert "pvc-a" in sim.store.disks  # it ran: the client cannot know
            assert (await run(conn, "/disk print count-only where slot=pvc-a")) == ("1\n", 0)


async def test_refused_channel_opens_leave_the_connection_up(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    sim.faults.refuse_channels_next(2)
    for _ in range(2):
        with pytest.raises(asyncssh.ChannelOpenError):
            await ssh.run(add_line("pvc-r"))
    assert "pvc-r" not in sim.store.disks  # nothing ran
    assert (await run(ssh, "/disk print count-only where slot=pvc-r")) == ("0\n", 0)


async def test_a_killed_process_cuts_the_reply(
    sim: Simulator, ssh: asyncssh.SSHClientConnection
) -> None:
    for i in range(6):
        await run(ssh, add_line(f"pvc-{i}"))
    whole, _ = await run(ssh, '/disk print detail where slot~"^pvc-"')
    sim.faults.kill_mid_next(1)
    cut = await ssh.run('/disk print detail where slot~"^pvc-"')
    assert cut.exit_signal is not None and cut.exit_signal[0] == "KILL"
    assert cut.exit_status == -1  # no exit status: asyncssh's marker for a signal
    assert isinstance(cut.stdout, str) and 0 < len(cut.stdout) < len(whole)
    assert whole.startswith(cut.stdout)


async def test_stderr_is_its_own_stream(sim: Simulator, ssh: asyncssh.SSHClientConnection) -> None:
    sim.faults.stderr_noise = "Could not chdir to home directory /home/admin"
    result = await ssh.run("/disk print count-only where slot=pvc-s")
    assert (result.stdout, result.exit_status) == ("0\n", 0)
    assert result.stderr == "Could not chdir to home directory /home/admin\n"


# --- the relay a real sshd runs ---------------------------------------------------------------


@pytest.fixture
async def relayed(sim_config: SimConfig) -> AsyncIterator[Simulator]:
    short = Path(tempfile.mkdtemp(prefix="rds-", dir="/tmp"))
    try:
        async with Simulator(replace(sim_config, relay_socket=short / "relay.sock")) as sim:
            yield sim
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def relay(sim: Simulator, line: str | None, shell: str = "") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"}
    if line is not None:
        env["SSH_ORIGINAL_COMMAND"] = line
    program = [sys.executable, "-I", str(RELAY_PROGRAM), str(sim.config.relay_socket)]
    if shell:  # a parent for the relay to kill, as sshd's per-connection process is
        program = ["sh", "-c", f"{' '.join(program)}; {shell}"]
    proc = await asyncio.create_subprocess_exec(
        *program, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_relay_answers_from_the_same_appliance(relayed: Simulator) -> None:
    assert await relay(relayed, add_line("pvc-x", "2G")) == (0, "", "")
    assert "pvc-x" in relayed.store.disks  # one state for both servers
    status, out, _ = await relay(relayed, "/disk print detail where slot=pvc-x")
    assert status == 0 and 'slot="pvc-x"' in out
    assert await relay(relayed, "/disk remove nope") == (1, "failure: no such item\n", "")
    relayed.faults.stderr_noise = "Could not chdir to home directory"
    assert await relay(relayed, "/disk print count-only where slot=pvc-x") == (
        0,
        "1\n",
        "Could not chdir to home directory\n",
    )


async def test_the_relay_dies_as_the_fault_says(relayed: Simulator) -> None:
    relayed.faults.kill_mid_next(1)
    status, out, _ = await relay(relayed, '/disk print detail where slot~"^pvc"')
    assert status == -9  # killed: sshd reports exit signal KILL
    relayed.faults.drop_mid_next(1, apply=False)
    status, out, _ = await relay(relayed, "/disk print", shell="echo parent-survived")
    assert status == -9 and "parent-survived" not in out  # its parent (the sshd) killed


async def test_the_relay_without_a_command_or_a_simulator(relayed: Simulator) -> None:
    status, _, err = await relay(relayed, None)
    assert status == 1 and "commands only" in err
    await relayed.stop()
    status, _, err = await relay(relayed, "/disk print")
    assert status == 255 and "no simulator" in err


async def test_stop_ends_hanging_relayed_commands_without_running_them(
    relayed: Simulator,
) -> None:
    relayed.faults.hang_next(1)
    task = asyncio.ensure_future(relay(relayed, add_line("pvc-h")))
    await relayed.faults.wait_hanging(1)
    await relayed.stop()
    status, _, _ = await task
    assert status == 255 and relayed.store.disks == {}
