"""The simulator: configuration, lifecycle (start, stop, restart) and the Python API."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import asyncssh

from rdscsi.clock import Clock, LoopClock
from rdscsi.sim.cli import Interpreter, Outcome
from rdscsi.sim.faults import Faults
from rdscsi.sim.relay_server import RelayServer, relay_command
from rdscsi.sim.render import Render
from rdscsi.sim.server import SimServer
from rdscsi.sim.store import DEFAULT_POOL, Store, Traffic
from rdscsi.sim.units import TIB
from rdscsi.sim.views import DateStyle

HOST_KEY_NAME = "ssh_host_ed25519_key"
LOCK_NAME = "sim.lock"


@dataclass
class SimConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port, see `Simulator.port`
    authorized_keys: Sequence[str | asyncssh.SSHKey] = ()  # OpenSSH public key lines or keys
    authorized_keys_file: Path | None = None
    pool_name: str = DEFAULT_POOL
    pool_size: int = TIB
    render: Render = "detail"
    date_style: DateStyle = "iso"
    latency: float = 0.0  # seconds per command
    max_sessions: int = 10  # sessions per connection, OpenSSH's default MaxSessions
    error_exit_status: int = 1  # exit status after an error answer (0 is allowed too)
    line_ending: str = "\n"  # "\r\n" to mimic a device writing CRLF
    refuse_remove_in_use: bool = False  # `/disk remove` of a disk with sessions fails
    monitor_interval: float = 1.0  # `monitor-traffic` without `once` repeats this often
    clock: Clock = field(default_factory=LoopClock)
    relay_socket: Path | None = None  # also answer commands relayed by a real sshd (`relay`)
    files_root: Path | None = None  # where the pool's files live; None: <data_dir>/files


def load_or_create_host_key(data_dir: Path) -> asyncssh.SSHKey:
    """The host key persists so clients can pin it across restarts."""
    path = data_dir / HOST_KEY_NAME
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        key.write_private_key(tmp)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = asyncssh.read_private_key(path)
    public = path.with_name(path.name + ".pub")
    if not public.exists():
        key.write_public_key(public)
    return key


def read_public_keys(text: str) -> list[asyncssh.SSHKey]:
    """Keys of an authorized_keys text; options before the key type are skipped."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        for start in range(len(words)):
            try:
                keys.append(asyncssh.import_public_key(" ".join(words[start:])))
                break
            except (asyncssh.KeyImportError, ValueError):
                continue
    return keys


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.faults = Faults(latency=config.latency)
        self.faults.set_drop_hook(self.drop_connections)
        self._host_key = load_or_create_host_key(self.data_dir)
        self._authorized: set[bytes] = set()
        for key in config.authorized_keys:
            self.authorize_key(key)
        if config.authorized_keys_file is not None:
            for key in read_public_keys(Path(config.authorized_keys_file).read_text()):
                self.authorize_key(key)
        self.store = Store.open(
            self.data_dir, config.pool_name, config.pool_size, config.files_root
        )
        self.interpreter = Interpreter(
            self.store,
            render=config.render,
            date_style=config.date_style,
            pool_full=lambda: self.faults.pool_full,
            refuse_remove_in_use=config.refuse_remove_in_use,
        )
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.commands: list[str] = []  # every line received, in arrival order
        self.port = config.port
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lock: IO[str] | None = None
        self._relay: RelayServer | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        handle = open(self.data_dir / LOCK_NAME, "a")  # noqa: SIM115 (held while running)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OSError(f"data dir {self.data_dir} is in use by another simulator") from None
        self._lock = handle

    def _unlock_data_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    async def start(self) -> None:
        """Listen; the state is (re)loaded from the data dir, which stays locked until stop."""
        if self._acceptor is not None:
            return
        self._lock_data_dir()
        try:
            self.store = Store.open(
                self.data_dir, self.config.pool_name, self.store.pool_size, self.config.files_root
            )
            self.store.discard_partial_copies()
            self.interpreter.store = self.store
            self._acceptor = await self._listen()
            if self.config.relay_socket is not None:
                self._relay = RelayServer(self, Path(self.config.relay_socket))
                await self._relay.start()
        except BaseException:
            if self._acceptor is not None:
                self._acceptor.close()
                self._acceptor = None
            self._unlock_data_dir()
            raise
        self.port = self._acceptor.get_port()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: SimServer(self),
            self.config.host,
            self.port,
            server_host_keys=[self._host_key],
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            allow_pty=False,
            encoding="utf-8",
            errors="replace",  # undecodable bytes become U+FFFD, which the parser refuses
        )

    async def stop(self) -> None:
        """Stop listening, drop every connection, let started commands finish."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.stop()
        # Hanging commands end with their connections (their sessions are cancelled), so
        # they never run; commands already running finish, as on a device going down.
        self.drop_connections()
        if acceptor is not None:
            await acceptor.wait_closed()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._unlock_data_dir()

    async def restart(self) -> None:
        """Like a reboot: stop, reload the state from disk, listen on the same port again."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    def track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- identity and access -----------------------------------------------------------

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def host_key(self) -> str:
        """The public host key as an OpenSSH line (`ssh-ed25519 AAAA...`), for pinning."""
        return self._host_key.export_public_key("openssh").decode().strip()

    @property
    def host_key_path(self) -> Path:
        return self.data_dir / HOST_KEY_NAME

    @property
    def relay_command(self) -> str:
        """The `ForceCommand` for a real sshd that relays its sessions to this simulator."""
        if self.config.relay_socket is None:
            raise ValueError("the simulator has no relay socket (SimConfig.relay_socket)")
        return relay_command(Path(self.config.relay_socket))

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_key}"

    def authorize_key(self, key: str | asyncssh.SSHKey) -> None:
        if isinstance(key, str):
            key = asyncssh.import_public_key(key)
        self._authorized.add(key.public_data)

    def is_authorized(self, key: asyncssh.SSHKey) -> bool:
        return key.public_data in self._authorized

    def drop_connections(self) -> int:
        """Abort every client connection (as a crashing or rebooting device would)."""
        dropped = list(self.connections)
        for conn in dropped:
            conn.abort()
        self.connections.clear()
        return len(dropped)

    # --- state -------------------------------------------------------------------------

    @property
    def render(self) -> Render:
        return self.interpreter.render

    @render.setter
    def render(self, value: Render) -> None:
        self.interpreter.render = value

    @property
    def pool_size(self) -> int:
        return self.store.pool_size

    @pool_size.setter
    def pool_size(self, value: int) -> None:
        self.store.pool_size = value

    def backing_path(self, slot: str) -> Path:
        """The sparse file behind a disk (KeyError if there is no such disk)."""
        return self.store.backing_path(slot)

    def register_host_connection(
        self, slot: str, host_nqn: str, remote_address: str = "127.0.0.1", remote_port: int = 0
    ) -> int:
        """Make an NVMe/TCP session appear on the disk's export; returns its id."""
        return self.store.add_connection(slot, host_nqn, remote_address, remote_port).id

    def admit_host(self, export_nqn: str, host_nqn: str, remote_address: str = "127.0.0.1") -> int:
        """A node connects to an export, as the device would let it (`Store.admit_host`):
        refused (`DeviceError`) when the allow-list does not name it; returns the session id."""
        return self.store.admit_host(export_nqn, host_nqn, remote_address).id

    def leave_host(self, export_nqn: str, host_nqn: str) -> int:
        """The node's sessions to the export end; returns how many there were."""
        slots = [d.slot for d in self.store.disks.values() if d.nvme_tcp_server_nqn == export_nqn]
        return sum(self.store.remove_connections(slot=s, host_nqn=host_nqn) for s in slots)

    def unregister_host_connection(
        self, conn_id: int | None = None, *, slot: str | None = None, host_nqn: str | None = None
    ) -> int:
        """Remove the matching sessions (all given filters must match); returns how many."""
        return self.store.remove_connections(conn_id, slot, host_nqn)

    def set_traffic(self, slot: str, **values: int) -> None:
        """Set what `monitor-traffic` shows, e.g. `write_rate=12_800_000, in_flight_ops=3`."""
        disk = self.store.disks[slot]
        for name, value in values.items():
            if not hasattr(Traffic, name):
                raise AttributeError(f"no traffic counter {name!r}")
            setattr(disk.traffic, name, int(value))
        self.store.save()

    async def execute(self, line: str) -> Outcome:
        """Run one line without SSH and without faults."""
        return await self.interpreter.run(line)
