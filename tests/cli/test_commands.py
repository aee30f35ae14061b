"""The commands as a user runs them: `rdscsi run`, `rdscsi demo`, `rdscsi serve`, `rdscsi`.

Everything here goes through the real entry point in a subprocess (`python -m rdscsi`), and
checks what the user sees: the banner, one line per mistake, the demo's clean-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.sim import SimConfig, Simulator
from rdscsi.sim.store import DEFAULT_POOL

RDSCSI = [sys.executable, "-m", "rdscsi"]
TIB = 1 << 40


class Proc:
    """A running command whose output is drained by a thread (it logs every transition)."""

    def __init__(self, args: list[str], cwd: Path | None = None) -> None:
        self.popen = subprocess.Popen(
            [*RDSCSI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.output.count(text) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {text!r} in:\n{self.output}")
                self._changed.wait(min(left, 0.5))

    def stop(self, signum: int = signal.SIGINT) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout=30)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
        self._reader.join(10)
        return code


def _create(name: str, size: int = 1 << 30) -> pb.CreateVolumeRequest:
    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(mode=1),
    )
    return pb.CreateVolumeRequest(
        name=name, volume_capabilities=[cap], capacity_range=pb.CapacityRange(required_bytes=size)
    )


def run_args(state: Path, port: int, *more: str) -> list[str]:
    """`rdscsi run` on its own state directory and metrics port."""
    return ["run", "--state-dir", str(state), "--metrics-address", f"127.0.0.1:{port}", *more]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rdscsi(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RDSCSI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


class Running:
    def __init__(self, proc: Proc, state: Path, port: int) -> None:
        self.proc, self.state, self.port = proc, state, port
        self.endpoint = f"unix://{state / 'csi.sock'}"

    @property
    def node(self) -> bool:
        return "CSI Identity, Controller and Node" in self.proc.output

    def volumes(self) -> list[str]:
        async def listing() -> list[str]:
            async with grpc.aio.insecure_channel(self.endpoint) as channel:
                ctl = csi_pb2_grpc.ControllerStub(channel)
                reply = await ctl.ListVolumes(pb.ListVolumesRequest())
                return [e.volume.volume_id for e in reply.entries]

        return asyncio.run(listing())

    def snapshots(self) -> list[str]:
        async def listing() -> list[str]:
            async with grpc.aio.insecure_channel(self.endpoint) as channel:
                ctl = csi_pb2_grpc.ControllerStub(channel)
                reply = await ctl.ListSnapshots(pb.ListSnapshotsRequest())
                return [e.snapshot.snapshot_id for e in reply.entries]

        return asyncio.run(listing())


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("cli") / "state"
    port = free_port()
    proc = Proc(run_args(state, port, "--node-id", "local"))
    try:
        proc.wait_for("Ctrl-C to stop")
        yield Running(proc, state, port)
    finally:
        code = proc.stop(signal.SIGINT)
    assert code == 0, proc.output
    assert "rdscsi run: stopping (Ctrl-C again to exit at once)" in proc.output
    assert "rdscsi run: stopped" in proc.output
    assert "Traceback" not in proc.output


# --- rdscsi run ----------------------------------------------------------------------------------


def test_the_banner_tells_what_is_served_and_what_to_try(running: Running) -> None:
    out = running.proc.output
    assert f"on {running.endpoint}" in out
    if running.node:
        assert "(node local; volumes attach as loop devices)" in out
    else:
        assert "no Node service: " in out
    assert f"demo --state-dir {running.state}` drives a volume" in out
    assert f"sim-fault --data-dir {running.state / 'sim'} drop` drops" in out


def test_a_second_run_on_the_same_state_dir_is_refused(running: Running, tmp_path: Path) -> None:
    done = rdscsi("run", "--state-dir", str(running.state), "--metrics-address", "")
    assert done.returncode == 1
    pid = running.proc.popen.pid
    assert done.stderr == (
        f"rdscsi run: {running.state} is in use by another `rdscsi run` (pid {pid}): stop that "
        "one, or give this one its own --state-dir\n"
    )
    assert done.stdout == ""


def test_a_metrics_port_in_use_is_one_line(running: Running, tmp_path: Path) -> None:
    address = f"127.0.0.1:{running.port}"
    done = rdscsi("run", "--state-dir", str(tmp_path / "s"), "--metrics-address", address)
    assert done.returncode == 1
    assert done.stderr == (
        f"rdscsi run: metrics address {address} is in use by another process: choose another "
        "with --metrics-address HOST:PORT, or --metrics-address '' for none\n"
    )
    assert not (tmp_path / "s" / "sim" / "client_ed25519_key").exists(), "nothing started"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--metrics-address", "9809"], "metrics_address: '9809' has no port; expected HOST:PORT"),
        (["--endpoint", "unix://relative.sock"], "endpoint: 'unix://relative.sock' is not an abs"),
        (["--endpoint", "unix:///{tmp}/nonexistent/x.sock"], "the directory /{tmp}/nonexistent"),
        (["--appliances", "9"], "--appliances 9: expected 1..8 simulated appliances"),
        (["--appliances", "0"], "--appliances 0: expected 1..8 simulated appliances"),
    ],
)
def test_bad_run_options_are_one_line(args: list[str], line: str, tmp_path: Path) -> None:
    args = [a.replace("/{tmp}", str(tmp_path)) for a in args]
    done = rdscsi("run", "--state-dir", str(tmp_path / "s"), *args)
    assert done.returncode == 2
    (printed,) = done.stderr.splitlines()
    assert printed.startswith("rdscsi run: ") and line.replace("/{tmp}", str(tmp_path)) in printed
    assert not (tmp_path / "nonexistent").exists()


def test_run_with_several_appliances_runs_a_simulator_for_each(tmp_path: Path) -> None:
    """`rdscsi run --appliances 3`: three simulators, each its own appliance with its own
    connection; a class without `appliance` creates on the default (`sim`, ids of the old
    form), the others by name, each disk on its own simulator's pool; capacity per
    appliance; dropping one leaves the others connected."""
    state = tmp_path / "s"
    port = free_port()
    proc = Proc(run_args(state, port, "--appliances", "3"))
    try:
        proc.wait_for("Ctrl-C to stop")
        proc.wait_for("connecting --succeeded--> connected", count=3)
        out = proc.output
        assert "appliance sim (the default appliance): simulator on 127.0.0.1:" in out
        assert "appliance sim-2: simulator on" in out and "appliance sim-3: simulator on" in out
        assert f"sim-fault --data-dir {state / 'sim-2'} drop` drops sim-2's alone" in out
        slots = [f"pvc-00000000-0000-4000-8000-00000000003{i}" for i in range(3)]

        async def go() -> tuple[list[str], dict[str, int]]:
            async with grpc.aio.insecure_channel(f"unix://{state / 'csi.sock'}") as channel:
                ctl = csi_pb2_grpc.ControllerStub(channel)
                ids, free = [], {}
                for slot, appliance in zip(slots, ("", "sim-2", "sim-3"), strict=True):
                    req = _create(slot)
                    if appliance:
                        req.parameters["appliance"] = appliance
                    ids.append((await ctl.CreateVolume(req)).volume.volume_id)
                for name in ("sim", "sim-2", "sim-3"):
                    got = await ctl.GetCapacity(
                        pb.GetCapacityRequest(parameters={"appliance": name})
                    )
                    free[name] = got.available_capacity
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    req = _create("pvc-00000000-0000-4000-8000-000000000039")
                    req.parameters["appliance"] = "sim-4"
                    await ctl.CreateVolume(req)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "'sim-4' is not an appliance" in (err.value.details() or "")
                return ids, free

        ids, free = asyncio.run(go())
        assert ids == [slots[0], f"sim-2:{slots[1]}", f"sim-3:{slots[2]}"]
        assert all(f > 0 for f in free.values()) and len(free) == 3
        # each disk is a file on its own simulator's pool
        files = state / "sim" / "files"
        for slot, pool in zip(slots, ("", "-2", "-3"), strict=True):
            found = [p.relative_to(files).parts[0] for p in files.glob(f"*/**/{slot}.*")]
            assert found == [f"{DEFAULT_POOL}{pool}"], (slot, found)
        fault = ["sim-fault", "--data-dir", str(state / "sim-3")]
        assert rdscsi(*fault, "refuse", "on").returncode == 0
        assert rdscsi(*fault, "drop").returncode == 0
        proc.wait_for("RDS sim-3: backoff: next attempt in")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        for name, up in (("sim", 1), ("sim-2", 1), ("sim-3", 0)):
            assert f'rds_csi_rds_connection_state{{appliance="{name}"}} {up}.0' in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            assert reply.status == 200  # ready: sim and sim-2 serve
        assert rdscsi(*fault, "refuse", "off").returncode == 0
        proc.wait_for("connection sim-3: reconnecting --succeeded--> connected")
    finally:
        code = proc.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in proc.output, proc.output


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = Proc(["run", "--state-dir", str(state), "--metrics-address", ""])
    try:
        proc.wait_for("Ctrl-C to stop")
        # a CreateVolume that never answers keeps the shutdown waiting for it (2 s grace)
        assert rdscsi("sim-fault", "--data-dir", str(state / "sim"), "hang-next").returncode == 0

        async def create() -> None:
            async with grpc.aio.insecure_channel(f"unix://{state / 'csi.sock'}") as channel:
                ctl = csi_pb2_grpc.ControllerStub(channel)
                with pytest.raises(grpc.aio.AioRpcError):
                    await ctl.CreateVolume(_create("pvc-0badc0de-0000-4000-8000-000000000002"))

        caller = threading.Thread(target=asyncio.run, args=(create(),), daemon=True)
        caller.start()
        deadline = time.monotonic() + 20
        while (
            '"hanging": 1'
            not in rdscsi("sim-fault", "--data-dir", str(state / "sim"), "status").stdout
        ):
            assert time.monotonic() < deadline, "the CreateVolume never reached the appliance"
        proc.popen.send_signal(signal.SIGINT)
        proc.wait_for("rdscsi run: stopping")
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(timeout=10) == 128 + signal.SIGINT
    finally:
        proc.stop(signal.SIGKILL)
    assert "rdscsi run: exiting at once, cleanup skipped" in proc.output
    assert "rdscsi run: stopped" not in proc.output
    assert "Traceback" not in proc.output and "KeyboardInterrupt" not in proc.output


def test_node_support_says_why_not() -> None:
    from rdscsi import run

    ok, why = run.node_support()
    if os.geteuid() != 0:
        assert not ok and why.startswith(
            f"it needs root to attach loop devices and mount (this is uid {os.geteuid()})"
        )


def test_node_support_names_missing_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    from rdscsi import run

    monkeypatch.setattr(run.os, "geteuid", lambda: 0)
    monkeypatch.setattr(run.Path, "exists", lambda self: True)
    monkeypatch.setattr(run.shutil, "which", lambda p: None if p == "mkfs.ext4" else f"/x/{p}")
    assert run.node_support() == (
        False,
        "mkfs.ext4 not found (packages util-linux, mount, e2fsprogs)",
    )
    monkeypatch.setattr(run.os, "geteuid", lambda: 1000)
    assert run.node_support()[1] == (
        "it needs root to attach loop devices and mount (this is uid 1000)"
    )


# --- rdscsi demo ---------------------------------------------------------------------------------


def test_demo_drives_a_volume_through_its_life(running: Running) -> None:
    demo = rdscsi("demo", "--state-dir", str(running.state), "--node-id", "local")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for step in (
        "Probe: ready",
        "CreateVolume 1 GiB",
        "ControllerPublishVolume to local",
        "CreateSnapshot",
        "ControllerExpandVolume",
        "CreateVolume from the snapshot",
        "ControllerUnpublishVolume",
    ):
        assert f"✓ {step}" in demo.stdout, demo.stdout
    if running.node:
        assert "✓ NodeStageVolume (ext4)" in demo.stdout
        assert re.search(r"✓ wrote \S+/pod/hello.txt, read it back through", demo.stdout)
    else:
        assert "· no Node service on this endpoint" in demo.stdout
    assert "✗" not in demo.stdout
    (cleanup,) = [line for line in demo.stdout.splitlines() if "cleanup" in line]
    assert cleanup.count("volume pvc-") == 2 and "snapshot snap-" in cleanup
    assert running.volumes() == [] and running.snapshots() == []


def test_demo_with_nothing_running_says_to_start_it(tmp_path: Path) -> None:
    demo = rdscsi("demo", cwd=tmp_path)
    assert demo.returncode == 1
    assert demo.stdout == (
        f"✗ nothing is listening on unix://{tmp_path}/.rdscsi/csi.sock: start `rdscsi run` "
        "(or `make run`) in another shell first, then run the demo again\n"
    )
    (tmp_path / ".rdscsi").mkdir()
    with socket.socket(socket.AF_UNIX) as left:  # a socket left behind by a killed run
        left.bind(str(tmp_path / ".rdscsi" / "csi.sock"))
    demo = rdscsi("demo", cwd=tmp_path)
    assert demo.returncode == 1 and "✗ nothing answers on unix://" in demo.stdout
    assert "start `rdscsi run`" in demo.stdout


def test_a_state_dir_or_socket_of_another_user_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `sudo rdscsi run`, an ordinary user's run or demo is told what to do."""
    from rdscsi import demo, run

    monkeypatch.setattr(run.os, "access", lambda path, mode: False)
    with pytest.raises(run.StartError, match=r"belongs to another user \(made by a run as root"):
        run._lock(tmp_path)
    sock = tmp_path / "csi.sock"
    sock.write_text("")
    lines: list[str] = []
    assert asyncio.run(demo.demo(f"unix://{sock}", "n", lines.append)) == 1
    assert lines == [
        f"✗ unix://{sock} belongs to another user: run the demo as the user `rdscsi run` runs "
        "as (e.g. `sudo .venv/bin/rdscsi demo` when it was started with sudo)"
    ]


