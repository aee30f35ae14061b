"""The SSH transport to one appliance, driven by the Connection machine.

This module only feeds the machine events (dial answered, dial failed or rejected, link
lost, backoff timer fired) and carries out what its state implies (dial, arm a timer). Every
RouterOS line comes from `commands.py`; this module sends them.

Commands run on exec channels of one SSH connection. What the module guarantees:

- **Sessions.** At most `max_concurrency` command channels, plus one for the health check
  that never queues behind commands: `max_concurrency + 1` sessions (6 by default), leaving
  headroom under OpenSSH's default `MaxSessions` of 10. (RouterOS's own limit is not
  documented; the cap is a setting.) A channel's slot is freed only when the server closes
  the channel, as the server frees its session only then: a command that timed out keeps
  its slot until its process ends (`rds_csi_rds_channels_lingering`).
- **Refusals.** A refused channel open means nothing was sent: it is retried with a short
  jittered backoff inside the command's deadline, and never counted as a lost link.
- **One deadline per command** covers the wait for a slot, the channel open and the reply.
- **Whole replies only.** A reply counts only with exit status 0 and no exit signal; stdout
  and stderr are kept apart, stderr is logged and classified, never parsed.
- **Loss detection** independent of load: the connection's close is seen at once, and SSH
  keepalive finds a silent link within `(keepalive_count + 1) * keepalive_interval` seconds.
- **Configuration errors are named**: a refused login or an untrusted host key moves the
  machine to `misconfigured` with the setting to fix and the server key's fingerprint.

A command issued while the machine is not `connected` fails at once with `UnavailableError`
(`MisconfiguredError` while `misconfigured`): nothing was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncssh
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ...clock import Clock, TimerHandle
from ...machines import ConnectionModel, ConnInput, Engine, HookFailed
from .commands import Command, CommandBuilder
from .errors import (
    STDERR_KINDS,
    CommandTimeoutError,
    MisconfiguredError,
    RDSError,
    TransportLostError,
    UnavailableError,
    classify_stderr,
)
from .reply import Refused, Reply, accept, why
from .trust import Client, client_keys, known_hosts, rejection

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

# After a refused channel open: wait 20 ms, doubling to at most 500 ms, each ±50 %: long
# enough for the server to free the session the client just saw closed, short against a
# command's deadline.
REFUSAL_FIRST_DELAY = 0.02
REFUSAL_MAX_DELAY = 0.5
REFUSAL_JITTER = 0.5

HEALTH_OUTCOMES = ("ok", "error", "timeout", "refused", "lost")


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
    max_concurrency: int = 5  # command channels at once; the health check has one more
    command_timeout: float = 30.0  # per command: slot wait, channel open and reply
    connect_timeout: float = 10.0
    output_limit: int = 1 << 20  # bytes per reply (stdout and stderr); beyond it, refused
    health_interval: float = 5.0  # between health commands (on their own channel)
    health_timeout: float = 5.0  # for one health command, channel open included
    keepalive_interval: float = 3.0  # SSH keepalive after this long without a byte
    keepalive_count: int = 2  # unanswered keepalives before the link counts as lost
    appliance: str = ""  # its name in the fleet ('': known by its address)
    section: str = "rds"  # where its settings are in the configuration (`appliances.rds-b`)

    @property
    def name(self) -> str:
        """How logs, metrics and events name it: the appliance's name, else its address."""
        return self.appliance or f"{self.address}:{self.port}"

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def setting(self, leaf: str) -> str:
        """The configuration path of one of its settings (`rds.key_file`), for naming a
        rejected one."""
        return f"{self.section}.{leaf}"

    @property
    def sessions(self) -> int:
        """Sessions this client may hold on one connection: commands plus the health check."""
        return self.max_concurrency + 1

    @property
    def loss_bound(self) -> float:
        """Seconds of silence after which SSH keepalive declares the link lost."""
        return (self.keepalive_count + 1) * self.keepalive_interval

    def validate(self) -> None:
        if not self.address:
            raise ValueError("rds address: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"rds port: {self.port} is not in 1..65535")
        if self.max_concurrency < 1:
            raise ValueError(f"rds max_concurrency: {self.max_concurrency} must be >= 1")
        for name in ("command_timeout", "connect_timeout", "health_interval", "health_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rds {name}: must be > 0")
        if self.keepalive_interval <= 0 or self.keepalive_count < 1:
            raise ValueError("rds keepalive: interval must be > 0 and count >= 1")
        if not (self.host_keys or self.known_hosts or self.insecure_skip_host_key_check):
            raise ValueError(
                "rds host key: give a pinned host key or a known_hosts file "
                "(or explicitly skip verification, which is insecure)"
            )


@dataclass
class CommandMetrics:
    """The SSH transport's series, one registry's worth; each connection records through
    `of(appliance)`, every series labelled with its appliance's name."""

    registry: CollectorRegistry = field(default=REGISTRY)

    def __post_init__(self) -> None:
        r = self.registry
        self.duration = Histogram(
            "rds_csi_rds_command_duration_seconds",
            "Appliance command latency by appliance and command verb",
            ["appliance", "verb"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "rds_csi_rds_command_errors_total",
            "Appliance commands that failed, by appliance, verb and error type",
            ["appliance", "verb", "error"],
            registry=r,
        )
        self.refused = Counter(
            "rds_csi_rds_channel_refused_total",
            "Channel opens the appliance refused (nothing sent; retried, never a lost link)",
            ["appliance"],
            registry=r,
        )
        self.lingering = Gauge(
            "rds_csi_rds_channels_lingering",
            "Timed-out commands whose channel (a server session) is still open",
            ["appliance"],
            registry=r,
        )
        self.stderr = Counter(
            "rds_csi_rds_stderr_total",
            "Replies with text on stderr, by appliance and kind (notice, error, other)",
            ["appliance", "kind"],
            registry=r,
        )
        self.health = Counter(
            "rds_csi_rds_health_checks_total",
            "Health commands by appliance and outcome (none of them closes the link)",
            ["appliance", "outcome"],
            registry=r,
        )
        self.health_restarts = Counter(
            "rds_csi_rds_health_loop_restarts_total",
            "Times the health loop died on an unexpected error and was restarted",
            ["appliance"],
            registry=r,
        )

    def of(self, appliance: str) -> ApplianceCommandMetrics:
        return ApplianceCommandMetrics(self, appliance)


class ApplianceCommandMetrics:
    """One appliance's children of `CommandMetrics`, its fixed label values pre-set at 0."""

    def __init__(self, metrics: CommandMetrics, appliance: str) -> None:
        self.m, self.appliance = metrics, appliance
        self.refused = metrics.refused.labels(appliance)
        self.lingering = metrics.lingering.labels(appliance)
        self.health_restarts = metrics.health_restarts.labels(appliance)
        self._stderr = {k: metrics.stderr.labels(appliance, k) for k in STDERR_KINDS}
        self._health = {o: metrics.health.labels(appliance, o) for o in HEALTH_OUTCOMES}

    def observe(self, verb: str, seconds: float) -> None:
        self.m.duration.labels(self.appliance, verb).observe(seconds)

    def error(self, verb: str, error: str) -> None:
        self.m.errors.labels(self.appliance, verb, error).inc()

    def stderr(self, kind: str) -> None:
        self._stderr[kind].inc()

    def health(self, outcome: str) -> None:
        self._health[outcome].inc()


@dataclass
class _Progress:
    reply: Reply | None = None
    refused: int = 0


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
        self.metrics = metrics.of(config.name) if metrics is not None else None
        self.commands = builder or CommandBuilder()
        self.model = ConnectionModel(config.target, config.appliance, config.section)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._health_slot = asyncio.Semaphore(1)  # never behind commands
        self._timer: TimerHandle | None = None
        self._dialing: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._tracked = False
        self.lingering = 0
        self.connects = 0  # links established so far: the leader sweeps after each new one

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.model.state or "starting"

    @property
    def connected(self) -> bool:
        return self.model.state == "connected"

    def ready(self) -> bool:
        """For the CSI Probe: True when connected, False while (re)connecting, and
        `MisconfiguredError` (FAILED_PRECONDITION) while the appliance rejects a setting."""
        if self.model.state == "misconfigured":
            raise self._misconfigured()
        return self.connected

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
        self._transition("dial")
        self._dial()
        self._health = asyncio.get_running_loop().create_task(
            self._health_supervisor(), name=f"rds-health-{self.config.name}"
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
            self._transition("close")
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
        while not predicate():
            await self._changed.wait()

    def _transition(self, event: str, **payload: str) -> None:
        """Feed the machine one event; synchronous, so no caller ever sees a state that is
        already stale (e.g. `connected` after the connection closed)."""
        jitter = self.rng.uniform(-1.0, 1.0)
        try:
            self.engine.send(
                self.model, event, ConnInput(self.clock.monotonic(), jitter, **payload)
            )
        except HookFailed:
            # The transition happened; a listener (an event sink, a metric) failed.
            log.exception("RDS %s: a hook of %r failed", self.config.name, event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- dialling (one attempt at a time, owned by the machine's state) -------------------------

    def _dial(self) -> None:
        # Only `connecting` and `reconnecting` dial, and only one task does it.
        if self._dialing is not None and not self._dialing.done():
            return
        self._dialing = asyncio.get_running_loop().create_task(
            self._dial_once(), name=f"rds-dial-{self.config.name}"
        )

    async def _dial_once(self) -> None:
        cfg = self.config
        client = Client(self._lost)
        try:
            conn = await self._deadline(
                asyncssh.connect(
                    cfg.address,
                    cfg.port,
                    username=cfg.user,
                    client_keys=client_keys(cfg),
                    known_hosts=known_hosts(cfg),
                    client_factory=lambda: client,
                    agent_path=None,
                    preferred_auth="publickey",
                    config=[],
                    encryption_algs=ENCRYPTION_ALGS,
                    compression_algs=None,
                    keepalive_interval=cfg.keepalive_interval,
                    keepalive_count_max=cfg.keepalive_count,
                ),
                cfg.connect_timeout,
                None,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            rejected = await rejection(
                exc,
                client,
                cfg,
                lambda: self._deadline(
                    asyncssh.get_server_host_key(cfg.address, cfg.port), cfg.connect_timeout, None
                ),
            )
            if self.model.state not in ("connecting", "reconnecting"):
                return
            if rejected is None:
                log.warning("RDS %s: dial failed: %s", cfg.name, why(exc))
                self._transition("failed", reason=why(exc))
            else:
                self._transition(
                    "rejected",
                    setting=rejected.setting,
                    reason=rejected.reason,
                    fingerprint=rejected.fingerprint,
                )
                log.error(
                    "RDS %s: configuration rejected (not an outage): %s: %s; server host key "
                    "%s; retrying in %.1fs",
                    cfg.name,
                    rejected.setting,
                    rejected.reason,
                    rejected.fingerprint or "unknown",
                    self.model.delay,
                )
            self._arm_retry()
            return
        if self.model.state not in ("connecting", "reconnecting"):
            conn.close()  # closed while dialling
            return
        self._conn = conn
        self.connects += 1
        self._transition("succeeded")
        log.info("RDS %s: connected", cfg.name)

    def _misconfigured(self) -> MisconfiguredError:
        m = self.model
        return MisconfiguredError(m.setting, m.reason, m.fingerprint, appliance=self.config.name)

    def _arm_retry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        log.info("RDS %s: backoff: next attempt in %.1f s", self.config.name, self.model.delay)
        self._timer = self.clock.call_later(self.model.delay, self._retry_due)

    def _retry_due(self) -> None:
        self._timer = None
        self._retry()

    def _retry(self) -> None:
        if self.model.state in ("backoff", "misconfigured", "disconnected"):
            self._transition("retry")
            self._dial()

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return  # an old or never-adopted connection
        self._conn = None
        if self.model.state != "connected":
            return
        log.warning("RDS %s: connection lost: %s", self.config.name, why(exc))
        self._transition("lost", reason=why(exc))
        self._retry()  # one immediate redial

    # --- health ---------------------------------------------------------------------------------

    async def _health_supervisor(self) -> None:
        """Keeps the health loop running: an unexpected error is logged, counted and the loop
        restarted, so it can never die silently."""
        while True:
            try:
                await self._health_loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("RDS %s: health loop failed; restarting it", self.config.name)
            if self.metrics is not None:
                self.metrics.health_restarts.inc()
            await self.clock.sleep(self.config.health_interval)

    async def _health_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.health_interval)
            if self._conn is not None and self.connected:
                await self.check_health()

    async def check_health(self) -> str:
        """One health command on its own channel; returns its outcome (`HEALTH_OUTCOMES`).

        It never closes the link: a lost link is seen from the connection closing, a silent
        one by SSH keepalive. A refused channel says nothing about the link, and an
        unanswered command means a slow or hung appliance, which a new link would not cure
        (and tearing this one down would turn every command in flight into an unknown)."""
        command = self.commands.health()
        progress = _Progress()
        outcome = "ok"
        try:
            reply = await self._exchange(
                command, self._health_slot, self.config.health_timeout, progress
            )
            accept(reply, command, lambda text: self._stderr(text, command))
        except CommandTimeoutError as exc:
            outcome = "refused" if not exc.sent and progress.refused else "timeout"
            log.warning(
                "RDS %s: health command %s within %gs (%s); the link stays up",
                self.config.name,
                "not sent" if not exc.sent else "unanswered",
                self.config.health_timeout,
                "channel refused" if outcome == "refused" else "appliance slow or hung",
            )
        except (TransportLostError, UnavailableError, MisconfiguredError):
            outcome = "lost"  # the connection is going; its close drives the machine
        except RDSError as exc:
            outcome = "error"  # the appliance answered: the link is alive
            log.warning("RDS %s: health command answered with an error: %s", self.config.name, exc)
        except Exception:
            outcome = "error"
            log.exception("RDS %s: health command failed unexpectedly", self.config.name)
        if self.metrics is not None:
            self.metrics.health(outcome)
        return outcome

    # --- commands -------------------------------------------------------------------------------

    async def run(self, command: Command, timeout: float | None = None) -> str:
        """Send one command; returns its stdout, or raises the classified `RDSError`."""
        started = self.clock.monotonic()
        try:
            self._live(command)  # fail fast: nothing is queued for a link that is down
            reply = await self._exchange(
                command, self._slots, timeout or self.config.command_timeout, _Progress()
            )
            return accept(reply, command, lambda text: self._stderr(text, command))
        except RDSError as exc:
            if self.metrics is not None:
                self.metrics.error(command.verb, type(exc).__name__)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe(command.verb, self.clock.monotonic() - started)

    def _live(self, command: Command) -> asyncssh.SSHClientConnection:
        conn = self._conn
        if conn is not None and self.connected:
            return conn
        if self.model.state == "misconfigured":
            error = self._misconfigured()
            error.command = command
            raise error
        raise UnavailableError(
            f"appliance {self.config.name} is {self.state}, not connected", command=command
        )

    async def _exchange(
        self, command: Command, lane: asyncio.Semaphore, timeout: float, progress: _Progress
    ) -> Reply:
        """The whole exchange for one command under one deadline on the injected clock."""
        try:
            return await self._deadline(
                self._attempts(command, lane, progress), timeout, command, progress
            )
        except CommandTimeoutError as exc:
            if exc.sent:
                log.warning("RDS %s: %s", self.config.name, exc)
            raise

    async def _attempts(
        self, command: Command, lane: asyncio.Semaphore, progress: _Progress
    ) -> Reply:
        await lane.acquire()
        owned = True  # this coroutine releases the slot, unless a lingering channel holds it
        try:
            delay = REFUSAL_FIRST_DELAY
            while True:
                conn = self._live(command)
                reply = progress.reply = Reply(self.config.output_limit)
                channel = asyncio.ensure_future(self._channel(conn, command, reply))
                try:
                    return await asyncio.shield(channel)
                except asyncio.CancelledError:
                    if not channel.done():
                        owned = False
                        self._linger(channel, lane)
                    raise
                except Refused:
                    progress.refused += 1
                    if self.metrics is not None:
                        self.metrics.refused.inc()
                    jitter = 1.0 + REFUSAL_JITTER * self.rng.uniform(-1.0, 1.0)
                    await self.clock.sleep(delay * jitter)
                    delay = min(delay * 2, REFUSAL_MAX_DELAY)
        finally:
            if owned:
                lane.release()

    def _linger(self, channel: asyncio.Future[Reply], lane: asyncio.Semaphore) -> None:
        """A timed-out command keeps its slot until the server closes its channel (the
        server holds the session until the process ends)."""
        self.lingering += 1
        if self.metrics is not None:
            self.metrics.lingering.inc()

        def done(fut: asyncio.Future[Reply]) -> None:
            self.lingering -= 1
            if self.metrics is not None:
                self.metrics.lingering.dec()
            lane.release()
            if not fut.cancelled():
                fut.exception()  # retrieved: a late failure is of no interest to anyone

        channel.add_done_callback(done)

    async def _channel(
        self, conn: asyncssh.SSHClientConnection, command: Command, reply: Reply
    ) -> Reply:
        """Open a channel, send the command and wait until the server closes the channel."""
        try:
            await conn.create_session(lambda: reply, command.line, encoding=None)
        except asyncssh.ChannelOpenError as exc:
            alive = conn is self._conn
            if not reply.opened and alive:
                raise Refused() from exc  # the server said no: nothing ran
            if not reply.opened:
                raise UnavailableError(
                    f"connection lost before the command was sent: {why(exc)}", command=command
                ) from exc
            if alive:
                # The exec request itself was refused on a live connection: nothing ran.
                raise Refused() from exc
            raise TransportLostError(
                f"connection lost while sending the command: {why(exc)}", command=command
            ) from exc
        except Exception as exc:
            # asyncssh may raise anything (AttributeError, AssertionError) when the connection
            # dies during channel setup; whether the command left is then unknown.
            if not reply.opened:
                raise UnavailableError(
                    f"could not open a channel: {why(exc)}", command=command
                ) from exc
            raise TransportLostError(f"channel setup failed: {why(exc)}", command=command) from exc
        await reply.closed
        return reply

    def _stderr(self, text: str, command: Command) -> None:
        kind = classify_stderr(text)
        if self.metrics is not None:
            self.metrics.stderr(kind)
        level = logging.DEBUG if kind == "notice" else logging.WARNING
        log.log(
            level,
            "RDS %s: %s printed on stderr (%s): %r",
            self.config.name,
            command.verb,
            kind,
            text.strip()[:300],
        )

    async def _deadline(
        self,
        awaitable: Awaitable[T],
        timeout: float,
        command: Command | None,
        progress: _Progress | None = None,
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
                sent = (
                    progress is not None and progress.reply is not None and (progress.reply.opened)
                )
                refused = progress.refused if progress is not None else 0
                raise CommandTimeoutError(
                    timeout, command=command, sent=sent, refused=refused
                ) from None
            task.cancel()
            raise
        finally:
            handle.cancel()
