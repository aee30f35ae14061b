"""The RDS Connection lifecycle: one machine per appliance.

Start-up tries once (`connecting`); a failure goes to `backoff`, never to a crash. A lost
link (the SSH connection closed, or SSH keepalive found it silent) leaves `connected` for
`disconnected`, from which one immediate attempt is made; every failed attempt waits in
`backoff` for 1, 2, 4, 8, 16 s (capped, ±10 % jitter) and the count resets on success.

A dial the appliance answers but rejects (our user or key refused, its host key matching no
pin or known_hosts entry) goes to `misconfigured` instead: the same backoff continues (an
operator may be fixing it), but it is a wrong setting, never reported as an outage.
The adapter in `rdscsi.io.rds.connection` sends these events and arms the timers.
"""

from __future__ import annotations

from dataclasses import dataclass

from statemachine import State, StateMachine

from .engine import FSMModel
from .guards import After

BACKOFF_STEPS = (1.0, 2.0, 4.0, 8.0, 16.0)
BACKOFF_CAP = BACKOFF_STEPS[-1]
JITTER = 0.10
# The settings a rejection names (the YAML keys of `rds_csi.config.ApplianceConfig`): a
# refused login is the key (or the user it is for), an untrusted host key the pins or file.
# Each under its appliance's section: `rds.key_file`, `appliances.rds-b.key_file`.
REJECTED_LEAVES = ("key_file", "host_keys", "known_hosts")
REJECTED_SETTINGS = tuple(f"rds.{leaf}" for leaf in REJECTED_LEAVES)


def backoff_delay(attempt: int, jitter: float) -> float:
    """Delay before retry number `attempt` (0-based); `jitter` in [-1, 1] scales ±10 %."""
    base = BACKOFF_STEPS[min(attempt, len(BACKOFF_STEPS) - 1)]
    return base * (1.0 + JITTER * max(-1.0, min(1.0, jitter)))


class ConnectionModel(FSMModel):
    __slots__ = (
        "address",
        "attempt",
        "delay",
        "fingerprint",
        "lost_at",
        "name",
        "reason",
        "section",
        "setting",
    )

    def __init__(self, address: str, name: str = "", section: str = "rds") -> None:
        super().__init__()
        self.address = address  # host:port
        self.name = name or address  # the appliance's name in the fleet
        self.section = section  # where its settings are in the configuration
        self.attempt = 0  # failed attempts since the link was last up
        self.delay = 0.0  # the backoff delay chosen on entering `backoff`
        self.lost_at: float | None = None  # when the link went down (reconnect duration)
        self.setting = ""  # the last rejection: the setting to fix ("rds.host_keys")
        self.reason = ""  # ... what the appliance rejected, in words
        self.fingerprint = ""  # ... the host key the server showed ("SHA256:...")

    @property
    def key(self) -> str:
        return self.name

    @property
    def rejectable(self) -> tuple[str, ...]:
        """The settings a rejection of this appliance may name."""
        return tuple(f"{self.section}.{leaf}" for leaf in REJECTED_LEAVES)


@dataclass(frozen=True, slots=True)
class ConnInput:
    now: float = 0.0
    jitter: float = 0.0  # uniform in [-1, 1], drawn by the adapter from its injected RNG
    reason: str = ""  # why it was sent (a dial's failure, the lost link's cause, a rejection)
    setting: str = ""  # `rejected`: the setting the appliance refused
    fingerprint: str = ""  # `rejected`: the server's host key fingerprint


