"""`rdscsi node-init` against a temporary directory as the host's root, run as the DaemonSet's
init container runs it (its args from the rendered manifest), with a stand-in `modprobe` on
PATH that "loads" the module by creating /sys/module/nvme_tcp under that root."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rdscsi.io.host import identity
from tests.deploy.test_manifests import BASE, pod_spec, render

NQN_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"


def init_args() -> list[str]:
    spec = pod_spec(render(BASE), "DaemonSet", "rdscsi-node")
    (init,) = [c for c in spec["initContainers"] if c["name"] == "node-init"]
    return [*init.get("command", []), *init["args"]]


def stub_modprobe(bin_dir: Path, root: Path, exit_code: int = 0, creates: bool = True) -> Path:
    """A `modprobe` that records its argv and (if it succeeds) creates the module's sysfs dir."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "modprobe.log"
    script = bin_dir / "modprobe"
    make = f'mkdir -p "{root}/sys/module/nvme_tcp"' if creates else ":"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> "{log}"\n'
        + (f"{make}\nexit 0\n" if exit_code == 0 else f"echo 'FATAL: nope' >&2\nexit {exit_code}\n")
    )
    script.chmod(0o755)
    return log


def node_init(root: Path, bin_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = init_args()
    assert args[:2] == ["rdscsi", "node-init"] or args[0] == "node-init", args
    argv = args[1:] if args[0] == "rdscsi" else args
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "rdscsi.cli", *argv, "--root", str(root), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_a_bare_host_gets_a_paired_identity_and_the_module(tmp_path: Path) -> None:
    root = tmp_path / "host"
    log = stub_modprobe(tmp_path / "bin", root)
    done = node_init(root, tmp_path / "bin")
    assert done.returncode == 0, done.stderr
    nqn = (root / "etc/nvme/hostnqn").read_text()
    hostid = (root / "etc/nvme/hostid").read_text()
    assert nqn.endswith("\n") and hostid.endswith("\n")
    assert nqn.strip() == NQN_PREFIX + hostid.strip()
    assert uuid.UUID(hostid.strip()).version == 4
    assert (root / "etc/nvme/hostnqn").stat().st_mode & 0o777 == 0o644
    assert log.read_text().split() == ["nvme-tcp"]
    assert "created" in done.stderr
    # no temporary file left behind
    assert sorted(p.name for p in (root / "etc/nvme").iterdir()) == ["hostid", "hostnqn"]

    # a second run (the pod restarted) changes nothing and does not load the module again
    again = node_init(root, tmp_path / "bin")
    assert again.returncode == 0, again.stderr
    assert (root / "etc/nvme/hostnqn").read_text() == nqn
    assert (root / "etc/nvme/hostid").read_text() == hostid
    assert log.read_text().split() == ["nvme-tcp"]


def test_existing_files_are_never_changed(tmp_path: Path) -> None:
    root = tmp_path / "host"
    d = root / "etc/nvme"
    d.mkdir(parents=True)
    (d / "hostnqn").write_text("nqn.2014-08.org.example:node-7  \n")  # a custom NQN, kept
    (root / "sys/module/nvme_tcp").mkdir(parents=True)  # built in: nothing to load
    log = stub_modprobe(tmp_path / "bin", root)
    done = node_init(root, tmp_path / "bin")
    assert done.returncode == 0, done.stderr
    assert (d / "hostnqn").read_text() == "nqn.2014-08.org.example:node-7  \n"
    assert uuid.UUID((d / "hostid").read_text().strip())  # a custom NQN: a fresh hostid
    assert not log.exists()


def test_a_missing_half_is_paired_with_the_existing_one(tmp_path: Path) -> None:
    u = "0f8fad5b-d9cb-469f-a165-70867728950e"
    one = tmp_path / "a"
    (one / "etc/nvme").mkdir(parents=True)
    (one / "etc/nvme/hostnqn").write_text(NQN_PREFIX + u.upper() + "\n")
    got = identity.ensure_identity(one)
    assert got.hostid == u and got.created == ("hostid",)
    assert got.hostnqn == NQN_PREFIX + u.upper()  # untouched, case and all

    two = tmp_path / "b"
    (two / "etc/nvme").mkdir(parents=True)
    (two / "etc/nvme/hostid").write_text(u + "\n")
    got = identity.ensure_identity(two)
    assert got.hostnqn == NQN_PREFIX + u and got.created == ("hostnqn",)


def test_a_blank_file_identifies_no_one_and_is_filled(tmp_path: Path) -> None:
    d = tmp_path / "etc/nvme"
    d.mkdir(parents=True)
    (d / "hostnqn").write_text("\n")
    got = identity.ensure_identity(tmp_path, new_uuid=lambda: uuid.UUID(int=5))
    assert got.hostnqn == NQN_PREFIX + str(uuid.UUID(int=5))
    assert set(got.created) == {"hostnqn", "hostid"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("hostnqn", "not-an-nqn\n"),
        ("hostnqn", "nqn." + "x" * 230 + "\n"),
        ("hostnqn", "nqn.2014-08.org.example:has space\n"),
        ("hostid", "1234\n"),
    ],
)
def test_an_invalid_existing_file_fails_and_is_left_alone(
    tmp_path: Path, name: str, text: str
) -> None:
    root = tmp_path / "host"
    (root / "etc/nvme").mkdir(parents=True)
    (root / "etc/nvme" / name).write_text(text)
    stub_modprobe(tmp_path / "bin", root)
    done = node_init(root, tmp_path / "bin")
    assert done.returncode == 1
    assert f"etc/nvme/{name}" in done.stderr and "never rewritten" in done.stderr
    assert (root / "etc/nvme" / name).read_text() == text
    assert [p.name for p in (root / "etc/nvme").iterdir()] == [name]


def test_a_concurrent_writer_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If nvme-cli writes hostnqn between our read and our link, its file is kept."""
    d = tmp_path / "etc/nvme"
    d.mkdir(parents=True)
    real_link = os.link

    def racing_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "hostnqn":
            Path(dst).write_text(NQN_PREFIX + str(uuid.UUID(int=9)) + "\n")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    got = identity.ensure_identity(tmp_path, new_uuid=lambda: uuid.UUID(int=1))
    assert got.hostnqn == NQN_PREFIX + str(uuid.UUID(int=9))
    assert "hostnqn" not in got.created
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []


def test_a_module_that_cannot_be_loaded_names_the_prerequisite(tmp_path: Path) -> None:
    root = tmp_path / "host"
    stub_modprobe(tmp_path / "bin", root, exit_code=1)
    done = node_init(root, tmp_path / "bin")
    assert done.returncode == 1
    assert "nvme-tcp" in done.stderr and "modules-load.d" in done.stderr
    # the identity was still written: it does not depend on the module
    assert (root / "etc/nvme/hostnqn").exists()

    quiet = stub_modprobe(tmp_path / "bin2", root, creates=False)
    done = node_init(root, tmp_path / "bin2")
    assert done.returncode == 1 and "/sys/module/nvme_tcp is absent" in done.stderr
    assert quiet.read_text().split() == ["nvme-tcp"]

    skipped = node_init(root, tmp_path / "bin", "--no-module")
    assert skipped.returncode == 0, skipped.stderr
