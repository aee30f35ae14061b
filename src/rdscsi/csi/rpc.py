"""Turns what a service method raises into the gRPC status the CO expects, and logs it once.

Every failed RPC is one log line, `<Method> [<object>]: <CODE>: <message>`, at the level its
code deserves (`LEVELS`), with the object it concerns named once: the message is told
without the repeats that build up as the error passes through layers
(`volume pvc-1 (pvc-1): volume pvc-1: disk-add slot=pvc-1: …` becomes
`volume pvc-1: disk-add: …`), and the request's object is put in front only when the message
does not name it. The CO sees the same message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..io.rds.errors import RDSError
from .locks import Busy
from .naming import is_snapshot_id, is_volume_id
from .status import RPCError, from_rds, shown

log = logging.getLogger("rdscsi.rpc")

# A status message travels as a gRPC trailer (8 KiB for all metadata by default): a longer
# one makes the client see RESOURCE_EXHAUSTED instead of the real error.
MAX_MESSAGE = 2048


def bounded(message: str) -> str:
    """One line (control characters escaped, so a message cannot forge a log line) of at
    most :data:`MAX_MESSAGE` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


R = TypeVar("R")
Handler = Callable[[Any, Any, Any], Awaitable[R]]

Code = grpc.StatusCode
# ERROR: a fault of the driver; WARNING: the appliance or the cluster needs a look;
# INFO: the answer to the request as asked (the CO retries or reports it to the user).
LEVELS: dict[grpc.StatusCode, int] = {
    Code.INTERNAL: logging.ERROR,
    Code.UNKNOWN: logging.ERROR,
    Code.DATA_LOSS: logging.ERROR,
    Code.UNAVAILABLE: logging.WARNING,
    Code.DEADLINE_EXCEEDED: logging.WARNING,
    Code.RESOURCE_EXHAUSTED: logging.WARNING,
    Code.FAILED_PRECONDITION: logging.WARNING,
    Code.PERMISSION_DENIED: logging.WARNING,
    Code.UNAUTHENTICATED: logging.WARNING,
    Code.INVALID_ARGUMENT: logging.INFO,
    Code.NOT_FOUND: logging.INFO,
    Code.ALREADY_EXISTS: logging.INFO,
    Code.OUT_OF_RANGE: logging.INFO,
    Code.ABORTED: logging.INFO,
    Code.CANCELLED: logging.INFO,
    Code.UNIMPLEMENTED: logging.INFO,
}

# Request fields naming the object an RPC is about, most specific first.
SUBJECT_FIELDS = ("volume_id", "snapshot_id", "source_volume_id", "name")
# How a layer names an id it was given: `volume X`, `snapshot X`, `disk X`, `slot=X`, `(X)`.
_NAMING = re.compile(
    r"(?:(?:source |restored )?(?:volume|snapshot|disk|slot|file) |slot=|from=|\()"
    r"(?P<id>[A-Za-z0-9][\w.:-]*?)\)?(?=[\s,;]|$)"
)


def ids(request: Any) -> tuple[str, ...]:
    """The ids the request names (`volume_id`, `snapshot_id`, …), most specific first."""
    found = (getattr(request, name, "") for name in SUBJECT_FIELDS)
    return tuple(v for v in found if isinstance(v, str) and v)


def subject(request: Any) -> str:
    """The id the request is about, or ''."""
    return next(iter(ids(request)), "")


def name_once(message: str, known: tuple[str, ...] = ()) -> str:
    """`message` with each id named once: a later `volume X`, `slot=X` or `(X)` of an id
    already named is dropped, and a `: `-separated part left empty goes with it. Only ids
    are touched: the driver's own (`pvc-…`, `vol-…`, `snap-…`) and those in `known`."""
    seen: set[str] = set()
    parts = []
    for part in message.split(": "):

        def drop_repeat(m: re.Match[str]) -> str:
            ident = m.group("id")
            if not (ident in known or is_volume_id(ident) or is_snapshot_id(ident)):
                return m.group(0)
            if ident in seen:
                return ""
            seen.add(ident)
            return m.group(0)

        kept = re.sub(r"\s{2,}", " ", _NAMING.sub(drop_repeat, part)).strip()
        if kept:
            parts.append(kept)
    return ": ".join(parts)


def log_failure(method: str, request: Any, code: grpc.StatusCode, message: str) -> None:
    about = subject(request)
    about = shown(about) if about else ""  # a newline in a name must not forge a line
    where = f"{method} {about}" if about and about not in message else method
    log.log(LEVELS.get(code, logging.WARNING), "%s: %s: %s", where, code.name, message)


def rpc(method: Handler[R]) -> Handler[R]:
    """Every failure becomes one status with a message naming what was wrong, logged once;
    an unexpected exception is reported as INTERNAL (its trace logged) rather than left to
    gRPC's generic text."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        name = method.__name__
        trace = False
        try:
            return await method(self, request, context)
        except RPCError as exc:
            failure: tuple[grpc.StatusCode, str] = (exc.code, exc.message)
        except Busy as exc:
            failure = (Code.ABORTED, f"{exc}; retry later")
        except RDSError as exc:
            err = from_rds(exc, name)
            failure = (err.code, err.message)
        except asyncio.CancelledError:
            # the caller gave up (deadline or cancel): gRPC answers it; logged, never hidden
            log_failure(name, request, Code.CANCELLED, "cancelled by the caller")
            raise
        except Exception as exc:  # a bug: keep the process, report it, log the trace
            failure = (Code.INTERNAL, f"{type(exc).__name__}: {exc}")
            trace = True
        code, message = failure[0], bounded(name_once(failure[1], ids(request)))
        if trace:
            log.exception("%s: %s: %s", name, code.name, message)
        else:
            log_failure(name, request, code, message)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper
