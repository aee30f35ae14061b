"""Wire details shared by the Kubernetes modules: MicroTime, raw JSON responses, paged lists.

Reads go through the generated client's `*_without_preload_content` methods and are parsed
here as plain dicts: turning 10k objects into pydantic models costs seconds and we read a
handful of fields. Writes still pass model instances (the generated methods validate them).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio.client.exceptions import ApiException

JSON = dict[str, Any]

# The apiserver parses MicroTime with Go's "2006-01-02T15:04:05.000000Z07:00": exactly six
# fractional digits. Python's isoformat() drops the fraction when it is zero, which the
# apiserver rejects, so every MicroTime we send goes through this subclass.
_MICRO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class MicroTime(datetime):
    """A UTC datetime that serialises as Kubernetes MicroTime (six fractional digits, `Z`).

    The generated client turns datetimes into JSON with `isoformat()`; overriding it is the
    one hook it offers."""

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.astimezone(UTC).strftime(_MICRO_FORMAT)


def micro_time(wall: float) -> MicroTime:
    """MicroTime for a wall-clock timestamp (seconds since the epoch)."""
    return MicroTime.fromtimestamp(wall, UTC)


def format_micro_time(wall: float) -> str:
    return micro_time(wall).isoformat()


def truncate_utf8(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8 (the apiserver counts bytes), never splitting a
    character; a cut is marked with an ellipsis."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    cut = raw[: max(0, limit - 3)].decode(errors="ignore")
    return cut + "..."


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an API call failed with, or None for transport errors."""
    if isinstance(exc, ApiException):
        status = exc.status
        return status if isinstance(status, int) else None
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the API server asked us to wait (429 Too Many Requests, 503), or None.

    Retry-After is an integer number of seconds from the apiserver (its priority-and-fairness
    and max-in-flight filters); a date form or garbage is ignored rather than trusted."""
    if status_of(exc) not in (429, 503):
        return None
    headers = getattr(exc, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, 600.0)  # a broken proxy must not park us for hours


async def read_json(resp: Any) -> JSON:
    """Body of an aiohttp response from a `*_without_preload_content` call, as a dict.

    Raises `ApiException` (with the status) for anything but 2xx, like the preloading
    methods do, and always releases the connection."""
    try:
        body = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = body.decode(errors="replace")
        exc.headers = resp.headers  # Retry-After, for 429 and 503
        raise exc
    data = json.loads(body) if body else {}
    if not isinstance(data, dict):
        raise ApiException(status=0, reason=f"expected a JSON object, got {type(data).__name__}")
    return data


ListCall = Callable[..., Awaitable[Any]]


async def list_all(call: ListCall, page_size: int = 500, **kwargs: Any) -> tuple[list[JSON], str]:
    """Every item of a (paged) list call, and the list's resourceVersion.

    Pages keep the API server's memory and our single response bounded on big clusters.
    An expired continue token surfaces as an `ApiException` 410; callers list again."""
    items: list[JSON] = []
    token: str | None = None
    version = ""
    while True:
        page = await read_json(await call(limit=page_size, _continue=token, **kwargs))
        items.extend(page.get("items") or [])
        meta = page.get("metadata") or {}
        version = meta.get("resourceVersion") or version
        token = meta.get("continue") or None
        if token is None:
            return items, version


def parse_time(value: Any) -> float | None:
    """A metav1.Time / MicroTime string (RFC 3339) as seconds since the epoch; None if absent
    or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    return _parse_time(value)


@functools.lru_cache(maxsize=4096)  # objects made in the same second share a timestamp
def _parse_time(value: str) -> float | None:
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def get_path(obj: Mapping[str, Any], *keys: str) -> Any:
    """obj[k1][k2]... or None when any level is missing or not a mapping."""
    cur: Any = obj
    for key in keys:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur
