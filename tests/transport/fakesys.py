"""A fake NVMe sysfs and /dev under a directory, laid out the way the kernel lays them out.

Used by the tests directly and by the fake ``nvme`` executable (a separate process), so all
its state lives in the tree itself: nothing is remembered between calls.

Layout (N: controller instance, X: subsystem instance, M: namespace):

    sys/devices/virtual/nvme-fabrics/ctl/nvmeN/{subsysnqn,transport,address,state,dev}
    sys/devices/virtual/nvme-fabrics/ctl/nvmeN/nvmeNnM/        (no multipath: the disk)
    sys/devices/virtual/nvme-fabrics/ctl/nvmeN/nvmeXcNnM/      (multipath: hidden path)
    sys/devices/virtual/nvme-subsystem/nvme-subsysX/{subsysnqn,nvmeN -> ctl/nvmeN}
    sys/devices/virtual/nvme-subsystem/nvme-subsysX/nvmeXnM/   (multipath: the head disk)
    sys/class/nvme/nvmeN -> ../../devices/virtual/nvme-fabrics/ctl/nvmeN
    sys/class/nvme-subsystem/nvme-subsysX -> ../../devices/virtual/nvme-subsystem/...
    sys/class/block/<disk> -> ../../devices/.../<disk>
    dev/nvmeN, dev/<disk>                                       (plain files)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CTL = Path("devices/virtual/nvme-fabrics/ctl")
SUBSYS = Path("devices/virtual/nvme-subsystem")
PCI_CTL = Path("devices/pci0000:00/0000:00:04.0/nvme")


def _free(taken: set[int], wanted: int | None) -> int:
    if wanted is not None:
        return wanted
    n = 0
    while n in taken:
        n += 1
    return n


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


class FakeNvmeSys:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        self.dev = root / "dev"
        self.sysfs.mkdir(parents=True, exist_ok=True)
        self.dev.mkdir(parents=True, exist_ok=True)
        self._minor = 0

    # --- reading -------------------------------------------------------------------------

    def controllers(self, nqn: str | None = None) -> list[str]:
        cls = self.sysfs / "class" / "nvme"
        if not cls.is_dir():
            return []
        return sorted(
            c.name
            for c in cls.iterdir()
            if nqn is None or (c / "subsysnqn").read_text().strip() == nqn
        )

    def subsystems(self, nqn: str | None = None) -> list[str]:
        cls = self.sysfs / "class" / "nvme-subsystem"
        if not cls.is_dir():
            return []
        return sorted(
            s.name
            for s in cls.iterdir()
            if nqn is None or (s / "subsysnqn").read_text().strip() == nqn
        )

    def _numbers(self, names: list[str], pattern: str) -> set[int]:
        return {int(m[1]) for n in names if (m := re.fullmatch(pattern, n))}

    # --- writing -------------------------------------------------------------------------

    def _disk(self, parent: Path, name: str, *, devnode: bool, size: int = 2097152) -> None:
        disk = parent / name
        disk.mkdir(parents=True)
        self._minor += 1
        (disk / "dev").write_text(f"259:{self._minor}\n")
        (disk / "size").write_text(f"{size}\n")
        (disk / "holders").mkdir()
        _link(self.sysfs / "class" / "block" / name, disk)
        if devnode:
            (self.dev / name).write_text("")

    def add(
        self,
        nqn: str,
        *,
        ctrl: int | None = None,
        subsys: int | None = None,
        multipath: bool = False,
        namespaces: tuple[int, ...] = (1,),
        devnodes: bool = True,
        transport: str = "tcp",
        address: str = "traddr=10.0.0.5,trsvcid=4420,src_addr=10.0.0.7",
    ) -> str:
        """A connected controller for ``nqn``; returns its name ("nvme0")."""
        n = _free(self._numbers(self.controllers(), r"nvme([0-9]+)"), ctrl)
        existing = self.subsystems(nqn)
        if existing and subsys is None:
            x = int(existing[0].removeprefix("nvme-subsys"))
        else:
            x = _free(self._numbers(self.subsystems(), r"nvme-subsys([0-9]+)"), subsys)
        name = f"nvme{n}"
        base = PCI_CTL if transport == "pcie" else CTL
        ctl = self.sysfs / base / name
        ctl.mkdir(parents=True)
        (ctl / "subsysnqn").write_text(nqn + "\n")
        (ctl / "transport").write_text(transport + "\n")
        (ctl / "address").write_text(address + "\n")
        (ctl / "state").write_text("live\n")
        (ctl / "dev").write_text(f"238:{n}\n")
        _link(self.sysfs / "class" / "nvme" / name, ctl)
        (self.dev / name).write_text("")

        sub = self.sysfs / SUBSYS / f"nvme-subsys{x}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "subsysnqn").write_text(nqn + "\n")
        _link(sub / name, ctl)
        _link(self.sysfs / "class" / "nvme-subsystem" / sub.name, sub)
        for m in namespaces:
            if multipath:
                (ctl / f"nvme{x}c{n}n{m}").mkdir()  # hidden: no /dev node
                if not (sub / f"nvme{x}n{m}").exists():
                    self._disk(sub, f"nvme{x}n{m}", devnode=devnodes)
            else:
                self._disk(ctl, f"nvme{n}n{m}", devnode=devnodes)
        return name

    def remove_controller(self, name: str) -> None:
        link = self.sysfs / "class" / "nvme" / name
        ctl = link.resolve()
        for child in ctl.iterdir():
            if re.fullmatch(r"nvme[0-9]+n[0-9]+", child.name):
                self._drop_disk(child.name)
        shutil.rmtree(ctl)
        link.unlink()
        (self.dev / name).unlink(missing_ok=True)
        # The subsystem goes with its last controller (its head disks with it).
        for sub_name in self.subsystems():
            sub = self.sysfs / "class" / "nvme-subsystem" / sub_name
            real = sub.resolve()
            (real / name).unlink(missing_ok=True)
            if not any(re.fullmatch(r"nvme[0-9]+", c.name) for c in real.iterdir()):
                for child in real.iterdir():
                    if re.fullmatch(r"nvme[0-9]+n[0-9]+", child.name):
                        self._drop_disk(child.name)
                shutil.rmtree(real)
                sub.unlink()

    def _drop_disk(self, name: str) -> None:
        (self.sysfs / "class" / "block" / name).unlink(missing_ok=True)
        (self.dev / name).unlink(missing_ok=True)

    def remove(self, nqn: str) -> int:
        """Disconnect every controller of ``nqn``; returns how many there were."""
        names = self.controllers(nqn)
        for name in names:
            self.remove_controller(name)
        return len(names)
