"""Failures of the RDS adapter, one type per class of failure, and the classifier for
device error output.

The device prints its errors on stdout (exit status is not reliable), so every reply is
passed through :func:`classify` before it is parsed. Each type's docstring names the gRPC
code the CSI layer should answer with; :data:`GRPC_CODE_NAME` holds the same mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rdscsi.io.rds.commands import Command

# Long values and outputs are cut in messages: messages end up in logs and gRPC details.
_VALUE_EXCERPT = 80
_OUTPUT_EXCERPT = 200


def _excerpt(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"...(+{len(text) - limit} chars)"


class RDSError(Exception):
    """Base of every adapter failure; unmapped subclasses map to INTERNAL."""

    def __init__(
        self, detail: str, *, command: Command | None = None, device_text: str | None = None
    ) -> None:
        self.detail = detail
        self.command = command
        # The exact line the device printed, when the failure came from the device.
        self.device_text = device_text
        prefix = f"{command.describe()}: " if command is not None else ""
        super().__init__(prefix + detail)

    def __reduce__(self) -> tuple[Callable[..., RDSError], tuple[object, ...]]:
        # Subclasses have their own constructor signatures, so pickling and copying
        # rebuild from the attributes rather than by calling the constructor with args.
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls: type[RDSError], args: tuple[object, ...], state: dict[str, object]) -> RDSError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class NotFoundError(RDSError):
    """The item does not exist (`failure: no such item`): NOT_FOUND."""


class AlreadyExistsError(RDSError):
    """The slot or file already exists (`failure: file already exists`): ALREADY_EXISTS."""


class NotEnoughSpaceError(RDSError):
    """The pool cannot hold the requested size (`failure: not enough space`): RESOURCE_EXHAUSTED."""


class CommandSyntaxError(RDSError):
    """The device rejected the command line itself (a driver bug): INTERNAL."""


class TransportLostError(RDSError):
    """The SSH connection or channel failed mid-command (outcome unknown): UNAVAILABLE."""


class IncompleteReplyError(TransportLostError):
    """The reply was cut short (exit signal, no exit status); outcome unknown: UNAVAILABLE."""

    # The appliance-side process died mid-reply, or the channel closed without an exit
    # status. What was printed is never parsed; the command may have taken effect.


class CommandTimeoutError(RDSError):
    """No complete reply by the command's deadline (see `sent`): DEADLINE_EXCEEDED."""

    # The deadline covers the wait for a free channel, the channel open and the reply. With
    # `sent` False the command never left (no channel was free, or the appliance refused
    # every open: `refused` counts them): safe to retry. Otherwise the outcome is unknown.

    def __init__(
        self,
        timeout_s: float,
        *,
        command: Command | None = None,
        sent: bool = True,
        refused: int = 0,
    ) -> None:
        self.timeout_s = timeout_s
        self.sent = sent
        self.refused = refused
        if sent:
            detail = f"no complete reply within {timeout_s:g}s"
        else:
            why = f" ({refused} channel opens refused)" if refused else ""
            detail = f"not sent: no channel to the appliance within {timeout_s:g}s{why}"
        super().__init__(detail, command=command)


class UnparseableOutputError(RDSError):
    """The reply matched no known output shape: INTERNAL."""

    def __init__(self, reason: str, output: str, *, command: Command | None = None) -> None:
        self.reason = reason
        self.excerpt = _excerpt(output, _OUTPUT_EXCERPT)
        super().__init__(f"unparseable output ({reason}): {self.excerpt!r}", command=command)


class InUseError(RDSError):
    """The disk is busy (`failure: disk is in use`): FAILED_PRECONDITION."""


class ApplianceFailureError(RDSError):
    """Any other `failure: <text>` the device printed: INTERNAL."""


class UnavailableError(RDSError):
    """No connection to the device right now, nothing was sent: UNAVAILABLE."""


class MisconfiguredError(RDSError):
    """The appliance rejects a setting (login, host key); nothing sent: FAILED_PRECONDITION."""

    # Not an outage: `setting` names what to fix (the user's key, the pinned host keys or
    # the known_hosts file), `fingerprint` is the host key the server showed.

    def __init__(
        self,
        setting: str,
        reason: str,
        fingerprint: str = "",
        *,
        appliance: str = "",
        command: Command | None = None,
    ) -> None:
        self.setting = setting
        self.reason = reason
        self.fingerprint = fingerprint
        where = f"appliance {appliance}: " if appliance else ""
        key = f" (server host key {fingerprint})" if fingerprint else ""
        super().__init__(
            f"{where}configuration rejected: {setting}: {reason}{key}", command=command
        )


