"""`rdscsi demo --scenario`: each scenario runs as shipped and says only what happened.

The narration is parsed back: every transition line must be one the machines reported, in
the order the story needs, with the process it happened in; the claims (data verified,
exactly one reconcile pass, released after the grace period) are checked against the world
after the run: no mount, loop device or volume of the scenario is left behind. A claim that
does not hold ends the scenario with ✗ and exit 1, and the clean-up still runs, as it does
on Ctrl-C. (node-death as written in the README also runs in tests/docs, as root and not.)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdscsi.cli import SCENARIOS as LISTED
from rdscsi.cli import main
from rdscsi.io.host import mounts
from rdscsi.io.host.loop import LoopTransport
from rdscsi.run import node_support
from rdscsi.scenarios import SCENARIOS, run_scenario, scenario_dir
from rdscsi.scenarios.cluster import wipe
from rdscsi.scenarios.narrate import Narrator, ScenarioFailed

NODE, WHY = node_support()
needs_node = pytest.mark.skipif(not NODE, reason=f"node plugins: {WHY}")

LINE = re.compile(
    r"^\s+(?P<at>\d+\.\d)s (?P<where>\S+)\s+(?P<machine>\S+) (?P<key>\S+): "
    r"(?P<source>\w+) --(?P<event>\w+)--> (?P<target>\w+)"
)


def transitions(text: str) -> list[tuple[str, str, str, str, str]]:
    """(where, machine, source, event, target) of every transition line, in order."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out.append((m["where"], m["machine"], m["source"], m["event"], m["target"]))
    return out


def failed(text: str) -> bool:
    """A ✗ line of the narration (quoted command output has its own, after a │)."""
    return re.search(r"^\s*✗", text, re.M) is not None


def flat(text: str) -> str:
    """The narration with its wrapped lines joined (claims are searched in this)."""
    return " ".join(text.split())


def in_order(seen: list[tuple[str, ...]], wanted: list[tuple[str, ...]]) -> None:
    """`wanted` is a subsequence of `seen`."""
    it: Iterator[tuple[str, ...]] = iter(seen)
    for w in wanted:
        assert any(s == w for s in it), f"no {w} (in order) in {seen}"


def left_behind(state: Path) -> list[str]:
    """Mounts, loop devices and volumes of the scenario still there."""
    root = state.resolve()
    found = [
        f"mount {m.mount_point}" for m in mounts.read_mounts() if m.mount_point.is_relative_to(root)
    ]
    found += [
        f"loop {a.backing}"
        for a in LoopTransport(root).attached()
        if a.backing.startswith(str(root))
    ]
    for vols in root.glob("scenarios/*/sim/files/*/k8s/vol"):
        found += [f"volume {p.name}" for p in vols.iterdir()]
    return found


def cli(state: Path, name: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "rdscsi",
            "demo",
            "--scenario",
            name,
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=state.parent,
    )


def test_the_scenarios_are_the_ones_listed() -> None:
    assert list(SCENARIOS) == list(LISTED) == ["node-death", "appliance-restart", "live-migration"]
    assert all(SCENARIOS[n].title == LISTED[n] for n in LISTED)


def test_a_scenario_runs_its_own_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "node-death", "--endpoint", "unix:///x.sock"]) == 2
    err = capsys.readouterr().err
    assert "--scenario runs its own cluster; --endpoint cannot apply to it" in err
    with pytest.raises(SystemExit):
        main(["demo", "--scenario", "node-life"])


