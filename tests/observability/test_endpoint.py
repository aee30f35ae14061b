"""`rdscsi run` as a user runs it, scraped: every documented series is exported after a volume's
life (and one appliance error), the dashboard uses only exported series, `/healthz` follows the
appliance connection."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc

RDSCSI = [sys.executable, "-m", "rdscsi.cli"]
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "rdscsi.json"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
    reason="`rdscsi run` serves the Node service (loop devices, mounts) only as root",
)


CLUSTER_SECTION = "## Cluster view"
CONTRACT = {  # the names the alerts and the dashboard are written against
    "rds_csi_leader",
    "rds_csi_lease_transitions_total",
    "rds_csi_events_total",
    "rds_csi_kube_informer_synced",
    "rds_csi_kube_informer_relists_total",
    "rds_csi_kube_informer_failures_total",
}


def documented(cluster: bool | None = None) -> dict[str, str]:
    """Series name -> type, from the tables of docs/metrics.md; `cluster` True: only the
    "Cluster view" section (exported by `serve --kubernetes` only), False: all but it."""
    text = DOC.read_text()
    if cluster is not None:
        start = text.index(CLUSTER_SECTION)
        end = text.find("\n## ", start + 1)
        section = text[start : end if end >= 0 else len(text)]
        text = section if cluster else text.replace(section, "")
    rows = re.findall(r"^\| `(rds_csi_[a-z0-9_]+)` \| (\w+) \|", text, re.MULTILINE)
    assert rows, "no series parsed from docs/metrics.md"
    return dict(rows)


def pending() -> set[str]:
    """Rows marked *to be emitted by the controller*: documented ahead of the code that
    records them (docs/metrics.md says which); not yet expected in a scrape."""
    return set(
        re.findall(
            r"^\| `(rds_csi_[a-z0-9_]+)` \|.*\*to be emitted by the controller\* \|$",
            DOC.read_text(),
            re.MULTILINE,
        )
    )


def dashboard_series() -> set[str]:
    names: set[str] = set()
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = re.findall(r"rds_csi_[a-z0-9_]+", target["expr"])
            assert found, (panel["title"], target["expr"])
            for name in found:
                for suffix in HISTOGRAM_SUFFIXES:
                    name = name.removesuffix(suffix)
                names.add(name)
    return names


def sample_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def http_get(url: str) -> tuple[int, str]:
    try:
        with OPENER.open(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[str]
    state: Path
    base: str
    output: list[str]

    @property
    def endpoint(self) -> str:
        return f"unix://{self.state / 'csi.sock'}"

    def fault(self, *args: str) -> None:
        cmd = [*RDSCSI, "sim-fault", "--data-dir", str(self.state / "sim"), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr

    def scrape(self) -> str:
        status, body = http_get(f"{self.base}/metrics")
        assert status == 200, body
        return body

    def healthz(self) -> tuple[int, str]:
        return http_get(f"{self.base}/healthz")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("observability") / "state"
    port = free_port()
    proc = subprocess.Popen(
        [
            *RDSCSI,
            "run",
            "--state-dir",
            str(state),
            "--metrics-address",
            f"127.0.0.1:{port}",
            "--node-id",
            "local",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    output: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # the process logs every transition: keep its pipe empty
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "Ctrl-C to stop" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(60) and proc.poll() is None, "".join(output)
        yield Running(proc, state, f"http://127.0.0.1:{port}", output)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(10)
    assert proc.returncode == 0, "".join(output)
    assert "rdscsi run: stopped" in "".join(output)


async def _create_volume(endpoint: str) -> grpc.StatusCode:
    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(
            mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
        ),
    )
    async with grpc.aio.insecure_channel(endpoint) as channel:
        ctl = csi_pb2_grpc.ControllerStub(channel)
        try:
            reply = await ctl.CreateVolume(
                pb.CreateVolumeRequest(
                    name=f"pvc-{uuid.uuid4()}",
                    volume_capabilities=[cap],
                    capacity_range=pb.CapacityRange(required_bytes=1 << 30),
                )
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        await ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=reply.volume.volume_id))
        return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def exercised(running: Running) -> str:
    """The scrape after a volume's whole life through `rdscsi demo` and one appliance error."""
    demo = subprocess.run(
        [*RDSCSI, "demo", "--endpoint", running.endpoint, "--node-id", "local"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "✓ NodeStageVolume" in demo.stdout, demo.stdout  # the node steps ran too
    # A healthy run has no failed appliance command: make one. The periodic health check
    # may take the one failure first (then the create succeeds): arm it again.
    codes = []
    for _ in range(5):
        running.fault("fail-next", "1", "not enough space")
        codes.append(asyncio.run(_create_volume(running.endpoint)))
        if codes[-1] != grpc.StatusCode.OK:
            break
    assert codes[-1] != grpc.StatusCode.OK, codes
    return running.scrape()


def test_doc_lists_the_series_and_the_new_ones() -> None:
    doc = documented()
    for machine in ("connection", "node", "attachment", "node_volume"):
        assert doc[f"rds_csi_{machine}_state"] == "gauge"
    assert doc["rds_csi_grpc_requests_total"] == "counter"
    assert doc["rds_csi_grpc_request_duration_seconds"] == "histogram"
    assert 'action="expire_migration"' in DOC.read_text()
    for name, kind in doc.items():
        assert kind in ("counter", "gauge", "histogram"), name
        assert name.endswith("_total") == (kind == "counter"), name
    # the contract the alerts and the dashboard are written against
    assert {n: doc[n] for n in CONTRACT} == {
        "rds_csi_leader": "gauge",
        "rds_csi_lease_transitions_total": "counter",
        "rds_csi_events_total": "counter",
        "rds_csi_kube_informer_synced": "gauge",
        "rds_csi_kube_informer_relists_total": "counter",
        "rds_csi_kube_informer_failures_total": "counter",
    }
    assert set(documented(cluster=True)) == {
        "rds_csi_kube_informer_synced",
        "rds_csi_kube_informer_relists_total",
        "rds_csi_kube_informer_failures_total",
    }
    assert pending() == set()  # every agreed name is emitted


def test_every_documented_series_is_scraped(exercised: str) -> None:
    # `rdscsi run`: all but the cluster view's (scraped from `serve --kubernetes` as the
    # manifests run it, tests/scenarios/test_manifest_run.py)
    names = sample_names(exercised)
    missing = []
    for name, kind in documented(cluster=False).items():
        if name in pending():
            continue
        wanted = [name + s for s in HISTOGRAM_SUFFIXES] if kind == "histogram" else [name]
        missing += [w for w in wanted if w not in names]
    assert not missing, missing


def test_rpcs_are_counted_with_their_codes(exercised: str) -> None:
    assert re.search(
        r'^rds_csi_grpc_requests_total\{code="OK",method="CreateVolume"\} [1-9]', exercised, re.M
    )
    assert re.search(
        r'^rds_csi_grpc_requests_total\{code="OK",method="NodeStageVolume"\} [1-9]', exercised, re.M
    )
    # the injected failure: an aborted CreateVolume, counted with its real (non-OK) code
    failed = re.findall(
        r'^rds_csi_grpc_requests_total\{code="([A-Z_]+)",method="CreateVolume"\} ', exercised, re.M
    )
    assert set(failed) - {"OK", "UNKNOWN"}, failed
    assert re.search(r"^rds_csi_rds_command_errors_total\{", exercised, re.M)


def test_dashboard_uses_only_exported_series(exercised: str) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 38 <= dash["schemaVersion"] <= 40
    assert "${DS_PROMETHEUS}" in json.dumps(dash["panels"])
    scraped = {n.removesuffix(s) for n in sample_names(exercised) for s in HISTOGRAM_SUFFIXES}
    scraped |= sample_names(exercised)
    doc = set(documented())
    used = dashboard_series()
    assert used - doc == set(), "dashboard series not in docs/metrics.md"
    cluster_only = set(documented(cluster=True))
    assert used - scraped - pending() - cluster_only == set(), "dashboard series not exported"
    # every documented series is on the dashboard
    assert doc - used == set()


def test_healthz_follows_the_connection(running: Running) -> None:
    assert running.healthz() == (200, "ok\n")
    running.fault("refuse", "on")
    try:
        running.fault("drop")
        deadline = time.monotonic() + 30
        status, body = running.healthz()
        while status != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
            status, body = running.healthz()
        assert status == 503, body
        assert "appliance connection" in body and "connected" not in body.replace(
            "disconnected", ""
        ), body
        assert http_get(f"{running.base}/readyz") == (status, body)
        # liveness is the process: an appliance outage is no reason to restart it
        assert http_get(f"{running.base}/livez") == (200, "ok\n")
    finally:
        running.fault("refuse", "off")
    deadline = time.monotonic() + 60
    while running.healthz()[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running.healthz() == (200, "ok\n")
