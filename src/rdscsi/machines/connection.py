"""The RDS Connection lifecycle: one machine per appliance.

Start-up tries once (`connecting`); a failure goes to `backoff`, never to a crash. A lost
link (the SSH connection closed, or the health command failed) leaves `connected` for
`disconnected`, from which one immediate attempt is made; every failed attempt waits in
`backoff` for 1, 2, 4, 8, 16 s (capped, ±10 % jitter) and the count resets on success.
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


def backoff_delay(attempt: int, jitter: float) -> float:
    """Delay before retry number `attempt` (0-based); `jitter` in [-1, 1] scales ±10 %."""
    base = BACKOFF_STEPS[min(attempt, len(BACKOFF_STEPS) - 1)]
    return base * (1.0 + JITTER * max(-1.0, min(1.0, jitter)))


class ConnectionModel(FSMModel):
    __slots__ = ("address", "attempt", "delay", "lost_at")

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.attempt = 0  # failed attempts since the link was last up
        self.delay = 0.0  # the backoff delay chosen on entering `backoff`
        self.lost_at: float | None = None  # when the link went down (reconnect duration)

    @property
    def key(self) -> str:
        return self.address


@dataclass(frozen=True, slots=True)
class ConnInput:
    now: float = 0.0
    jitter: float = 0.0  # uniform in [-1, 1], drawn by the adapter from its injected RNG
    reason: str = ""  # why it was sent (a dial's failure, the lost link's cause)


class ConnectionMachine(StateMachine):
    """Connection to one RDS appliance."""

    machine_name = "connection"

    starting = State(initial=True)
    connecting = State()
    connected = State()
    disconnected = State()
    backoff = State()
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
    lost = (
          connected.to(disconnected, on="mark_lost", after="RDSDisconnected")                             # SSH closed or health command failed
    )
    retry = (
          disconnected.to(reconnecting)                                                                   # one immediate redial after a loss
        | backoff.to(reconnecting)                                                                        # the backoff timer fired
    )
    close = (
          starting.to(closed)                                                                             # driver shutdown before the first dial
        | connecting.to(closed)                                                                           # shutdown during the first dial
        | connected.to(closed, after="RDSDisconnected")                                                   # shutdown while up
        | disconnected.to(closed)                                                                         # shutdown after a loss
        | backoff.to(closed)                                                                              # shutdown while waiting to redial
        | reconnecting.to(closed)                                                                         # shutdown during a redial
    )
    # fmt: on

    # Who sends each event: what `rdscsi explain` and specs/ say starts it.
    sent_by = {
        "dial": "the adapter's start",
        "succeeded": "the SSH handshake and login completed",
        "failed": "the dial failed (refused, timed out, host key or login refused)",
        "lost": "the SSH connection closed, or the health command failed",
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
    }

    # --- actions (pure model updates) -----------------------------------------------------------
    @staticmethod
    def schedule_backoff(model: ConnectionModel, p: ConnInput) -> None:
        model.delay = backoff_delay(model.attempt, p.jitter)
        model.attempt += 1
        if model.lost_at is None:
            model.lost_at = p.now

    @staticmethod
    def reset_backoff(model: ConnectionModel, p: ConnInput) -> None:
        model.attempt = 0
        model.delay = 0.0

    @staticmethod
    def mark_lost(model: ConnectionModel, p: ConnInput) -> None:
        model.lost_at = p.now
        model.attempt = 0
