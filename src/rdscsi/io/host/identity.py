"""The node's NVMe host identity and the NVMe/TCP module, prepared once per boot of the plugin.

`rdscsi node-init` (the node plugin's init container) runs this against the host's root
(`/etc/nvme` and `/sys` mounted from the host; `/lib/modules` for `modprobe`):

- `/etc/nvme/hostnqn` and `/etc/nvme/hostid` are written when missing and **never changed**
  once they exist: the appliance knows this node by its host NQN, and fencing a node means
  refusing that NQN, so it must survive reboots and plugin upgrades. Without the files
  nvme-cli makes up an identity per `nvme connect` on some versions, which is what breaks.
- A new identity is a random UUID (`nqn.2014-08.org.nvmexpress:uuid:<uuid>`, hostid the same
  UUID, as nvme-cli pairs them). The DMI product UUID is not used: cloned VMs often share
  it, and two nodes with one host NQN would be fenced together.
- `nvme-tcp` is loaded with `modprobe` when `/sys/module/nvme_tcp` is absent (built in or
  loaded already: nothing to do); a host where it cannot be loaded fails here, with the
  prerequisite named, instead of failing every NodeStage later.

Files are created with a hard link from a fully written temporary file, so a concurrent
writer (nvme-cli, another init) can never be overwritten and no reader sees half a file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import proc

log = logging.getLogger(__name__)

UUID_NQN_PREFIX: Final = "nqn.2014-08.org.nvmexpress:uuid:"
MODULE: Final = "nvme-tcp"  # modprobe's name
MODULE_SYSFS: Final = "nvme_tcp"  # /sys/module/<name> once loaded or built in
NQN_MAX: Final = 223  # NVMe base specification: NQNs are at most 223 bytes
MODPROBE_TIMEOUT: Final = 30.0
_NQN = re.compile(r"nqn\.[\x21-\x7e]+")  # printable ASCII, no spaces
_UUID_NQN = re.compile(re.escape(UUID_NQN_PREFIX) + r"([0-9a-fA-F-]{36})")

Runner = Callable[[Sequence[str]], Awaitable[Any]]


class IdentityError(Exception):
    """The host's identity or module cannot be made usable; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Identity:
    hostnqn: str
    hostid: str
    created: tuple[str, ...]  # the files this call wrote (empty: both existed)


def nvme_dir(root: Path) -> Path:
    return root / "etc" / "nvme"


def _read(path: Path) -> str | None:
    """The file's first line; None when missing or blank (a blank file identifies no one)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return first or None


def _valid_hostid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def read_host_nqn(path: Path) -> str | None:
    """The host NQN a `hostnqn` file holds; None when it is missing, blank or not an NQN."""
    try:
        nqn = _read(path)
    except OSError:
        return None
    if nqn is None or len(nqn.encode()) > NQN_MAX or not _NQN.fullmatch(nqn):
        return None
    return nqn


def read_identity(root: Path = Path("/")) -> tuple[str | None, str | None]:
    """(hostnqn, hostid) as the host has them, unvalidated; None for a missing or blank file."""
    d = nvme_dir(root)
    return _read(d / "hostnqn"), _read(d / "hostid")


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists; True when this call created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if path.exists() and _read(path) is None:
            path.unlink()  # a blank file: replaced, it never identified this host
        os.link(tmp, path)  # fails if the file appeared meanwhile: theirs is kept
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink()
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return created


def ensure_identity(
    root: Path = Path("/"), new_uuid: Callable[[], uuid.UUID] = uuid.uuid4
) -> Identity:
    """Write whichever of hostnqn/hostid is missing; never change one that exists."""
    d = nvme_dir(root)
    try:
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"{d}: cannot create the NVMe configuration directory: {exc}") from exc
    nqn, hostid = read_identity(root)
    if nqn is not None and (len(nqn.encode()) > NQN_MAX or not _NQN.fullmatch(nqn)):
        raise IdentityError(
            f"{d / 'hostnqn'}: {nqn[:60]!r} is not an NVMe qualified name (nqn.…, printable, "
            f"at most {NQN_MAX} bytes); fix or remove it by hand (it is never rewritten)"
        )
    if hostid is not None and not _valid_hostid(hostid):
        raise IdentityError(
            f"{d / 'hostid'}: {hostid[:60]!r} is not a UUID; fix or remove it by hand "
            "(it is never rewritten)"
        )
    if nqn is None and hostid is None:
        hostid = str(new_uuid())
    if nqn is None:
        assert hostid is not None
        nqn = UUID_NQN_PREFIX + hostid.lower()
    if hostid is None:
        paired = _UUID_NQN.fullmatch(nqn)
        hostid = (
            paired.group(1).lower() if paired and _valid_hostid(paired.group(1)) else None
        ) or str(new_uuid())
    created: list[str] = []
    for name, value in (("hostnqn", nqn), ("hostid", hostid)):
        path = d / name
        if _read(path) is None:
            try:
                if _create(path, value + "\n"):
                    created.append(name)
            except OSError as exc:
                raise IdentityError(f"{path}: cannot write: {exc}") from exc
    final_nqn, final_id = read_identity(root)
    assert final_nqn is not None and final_id is not None  # written above or kept
    return Identity(final_nqn, final_id, tuple(created))


def module_loaded(root: Path = Path("/")) -> bool:
    return (root / "sys" / "module" / MODULE_SYSFS).is_dir()


async def _run(argv: Sequence[str]) -> Any:
    return await proc.run(argv, timeout=MODPROBE_TIMEOUT)


async def ensure_module(root: Path = Path("/"), run: Runner = _run) -> bool:
    """Load nvme-tcp if it is not there; True when this call loaded it."""
    if module_loaded(root):
        return False
    try:
        await run(["modprobe", MODULE])
    except proc.ProcError as exc:
        raise IdentityError(
            f"cannot load {MODULE} ({exc}): install the kernel's NVMe/TCP module on this node "
            f"(e.g. linux-modules-extra) or load it at boot (/etc/modules-load.d)"
        ) from exc
    if not module_loaded(root):
        raise IdentityError(f"modprobe {MODULE} succeeded but /sys/module/{MODULE_SYSFS} is absent")
    return True


async def node_init(root: Path, load_module: bool = True, run: Runner = _run) -> Identity:
    identity = ensure_identity(root)
    for name in ("hostnqn", "hostid"):
        action = "created" if name in identity.created else "kept"
        log.info("%s %s: %s", action, nvme_dir(root) / name, getattr(identity, name))
    if load_module:
        loaded = await ensure_module(root, run)
        log.info("%s: %s", MODULE, "loaded" if loaded else "present")
    return identity


def _cli(args: argparse.Namespace) -> int:
    try:
        asyncio.run(node_init(Path(args.root), load_module=not args.no_module))
    except IdentityError as exc:
        log.error("node-init: %s", exc)
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """`rdscsi node-init`: registered by the CLI (the node plugin's init container runs it)."""
    p = sub.add_parser("node-init", help="prepare this node's NVMe host identity and nvme-tcp")
    p.add_argument("--root", default="/", help="the host's root as mounted here (default /)")
    p.add_argument(
        "--no-module", action="store_true", help="do not load nvme-tcp (a host prerequisite)"
    )
    p.set_defaults(func=_cli)