def test_files_of_another_user_in_the_state_dir_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rdscsi import run
    from rdscsi.cli import main

    async def denied(*args: object) -> int:
        raise PermissionError(13, "Permission denied", "/x/.rdscsi/sim/state.json")

    monkeypatch.setattr(run, "run", denied)
    assert main(["run"]) == 1
    assert capsys.readouterr().err == (
        "rdscsi run: Permission denied: /x/.rdscsi/sim/state.json: run as the user who made it, "
        "or give this run its own --state-dir\n"
    )


def test_demo_refuses_a_relative_endpoint() -> None:
    demo = rdscsi("demo", "--endpoint", "unix://.rdscsi/csi.sock")
    assert demo.returncode == 2
    assert "✗ --endpoint: 'unix://.rdscsi/csi.sock' is not an absolute path" in demo.stdout


def test_demo_cleans_up_after_a_failed_step(running: Running) -> None:
    demo = rdscsi("demo", "--endpoint", running.endpoint, "--node-id", "ghost")
    assert demo.returncode == 1
    assert "✗ ControllerPublishVolume to ghost: NOT_FOUND: node ghost does not exist" in demo.stdout
    assert re.search(r"· cleanup: removed volume pvc-\S+\n$", demo.stdout), demo.stdout
    assert running.volumes() == []


