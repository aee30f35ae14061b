"""Pacing on the injected clock: a token bucket and a capped exponential backoff.

Both take the time as an argument instead of reading a clock, so they are plain values a
test can drive with any numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class TokenBucket:
    """`burst` tokens, refilled at `per_second`; one token per admitted item."""

    __slots__ = ("_stamp", "_tokens", "burst", "per_second")

    def __init__(self, burst: int, per_second: float, now: float) -> None:
        if burst < 1:
            raise ValueError(f"TokenBucket: burst must be >= 1, got {burst}")
        if per_second <= 0:
            raise ValueError(f"TokenBucket: per_second must be > 0, got {per_second}")
        self.burst = burst
        self.per_second = per_second
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(
                float(self.burst), self._tokens + (now - self._stamp) * self.per_second
            )
        # A clock that steps back (it should not: callers pass monotonic time) never mints tokens.
        self._stamp = max(self._stamp, now)

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, now: float) -> bool:
        """Admit one item if a token is available."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until `take` would succeed (0 when it would now)."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.per_second)

    def full(self, now: float) -> bool:
        """Refilled to the burst: forgetting this bucket loses nothing."""
        return self.tokens(now) >= self.burst


class Backoff:
    """Doubling delays from `initial` up to `cap`, each stretched by up to `jitter` (a
    fraction) so replicas that failed together do not retry in lockstep; `reset` after a
    success."""

    __slots__ = ("_next", "_rand", "cap", "initial", "jitter")

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"Backoff: need 0 < initial <= cap, got {initial}, {cap}")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._rand = rand
        self._next = initial

    def next(self) -> float:
        """The next delay: at most `cap * (1 + jitter)`."""
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * (1.0 + self.jitter * self._rand())

    def reset(self) -> None:
        self._next = self.initial