@needs_node
async def test_node_death(tmp_path: Path) -> None:
    lines: list[str] = []
    code = await run_scenario("node-death", tmp_path, lines.append, grace=2.0)
    text = "\n".join(lines)
    assert code == 0 and not failed(text), text
    in_order(
        transitions(text),
        [
            ("controller", "attachment", "detached", "publish", "attached"),
            ("controller", "attachment", "attached", "fence", "attached"),  # node-a's host on
            ("node-a", "node_volume", "unstaged", "stage", "staged"),
            ("node-a", "node_volume", "staged", "publish", "published"),
            ("controller", "node", "ready", "became_not_ready", "not_ready"),
            ("controller", "attachment", "attached", "node_lost", "stale"),
            ("controller", "attachment", "stale", "publish", "stale"),  # node-b refused
            ("controller", "node", "not_ready", "taint_out_of_service", "not_ready"),
            ("controller", "attachment", "stale", "reconcile", "detached"),
            ("controller", "attachment", "detached", "fence_out", "detached"),  # node-a's off
            ("controller", "attachment", "detached", "publish", "attached"),  # node-b
            ("controller", "attachment", "attached", "fence", "attached"),  # only then node-b's
            ("node-b", "node_volume", "unstaged", "stage", "staged"),
            ("node-b", "node_volume", "staged", "publish", "published"),
        ],
    )
    # node-a's own machine saw nothing after the power cut: its plugin was gone
    assert [t for t in transitions(text) if t[0] == "node-a"][-1][4] == "published"
    said = flat(text)
    released = re.search(r"✓ released (\d+\.\d) s after node-a went NotReady", said)
    assert released and 2.0 <= float(released[1]) < 3.5, text
    assert re.search(
        r"node-b \(the pod rescheduled\): refused, volume pvc-\S+ is attached to node node-a", said
    )
    for claim in (
        "✓ data verified: the pod on node-b reads the",
        "✓ ControllerGetVolume: published on node-b",
        "detached --fence_out--> detached [host of node-a] (NodeFenced)",
        "✓ fenced: node-a's host taken off the disk's allow-list (NodeFenced)",
        "✓ node-a's host asks the appliance to connect, as at `nvme connect`: failure: host nqn.",
        "is not allowed to connect to nqn.2000-02.com.mikrotik:pvc-",
        "✓ the disk's allow-list: node-b's host alone, put on after node-a's came off",
        "event Warning StaleAttachmentCleared on PersistentVolumeClaim demo/data",
        "grace period 2 s for this demo",
        "✓ what the driver says it waits for, `rdscsi explain pvc demo/data`: │ volume pvc-",
        "blocked by clearable: the grace period (2 s from when node node-a was lost)",
        "✓ done",
    ):
        assert claim in said, claim
    assert left_behind(tmp_path) == []
    assert (scenario_dir(tmp_path, "node-death") / "log").stat().st_size > 0


def test_appliance_restart(tmp_path: Path) -> None:
    done = cli(tmp_path / "state", "appliance-restart")
    text = flat(done.stdout)
    assert done.returncode == 0 and not failed(done.stdout), text + done.stderr
    link = [t for t in transitions(done.stdout) if t[1] == "connection"]
    in_order(
        link,
        [
            ("controller", "connection", "starting", "dial", "connecting"),
            ("controller", "connection", "connecting", "succeeded", "connected"),
            ("controller", "connection", "connected", "lost", "disconnected"),
            ("controller", "connection", "disconnected", "retry", "reconnecting"),
            ("controller", "connection", "reconnecting", "failed", "backoff"),
            ("controller", "connection", "backoff", "retry", "reconnecting"),
            ("controller", "connection", "reconnecting", "succeeded", "connected"),
        ],
    )
    assert "✓ CreateVolume meanwhile: UNAVAILABLE" in text
    assert "✓ exactly one reconcile pass, triggered by the reconnect" in text
    assert "Warning RDSDisconnected on Pod kube-system/rdscsi-controller-0" in text
    assert "Normal RDSReconnected on Pod kube-system/rdscsi-controller-0" in text
    assert ("✓ the pod on node-a reads data.txt back" in text) == NODE
    assert "Traceback" not in done.stderr and done.stderr == ""
    assert left_behind(tmp_path / "state") == []


def test_live_migration(tmp_path: Path) -> None:
    done = cli(tmp_path / "state", "live-migration")
    text = flat(done.stdout)
    assert done.returncode == 0 and not failed(done.stdout), done.stdout + done.stderr
    wanted = [
        ("controller", "attachment", "detached", "publish", "attached"),
        ("controller", "attachment", "attached", "publish", "migrating"),
        ("controller", "attachment", "migrating", "unpublish", "attached"),
    ]
    if NODE:
        wanted[2:2] = [
            ("node-b", "node_volume", "connected", "publish", "published"),
            ("node-a", "node_volume", "connected", "unstage", "unstaged"),
        ]
    in_order(transitions(done.stdout), wanted)
    assert "✓ ControllerGetVolume: published on node-a and node-b" in text
    assert "✓ ControllerGetVolume: published on node-b alone" in text
    assert "Normal MigrationCompleted on PersistentVolumeClaim demo/vm-disk" in text
    shown = "✓ node-b reads, from its own device, the bytes node-a wrote" in text
    assert shown == NODE
    if NODE:  # two nodes, two devices: each its own loop device on the one file
        devices = re.findall(r"NodeStageVolume on node-[ab]: (/dev/loop\d+)", text)
        assert len(set(devices)) == 2, devices
    assert left_behind(tmp_path / "state") == []


def _userns() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(os.geteuid() != 0 or not _userns(), reason="needs root and user namespaces")
def test_without_root_the_controller_side_runs_and_says_what_is_not_shown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tmp_path.chmod(0o777)
    done = cli(state, "live-migration", prefix=("unshare", "--user"))
    text = flat(done.stdout)
    assert done.returncode == 0 and not failed(done.stdout), done.stdout + done.stderr
    assert "· no node plugins: it needs root to attach loop devices and mount (this is uid" in text
    assert "run the demo with sudo to see them" in text
    assert "NodeStageVolume" not in text and "node_volume" not in text
    assert "no node plugins: node-b's device and the data are not shown" in text
    in_order(
        transitions(done.stdout),
        [
            ("controller", "attachment", "attached", "publish", "migrating"),
            ("controller", "attachment", "migrating", "unpublish", "attached"),
        ],
    )