@pytest.mark.parametrize("at", ["CreateSnapshot", "NodePublishVolume"])
def test_demo_cleans_up_when_interrupted(running: Running, at: str) -> None:
    """Ctrl-C cancels the demo's task: everything made so far is undone and reported."""
    if at.startswith("Node") and not running.node:
        pytest.skip("the running driver has no Node service (not root)")
    from rdscsi.demo import demo

    lines: list[str] = []

    async def interrupted() -> None:
        task = asyncio.current_task()
        assert task is not None

        def out(line: str) -> None:
            lines.append(line)
            if line.startswith(f"✓ {at}"):
                task.cancel()

        with pytest.raises(asyncio.CancelledError):
            await demo(running.endpoint, "local", out)

    asyncio.run(interrupted())
    (cleanup,) = [line for line in lines if "cleanup" in line]
    assert "snapshot snap-" in cleanup and "attachment to local" in cleanup, lines
    if at == "NodePublishVolume":
        assert "pod mount" in cleanup and "staging mount" in cleanup and "directory" in cleanup
        with open("/proc/self/mountinfo") as mounts:
            assert "rdscsi-demo-" not in mounts.read()
    assert running.volumes() == [] and running.snapshots() == []


def test_a_failed_rpc_is_logged_once_naming_the_volume_once(running: Running) -> None:
    pvc = "pvc-0badc0de-0000-4000-8000-000000000001"

    async def too_big() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(running.endpoint) as channel:
            ctl = csi_pb2_grpc.ControllerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ctl.CreateVolume(_create(pvc, 10 * TIB))
            return err.value

    err = asyncio.run(too_big())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().count(pvc) == 1, err.details()
    running.proc.wait_for("CreateVolume: RESOURCE_EXHAUSTED")
    logged = [line for line in running.proc.lines if "RESOURCE_EXHAUSTED" in line]
    assert len(logged) == 1 and " WARNING rdscsi.rpc: " in logged[0], logged
    assert logged[0].count(pvc) == 1, logged[0]
    assert logged[0].rstrip().endswith(err.details())


# --- rdscsi serve --------------------------------------------------------------------------------


async def test_serve_with_flags(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id"
    key.write_private_key(str(key_file))
    async with Simulator(
        SimConfig(data_dir=tmp_path / "sim", authorized_keys=[key.export_public_key().decode()])
    ) as sim:
        sock = tmp_path / "csi.sock"
        proc = Proc(
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
                # pasted from ssh-keyscan: the host field is dropped
                "--rds-host-key",
                f"{sim.host} {sim.host_key} comment",
                "--name",
                "rds.csi.example.org",
            ]
        )
        try:
            await asyncio.to_thread(proc.wait_for, "controller on")
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
            assert await asyncio.to_thread(proc.stop, signal.SIGTERM) == 0, proc.output


def test_serve_refuses_what_cannot_work_before_dialling(tmp_path: Path) -> None:
    """Each mistake one line naming the setting, the value and what is expected."""
    done = rdscsi(
        "serve", "--controller", "--endpoint", "unix://csi.sock", "--metrics-address", "9809"
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "rdscsi serve: endpoint: 'unix://csi.sock' is not an absolute path; expected "
        "unix:///ABSOLUTE/PATH (e.g. unix:///csi/csi.sock)",
        "rdscsi serve: metrics_address: '9809' has no port; expected HOST:PORT (e.g. "
        "127.0.0.1:9809, or :9809 for every address)",
        "rdscsi serve: rds.address: missing; expected a host name or IP address",
        "rdscsi serve: rds.host_keys: missing; expected the appliance's host key (or "
        "rds.known_hosts; skipping verification needs rds.insecure_skip_host_key_check)",
    ]
    bare = tmp_path / "known_hosts"
    bare.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ2Wv0z7Zp3l0fY0sM4nY3XrSx0Jm6wP3m9w3H5u9d2f\n"
    )
    started = time.monotonic()
    done = rdscsi(
        "serve",
        "--controller",
        "--rds-address",
        "10.255.255.1",
        "--rds-key-file",
        str(tmp_path / "id_ed25519"),
        "--rds-known-hosts",
        str(bare),
        "--endpoint",
        f"unix://{tmp_path}/missing/csi.sock",
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"rdscsi serve: rds.key_file: '{tmp_path}/id_ed25519' does not exist; expected a "
        "readable, unencrypted SSH private key file",
        f"rdscsi serve: rds.known_hosts: '{bare}' line 1: has no host field (a bare key belongs "
        "in rds.host_keys); expected an OpenSSH known_hosts file (`<host> ssh-ed25519 AAAA…` "
        "lines)",
        f"rdscsi serve: endpoint: 'unix://{tmp_path}/missing/csi.sock': the directory "
        f"{tmp_path}/missing does not exist; expected an existing directory (or one under "
        "state_dir)",
    ]
    assert time.monotonic() - started < 20, "refused before any dial"
    assert not (tmp_path / "missing").exists()


