"""A real OpenSSH server on loopback, for the test suite and the benchmarks.

It runs with its own configuration, host key and authorized keys on a high port; every
session's command goes to a running simulator through `rdscsi.sim.relay` (`ForceCommand`),
so this server and the simulator's own share one appliance state. The per-connection sshd
processes can be killed (the appliance-side link dies) and the listener stopped and started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import asyncssh

HOST_KEY_NAME = "ssh_host_ed25519_key"


def sshd_path() -> str | None:
    """The sshd binary (openssh-server), or None where it is not installed."""
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why a real sshd cannot run here, or None when it can."""
    if sshd_path() is None:
        return "openssh-server is not installed (no sshd); .ci/run installs it"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Sshd:
    """One sshd listener (`sshd -D`) and the per-connection processes it forks."""

    def __init__(
        self,
        directory: Path,
        force_command: str,
        authorized_keys: Sequence[str],
        max_sessions: int = 10,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        binary = sshd_path()
        if binary is None:
            raise RuntimeError(unavailable_reason())
        self.binary = binary
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.force_command = force_command
        self.authorized_keys = list(authorized_keys)
        self.max_sessions = max_sessions
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        key_path = self.directory / HOST_KEY_NAME
        if not key_path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(key_path))
            os.chmod(key_path, 0o600)
        self._host_key = asyncssh.read_private_key(str(key_path))

    # --- identity ----------------------------------------------------------------------

    @property
    def host_key(self) -> str:
        """The public host key as an OpenSSH line, for pinning."""
        return self._host_key.export_public_key("openssh").decode().strip()

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_key}"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    # --- lifecycle ---------------------------------------------------------------------

    def _config(self) -> str:
        d = self.directory
        (d / "authorized_keys").write_text("".join(k.strip() + "\n" for k in self.authorized_keys))
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {d / HOST_KEY_NAME}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "StrictModes no",  # the test's temporary directories are not sshd's business
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "UseDNS no",
                f"MaxSessions {self.max_sessions}",
                "MaxStartups 100:30:200",  # tests and benchmarks dial often
                f"ForceCommand {self.force_command}",
                "PermitTTY no",
                "PrintMotd no",
                "PrintLastLog no",
                "AllowTcpForwarding no",
                "AllowAgentForwarding no",
                "X11Forwarding no",
                "LogLevel ERROR",
                "",
            ]
        )

    async def start(self) -> None:
        """Listen; returns once the port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
        config = self.directory / "sshd_config"
        config.write_text(self._config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd did not listen on {self.port}: {self.log()}"
                    ) from None
                await asyncio.sleep(0.01)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes (one per client connection)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return _children(self.proc.pid)

    async def kill_connections(self, sig: int = signal.SIGKILL) -> int:
        """Kill every per-connection sshd (the appliance side of each link dies); returns how
        many. The listener stays: new connections are accepted."""
        pids = self.connection_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            await self._wait_gone(pids)
        return len(pids)

    async def stop(self, connections: bool = True) -> None:
        """Stop listening; with `connections` also kill every per-connection process (the
        appliance goes away), else they live on (as after restarting only the listener)."""
        pids = self.connection_pids()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            for _ in range(500):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.01)
            else:
                proc.kill()
                proc.wait()
        if connections:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await self._wait_gone(pids)

    async def restart(self, connections: bool = True, max_sessions: int | None = None) -> None:
        """Stop and start on the same port (optionally with another MaxSessions)."""
        await self.stop(connections)
        if max_sessions is not None:
            self.max_sessions = max_sessions
        await self.start()

    @staticmethod
    async def _wait_gone(pids: list[int]) -> None:
        for _ in range(500):
            if not any(_alive(pid) for pid in pids):
                return
            await asyncio.sleep(0.01)
