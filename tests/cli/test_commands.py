"""The commands as a user runs them: `rdscsi run`, `rdscsi demo`, `rdscsi serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncssh
import grpc

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.sim import SimConfig, Simulator

RDSCSI = [sys.executable, "-m", "rdscsi.cli"]


def _start(args: list[str], ready: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [*RDSCSI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if ready in line:
            return proc, lines
    raise AssertionError("exited before ready:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_run_then_demo(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, lines = _start(
        ["run", "--state-dir", str(state), "--metrics-address", "", "--node-id", "local"],
        "Ctrl-C to stop",
    )
    try:
        endpoint = f"unix://{state / 'csi.sock'}"
        assert any(endpoint in line for line in lines)
        demo = subprocess.run(
            [*RDSCSI, "demo", "--endpoint", endpoint, "--node-id", "local"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        for step in (
            "CreateVolume 1 GiB",
            "ControllerPublishVolume to local",
            "CreateSnapshot",
            "ControllerExpandVolume",
            "CreateVolume from the snapshot",
            "DeleteVolume",
        ):
            assert f"✓ {step}" in demo.stdout, demo.stdout
        assert "✗" not in demo.stdout
    finally:
        out = _stop(proc)
    assert "rdscsi run: stopped" in out
    assert (state / "sim" / "state.json").exists()  # the simulator's state is kept


def test_demo_against_nothing_fails_cleanly(tmp_path: Path) -> None:
    demo = subprocess.run(
        [*RDSCSI, "demo", "--endpoint", f"unix://{tmp_path}/none.sock"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.returncode == 1 and "✗ GetPluginInfo: UNAVAILABLE" in demo.stdout


async def test_serve_with_flags(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id"
    key.write_private_key(str(key_file))
    async with Simulator(
        SimConfig(data_dir=tmp_path / "sim", authorized_keys=[key.export_public_key().decode()])
    ) as sim:
        sock = tmp_path / "csi.sock"
        proc, _ = await asyncio.to_thread(
            _start,
            [
                "serve",
                "--controller",
                "--endpoint",
                f"unix://{sock}",
                "--rds-address",
                sim.host,
                "--rds-port",
                str(sim.port),
                "--rds-key-file",
                str(key_file),
                "--rds-host-key",
                sim.host_key,
                "--name",
                "rds.csi.example.org",
            ],
            "controller on",
        )
        try:
            async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
                identity = csi_pb2_grpc.IdentityStub(channel)
                info = await identity.GetPluginInfo(pb.GetPluginInfoRequest())
                assert info.name == "rds.csi.example.org"
                for _ in range(100):
                    if (await identity.Probe(pb.ProbeRequest())).ready.value:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("never ready")
        finally:
            await asyncio.to_thread(_stop, proc)