def test_serve_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        done = rdscsi(
            "serve",
            "--controller",
            "--rds-address",
            "127.0.0.1",
            "--rds-port",
            "1",
            "--rds-insecure-skip-host-key-check",
            "--endpoint",
            f"unix://{tmp_path}/csi.sock",
            "--metrics-address",
            address,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"rdscsi serve: metrics address {address} is in use by another process: choose another "
        "with --metrics-address HOST:PORT, or --metrics-address '' for none"
    )
    assert "Traceback" not in done.stderr


# --- rdscsi itself -------------------------------------------------------------------------------


def test_rdscsi_alone_prints_help_with_developer_commands_apart() -> None:
    done = rdscsi()
    assert done.returncode == 0 and done.stderr == ""
    out = done.stdout
    users, developers = out.split("developer commands (for work on rdscsi itself):")
    from rdscsi.cli import DEVELOPER_COMMANDS, build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in set(sub.choices) - set(DEVELOPER_COMMANDS):  # each with its help
        assert re.search(rf"^  {command} +\S", users, re.M), command
    for command in ("run", "demo", "serve", "sim", "sim-fault"):
        assert command in sub.choices
    for command in ("diagrams", "config-reference"):
        assert re.search(rf"^  {command} +\S", developers, re.M)
        assert not re.search(rf"^  {command} ", users, re.M)
    assert done.stdout == rdscsi("--help").stdout


def test_python_m_rdscsi_and_the_script_agree() -> None:
    script = Path(sys.executable).with_name("rdscsi")
    assert (
        rdscsi("--version").stdout
        == subprocess.run(
            [str(script), "--version"], capture_output=True, text=True, check=True
        ).stdout
    )


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    from rdscsi.cli import build_parser
    from rdscsi.sim.main import _fault_parser, _sim_parser

    todo = [
        ("rdscsi", build_parser()),
        ("rdscsi sim", _sim_parser()),
        ("rdscsi sim-fault", _fault_parser()),
    ]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    if name != "rdscsi" or sub not in ("sim", "sim-fault"):
                        todo.append((f"{name} {sub}", p))


def test_every_option_has_help_and_numbers_their_unit() -> None:
    units = ("seconds", "milliseconds", "TCP", "count", "bytes", "status", "id", "(default: 0")
    for name, parser in _parsers():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings[0]}: no help text"
            numeric = action.type in (int, float) or isinstance(action.default, int | float)
            if numeric and not isinstance(action.default, bool):
                assert any(u in action.help for u in units), (
                    name,
                    action.option_strings,
                    action.help,
                )
