"""The SSH transport to one appliance, driven by the Connection machine.

This module only feeds the machine events (dial answered, dial failed, link lost, backoff
timer fired) and carries out what its state implies (dial, arm a timer). Every RouterOS line
comes from `commands.py`; this module sends them. Commands run on exec channels of one SSH
connection, at most `max_concurrency` at a time, each under a timeout and an output cap.
A command issued while the machine is not `connected` fails at once with `UnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from ...clock import Clock, TimerHandle
from ...machines import ConnectionModel, ConnInput, Engine
from .commands import Command, CommandBuilder
from .errors import (
    CommandTimeoutError,
    RDSError,
    TransportLostError,
    UnavailableError,
    UnparseableOutputError,
    classify,
)

log = logging.getLogger("rdscsi.rds")

T = TypeVar("T")

# AES-GCM first: with AES-NI it costs a fraction of chacha20-poly1305 per packet in asyncssh,
# and every command is several packets. Both are standard; the server picks from its list.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)

COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class RDSConfig:
    """How to reach and trust one appliance."""

    address: str
    port: int = 22
    user: str = "admin"
    client_keys: Sequence[str | Path] = ()  # private key files
    host_keys: Sequence[str] = ()  # pinned public keys ("ssh-ed25519 AAAA..."); several = rotation
    known_hosts: str | Path | None = None  # or an OpenSSH known_hosts file
    insecure_skip_host_key_check: bool = False  # explicit opt-out, warned at every start
    max_concurrency: int = 8  # exec channels at once (OpenSSH's MaxSessions is 10)
    command_timeout: float = 30.0
    connect_timeout: float = 10.0
    output_limit: int = 1 << 20  # bytes per reply; beyond it the reply is refused
    health_interval: float = 5.0  # backstop for half-open links; closure is seen at once
    health_timeout: float = 5.0

    @property
    def name(self) -> str:
        return f"{self.address}:{self.port}"

    def validate(self) -> None:
        if not self.address:
            raise ValueError("rds address: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"rds port: {self.port} is not in 1..65535")
        if self.max_concurrency < 1:
            raise ValueError(f"rds max_concurrency: {self.max_concurrency} must be >= 1")
        if not (self.host_keys or self.known_hosts or self.insecure_skip_host_key_check):
            raise ValueError(
                "rds host key: give a pinned host key or a known_hosts file "
                "(or explicitly skip verification, which is insecure)"
            )


@dataclass
class CommandMetrics:
    registry: CollectorRegistry = field(default=REGISTRY)

    def __post_init__(self) -> None:
        self.duration = Histogram(
            "rds_csi_rds_command_duration_seconds",
            "Appliance command latency by command verb",
            ["verb"],
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "rds_csi_rds_command_errors_total",
            "Appliance commands that failed, by verb and error type",
            ["verb", "error"],
            registry=self.registry,
        )


class _Client(asyncssh.SSHClient):
    """Tells the owner the moment the SSH connection closes (no polling)."""

    def __init__(self, on_lost: Callable[[asyncssh.SSHClientConnection, Exception | None], None]):
        self._on_lost = on_lost
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._on_lost(self._conn, exc)


class RDSConnection:
    """One appliance: its SSH connection, its Connection machine, and command execution."""

    def __init__(
        self,
        config: RDSConfig,
        engine: Engine,
        clock: Clock,
        rng: random.Random | None = None,
        metrics: CommandMetrics | None = None,
        builder: CommandBuilder | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.engine = engine
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics
        self.commands = builder or CommandBuilder()
        self.model = ConnectionModel(config.name)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._timer: TimerHandle | None = None
        self._dialing: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Condition()
        self._tracked = False

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.model.state or "starting"

    @property
    def connected(self) -> bool:
        return self.model.state == "connected"

    async def start(self) -> None:
        """Begin dialling; returns at once. An unreachable appliance means `backoff`."""
        if self.config.insecure_skip_host_key_check:
            log.warning(
                "RDS %s: host key verification is DISABLED; anyone on the path can "
                "impersonate the appliance",
                self.config.name,
            )
        if not self._tracked:
            self.engine.track(self.model)
            self._tracked = True
        await self._send("dial")
        self._dial()
        self._health = asyncio.get_running_loop().create_task(
            self._health_loop(), name=f"rds-health-{self.config.name}"
        )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._health, self._dialing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.model.state not in (None, "closed"):
            await self._send("close")
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        if self._tracked:
            self.engine.forget(self.model)
            self._tracked = False

    async def wait_for(self, *states: str) -> None:
        """Until the machine is in one of `states` (tests and start-up waits)."""
        await self.wait_until(lambda: self.model.state in states)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds, re-checked after every transition."""
        async with self._state_changed:
            await self._state_changed.wait_for(predicate)

    async def _send(self, event: str, reason: str = "") -> None:
        jitter = self.rng.uniform(-1.0, 1.0)
        self.engine.send(self.model, event, ConnInput(self.clock.monotonic(), jitter, reason))
        async with self._state_changed:
            self._state_changed.notify_all()

    # --- dialling (one attempt at a time, owned by the machine's state) -------------------------

    def _dial(self) -> None:
        # Only `connecting` and `reconnecting` dial, and only one task does it.
        if self._dialing is not None and not self._dialing.done():
            return
        self._dialing = asyncio.get_running_loop().create_task(
            self._dial_once(), name=f"rds-dial-{self.config.name}"
        )

    def _known_hosts(self) -> Any:
        cfg = self.config
        if cfg.insecure_skip_host_key_check:
            return None
        if cfg.host_keys:
            keys = [asyncssh.import_public_key(k) for k in cfg.host_keys]
            if cfg.known_hosts:
                # both: the file's keys for this host plus the pinned ones
                trusted = asyncssh.read_known_hosts(str(cfg.known_hosts)).match(
                    cfg.address, "", cfg.port
                )[0]
                keys.extend(trusted)
            return (keys, [], [])
        return str(cfg.known_hosts)

    async def _dial_once(self) -> None:
        cfg = self.config
        try:
            conn = await self._deadline(
                asyncssh.connect(
                    cfg.address,
                    cfg.port,
                    username=cfg.user,
                    client_keys=[str(k) for k in cfg.client_keys] or None,
                    known_hosts=self._known_hosts(),
                    client_factory=lambda: _Client(self._lost),
                    agent_path=None,
                    preferred_auth="publickey",
                    config=[],
                    encryption_algs=ENCRYPTION_ALGS,
                    compression_algs=None,
                ),
                cfg.connect_timeout,
                None,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("RDS %s: dial failed: %s", cfg.name, _why(exc))
            if self.model.state in ("connecting", "reconnecting"):
                await self._send("failed", _why(exc))
                self._arm_retry()
            return
        if self.model.state not in ("connecting", "reconnecting"):
            conn.close()  # closed while dialling
            return
        self._conn = conn
        await self._send("succeeded")
        log.info("RDS %s: connected", cfg.name)

    def _arm_retry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        log.info("RDS %s: backoff: next attempt in %.1f s", self.config.name, self.model.delay)
        self._timer = self.clock.call_later(self.model.delay, self._retry_due)

    def _retry_due(self) -> None:
        self._timer = None
        if self.model.state == "backoff":
            asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        if self.model.state in ("backoff", "disconnected"):
            await self._send("retry")
            self._dial()

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return  # an old or never-adopted connection
        self._conn = None
        if self.model.state != "connected":
            return
        log.warning("RDS %s: connection lost: %s", self.config.name, _why(exc))
        asyncio.get_running_loop().create_task(self._after_loss(_why(exc)))

    async def _after_loss(self, why: str = "") -> None:
        if self.model.state == "connected":
            await self._send("lost", why)
            await self._retry()

    async def _health_loop(self) -> None:
        # The SSH close callback sees a clean drop at once; this catches half-open links.
        while True:
            await self.clock.sleep(self.config.health_interval)
            conn = self._conn
            if conn is None or not self.connected:
                continue
            try:
                await self.run(self.commands.health(), timeout=self.config.health_timeout)
            except (TransportLostError, CommandTimeoutError) as exc:
                log.warning("RDS %s: health check failed: %s", self.config.name, exc)
                if conn is self._conn:
                    conn.abort()  # connection_lost follows and the machine leaves connected
            except RDSError:
                pass  # the appliance answered: the link is alive

    # --- commands -------------------------------------------------------------------------------

    async def run(self, command: Command, timeout: float | None = None) -> str:
        """Send one command; returns its output, or raises the classified `RDSError`."""
        conn = self._conn
        if conn is None or not self.connected:
            raise UnavailableError(
                f"appliance {self.config.name} is {self.state}, not connected", command=command
            )
        started = self.clock.monotonic()
        try:
            async with self._slots:
                output = await self._deadline(
                    self._exec(conn, command), timeout or self.config.command_timeout, command
                )
            error = classify(output, command)
            if error is not None:
                raise error
            return output
        except RDSError as exc:
            if self.metrics is not None:
                self.metrics.errors.labels(command.verb, type(exc).__name__).inc()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.duration.labels(command.verb).observe(self.clock.monotonic() - started)

    async def _exec(self, conn: asyncssh.SSHClientConnection, command: Command) -> str:
        limit = self.config.output_limit
        try:
            process = await conn.create_process(command.line, encoding=None, stderr=asyncssh.STDOUT)
        except (OSError, asyncssh.Error) as exc:
            raise TransportLostError(
                f"could not open a channel: {_why(exc)}", command=command
            ) from exc
        try:
            chunks: list[bytes] = []
            size = 0
            while True:
                try:
                    chunk = await process.stdout.read(65536)
                except (OSError, asyncssh.Error) as exc:
                    raise TransportLostError(
                        f"channel failed: {_why(exc)}", command=command
                    ) from exc
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise UnparseableOutputError(
                        f"reply longer than {limit} bytes",
                        b"".join(chunks)[:200].decode("utf-8", "replace"),
                        command=command,
                    )
                chunks.append(chunk)
            await process.wait_closed()
            if process.exit_status is None and process.exit_signal is None:
                # EOF without an exit status: the channel or connection died mid-reply
                raise TransportLostError("channel closed before the reply ended", command=command)
            return b"".join(chunks).decode("utf-8", "replace")
        finally:
            process.close()

    async def _deadline(
        self, awaitable: Awaitable[T], timeout: float, command: Command | None
    ) -> T:
        """Await with a timeout on the injected clock (tests advance it; nothing sleeps)."""
        task = asyncio.ensure_future(awaitable)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = self.clock.call_later(timeout, expire)
        try:
            return await task
        except asyncio.CancelledError:
            if expired:
                if command is None:
                    raise TimeoutError(f"no answer within {timeout:g}s") from None
                raise CommandTimeoutError(timeout, command=command) from None
            raise
        finally:
            handle.cancel()


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text
