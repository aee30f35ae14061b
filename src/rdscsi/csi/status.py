"""gRPC status for every failure: one code per adapter error type, a message naming the object."""

from __future__ import annotations

import re

import grpc

from ..io.rds.errors import RDSError, grpc_code_name

SHOWN_CHARS = 128  # of a request-supplied value, in a message or a log line
_PLAIN = re.compile(r"[^\s'\"\\]+")


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A request-supplied value as it may appear in a message or a log line: as it is when
    it is short and plain (printable, no blanks, no quotes), else quoted with control and
    non-printable characters escaped (a newline cannot forge a log line); at most ``limit``
    characters of it either way (a 100 kB id must not be echoed back whole)."""
    text = value if isinstance(value, str) else str(value)
    if text and len(text) <= limit and text.isprintable() and _PLAIN.fullmatch(text):
        return text
    cut = text[:limit]
    quoted = repr(cut)
    return quoted if len(cut) == len(text) else f"{quoted}...(+{len(text) - limit} chars)"


class RPCError(Exception):
    """Raised inside a service; the server turns it into the status it carries."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.name}: {message}")


def invalid(message: str) -> RPCError:
    return RPCError(grpc.StatusCode.INVALID_ARGUMENT, message)


def required(value: str, field: str) -> str:
    """`value`, or INVALID_ARGUMENT naming the empty request field."""
    if not value:
        raise invalid(f"{field}: required")
    return value


def not_found(message: str) -> RPCError:
    return RPCError(grpc.StatusCode.NOT_FOUND, message)


def precondition(message: str) -> RPCError:
    return RPCError(grpc.StatusCode.FAILED_PRECONDITION, message)


def from_rds(error: RDSError, what: str) -> RPCError:
    """The adapter's error as a status: `what` names the volume or snapshot concerned."""
    code = getattr(grpc.StatusCode, grpc_code_name(error))
    return RPCError(code, f"{what}: {error}")
