"""Turns what a service method raises into the gRPC status the CO expects."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..io.rds.errors import RDSError
from .locks import Busy
from .status import RPCError, from_rds

log = logging.getLogger("rdscsi.rpc")

R = TypeVar("R")
Handler = Callable[[Any, Any, Any], Awaitable[R]]


def rpc(method: Handler[R]) -> Handler[R]:
    """Every failure becomes one status with a message naming what was wrong; an unexpected
    exception is logged and reported as INTERNAL rather than left to gRPC's generic text."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        name = method.__name__
        try:
            return await method(self, request, context)
        except RPCError as exc:
            failure: tuple[grpc.StatusCode, str] = (exc.code, exc.message)
        except Busy as exc:
            failure = (grpc.StatusCode.ABORTED, f"{exc}; retry later")
        except RDSError as exc:
            err = from_rds(exc, name)
            failure = (err.code, err.message)
        except Exception as exc:  # a bug: keep the process, report it, log the trace
            log.exception("%s failed", name)
            failure = (grpc.StatusCode.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")
        if failure[0] in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
            log.warning("%s -> %s: %s", name, failure[0].name, failure[1])
        await context.abort(failure[0], failure[1])
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper
