"""Every RouterOS command line the driver sends, and the validation behind them.

Nothing else in the driver builds command text. Each value taken from a caller passes an
allowlist for its field (rejections raise :class:`InvalidValueError` naming the field) and
is then double-quoted with :func:`quote`. The allowlists already exclude every character
the CLI interprets (``" \\ $ [ ] ; { } ?``, whitespace, control characters); the quoting
is a second, independent guard. Numbers are quoted too (``file-size="1073741824"``): the
CLI converts a quoted value to the argument's type. Constant words (``type=file``,
``nvme-tcp-export=yes``, ``once``) are written bare, exactly as in the protocol reference.

Allowlists (all ASCII, matched against the whole value):

- slot: ``[a-z0-9][a-z0-9._-]{0,63}``; volumes are ``pvc-<uuid>``, snapshots ``snap-<uuid>``.
- pool root: absolute directory, segments ``[A-Za-z0-9._-]{1,255}`` but never ``.``/``..``.
- file path: under the pool root, same segment rule, no empty segment, last segment
  ``<stem>.img`` with a non-empty stem, at most 1024 characters.
- NQN: ``nqn.YYYY-MM.<reverse-domain>:<suffix>``, characters ``[a-z0-9.:-]``, at most 223
  bytes (the NVMe limit).
- size: an ``int`` (not bool) with 1 <= n <= 2**63-1, sent as plain bytes, never a unit.
- port: an ``int`` (not bool) with 1 <= n <= 65535.
- slot prefix: a non-empty slot-shaped literal (an empty prefix would match every disk).
- comment: at most 255 characters of ``[A-Za-z0-9 ./:=_-]`` (what a PVC's namespace and
  name, a PV name and the driver's own words need; nothing the CLI interprets).
- host NQN (an allow-list entry): ``nqn.YYYY-MM.<domain>:<suffix>``, characters
  ``[A-Za-z0-9.:_-]`` (no comma: it separates entries), at most 223 bytes.
- path prefix: the pool root followed by segment characters and ``/``; no ``.``/``..``
  segment, no empty segment except a trailing ``/``.
Prefixes become ``^<literal>`` regular expressions with every metacharacter escaped.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from rdscsi.io.rds.errors import InvalidValueError
from rdscsi.io.rds.fence import ALLOW_PROPERTY, allow_list_value
from rdscsi.io.rds.sizes import format_size_exact

MAX_NQN_BYTES: Final = 223
MAX_FILE_PATH: Final = 1024
MAX_POOL_ROOT: Final = 512

# Stable short names, used as metric labels; pre-register with this set.
VERBS: Final = frozenset(
    {
        "disk-add",
        "disk-copy",
        "disk-grow",
        "disk-comment",
        "disk-fence",
        "disk-rename",
        "disk-remove",
        "file-rename",
        "file-remove",
        "disk-print",
        "disk-print-prefix",
        "disk-inventory",
        "pool-print",
        "file-print",
        "file-inventory",
        "disk-traffic",
        "nvme-connections",
        "health",
    }
)

# A slot that no driver-created disk can carry (underscores fail the slot allowlist), so
# the health query matches nothing and stays cheap however many disks exist.
HEALTH_PROBE_SLOT: Final = "__rdscsi_health__"

_SLOT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_COMMENT = re.compile(r"[A-Za-z0-9 ./:=_-]{0,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,255}")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._/-]*")
_IMG_NAME = re.compile(r"[A-Za-z0-9._-]+\.img")
_NQN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NQN = re.compile(
    rf"nqn\.[0-9]{{4}}-(?:0[1-9]|1[0-2])\.{_NQN_LABEL}(?:\.{_NQN_LABEL})*:[a-z0-9.:-]+"
)
_HOST_NQN = re.compile(r"nqn\.[0-9]{4}-(?:0[1-9]|1[0-2])\.[A-Za-z0-9.-]+:[A-Za-z0-9.:_-]+")

# RouterOS escapes inside a double-quoted string. `$` starts variable substitution and
# `?` asks for help in the console, so both are escaped even though a shell would not.
_QUOTE_ESCAPES: Final = {
    "\\": "\\\\",
    '"': '\\"',
    "$": "\\$",
    "?": "\\?",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
# POSIX ERE metacharacters (RouterOS `~` uses POSIX regular expressions).
_REGEX_META: Final = frozenset("\\.^$|?*+()[]{}")


# What the orphan sweep and the fence read of each disk (`disk_inventory`).
INVENTORY_DISK_PROPERTIES: Final = (
    "slot",
    "file-path",
    "nvme-tcp-export",
    "nvme-tcp-server-nqn",
    ALLOW_PROPERTY,
)

# What may follow a slot in the name of a backing file the driver created: nothing, or an
# upper-case marker and its fields (see rdscsi.io.rds.volumes), then ".img".
OWNED_SUFFIX: Final = r"(\.[A-Z][A-Za-z0-9._-]*)?\.img$"


def quote(text: str) -> str:
    """``text`` as a RouterOS double-quoted string that reads back as exactly ``text``.

    Escapes backslash, double quote, ``$`` and ``?``; newline, CR and tab by name; every
    other control character as ``\\XX`` (two uppercase hex digits). Other characters,
    including non-ASCII, carry no meaning inside quotes and pass through unchanged.
    """
    out: list[str] = ['"']
    for ch in text:
        escaped = _QUOTE_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):02X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def escape_regex(literal: str) -> str:
    """``literal`` as a POSIX extended regular expression matching exactly itself."""
    return "".join("\\" + ch if ch in _REGEX_META else ch for ch in literal)


def _require_str(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValueError(field, value, f"must be a string, not {type(value).__name__}")
    return value


def validate_slot(value: object, field: str = "slot") -> str:
    """``value`` if it is an allowed disk slot name, else InvalidValueError."""
    text = _require_str(field, value)
    if _SLOT.fullmatch(text) is None:
        raise InvalidValueError(field, value, "must match [a-z0-9][a-z0-9._-]{0,63}")
    return text


def validate_slot_prefix(value: object, field: str = "slot prefix") -> str:
    """``value`` if it is a non-empty literal prefix of a slot name."""
    text = _require_str(field, value)
    if _SLOT.fullmatch(text) is None:
        raise InvalidValueError(
            field, value, "must be non-empty and match [a-z0-9][a-z0-9._-]{0,63}"
        )
    return text


def validate_comment(value: object, field: str = "comment") -> str:
    """``value`` if it is an allowed disk comment (may be empty: clears the comment)."""
    text = _require_str(field, value)
    if _COMMENT.fullmatch(text) is None:
        raise InvalidValueError(field, value, "must be at most 255 of [A-Za-z0-9 ./:=_-]")
    return text


def validate_nqn(value: object, field: str = "nqn") -> str:
    """``value`` if it is an allowed NVMe qualified name."""
    text = _require_str(field, value)
    if len(text.encode()) > MAX_NQN_BYTES:
        raise InvalidValueError(field, value, f"longer than {MAX_NQN_BYTES} bytes")
    if _NQN.fullmatch(text) is None:
        raise InvalidValueError(
            field, value, "must look like nqn.YYYY-MM.reverse.domain:suffix using [a-z0-9.:-]"
        )
    return text


def validate_host_nqn(value: object, field: str = "host nqn") -> str:
    """``value`` if it is a host NQN the allow-list can carry (no separator, nothing quoted)."""
    text = _require_str(field, value)
    if len(text.encode()) > MAX_NQN_BYTES:
        raise InvalidValueError(field, value, f"longer than {MAX_NQN_BYTES} bytes")
    if _HOST_NQN.fullmatch(text) is None:
        raise InvalidValueError(
            field, value, "must look like nqn.YYYY-MM.domain:suffix using [A-Za-z0-9.:_-]"
        )
    return text


def validate_port(value: object, field: str = "port") -> int:
    """``value`` if it is a TCP port number (an int, not bool, 1..65535)."""
    if type(value) is not int:
        raise InvalidValueError(field, value, f"must be an int, not {type(value).__name__}")
    if not 1 <= value <= 65535:
        raise InvalidValueError(field, value, "must be between 1 and 65535")
    return value


def _check_segments(field: str, value: str, segments: list[str]) -> None:
    for segment in segments:
        if _SEGMENT.fullmatch(segment) is None:
            raise InvalidValueError(
                field, value, "path segments must be 1-255 characters of [A-Za-z0-9._-]"
            )
        if segment in (".", ".."):
            raise InvalidValueError(field, value, "'.' and '..' segments are not allowed")


def validate_pool_root(value: object, field: str = "pool root") -> str:
    """``value`` normalised to end with ``/`` if it is an allowed absolute pool directory."""
    text = _require_str(field, value)
    if not text.startswith("/"):
        raise InvalidValueError(field, value, "must be an absolute path")
    if len(text) > MAX_POOL_ROOT:
        raise InvalidValueError(field, value, f"longer than {MAX_POOL_ROOT} characters")
    body = text[1:].removesuffix("/")
    _check_segments(field, text, body.split("/"))
    return f"/{body}/"


@attrs.frozen
class Command:
    """One CLI line to send, with what the adapter needs to report on it."""

    verb: str  # stable short name, one of VERBS
    line: str  # the exact text for the exec channel
    mutating: bool  # True if the command changes device state (never retried blindly)
    slot: str | None = None  # the disk slot the command concerns
    source_slot: str | None = None  # the slot copied from, for disk-copy
    target: str | None = None  # the non-disk object concerned: file name, prefix, pool

    def describe(self) -> str:
        """A short human description for messages: verb plus what it concerns."""
        parts = [self.verb]
        if self.slot is not None:
            parts.append(f"slot={self.slot}")
        if self.source_slot is not None:
            parts.append(f"from={self.source_slot}")
        if self.target is not None:
            parts.append(self.target)
        return " ".join(parts)


def _export_args(nvme_port: int, nvme_nqn: str) -> str:
    port = validate_port(nvme_port, "nvme port")
    nqn = validate_nqn(nvme_nqn, "nvme nqn")
    return (
        f"nvme-tcp-export=yes nvme-tcp-server-port={quote(str(port))} "
        f"nvme-tcp-server-nqn={quote(nqn)}"
    )


@attrs.frozen
class CommandBuilder:
    """Builds every command; file paths are confined to ``pool_root`` (e.g. /storage-pool/).

    The pool's mount point, used for the capacity query, is the first segment of the root.
    """

    pool_root: str = attrs.field(default="/storage-pool/", converter=validate_pool_root)

    @property
    def mount_point(self) -> str:
        return self.pool_root.split("/")[1]

    def validate_file_path(self, value: object, field: str = "file path") -> str:
        """``value`` if it is an allowed ``.img`` path under the pool root."""
        text = _require_str(field, value)
        if len(text) > MAX_FILE_PATH:
            raise InvalidValueError(field, value, f"longer than {MAX_FILE_PATH} characters")
        if not text.startswith(self.pool_root):
            raise InvalidValueError(field, value, f"must be under {self.pool_root}")
        rest = text[len(self.pool_root) :].split("/")
        _check_segments(field, text, rest)
        if _IMG_NAME.fullmatch(rest[-1]) is None or rest[-1] == ".img":
            raise InvalidValueError(field, value, "file name must be <name>.img")
        return text

    def validate_path_prefix(self, value: object, field: str = "path prefix") -> str:
        """``value`` if it is a literal path prefix under the pool root."""
        text = _require_str(field, value)
        if len(text) > MAX_FILE_PATH:
            raise InvalidValueError(field, value, f"longer than {MAX_FILE_PATH} characters")
        if not text.startswith(self.pool_root):
            raise InvalidValueError(field, value, f"must start with {self.pool_root}")
        rest = text[len(self.pool_root) :]
        if _SEGMENT_CHARS.fullmatch(rest) is None:
            raise InvalidValueError(field, value, "may only contain [A-Za-z0-9._/-]")
        if rest:
            # A trailing "/" (all entries of a directory) is the one allowed empty segment.
            _check_segments(field, text, rest.removesuffix("/").split("/"))
        return text

    def disk_add(
        self, *, slot: str, file_path: str, file_size: int, nvme_port: int, nvme_nqn: str
    ) -> Command:
        """Create a sparse file-backed disk of exactly ``file_size`` bytes, exported."""
        slot = validate_slot(slot)
        path = self.validate_file_path(file_path)
        size = format_size_exact(file_size)
        line = (
            f"/disk add type=file file-path={quote(path)} file-size={quote(size)} "
            f"slot={quote(slot)} {_export_args(nvme_port, nvme_nqn)}"
        )
        return Command("disk-add", line, mutating=True, slot=slot)

    def disk_add_copy(
        self,
        *,
        source_slot: str,
        slot: str,
        file_path: str,
        file_size: int | None = None,
        nvme_port: int | None = None,
        nvme_nqn: str | None = None,
    ) -> Command:
        """Copy-on-write copy of ``source_slot`` as a new disk (snapshot, restore, clone).

        Export options are all-or-nothing: snapshots are not exported, clones are.
        """
        source = validate_slot(source_slot, "source slot")
        slot = validate_slot(slot)
        path = self.validate_file_path(file_path)
        parts = [
            f"/disk add type=file copy-from=[find slot={quote(source)}]",
            f"file-path={quote(path)} slot={quote(slot)}",
        ]
        if file_size is not None:
            parts.append(f"file-size={quote(format_size_exact(file_size))}")
        if (nvme_port is None) != (nvme_nqn is None):
            raise InvalidValueError(
                "nvme export", (nvme_port, nvme_nqn), "give both port and nqn, or neither"
            )
        if nvme_port is not None and nvme_nqn is not None:
            parts.append(_export_args(nvme_port, nvme_nqn))
        return Command("disk-copy", " ".join(parts), mutating=True, slot=slot, source_slot=source)

    def disk_grow(self, slot: str, file_size: int) -> Command:
        """Set the backing file of ``slot`` to exactly ``file_size`` bytes (grow only)."""
        slot = validate_slot(slot)
        size = format_size_exact(file_size)
        line = f"/disk set [find slot={quote(slot)}] file-size={quote(size)}"
        return Command("disk-grow", line, mutating=True, slot=slot)

    def disk_comment(self, slot: str, comment: str) -> Command:
        """Set the disk's comment: what an operator reads beside it in WinBox or the CLI.

        Comments are a property of every RouterOS item (shown as a ``;;;`` line above the
        item in ``print``); the reference does not list them for ``/disk``, so the driver
        only ever writes them for people and never decides anything from one.
        """
        slot = validate_slot(slot)
        text = validate_comment(comment)
        line = f"/disk set [find slot={quote(slot)}] comment={quote(text)}"
        return Command("disk-comment", line, mutating=True, slot=slot)

    def disk_allow_hosts(self, slot: str, hosts: list[str]) -> Command:
        """Set who may connect to the disk's export (`rdscsi.io.rds.fence`): exactly ``hosts``
        (host NQNs); none at all is written as the NQN no host has, never as empty."""
        slot = validate_slot(slot)
        value = allow_list_value(validate_host_nqn(h) for h in hosts)
        line = f"/disk set [find slot={quote(slot)}] {ALLOW_PROPERTY}={quote(value)}"
        return Command("disk-fence", line, mutating=True, slot=slot, target=f"hosts={value}")

    def disk_rename(self, slot: str, file_path: str, new_slot: str, export: bool) -> Command:
        """Give the disk ``slot`` backed by ``file_path`` (both must match) the slot
        ``new_slot``, its export on or off: quarantine and restore of an orphan."""
        slot = validate_slot(slot)
        path = self.validate_file_path(file_path)
        new = validate_slot(new_slot, "new slot")
        line = (
            f"/disk set [find slot={quote(slot)} file-path={quote(path)}] slot={quote(new)} "
            f"nvme-tcp-export={'yes' if export else 'no'}"
        )
        return Command("disk-rename", line, mutating=True, slot=slot, target=f"slot={new}")

    def disk_remove_exact(self, slot: str, file_path: str) -> Command:
        """Remove the disk ``slot`` only if ``file_path`` backs it (a quarantined orphan)."""
        slot = validate_slot(slot)
        path = self.validate_file_path(file_path)
        line = f"/disk remove [find slot={quote(slot)} file-path={quote(path)}]"
        return Command("disk-remove", line, mutating=True, slot=slot)

    def file_rename(self, file_path: str, new_path: str) -> Command:
        """Rename a backing file (absolute paths, both under the pool root)."""
        name = self.validate_file_path(file_path)[1:]
        new = self.validate_file_path(new_path, "new file path")[1:]
        line = f"/file set [find name={quote(name)}] name={quote(new)}"
        return Command("file-rename", line, mutating=True, target=f"{name} -> {new}")

    def disk_remove(self, slot: str) -> Command:
        """Remove the disk; the backing file may remain (see :meth:`file_remove`)."""
        slot = validate_slot(slot)
        line = f"/disk remove [find slot={quote(slot)}]"
        return Command("disk-remove", line, mutating=True, slot=slot)

    def disk_remove_owned(self, slot: str, directory: str) -> Command:
        """Remove the disk only if its backing file is ours: ``<directory><slot>.img`` or
        ``<directory><slot>.<MARKER>...img``. A disk with this slot elsewhere is left alone."""
        slot = validate_slot(slot)
        regex = "^" + escape_regex(self._directory(directory) + slot) + OWNED_SUFFIX
        line = f"/disk remove [find slot={quote(slot)} file-path~{quote(regex)}]"
        return Command("disk-remove", line, mutating=True, slot=slot)

    def file_remove_owned(self, slot: str, directory: str) -> Command:
        """Remove the backing file(s) of ``slot`` under our naming scheme in ``directory``.

        Slots are lower case and the scheme's markers upper case, so the pattern matches
        this slot's files and no other slot's (``pvc-1.2.img`` is not ``pvc-1``'s)."""
        slot = validate_slot(slot)
        name = self._directory(directory)[1:] + slot
        regex = "^" + escape_regex(name) + OWNED_SUFFIX
        line = f"/file remove [find name~{quote(regex)}]"
        return Command("file-remove", line, mutating=True, slot=slot, target=f"{name}*.img")

    def _directory(self, directory: str) -> str:
        text = self.validate_path_prefix(directory, "directory")
        if not text.endswith("/"):
            raise InvalidValueError("directory", directory, "must end with /")
        return text

    def file_remove(self, file_path: str) -> Command:
        """Remove a backing file, given by its absolute path (file names lack the ``/``)."""
        name = self.validate_file_path(file_path)[1:]
        line = f"/file remove [find name={quote(name)}]"
        return Command("file-remove", line, mutating=True, target=name)

    def disk_print(self, slot: str) -> Command:
        """Detail of the one disk with this exact slot (no output if none)."""
        slot = validate_slot(slot)
        line = f"/disk print detail where slot={quote(slot)}"
        return Command("disk-print", line, mutating=False, slot=slot)

    def disk_print_prefix(self, slot_prefix: str) -> Command:
        """Detail of every disk whose slot starts with the literal ``slot_prefix``."""
        prefix = validate_slot_prefix(slot_prefix)
        line = f"/disk print detail where slot~{quote('^' + escape_regex(prefix))}"
        return Command("disk-print-prefix", line, mutating=False, target=f"prefix={prefix}")

    def disk_inventory(self, slot_prefix: str) -> Command:
        """The disks whose slot starts with ``slot_prefix``, one line each and only what the
        orphan sweep and the fence read (`print terse proplist=`; assumed of the device: the
        store falls back to :meth:`disk_print_prefix` when it is refused)."""
        prefix = validate_slot_prefix(slot_prefix)
        line = (
            f"/disk print terse proplist={','.join(INVENTORY_DISK_PROPERTIES)} "
            f"where slot~{quote('^' + escape_regex(prefix))}"
        )
        return Command("disk-inventory", line, mutating=False, target=f"prefix={prefix}")

    def file_inventory(self, path_prefix: str) -> Command:
        """The names of the files under ``path_prefix``, one line each (as
        :meth:`disk_inventory`; the fallback is :meth:`file_print_prefix`)."""
        name = self.validate_path_prefix(path_prefix)[1:]
        line = f"/file print terse proplist=name where name~{quote('^' + escape_regex(name))}"
        return Command("file-inventory", line, mutating=False, target=f"prefix={name}")

    def pool_print(self) -> Command:
        """Detail of the pool partition: exact ``size=`` and ``free=`` bytes."""
        mount = self.mount_point
        line = f"/disk print detail where mount-point={quote(mount)}"
        return Command("pool-print", line, mutating=False, target=f"mount-point={mount}")

    def file_print_prefix(self, path_prefix: str) -> Command:
        """Detail of every file whose absolute path starts with the literal ``path_prefix``."""
        name = self.validate_path_prefix(path_prefix)[1:]
        line = f"/file print detail where name~{quote('^' + escape_regex(name))}"
        return Command("file-print", line, mutating=False, target=f"prefix={name}")

    def disk_traffic(self, slot: str) -> Command:
        """One sample of the disk's I/O counters (``key: value`` lines)."""
        slot = validate_slot(slot)
        line = f"/disk monitor-traffic {quote(slot)} once"
        return Command("disk-traffic", line, mutating=False, slot=slot)

    def nvme_connections(self, terse: bool = False) -> Command:
        """Connected NVMe/TCP hosts per export (output format unconfirmed); ``terse``: one line
        each (assumed of the device, as :meth:`disk_inventory`)."""
        line = "/interface nvme-tcp connection print" + (" terse" if terse else "")
        return Command("nvme-connections", line, mutating=False)

    def health(self) -> Command:
        """A cheap read that proves the session and the /disk subsystem answer.

        A ``print detail where`` on a slot that cannot exist is in the protocol reference
        (so every device and the simulator support it), prints nothing on success, and
        costs the same however many disks there are.
        """
        line = f"/disk print detail where slot={quote(HEALTH_PROBE_SLOT)}"
        return Command("health", line, mutating=False)
