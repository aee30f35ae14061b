"""`rdscsi explain` as a user runs it: a subprocess against a running `rdscsi run` (its
metrics address), reading what the driver serves at `/debug/explain`. The run is a fleet of
two simulated appliances (`--appliances 2`): `sim`, the default, and `sim-2`."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc

from .test_commands import Proc, Running, _create, free_port, rdscsi, run_args

PVC = "pvc-00000000-0000-4000-8000-0000000000e1"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("explain") / "state"
    port = free_port()
    proc = Proc(run_args(state, port, "--node-id", "local", "--appliances", "2"))
    try:
        proc.wait_for("Ctrl-C to stop")
        proc.wait_for("connecting --succeeded--> connected", count=2)  # both answer
        yield Running(proc, state, port)
    finally:
        code = proc.stop(signal.SIGINT)
    assert code == 0, proc.output
    assert "Traceback" not in proc.output


def explain(running: Running, *args: str) -> Any:
    done = rdscsi("explain", *args, "--url", f"http://127.0.0.1:{running.port}", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout) if "--json" in args else done.stdout


def published(running: Running, name: str = PVC, appliance: str = "") -> str:
    async def go() -> str:
        async with grpc.aio.insecure_channel(running.endpoint) as channel:
            ctl = csi_pb2_grpc.ControllerStub(channel)
            req = _create(name)
            if appliance:
                req.parameters["appliance"] = appliance
            vol = (await ctl.CreateVolume(req)).volume
            await ctl.ControllerPublishVolume(
                pb.ControllerPublishVolumeRequest(
                    volume_id=vol.volume_id,
                    node_id="local",
                    volume_capability=_create(PVC).volume_capabilities[0],
                )
            )
            return str(vol.volume_id)

    return asyncio.run(go())


def test_a_published_volume_explained(running: Running) -> None:
    vid = published(running)
    body = explain(running, "volume", vid, "--json")
    assert body["kind"] == "volume"
    assert body["asked"] == {"kind": "volume", "name": vid}
    assert body["object"] == {"volume_id": vid, "appliance": "sim"}
    assert body["replica"] == {
        "identity": "controller",
        "leader": True,
        "lease_holder": "controller",
        "mode": "standalone",
        "note": "this replica runs the reconciler: its history holds the reconciler's "
        "transitions and the CSI calls it answered",
    }
    assert body["machine"]["current"] == "attached"
    assert body["model"]["node"] == "local" and body["model"]["peer"] is None
    assert body["next"]["status"] == "at rest"
    assert body["next"]["summary"] == "attached to node local; nothing is pending"
    publish, fenced = body["history"]  # the holder's host goes on the allow-list after
    assert fenced["transition"] == "attached --fence [admissible]--> attached"
    assert fenced["reason"].startswith("ControllerPublishVolume for node local: its host nqn.")
    assert publish["transition"] == "detached --publish--> attached"
    assert publish["reason"] == "ControllerPublishVolume for node local"
    assert publish["hooks"] == ["VolumeAttached"]
    cluster = body["cluster"]
    assert cluster["source"] == "standalone record" and cluster["pv"] is None
    [claim] = cluster["publishes"]
    assert (claim["node"], claim["attached"], claim["holds"]) == ("local", True, True)
    [node] = cluster["nodes"]
    assert (node["name"], node["ready"], node["evidence"]) == ("local", True, False)
    appliance = body["appliance"]
    assert (appliance["name"], appliance["connection"], appliance["read"]) == (
        "sim",
        "connected",
        True,
    )
    assert appliance["disk"]["slot"] == vid and appliance["disk"]["size_bytes"] == 1 << 30
    assert appliance["disk"]["kind"] == "ext4.snw"
    assert appliance["export"]["nqn"].endswith(vid) and appliance["export"]["port"] == 4420
    # rds.fence allow-host (run's setting): only the holder's host may connect; not staged,
    # so no session yet
    fence = appliance["fence"]
    assert fence["setting"] == "allow-host"
    assert fence["allow_list"].startswith("nqn.") and "," not in fence["allow_list"]
    assert appliance["sessions"] == []
    whole = explain(running, "appliance", "sim", "--json")["appliance"]
    assert whole["fence"] == "allow-host" and whole["sessions"] == "0 NVMe/TCP session(s) listed"
    assert whole["orphan_sweep"]["mode"] == "report" and isinstance(whole["orphans"], list)

    # the same as a user reads it, and as Markdown
    text = explain(running, vid)  # the kind is found
    assert text.startswith(f"volume {vid} on appliance sim\n")
    assert "next: attached to node local; nothing is pending" in text
    assert "publish      detached → attached  ControllerPublishVolume for node local" in text
    assert "  ▶ attached" in text
    assert f"  fence: setting=allow-host, allow_list={fence['allow_list']}\n" in text
    markdown = explain(running, f"pv/{PVC}", "--mermaid")  # standalone: the PV's name
    assert "```mermaid\nstateDiagram-v2\n    [*] --> detached\n" in markdown
    assert "    class attached current\n```" in markdown
    assert explain(running, "node", "local").startswith("node local\n")


def test_the_appliance_in_backoff_names_its_next_dial(running: Running) -> None:
    fault = ["sim-fault", "--data-dir", str(running.state / "sim")]
    assert rdscsi(*fault, "refuse", "on").returncode == 0
    try:
        assert rdscsi(*fault, "drop").returncode == 0
        running.proc.wait_for("backoff: next attempt in")
        body = explain(running, "appliance", "sim", "--json")
        assert body["machine"]["current"] in ("backoff", "reconnecting")
        if body["machine"]["current"] == "backoff":
            nxt = body["next"]
            assert (nxt["status"], nxt["event"]) == ("blocked", "retry")
            [timer] = nxt["blocked_by"][0]["waiting_for"]
            assert timer["kind"] == "after" and timer["text"].startswith("the backoff timer (")
            assert nxt["at"] == timer["at"] and -1.0 <= timer["in_s"] <= 17.6
        failed = [h for h in body["history"] if h["event"] == "failed"]
        assert failed and failed[-1]["reason"]  # the dial's error
        assert body["appliance"]["read"] is False
        overview = explain(running)
        assert "appliances: sim " in overview and "sim connected" not in overview
    finally:
        assert rdscsi(*fault, "refuse", "off").returncode == 0
    running.proc.wait_for("reconnecting --succeeded--> connected")


def test_each_appliance_of_the_fleet_explained_on_its_own(running: Running) -> None:
    """`rdscsi run --appliances 2`: a volume on sim-2 is explained with sim-2's view, and
    `explain appliance sim-2` follows sim-2's own connection while sim's stays up."""
    assert "appliance sim-2: simulator on" in running.proc.output
    slot = "pvc-00000000-0000-4000-8000-0000000000e2"
    vid = published(running, slot, "sim-2")
    assert vid == f"sim-2:{slot}" and vid in running.volumes()
    body = explain(running, "volume", vid, "--json")
    assert body["object"] == {"volume_id": vid, "appliance": "sim-2"}
    appliance = body["appliance"]
    assert (appliance["name"], appliance["connection"], appliance["read"]) == (
        "sim-2",
        "connected",
        True,
    )
    assert appliance["disk"]["slot"] == slot and appliance["export"]["nqn"].endswith(slot)
    assert explain(running, vid).startswith(f"volume {vid} on appliance sim-2\n")
    body = explain(running, "appliance", "sim-2", "--json")
    assert body["object"]["appliance"] == "sim-2" and body["machine"]["current"] == "connected"
    assert body["appliance"]["read"] is True and body["appliance"]["pool"]["size_bytes"] > 0

    fault = ["sim-fault", "--data-dir", str(running.state / "sim-2")]
    assert rdscsi(*fault, "refuse", "on").returncode == 0
    try:
        assert rdscsi(*fault, "drop").returncode == 0
        running.proc.wait_for("RDS sim-2: backoff: next attempt in")
        down = explain(running, "appliance", "sim-2", "--json")
        assert down["machine"]["current"] in ("backoff", "reconnecting")
        assert down["appliance"]["read"] is False
        # the volume on sim-2 waits for its appliance; sim and its volumes are untouched
        on_b = explain(running, "volume", vid, "--json")["appliance"]
        assert on_b["read"] is False and "sim-2" in on_b["why"]
        up = explain(running, "appliance", "sim", "--json")
        assert up["machine"]["current"] == "connected" and up["appliance"]["read"] is True
        overview = explain(running, "--json")
        states = {a["name"]: a["connection"] for a in overview["appliances"]}
        assert states["sim"] == "connected" and states["sim-2"] != "connected"
    finally:
        back = running.proc.output.count("reconnecting --succeeded--> connected") + 1
        assert rdscsi(*fault, "refuse", "off").returncode == 0
    running.proc.wait_for("reconnecting --succeeded--> connected", count=back)


def test_no_secret_in_any_answer(running: Running) -> None:
    answers = [
        explain(running, "--json"),
        explain(running, "appliance/sim", "--json"),
        explain(running, "node", "local", "--json"),
        explain(running, "volume", PVC, "--json"),
    ]
    text = json.dumps(answers)
    sim = running.state / "sim"
    keys = [p for p in sim.iterdir() if p.is_file() and "key" in p.name and p.suffix != ".pub"]
    assert keys, list(sim.iterdir())
    for path in keys:
        for line in path.read_text().strip().splitlines()[1:-1]:
            assert line not in text, path
    assert "PRIVATE KEY" not in text and "client_ed25519_key" not in text


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (
            ["pvc", "apps/data"],
            1,
            "no cluster here (standalone): PVCs are unknown; explain the "
            "volume by its id or PV name",
        ),
        (["node", "elsewhere"], 1, "no node elsewhere in this replica's view"),
        (["a", "b", "c"], 2, "expected [KIND] NAME, got 3 words"),
        (["volume"], 2, "volume: which one? give its name"),
        (["thing", "x"], 2, "thing: not a kind (one of pvc, pv, volume, node, appliance)"),
        (["node", "x", "-n", "apps"], 2, "-n/--namespace is for a PVC given by its name alone"),
    ],
)
def test_mistakes_are_one_line(running: Running, args: list[str], code: int, line: str) -> None:
    done = rdscsi("explain", *args, "--url", f"http://127.0.0.1:{running.port}")
    assert (done.returncode, done.stdout, done.stderr) == (code, "", f"rdscsi explain: {line}\n")


def test_nothing_listening_says_what_to_start(tmp_path: Path) -> None:
    port = free_port()
    done = rdscsi("explain", "--url", f"http://127.0.0.1:{port}")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"rdscsi explain: nothing answers at http://127.0.0.1:{port} (")
    assert done.stderr.endswith(
        "): start `rdscsi run`, or reach a controller first (kubectl -n rdscsi-system "
        "port-forward deploy/rdscsi-controller 9809)\n"
    )