class InvalidValueError(RDSError):
    """A value failed its allowlist before any command was built: INVALID_ARGUMENT."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = _excerpt(repr(value), _VALUE_EXCERPT)
        super().__init__(f"invalid {field} {shown}: {reason}")


GRPC_CODE_NAME: dict[type[RDSError], str] = {
    RDSError: "INTERNAL",
    NotFoundError: "NOT_FOUND",
    AlreadyExistsError: "ALREADY_EXISTS",
    NotEnoughSpaceError: "RESOURCE_EXHAUSTED",
    CommandSyntaxError: "INTERNAL",
    TransportLostError: "UNAVAILABLE",
    IncompleteReplyError: "UNAVAILABLE",
    CommandTimeoutError: "DEADLINE_EXCEEDED",
    UnparseableOutputError: "INTERNAL",
    InUseError: "FAILED_PRECONDITION",
    ApplianceFailureError: "INTERNAL",
    UnavailableError: "UNAVAILABLE",
    MisconfiguredError: "FAILED_PRECONDITION",
    InvalidValueError: "INVALID_ARGUMENT",
}


def grpc_code_name(error: RDSError) -> str:
    """The gRPC code name for ``error``, via its nearest mapped class (subclasses included)."""
    codes: dict[type, str] = dict(GRPC_CODE_NAME)
    for cls in type(error).__mro__:
        code = codes.get(cls)
        if code is not None:
            return code
    return "INTERNAL"


# Lines the CLI prints when it rejects the command line before running it. Anchored at the
# start of a line so that a value merely containing these words is never taken as an error.
_SYNTAX_LINE = re.compile(
    r"^(?:bad command name\b|syntax error\b|expected end of command\b|expected command name\b"
    r"|invalid (?:parameter|value|argument)\b|missing value|unknown parameter\b"
    r"|input does not match\b|value of .* out of range\b|ambiguous value\b)",
    re.IGNORECASE,
)
_FAILURE_LINE = re.compile(r"^failure:\s*(?P<text>.*)$", re.IGNORECASE)
# Printed without a `failure:` prefix by some commands.
_BARE_NOT_FOUND = re.compile(r"^no such item\b", re.IGNORECASE)
_BARE_FAILURE = re.compile(r"^(?:interrupted\b|action timed out\b)", re.IGNORECASE)


def _classify_failure(text: str) -> type[RDSError]:
    lowered = text.lower()
    if "no such" in lowered or "not found" in lowered:
        return NotFoundError
    if "not enough space" in lowered or "no space" in lowered or "disk full" in lowered:
        return NotEnoughSpaceError
    # Before "in use": "slot already in use" means the name is taken, not the disk busy.
    if "already" in lowered or "exists" in lowered:
        return AlreadyExistsError
    if "in use" in lowered or "busy" in lowered:
        return InUseError
    if "invalid parameter" in lowered or "invalid value" in lowered:
        return CommandSyntaxError
    return ApplianceFailureError


# Words every error line above starts with: a listing in which none occurs (lower-cased) has
# no error line, and a long listing is ruled out by a few substring searches in C.
_ERROR_WORDS = (
    "failure:",
    "bad command name",
    "syntax error",
    "expected end of command",
    "expected command name",
    "invalid ",
    "missing value",
    "unknown parameter",
    "input does not match",
    "value of ",
    "ambiguous value",
    "no such item",
    "interrupted",
    "action timed out",
)


def classify(output: str, command: Command | None = None) -> RDSError | None:
    """The error the device reported in ``output``, or None if it reported none.

    Errors may follow other output, so every line is examined; the first error line wins.
    """
    lowered = output.lower()
    hits = [at for word in _ERROR_WORDS if (at := lowered.find(word)) >= 0]
    if not hits:
        return None
    # Lines before the first occurrence of any error word cannot be error lines.
    start = output.rfind("\n", 0, min(hits)) + 1
    for raw_line in output[start:].splitlines():
        line = raw_line.strip()
        if not line:
            continue
        failure = _FAILURE_LINE.match(line)
        if failure is not None:
            cls = _classify_failure(failure.group("text"))
            return cls(line, command=command, device_text=line)
        if _SYNTAX_LINE.match(line):
            return CommandSyntaxError(line, command=command, device_text=line)
        if _BARE_NOT_FOUND.match(line):
            return NotFoundError(line, command=command, device_text=line)
        if _BARE_FAILURE.match(line):
            return ApplianceFailureError(line, command=command, device_text=line)
    return None


# What a server may print on stderr around a command that is not about the command: sshd's
# session notices, login banners, motd-style greetings. Logged, never an error.
_STDERR_NOTICE = re.compile(
    r"^(?:could not chdir to home directory\b|warning:|welcome\b|last login\b|"
    r"this system\b|authorized (?:users|access)\b|\*{3})",
    re.IGNORECASE,
)

STDERR_KINDS = ("notice", "error", "other")


def classify_stderr(text: str) -> str:
    """What a command's stderr is: `error` (a device error line, see `classify`), `notice`
    (session noise such as a banner or sshd's "Could not chdir to home directory"), or
    `other`. stderr is never parsed as data."""
    if classify(text) is not None:
        return "error"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and all(_STDERR_NOTICE.match(line) for line in lines):
        return "notice"
    return "other"
