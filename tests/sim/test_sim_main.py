"""`rdscsi sim` in a subprocess, driven over SSH and through the `sim-fault` client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from rdscsi.sim.main import sim_fault_main, sim_main

_START = "from rdscsi.sim.main import sim_main; import sys; sys.exit(sim_main(sys.argv[1:]))"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, dict[str, str]]]:
    data = tmp_path / "sim"
    args = ["--data-dir", str(data), "--port", "0", "--pool-size", "2T", "--latency-ms", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _START, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    info: dict[str, str] = {}
    for line in proc.stdout:  # the banner ends with the endpoint line
        key, _, value = line.rstrip("\n").partition(": ")
        info[key] = value
        if key == "endpoint":
            break
    try:
        yield proc, data, info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def ssh_run(data: Path, lines: list[str]) -> list[tuple[str, int | None]]:
    endpoint = json.loads((data / "endpoint.json").read_text())

    async def go() -> list[tuple[str, int | None]]:
        conn = await asyncssh.connect(
            endpoint["host"],
            endpoint["port"],
            username="admin",
            client_keys=[endpoint["client_key"]],
            known_hosts=asyncssh.import_known_hosts(endpoint["known_hosts"] + "\n"),
        )
        async with conn:
            results = [await conn.run(line) for line in lines]
        return [(str(result.stdout), result.exit_status) for result in results]

    return asyncio.run(go())


def fault(data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert sim_fault_main(["--data-dir", str(data), *args]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer, dict) and answer["ok"] is True
    return answer


def test_sim_main_runs_and_obeys_the_fault_client(
    running: tuple[subprocess.Popen[str], Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc, data, info = running
    endpoint = json.loads((data / "endpoint.json").read_text())
    assert info["rdscsi sim"] == f"listening on 127.0.0.1:{endpoint['port']}"
    assert info["host key"] == endpoint["host_key"]
    assert info["client key"] == str(data / "client_ed25519_key")
    assert (data / "client_ed25519_key.pub").exists()

    add = (
        "/disk add type=file file-path=/storage-pool/k8s/pvc-m.img file-size=1G slot=pvc-m "
        "nvme-tcp-export=yes nvme-tcp-server-port=4420 nvme-tcp-server-nqn=nqn.x:pvc-m"
    )
    pool = '/disk print detail where mount-point="storage-pool"'
    assert ssh_run(data, [add])[0] == ("", 0)
    out, _ = ssh_run(data, [pool])[0]
    assert "size=2 199 023 255 552 free=2 197 949 513 728" in " ".join(out.split())

    status = fault(data, capsys, "status")
    assert status["port"] == endpoint["port"] and status["disks"] == 1
    fault(data, capsys, "latency", "0.02")
    fault(data, capsys, "fail-next", "1", "not enough space")
    fault(data, capsys, "render", "colon")
    assert ssh_run(data, ["/disk print", "/disk print count-only where slot=pvc-m"]) == [
        ("failure: not enough space\n", 1),
        ("1\n", 0),
    ]
    out, _ = ssh_run(data, ["/disk print detail where slot=pvc-m"])[0]
    assert "slot: pvc-m" in out
    fault(data, capsys, "pool-full", "on")
    assert ssh_run(data, ["/disk set pvc-m file-size=2G"])[0] == ("failure: not enough space\n", 1)
    fault(data, capsys, "pool-full", "off")
    fault(data, capsys, "malformed-next", "1")
    assert "slot" not in ssh_run(data, ["/disk print detail"])[0][0]
    fault(data, capsys, "connect-host", "pvc-m", "nqn.host-1", "--address", "10.0.0.3")
    out, _ = ssh_run(data, ["/interface nvme-tcp connection print"])[0]
    assert "host-nqn: nqn.host-1" in out
    fault(data, capsys, "traffic", "pvc-m", "write-rate=12800000")
    assert "write-rate: 12.8Mbps" in ssh_run(data, ["/disk monitor-traffic pvc-m once"])[0][0]
    assert fault(data, capsys, "restart")["port"] == endpoint["port"]
    fault(data, capsys, "drop-mid", "1", "--no-apply")
    assert ssh_run(data, ["/disk print"])[0] == ("", None)
    fault(data, capsys, "refuse", "on")
    with pytest.raises((asyncssh.Error, OSError)):
        ssh_run(data, ["/disk print"])
    fault(data, capsys, "refuse", "off")
    whole, _ = ssh_run(data, ["/disk print detail where slot=pvc-m"])[0]
    fault(data, capsys, "kill-mid", "1")
    out, status = ssh_run(data, ["/disk print detail where slot=pvc-m"])[0]
    assert status == -1 and 0 < len(out) < len(whole)  # cut short: a signal, no exit status
    fault(data, capsys, "stderr", "Could not chdir to home directory")
    assert ssh_run(data, ["/disk print count-only where slot=pvc-m"])[0] == ("1\n", 0)
    fault(data, capsys, "refuse-channels", "1")
    with pytest.raises(asyncssh.ChannelOpenError):
        ssh_run(data, ["/disk print"])
    fault(data, capsys, "hang-match", "off")
    fault(data, capsys, "drop")
    cleared = fault(data, capsys, "clear")
    assert cleared == {"ok": True}
    assert fault(data, capsys, "status")["faults"] == {
        "latency": 0.0,
        "pool_full": False,
        "refuse": False,
        "hang_match": None,
        "hang_next": 0,
        "fail_next": 0,
        "fail_text": "failure: not enough space",
        "malformed_next": 0,
        "drop_mid_next": 0,
        "drop_mid_apply": False,
        "kill_mid_next": 0,
        "refuse_channels_next": 0,
        "stderr_noise": None,
        "hanging": 0,
    }

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not (data / "endpoint.json").exists()
    assert not (data / "control.sock").exists()
    state = json.loads((data / "state.json").read_text())
    assert [disk["slot"] for disk in state["disks"]] == ["pvc-m"]


def test_fault_client_without_a_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sim_fault_main(["--data-dir", str(tmp_path), "drop"]) == 2
    assert "no simulator answering" in capsys.readouterr().err


def test_sim_main_refuses_a_second_instance_on_the_same_data_dir(
    running: tuple[subprocess.Popen[str], Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _proc, data, _info = running
    assert sim_main(["--data-dir", str(data), "--port", "0"]) == 1
    assert "in use by another simulator" in capsys.readouterr().err
    assert os.path.exists(data / "control.sock")
