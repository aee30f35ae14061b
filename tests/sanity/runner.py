"""The CSI conformance suite (kubernetes-csi `csi-sanity`) against `rdscsi run`, as shipped.

`make sanity` runs this file; `make test` runs it through `test_sanity.py` when the binary is
there. Each mode (filesystem volumes, then raw block) gets its own `rdscsi run`: its own
state directory, metrics port and kubelet directory, the built-in simulator, and the node
side on real loop devices (root only). Afterwards every mount and loop device under that
state directory is cleaned up, and any that csi-sanity's own cleanup left counts as a
failure (a leak is a bug).

A spec may be skipped only for what the appliance cannot honestly offer (volume group
snapshots, volume modification) and for the attach-limit spec (this driver reports no
limit); any other skip, and any failed spec, fails the run.

Where the binary comes from: `$CSI_SANITY`, then `../shared/tools/csi-sanity` beside the
repository, then `csi-sanity` on `PATH`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RDSCSI = [sys.executable, "-m", "rdscsi.cli"]
MODES = ("mount", "block")
VOLUME_SIZE = 64 << 20  # small volumes format fast; a multiple of 4096 over ext4's minimum
EXPAND_SIZE = 128 << 20
TIMEOUT = 600.0
# The external-provisioner's --extra-create-metadata parameters: recorded with each volume.
PARAMETERS = {
    "csi.storage.k8s.io/pvc/name": "sanity-claim",
    "csi.storage.k8s.io/pvc/namespace": "sanity",
    "csi.storage.k8s.io/pv/name": "pvc-sanity",
}
# Why a spec may be skipped: csi-sanity skips these itself when the driver does not offer
# the capability (or, for the attach limit, unless asked for).
ALLOWED_SKIPS = {
    "volume modification (ControllerModifyVolume): the appliance cannot change a volume's "
    "attributes": re.compile(r"ModifyVolume|[Mm]odify [Vv]olume|volume attribute class"),
    "volume group snapshots: the appliance cannot snapshot several disks at one instant": (
        re.compile(r"GroupController|[Gg]roup[ ]?[Ss]napshot")
    ),
    "the attach-limit spec (no max_volumes_per_node)": re.compile(r"max attach limit"),
}


def find_binary() -> Path | None:
    """`$CSI_SANITY`, then `../shared/tools/csi-sanity`, then `PATH`; None if none."""
    candidates = [os.environ.get("CSI_SANITY", ""), str(REPO.parent / "shared/tools/csi-sanity")]
    candidates.append(shutil.which("csi-sanity") or "")
    for text in candidates:
        if text and Path(text).is_file() and os.access(text, os.X_OK):
            return Path(text)
    return None


def cannot_run() -> str:
    """Why this machine cannot run the suite ("" if it can)."""
    if find_binary() is None:
        return "csi-sanity not found ($CSI_SANITY, ../shared/tools/csi-sanity, PATH)"
    if os.geteuid() != 0 or not Path("/dev/loop-control").exists():
        return "csi-sanity drives the node side: it needs root and loop devices"
    return ""


@dataclass
class Outcome:
    mode: str
    seconds: float = 0.0
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # spec -> why it may be skipped
    disallowed: list[str] = field(default_factory=list)  # skipped without a good reason
    pending: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.passed) and not (self.failed or self.disallowed or self.leftovers)

    def summary(self) -> str:
        return (
            f"csi-sanity ({self.mode}): {len(self.passed)} passed, {len(self.failed)} failed, "
            f"{len(self.skipped) + len(self.disallowed)} skipped, {len(self.pending)} pending "
            f"in {self.seconds:.1f}s"
        )

    def report(self) -> str:
        lines = [self.summary()]
        lines += [f"  FAILED  {name}" for name in self.failed]
        lines += [f"  SKIPPED without a reason the driver accepts: {n}" for n in self.disallowed]
        lines += [f"  skipped ({why}): {name}" for name, why in self.skipped.items()]
        lines += [f"  left behind (cleaned now): {item}" for item in self.leftovers]
        return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_run(state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *RDSCSI,
            "run",
            "--state-dir",
            str(state),
            "--metrics-address",
            f"127.0.0.1:{_free_port()}",
            "--node-id",
            "sanity-node",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=REPO,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C to stop" in line:
            return proc
    proc.wait(timeout=30)
    raise RuntimeError("`rdscsi run` exited before it was ready:\n" + "".join(seen))


def _stop_run(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    prefix = str(root) + "/"
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _loops_under(root: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = []
    for line in out.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(str(root) + "/"):
            found.append(name)
    return found


def clean(root: Path) -> list[str]:
    """Unmount everything under ``root`` and detach its loop devices; say what was there."""
    left: list[str] = []
    for point in _mounts_under(root):
        left.append(f"mount {point}")
        subprocess.run(["umount", point], capture_output=True, check=False)
    for loop in _loops_under(root):
        left.append(f"loop device {loop}")
        subprocess.run(["blockdev", "--setrw", loop], capture_output=True, check=False)
        subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False)
    return left


def _spec_name(spec: dict[str, object]) -> str:
    texts = [str(t) for t in spec.get("ContainerHierarchyTexts") or []]
    return " ".join([*texts, str(spec.get("LeafNodeText", ""))]).strip()


def _read_report(path: Path, outcome: Outcome) -> None:
    for suite in json.loads(path.read_text()):
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                if spec.get("State") not in ("passed", "skipped"):
                    outcome.failed.append(f"{spec.get('LeafNodeType')}: {_spec_name(spec)}")
                continue
            name, state = _spec_name(spec), spec.get("State")
            if state == "passed":
                outcome.passed.append(name)
            elif state == "skipped":
                why = next((w for w, p in ALLOWED_SKIPS.items() if p.search(name)), None)
                if why is None:
                    outcome.disallowed.append(name)
                else:
                    outcome.skipped[name] = why
            elif state == "pending":
                outcome.pending.append(name)  # disabled in csi-sanity itself (XIt)
            else:
                outcome.failed.append(f"{name} [{state}]")


def run_mode(binary: Path, mode: str, workdir: Path) -> Outcome:
    outcome = Outcome(mode)
    state = workdir / mode
    kubelet = state / "kubelet"
    params = workdir / "parameters.yaml"
    params.write_text("".join(f"{k}: {v}\n" for k, v in PARAMETERS.items()))
    report = workdir / f"{mode}.json"
    started = time.monotonic()
    run = _start_run(state)
    try:
        argv = [
            str(binary),
            "--csi.endpoint",
            f"unix://{state / 'csi.sock'}",
            "--csi.stagingdir",
            str(kubelet / "staging"),
            "--csi.mountdir",
            str(kubelet / "mount"),
            "--csi.testvolumesize",
            str(VOLUME_SIZE),
            "--csi.testvolumeexpandsize",
            str(EXPAND_SIZE),
            "--csi.testvolumeparameters",
            str(params),
            "--csi.testvolumeaccesstype",
            mode,
            "--ginkgo.no-color",
            "--ginkgo.json-report",
            str(report),
            "--ginkgo.timeout",
            f"{int(TIMEOUT)}s",
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT + 60)
            outcome.log, status = done.stdout + done.stderr, f"exit {done.returncode}"
        except subprocess.TimeoutExpired as exc:
            outcome.log, status = str(exc.stdout or ""), f"killed after {TIMEOUT + 60:.0f}s"
    finally:
        outcome.log += "\n--- rdscsi run ---\n" + _stop_run(run)
        outcome.leftovers = clean(state)
    outcome.seconds = time.monotonic() - started
    if report.exists():
        _read_report(report, outcome)
    else:
        outcome.failed.append(f"csi-sanity wrote no report ({status})")
    return outcome


def run_all(modes: tuple[str, ...] = MODES) -> list[Outcome]:
    binary = find_binary()
    if binary is None:
        raise RuntimeError(cannot_run())
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="rdscsi-sanity-") as tmp:
        workdir = Path(tmp).resolve()
        try:
            for mode in modes:
                outcomes.append(run_mode(binary, mode, workdir))
        finally:
            clean(workdir)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, action="append", help="default: both")
    parser.add_argument("--log", action="store_true", help="print csi-sanity's whole output")
    args = parser.parse_args()
    why = cannot_run()
    if why:
        print(f"make sanity: cannot run: {why}", file=sys.stderr)
        return 2
    print(f"csi-sanity: {find_binary()}", flush=True)
    outcomes = run_all(tuple(args.mode or MODES))
    for outcome in outcomes:
        if args.log or not outcome.ok:
            print(outcome.log)
        print(outcome.report(), flush=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
