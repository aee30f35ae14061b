"""A stand-in for nvme-cli, run as a real subprocess by the transport under test.

:func:`install` writes a small executable into a directory; it loads this module and calls
:func:`main`, which appends its argv to a log and acts on the fake sysfs tree
(:mod:`tests.transport.fakesys`) the way the kernel would. Its behaviour per subcommand is
read from a JSON control file on every run, so a test changes it between calls.

Modes:
- connect: ``ok``; ``multipath``; ``already`` (says "already connected", exits 1, but the
  session is there); ``already-nodevice`` (same, no namespace); ``fail``; ``nodevice``
  (controller without namespace, exit 0); ``sleep`` (sleeps ``sleep`` seconds, pid written
  to ``pidfile`` first).
- disconnect: ``ok``; ``stuck`` (exit 0, nothing removed); ``fail``; ``fail-but-gone``
  (removes, then exits 1); ``sleep``.
- list-subsys: prints the file named by ``list_subsys``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.transport.fakesys import FakeNvmeSys

REPO = Path(__file__).resolve().parents[2]


def install(directory: Path, root: Path) -> tuple[Path, Path, Path]:
    """Write the executable; returns (executable, control file, argv log)."""
    control = directory / "fake-nvme.json"
    log = directory / "fake-nvme.log"
    control.write_text(json.dumps({"root": str(root), "log": str(log)}))
    exe = directory / "nvme"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.transport.fake_nvme import main\n"
        f"sys.exit(main({str(control)!r}, sys.argv[1:]))\n"
    )
    exe.chmod(0o755)
    return exe, control, log


def configure(control: Path, **changes: Any) -> None:
    data = json.loads(control.read_text())
    data.update(changes)
    control.write_text(json.dumps(data))


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _sleep(cfg: dict[str, Any]) -> None:
    if "pidfile" in cfg:
        Path(cfg["pidfile"]).write_text(str(os.getpid()))
    time.sleep(float(cfg.get("sleep", 60)))


def main(control: str, args: list[str]) -> int:
    cfg = json.loads(Path(control).read_text())
    with open(cfg["log"], "a") as log:
        log.write(json.dumps(args) + "\n")
    fake = FakeNvmeSys(Path(cfg["root"]))
    command = args[0] if args else ""
    if command == "connect":
        mode = cfg.get("connect", "ok")
        nqn = _opt(args, "-n")
        address = f"traddr={_opt(args, '-a')},trsvcid={_opt(args, '-s')}"
        if mode == "sleep":
            _sleep(cfg)
            return 0
        if mode == "fail":
            print("Failed to write to /dev/nvme-fabrics: Connection refused", file=sys.stderr)
            return 1
        if mode.startswith("already"):
            namespaces = () if mode == "already-nodevice" else (1,)
            fake.add(nqn, address=address, namespaces=namespaces)
            print("already connected", file=sys.stderr)
            return 1
        namespaces = () if mode == "nodevice" else (1,)
        fake.add(nqn, address=address, multipath=mode == "multipath", namespaces=namespaces)
        return 0
    if command == "disconnect":
        mode = cfg.get("disconnect", "ok")
        nqn = _opt(args, "-n")
        if mode == "sleep":
            _sleep(cfg)
            return 0
        if mode == "fail":
            print(f"Failed to disconnect {nqn}: Device or resource busy", file=sys.stderr)
            return 1
        count = 0 if mode == "stuck" else fake.remove(nqn)
        print(f"NQN:{nqn} disconnected {count} controller(s)")
        return 1 if mode == "fail-but-gone" else 0
    if command == "list-subsys":
        sys.stdout.write(Path(cfg["list_subsys"]).read_text())
        return 0
    if command == "ns-rescan":
        return 0
    print(f"fake nvme: unknown command {args}", file=sys.stderr)
    return 22