class ConnectionMachine(StateMachine):
    """Connection to one RDS appliance."""

    machine_name = "connection"

    starting = State(initial=True)
    connecting = State()
    connected = State()
    disconnected = State()
    backoff = State()
    misconfigured = State()
    reconnecting = State()
    closed = State(final=True)

    # fmt: off
    dial = (
          starting.to(connecting)                                                                         # adapter start: first dial of the appliance
    )
    succeeded = (
          connecting.to(connected, after="reconcile")                                                     # first dial answered: reconcile once reachable
        | reconnecting.to(connected, on="reset_backoff",
                          after=["reconcile", "RDSReconnected", "reconnect_succeeded"])                   # redial worked: reset backoff, reconcile once
    )
    failed = (
          connecting.to(backoff, on="schedule_backoff")                                                   # appliance down at start-up: wait, never crash
        | reconnecting.to(backoff, on="schedule_backoff", after="reconnect_failed")                       # redial failed: wait longer (1..16 s)
    )
    rejected = (
          connecting.to(misconfigured, on=["schedule_backoff", "record_rejection"],
                        after=["RDSMisconfigured", "config_rejected"])                                    # the appliance answered but refused our user/key or its host key is not trusted
        | reconnecting.to(misconfigured, on=["schedule_backoff", "record_rejection"],
                          after=["RDSMisconfigured", "config_rejected"])                                  # the same on a redial: a setting is wrong, not an outage
    )
    lost = (
          connected.to(disconnected, on="mark_lost", after="RDSDisconnected")                             # SSH connection closed, or keepalive unanswered
    )
    retry = (
          disconnected.to(reconnecting)                                                                   # one immediate redial after a loss
        | backoff.to(reconnecting)                                                                        # the backoff timer fired
        | misconfigured.to(reconnecting)                                                                  # the backoff timer fired: the operator may have fixed it
    )
    close = (
          starting.to(closed)                                                                             # driver shutdown before the first dial
        | connecting.to(closed)                                                                           # shutdown during the first dial
        | connected.to(closed, after="RDSDisconnected")                                                   # shutdown while up
        | disconnected.to(closed)                                                                         # shutdown after a loss
        | backoff.to(closed)                                                                              # shutdown while waiting to redial
        | misconfigured.to(closed)                                                                        # shutdown while the configuration is rejected
        | reconnecting.to(closed)                                                                         # shutdown during a redial
    )
    # fmt: on

    # Who sends each event: what `rdscsi explain` and specs/ say starts it.
    sent_by = {
        "dial": "the adapter's start",
        "succeeded": "the SSH handshake and login completed",
        "failed": "the dial failed: the appliance unreachable (refused, timed out)",
        "rejected": "the dial was answered but refused: our key or user, or its host key",
        "lost": "the SSH connection closed, or SSH keepalive went unanswered",
        "retry": "the adapter: at once after a loss, else when the backoff timer fires",
        "close": "the driver shutting down",
    }
    # What time moves a waiting state on (the adapter arms the timer on entering it).
    timers = {
        "backoff": (
            "retry",
            After(
                lambda m, p: m.entered_at + m.delay - p.now,
                "the backoff timer ({model.delay:.1f} s after failed attempt {model.attempt})",
            ),
        ),
        "misconfigured": (
            "retry",
            After(
                lambda m, p: m.entered_at + m.delay - p.now,
                "the backoff timer ({model.delay:.1f} s after rejected attempt {model.attempt})",
            ),
        ),
    }

    # --- actions (pure model updates) -----------------------------------------------------------
    @staticmethod
    def schedule_backoff(model: ConnectionModel, p: ConnInput) -> None:
        model.delay = backoff_delay(model.attempt, p.jitter)
        model.attempt += 1
        if model.lost_at is None:
            model.lost_at = p.now

    @staticmethod
    def record_rejection(model: ConnectionModel, p: ConnInput) -> None:
        model.setting = p.setting
        model.reason = p.reason
        model.fingerprint = p.fingerprint

    @staticmethod
    def reset_backoff(model: ConnectionModel, p: ConnInput) -> None:
        model.attempt = 0
        model.delay = 0.0
        model.setting = model.reason = model.fingerprint = ""

    @staticmethod
    def mark_lost(model: ConnectionModel, p: ConnInput) -> None:
        model.lost_at = p.now
        model.attempt = 0
