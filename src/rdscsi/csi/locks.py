"""One operation at a time per volume or snapshot: a second call gets ABORTED, not a race."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Busy(Exception):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"an operation is already pending for {key}")


class OperationLocks:
    """Non-blocking per-key locks; CSI sidecars retry ABORTED with backoff."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    @contextlib.contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        busy = [k for k in keys if k in self._held]
        if busy:
            raise Busy(busy[0])
        self._held.update(keys)
        try:
            yield
        finally:
            self._held.difference_update(keys)

    def held(self, key: str) -> bool:
        return key in self._held

    def keys(self) -> frozenset[str]:
        """Every key held now (the orphan sweep counts them as claimed)."""
        return frozenset(self._held)