async def test_a_claim_that_does_not_hold_ends_the_scenario_and_it_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdscsi.scenarios import live_migration

    async def nowhere(*args: object) -> list[str]:
        return []

    monkeypatch.setattr(live_migration, "published_on", nowhere)
    lines: list[str] = []
    assert await run_scenario("live-migration", tmp_path, lines.append) == 1
    text = flat("\n".join(lines))
    assert "✗ ControllerGetVolume: published on []" in text
    assert "✓ ControllerGetVolume" not in text  # nothing claimed after it
    assert "Cleanup, what the scenario made:" in text and "deleted volume pvc-" in text
    assert text.rstrip().endswith(
        f"✗ the scenario failed; the log: {scenario_dir(tmp_path, 'live-migration') / 'log'}"
    )
    assert left_behind(tmp_path) == []


@needs_node
def test_ctrl_c_cleans_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rdscsi", "demo", "--scenario", "node-death"],
        cwd=state.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # interrupted while waiting out the grace period
        out.append(line)
        if line.startswith("5. ") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    text = flat("".join(out) + rest)
    assert proc.returncode == 130, text + err
    assert err == "rdscsi demo: interrupted\n"  # no traceback, nothing left unclosed
    assert "· interrupted (Ctrl-C): cleaning up" in text
    assert "Cleanup, what the scenario made:" in text and "deleted volume pvc-" in text
    assert left_behind(tmp_path / ".rdscsi") == []


# A scenario whose step swallows the cancellation Ctrl-C sends, as Python 3.11's `wait_for`
# does when its awaitable completes at that moment (the flake this replaced: exit 0 after
# Ctrl-C under load). Stubbed cluster, own process: the signal must not reach pytest.
SWALLOWED = """
import asyncio, os, signal, sys
from pathlib import Path
import rdscsi.scenarios as sc

class Stub:
    def __init__(self, root, narrator, grace):
        self.narrator = narrator
    async def start(self): pass
    async def events(self): pass
    async def stop(self): print("cluster stopped", flush=True)

async def swallowing(cluster, undo):
    os.kill(os.getpid(), signal.SIGINT)
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass
    print("step went on", flush=True)

sc.Cluster = Stub
sc._setting = lambda cluster, shown: None
scenario = sc.Scenario("t", "t", swallowing)
root = Path(sys.argv[1])
try:
    code = asyncio.run(sc._run(scenario, root, root, sc.Narrator(print), 1.0))
except KeyboardInterrupt:
    code = 130
print("exit", code, flush=True)
"""


def test_an_interrupt_sticks_when_a_step_swallows_the_cancellation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SWALLOWED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout
    assert "step went on" in out, out + done.stderr
    assert "interrupted (Ctrl-C): cleaning up" in out, out + done.stderr
    assert "cluster stopped" in out and out.rstrip().endswith("exit 130"), out + done.stderr


@needs_node
async def test_what_an_interrupted_run_left_is_cleared_first(tmp_path: Path) -> None:
    root = tmp_path / "scenarios" / "node-death"
    for d in ("files", "view", "mnt"):
        (root / d).mkdir(parents=True)
    with open(root / "files" / "vol.img", "wb") as f:
        f.truncate(8 << 20)
    await mounts.bind(root / "files", root / "view")
    # attached through the view, as a node attaches, and mounted: each holds the other busy
    device = subprocess.run(
        ["losetup", "--find", "--show", str(root / "view" / "vol.img")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["mkfs.ext4", "-q", device], check=True)
    subprocess.run(["mount", device, str(root / "mnt")], check=True)
    assert len(left_behind(tmp_path)) == 3
    await wipe(root)
    assert not root.exists() and left_behind(tmp_path) == []


async def test_the_narrator_says_what_did_not_happen() -> None:
    lines: list[str] = []
    n = Narrator(lines.append)
    with pytest.raises(ScenarioFailed):
        await n.until(lambda: False, "the volume never moved", timeout=0.05)
    assert lines == ["  ✗ the volume never moved: not after 0.05 s"]
    with pytest.raises(ScenarioFailed):
        n.expect(False, "no")
    n.expect(True, "never printed")
    assert lines[-1] == "  ✗ no"


async def test_a_directory_another_user_made_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "scenarios" / "node-death"
    root.mkdir(parents=True)

    def refused(path: object) -> None:
        raise PermissionError(13, "Permission denied", "log")

    monkeypatch.setattr(shutil, "rmtree", refused)
    lines: list[str] = []
    assert await run_scenario("node-death", tmp_path, lines.append) == 1
    assert flat(lines[-1]).startswith(f"✗ {root} cannot be cleared (Permission denied): it was")
    assert "Setting" not in "\n".join(lines)
