"""Every reply is proven whole or it is an error; refusals are retried inside one deadline
that covers the slot, the channel open and the reply; both servers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from rdscsi.clock import LoopClock
from rdscsi.csi import csi_pb2_grpc
from rdscsi.io.rds import parse
from rdscsi.io.rds.errors import (
    ApplianceFailureError,
    CommandTimeoutError,
    IncompleteReplyError,
    TransportLostError,
    UnavailableError,
    grpc_code_name,
)

from .conftest import Bench, controller, create_request, hanging, started, until

GIB = 1 << 30
CHDIR = "Could not chdir to home directory /home/admin: No such file or directory"


async def _add_disks(bench: Bench, count: int) -> None:
    for i in range(count):
        line = (
            f"/disk add type=file file-path=/storage-pool/k8s/pvc-{i}.img file-size=1G "
            f"slot=pvc-{i} nvme-tcp-export=yes nvme-tcp-server-port=4420 "
            f"nvme-tcp-server-nqn=nqn.2000-02.com.mikrotik:pvc-{i}"
        )
        assert (await bench.sim.execute(line)).ok


async def test_a_reply_cut_by_a_killed_process_is_never_parsed(bench: Bench) -> None:
    """A 6-disk listing cut short must not read as fewer disks, nor a lookup of an existing
    disk as "no such disk"."""
    await _add_disks(bench, 6)
    conn = await started(bench)
    b = conn.commands
    bench.sim.faults.kill_mid_next(1)
    with pytest.raises(IncompleteReplyError, match="signal KILL"):
        await conn.run(b.disk_print_prefix("pvc-"))
    bench.sim.faults.kill_mid_next(1)
    with pytest.raises(IncompleteReplyError) as lookup:
        await conn.run(b.disk_print("pvc-3"))
    assert grpc_code_name(lookup.value) == "UNAVAILABLE"
    assert isinstance(lookup.value, TransportLostError)  # outcome unknown for a mutation
    # the link stays; the next replies are whole
    assert len(parse.parse_disks(await conn.run(b.disk_print_prefix("pvc-")))) == 6
    assert parse.parse_disk(await conn.run(b.disk_print("pvc-3"))) is not None
    assert conn.state == "connected"


async def test_a_mutation_killed_mid_reply_is_outcome_unknown(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.kill_mid_next(1)
    add = conn.commands.disk_add(
        slot="pvc-k",
        file_path="/storage-pool/k8s/pvc-k.img",
        file_size=GIB,
        nvme_port=4420,
        nvme_nqn="nqn.2000-02.com.mikrotik:pvc-k",
    )
    with pytest.raises(IncompleteReplyError):
        await conn.run(add)
    assert "pvc-k" in bench.sim.store.disks  # it did happen: the client cannot know


async def test_stderr_noise_is_logged_not_parsed(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rdscsi.rds")
    bench.sim.faults.stderr_noise = CHDIR
    conn = await started(bench)
    b = conn.commands
    pool = parse.parse_pool(await conn.run(b.pool_print()))
    assert pool is not None and pool.size > 0
    add = b.disk_add(
        slot="pvc-n",
        file_path="/storage-pool/k8s/pvc-n.img",
        file_size=GIB,
        nvme_port=4420,
        nvme_nqn="nqn.2000-02.com.mikrotik:pvc-n",
    )
    assert parse.parse_ack(await conn.run(add), add) is None  # a success stays a success
    assert parse.parse_disk(await conn.run(b.disk_print("pvc-n"))) is not None
    assert bench.sample("rds_csi_rds_stderr_total", {"kind": "notice"}) == 3
    assert "Could not chdir" in caplog.text
    # anything else on stderr is a warning, still not data
    bench.sim.faults.stderr_noise = "something unexpected"
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="rdscsi.rds")
    assert parse.parse_pool(await conn.run(b.pool_print())) is not None
    assert "something unexpected" in caplog.text
    assert bench.sample("rds_csi_rds_stderr_total", {"kind": "other"}) == 1


async def test_a_device_error_on_stderr_is_an_error(bench: Bench) -> None:
    bench.sim.faults.stderr_noise = "failure: not enough space"
    conn = await started(bench)
    with pytest.raises(ApplianceFailureError.__mro__[1]):  # RDSError: classified from stderr
        await conn.run(conn.commands.pool_print())
    assert bench.sample("rds_csi_rds_stderr_total", {"kind": "error"}) == 1


async def test_a_nonzero_exit_without_a_message_is_a_failure(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.malformed_next(1, text="")  # prints nothing ...
    real = bench.sim.interpreter.run

    async def failing(line: str):  # type: ignore[no-untyped-def]
        outcome = await real(line)
        return type(outcome)("", False)  # ... and exits non-zero

    bench.sim.interpreter.run = failing  # type: ignore[method-assign]
    with pytest.raises(ApplianceFailureError, match="exit status 1"):
        await conn.run(conn.commands.pool_print())


# --- refusals and the deadline ---------------------------------------------------------------


@pytest.mark.parametrize("bench", ["sim"], indirect=True)
async def test_a_refused_channel_is_retried_not_a_lost_link(bench: Bench) -> None:
    """Only the simulator injects a refusal at will; OpenSSH refuses past MaxSessions (see
    the concurrency tests)."""
    conn = await started(bench)
    bench.sim.faults.refuse_channels_next(3)
    task = asyncio.ensure_future(conn.run(conn.commands.pool_print()))
    while not task.done():
        await asyncio.sleep(0.01)
        bench.clock.advance(0.25)  # the retry waits are on the injected clock
    assert "free=" in await task
    assert bench.sample("rds_csi_rds_channel_refused_total") == 3
    assert conn.state == "connected" and bench.sink.reasons() == []


@pytest.mark.parametrize("bench", ["sim"], indirect=True)
async def test_refused_until_the_deadline_is_not_sent(bench: Bench) -> None:
    conn = await started(bench)
    bench.sim.faults.refuse_channels_next(10_000)
    task = asyncio.ensure_future(conn.run(conn.commands.pool_print(), timeout=3.0))
    while not task.done():
        await asyncio.sleep(0.005)
        bench.clock.advance(0.25)
    with pytest.raises(CommandTimeoutError, match="not sent") as err:
        await task
    assert err.value.sent is False
    assert conn.state == "connected"
    bench.sim.faults.refuse_channels_next(0)


async def test_one_deadline_covers_the_wait_for_a_slot(bench: Bench) -> None:
    """Under an appliance hang no command waits longer than its deadline, however many are
    queued: each fails when its own deadline passes, sent or not."""
    conn = await started(bench, max_concurrency=2)
    bench.sim.faults.hang_match = "mount-point"  # every pool print hangs
    runs = [
        asyncio.ensure_future(conn.run(conn.commands.pool_print(), timeout=2.0)) for _ in range(6)
    ]
    await hanging(bench, 2)
    bench.clock.advance(2.0)
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(r, CommandTimeoutError) for r in results), results
    assert sorted(r.sent for r in results) == [False] * 4 + [True] * 2  # type: ignore[union-attr]
    assert conn.state == "connected"
    bench.sim.faults.hang_match = None
    bench.sim.faults.release_hangs()


async def test_timed_out_commands_hold_their_slot_until_the_server_frees_it(
    bench: Bench,
) -> None:
    """The server keeps a timed-out command's session until its process ends; so does the
    client, so the next commands wait for a slot instead of being refused."""
    await bench.server.set_max_sessions(3)  # exactly 2 commands + the health check
    conn = await started(bench, max_concurrency=2)
    bench.sim.faults.hang_next(2)
    hung = [asyncio.ensure_future(conn.run(conn.commands.pool_print(), timeout=1.0)) for _ in "ab"]
    await hanging(bench, 2)
    bench.clock.advance(1.0)
    for task in hung:
        with pytest.raises(CommandTimeoutError, match="no complete reply"):
            await task
    assert conn.lingering == 2
    assert bench.sample("rds_csi_rds_channels_lingering") == 2
    waiting = asyncio.ensure_future(conn.run(conn.commands.pool_print(), timeout=30.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # queued for a slot, not refused
    bench.sim.faults.release_hangs()  # the appliance finishes the hung commands
    assert "free=" in await asyncio.wait_for(waiting, 10)
    assert conn.lingering == 0 and bench.sample("rds_csi_rds_channels_lingering") == 0
    assert bench.sample("rds_csi_rds_channel_refused_total") == 0


async def test_exceptions_in_channel_setup_are_transport_errors(bench: Bench) -> None:
    """asyncssh raises AttributeError or AssertionError when the connection dies during
    channel setup: the caller sees "not sent" (UNAVAILABLE), never INTERNAL."""
    conn = await started(bench)
    live = conn._conn
    assert live is not None

    async def broken(*args: object, **kwargs: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'send_packet'")

    live.create_session = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(UnavailableError, match="AttributeError") as err:
        await conn.run(conn.commands.pool_print())
    assert grpc_code_name(err.value) == "UNAVAILABLE"
    assert await conn.check_health() == "lost"  # and the health check survives it


async def test_an_appliance_hang_bounds_every_rpc(bench: Bench, short_dir: Path) -> None:
    """The appliance stops answering with more CreateVolume calls in flight than channels:
    every call answers DEADLINE_EXCEEDED when its first command's one deadline passes, the
    queued ones included (the wait for a slot is inside the deadline)."""
    async with controller(bench, short_dir) as (app, channel):
        await until(app.rds, lambda: app.rds.connected)
        bench.sim.faults.hang_match = "/disk"
        stub = csi_pb2_grpc.ControllerStub(channel)
        calls = [
            asyncio.ensure_future(stub.CreateVolume(create_request(f"pvc-{i}"))) for i in range(12)
        ]
        await hanging(bench, app.rds.config.max_concurrency)
        deadline = bench.clock.monotonic() + app.rds.config.command_timeout
        while sum(1 for due in bench.clock.pending() if due == deadline) < 12:
            await asyncio.sleep(0.01)  # every call has its first command under way
        bench.clock.advance(app.rds.config.command_timeout)
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else r for r in results]
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 12
        assert app.rds.state == "connected"
        bench.sim.faults.hang_match = None
        bench.sim.faults.release_hangs()


# --- concurrency against the server's session limit -------------------------------------------


@pytest.mark.parametrize("max_sessions", [10, 2])
async def test_concurrent_commands_at_max_sessions(bench: Bench, max_sessions: int) -> None:
    """50 commands at once at MaxSessions 10 (the default: under the cap, no refusal
    expected) and 2 (most opens refused): every command succeeds, the link never drops."""
    await bench.server.set_max_sessions(max_sessions)
    conn = await started(bench, clock=LoopClock())
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
    assert peak <= min(conn.config.max_concurrency, max_sessions)
    refused = bench.sample("rds_csi_rds_channel_refused_total")
    print(f"{bench.server.kind} MaxSessions {max_sessions}: {refused:.0f} refused opens retried")
    if max_sessions == 2:
        assert refused > 0
    assert conn.state == "connected" and bench.sink.reasons() == []
    errors = {"verb": "pool-print", "error": "TransportLostError"}
    assert bench.sample("rds_csi_rds_command_errors_total", errors) == 0
