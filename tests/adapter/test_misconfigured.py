"""Configuration errors are named: a refused login or an untrusted host key is a wrong
setting (state `misconfigured`, event, metric, log line, Probe), never an outage; backoff
continues so a fix is picked up. Both servers."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncssh
import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.explain.service import for_controller
from rdscsi.io.rds.errors import MisconfiguredError, grpc_code_name

from .conftest import Bench, controller, create_request, started, until


def fingerprint(public_key: str) -> str:
    return str(asyncssh.import_public_key(public_key).get_fingerprint())


def a_stranger() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def assert_not_an_outage(bench: Bench) -> None:
    assert "RDSDisconnected" not in bench.sink.reasons()
    assert bench.sample("rds_csi_rds_reconnect_total", {"status": "failure"}) == 0
    assert bench.sample("rds_csi_connection_state", {"state": "misconfigured"}) == 1
    assert bench.sample("rds_csi_connection_state", {"state": "backoff"}) == 0


async def test_host_key_mismatch_names_the_pins_and_the_servers_key(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="rdscsi.rds")
    conn = await started(bench, host_keys=[a_stranger()])
    shown = fingerprint(bench.server.host_key)
    assert conn.state == "misconfigured"
    assert (conn.model.setting, conn.model.fingerprint) == ("rds.host_keys", shown)
    # the log line, the event and the metric say which setting and which key
    assert "rds.host_keys" in caplog.text and shown in caplog.text
    assert "not an outage" in caplog.text
    [event] = bench.sink.events
    assert event.reason == "RDSMisconfigured" and event.type == "Warning"
    assert "rds.host_keys" in event.note and shown in event.note
    assert bench.sample("rds_csi_rds_config_rejected_total", {"setting": "rds.host_keys"}) == 1
    assert_not_an_outage(bench)
    # commands and the Probe answer FAILED_PRECONDITION naming the setting, not UNAVAILABLE
    with pytest.raises(MisconfiguredError, match=r"rds\.host_keys") as err:
        await conn.run(conn.commands.pool_print())
    assert grpc_code_name(err.value) == "FAILED_PRECONDITION"
    with pytest.raises(MisconfiguredError, match=re.escape(shown)):
        conn.ready()
    # backoff continues: an operator may be fixing it
    for attempt, base in ((2, 2.0), (3, 4.0)):
        bench.clock.advance(conn.model.delay)
        await until(conn, lambda a=attempt: conn.model.attempt == a)  # type: ignore[misc]
        assert conn.state == "misconfigured"
        assert base * 0.9 <= conn.model.delay <= base * 1.1
    assert bench.sample("rds_csi_rds_config_rejected_total", {"setting": "rds.host_keys"}) == 3
    assert_not_an_outage(bench)


@pytest.mark.parametrize("entry", ["missing", "revoked"])
async def test_known_hosts_without_a_trusted_key(bench: Bench, entry: str) -> None:
    port, key = bench.server.port, bench.server.host_key
    path = bench.tmp / "known_hosts"
    lines = {
        "missing": f"[127.0.0.1]:{port} {a_stranger()}\n",
        # listed, and revoked as well: revocation wins
        "revoked": f"[127.0.0.1]:{port} {key}\n@revoked * {key}\n",
    }[entry]
    path.write_text(lines)
    conn = await started(bench, host_keys=[], known_hosts=str(path))
    assert conn.state == "misconfigured"
    assert conn.model.setting == "rds.known_hosts"
    assert conn.model.fingerprint == fingerprint(key)
    if entry == "revoked":
        assert "revoked" in conn.model.reason
    else:
        assert str(path) in conn.model.reason
    assert_not_an_outage(bench)


async def test_an_unreadable_known_hosts_file_is_named(bench: Bench) -> None:
    conn = await started(bench, host_keys=[], known_hosts=str(bench.tmp / "no-such-file"))
    assert conn.state == "misconfigured"
    assert conn.model.setting == "rds.known_hosts" and "cannot read" in conn.model.reason
    assert_not_an_outage(bench)


async def test_a_refused_login_is_named_then_fixed(bench: Bench) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519")
    wrong_file = bench.tmp / "wrong_key"
    wrong.write_private_key(str(wrong_file))
    conn = await started(bench, client_keys=[str(wrong_file)])
    assert conn.state == "misconfigured"
    assert conn.model.setting == "rds.key_file"
    assert str(wrong_file) in conn.model.reason
    assert wrong.get_fingerprint() in conn.model.reason  # the key to authorise
    assert conn.model.fingerprint == fingerprint(bench.server.host_key)
    assert bench.sample("rds_csi_rds_config_rejected_total", {"setting": "rds.key_file"}) == 1
    assert_not_an_outage(bench)
    # the operator authorises the key on the appliance; the next redial picks it up
    public = wrong.export_public_key().decode()
    bench.sim.authorize_key(public)
    if bench.server.sshd is not None:
        bench.server.sshd.authorized_keys.append(public)
        await bench.server.sshd.restart(connections=False)
    bench.clock.advance(conn.model.delay)
    await until(conn, lambda: conn.state == "connected")
    assert (conn.model.setting, conn.model.reason, conn.model.fingerprint) == ("", "", "")
    assert conn.ready() is True
    assert "free=" in await conn.run(conn.commands.pool_print())


async def test_probe_and_rpcs_through_the_controller_say_what_to_fix(
    bench: Bench, short_dir: Path
) -> None:
    """The controller as shipped: Probe answers FAILED_PRECONDITION naming the setting and
    the server's key (an unhealthy plugin, not one still starting), and so do RPCs."""
    async with controller(bench, short_dir, host_keys=[a_stranger()]) as (app, channel):
        await until(app.rds, lambda: app.rds.state == "misconfigured")
        with pytest.raises(grpc.aio.AioRpcError) as probe:
            await csi_pb2_grpc.IdentityStub(channel).Probe(pb.ProbeRequest())
        assert probe.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = probe.value.details() or ""
        assert "rds.host_keys" in details
        assert fingerprint(bench.server.host_key) in details
        with pytest.raises(grpc.aio.AioRpcError) as create:
            await csi_pb2_grpc.ControllerStub(channel).CreateVolume(create_request("pvc-1"))
        assert create.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # and `rdscsi explain appliance` says the same: the setting, the key, the next dial
        status, body = await for_controller(app).answer({"kind": "appliance", "name": "rds"})
        assert status == 200 and body["machine"]["current"] == "misconfigured"
        assert body["model"]["setting"] == "rds.host_keys"
        assert body["model"]["fingerprint"] == fingerprint(bench.server.host_key)
        assert body["next"]["event"] == "retry" and "rds.host_keys" in body["next"]["summary"]
        [blocker] = body["next"]["blocked_by"]
        assert "FAILED_PRECONDITION" in blocker["text"] and "rds.host_keys" in blocker["text"]
