"""The command interpreter: one RouterOS line in, the device's answer out.

Parse errors and argument errors come before anything runs (as on the device, which
checks a whole line before executing it); mutations run under the store lock.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from functools import lru_cache

from rdscsi.sim.errors import (
    INVALID_PARAMETER,
    NO_SUCH_ITEM,
    DeviceError,
    expected_end,
    failure,
    invalid_value,
    no_matching_value,
    syntax_error,
)
from rdscsi.sim.render import (
    Item,
    Render,
    item_props,
    render_files,
    render_items,
    render_monitor,
    render_terse,
    restrict,
)
from rdscsi.sim.store import Disk, Store, Traffic
from rdscsi.sim.syntax import Command, Condition, Value, parse
from rdscsi.sim.units import parse_size
from rdscsi.sim.views import (
    CONNECTION_KEYS,
    DISK_KEYS,
    FILE_KEYS,
    DateStyle,
    connection_item,
    disk_item,
    file_item,
    pool_item,
    traffic_props,
)

DISK_TYPES = frozenset({"file", "tmpfs", "raid", "partition", "nfs", "smb", "iscsi", "nvme-tcp"})
DEFAULT_NQN_PREFIX = "nqn.2000-02.com.mikrotik:"
_PRINT_FLAGS = frozenset({"detail", "without-paging", "count-only", "terse"})
_PRINT_ARGS = frozenset({"proplist"})
_EXPORT_ARGS = frozenset(
    {
        "nvme-tcp-export",
        "nvme-tcp-server-port",
        "nvme-tcp-server-nqn",
        "nvme-tcp-server-allow-host-name",
    }
)
_ADD_ARGS = _EXPORT_ARGS | {"type", "file-path", "file-size", "slot", "copy-from", "comment"}
_SET_ARGS = _EXPORT_ARGS | {"file-size", "numbers", "comment", "slot"}
_FILE_SET_ARGS = frozenset({"numbers", "name"})


@dataclass(frozen=True)
class Outcome:
    """The answer to one line: stdout text, success, and for a monitor without `once`
    a function giving the next block to print every interval."""

    output: str
    ok: bool
    stream: Callable[[], str] | None = None


@dataclass
class _Args:
    named: dict[str, Value]
    positional: list[Value]
    flags: set[str]


def _split_args(
    command: Command,
    allowed: Collection[str],
    positional: int = 0,
    flags: Collection[str] = (),
) -> _Args:
    args = _Args({}, [], set())
    for arg in command.args:
        if arg.name is None:
            value = arg.value
            is_word = not value.quoted and value.find is None
            if len(args.positional) < positional:
                args.positional.append(value)
            elif is_word and value.text in flags:
                args.flags.add(value.text)
            else:
                raise expected_end(arg.column)
        elif arg.name in allowed:
            args.named[arg.name] = arg.value
        else:
            raise expected_end(arg.column)
    return args


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _matches(props: dict[str, str], condition: Condition) -> bool:
    value = props.get(condition.name)
    op = condition.op
    if op == "flag":
        result = value == "yes"
    elif value is None:
        result = op == "!="
    elif op == "=":
        result = value == condition.value
    elif op == "!=":
        result = value != condition.value
    elif op == "~":
        try:
            result = _regex(condition.value).search(value) is not None
        except re.error:
            raise syntax_error(condition.column) from None
    elif value.isdigit() and condition.value.isdigit():
        left, right = int(value), int(condition.value)
        result = {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[
            op
        ]
    else:
        result = {"<": value < condition.value, ">": value > condition.value}.get(op, False)
    return result != condition.negate


def _check_names(conditions: tuple[Condition, ...], known: frozenset[str]) -> None:
    for condition in conditions:
        if condition.name not in known:
            raise syntax_error(condition.column)


def _select(
    items: list[tuple[str, Item]], conditions: tuple[Condition, ...], known: frozenset[str]
) -> list[tuple[str, Item]]:
    _check_names(conditions, known)
    return [
        (key, item)
        for key, item in items
        if all(_matches(item_props(item), condition) for condition in conditions)
    ]


def _yes_no(value: Value | None, name: str) -> bool | None:
    if value is None:
        return None
    if value.text not in ("yes", "no"):
        raise no_matching_value(name)
    return value.text == "yes"


def _port(value: Value | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.text.isdigit() or not 1 <= int(value.text) <= 65535:
        raise invalid_value(name)
    return int(value.text)


def _size(value: Value | None, name: str) -> int | None:
    if value is None:
        return None
    size = parse_size(value.text)
    if size is None or size <= 0:
        raise invalid_value(name)
    return size


def _text(value: Value | None) -> str | None:
    if value is None:
        return None
    if value.find is not None:
        raise failure(INVALID_PARAMETER)
    return value.text


def _proplist(args: _Args, known: frozenset[str]) -> list[str] | None:
    """`proplist=a,b`: the properties to print (each one the menu has), or None: all."""
    value = args.named.get("proplist")
    if value is None:
        return None
    keys = [k.strip() for k in value.text.split(",")]
    if not all(keys) or any(k not in known for k in keys):
        raise no_matching_value("proplist")
    return keys


class Interpreter:
    def __init__(
        self,
        store: Store,
        *,
        render: Render = "detail",
        date_style: DateStyle = "iso",
        pool_full: Callable[[], bool] = lambda: False,
        refuse_remove_in_use: bool = False,
    ) -> None:
        self.store = store
        self.render = render
        self.date_style = date_style
        self.pool_full = pool_full
        self.refuse_remove_in_use = refuse_remove_in_use
        self._handlers: dict[tuple[tuple[str, ...], str], Callable[[Command], Awaitable[Outcome]]]
        self._handlers = {
            (("disk",), "add"): self._disk_add,
            (("disk",), "set"): self._disk_set,
            (("disk",), "remove"): self._disk_remove,
            (("disk",), "print"): self._disk_print,
            (("disk",), "monitor-traffic"): self._disk_monitor,
            (("file",), "print"): self._file_print,
            (("file",), "remove"): self._file_remove,
            (("file",), "set"): self._file_set,
            (("interface", "nvme-tcp", "connection"), "print"): self._connection_print,
        }

    async def run(self, line: str) -> Outcome:
        try:
            command = parse(line)
            if command is None:
                return Outcome("", True)
            return await self._handlers[(command.menu, command.verb)](command)
        except DeviceError as error:
            return Outcome(error.text + "\n", False)
        except OSError as error:
            # The backing store misbehaved (a file deleted behind our back, a full disk):
            # answer like a device failing its own I/O instead of leaving the client waiting.
            reason = (error.strerror or "i/o error").lower()
            return Outcome(f"failure: {reason}\n", False)

    # --- disks -------------------------------------------------------------------------

    def _disk_items(self, conditions: tuple[Condition, ...] = ()) -> list[tuple[str, Item]]:
        """Every `/disk` item keyed by slot; the pool comes first, as a partition.

        With an exact `slot=` condition only that item is built: rendering every disk for
        each lookup made the simulator, not the driver, the bottleneck with many volumes.
        """
        exact = next(
            (c.value for c in conditions if c.name == "slot" and c.op == "=" and not c.negate),
            None,
        )
        items = []
        if exact is None or exact == self.store.pool_name:
            items.append((self.store.pool_name, pool_item(self.store)))
        if exact is None:
            items.extend((slot, disk_item(disk)) for slot, disk in self.store.disks.items())
        elif exact in self.store.disks:
            items.append((exact, disk_item(self.store.disks[exact])))
        return items

    def _resolve_disks(self, ref: Value) -> list[str]:
        """Slots a reference names: `[find ...]` (may be empty) or a slot name (must exist)."""
        if ref.find is not None:
            conditions = ref.find.conditions
            return [key for key, _ in _select(self._disk_items(conditions), conditions, DISK_KEYS)]
        if ref.text == self.store.pool_name or ref.text in self.store.disks:
            return [ref.text]
        raise failure(NO_SUCH_ITEM)

    def _file_disk(self, slot: str) -> Disk:
        disk = self.store.disks.get(slot)
        if disk is None:  # the pool partition is no file disk
            raise failure(INVALID_PARAMETER)
        return disk

    async def _disk_add(self, command: Command) -> Outcome:
        args = _split_args(command, _ADD_ARGS).named
        kind = _text(args.get("type"))
        if kind is not None and kind not in DISK_TYPES:
            raise no_matching_value("type")
        size = _size(args.get("file-size"), "file-size")
        export = _yes_no(args.get("nvme-tcp-export"), "nvme-tcp-export") or False
        port = _port(args.get("nvme-tcp-server-port"), "nvme-tcp-server-port") or 4420
        nqn = _text(args.get("nvme-tcp-server-nqn")) or ""
        allow = _text(args.get("nvme-tcp-server-allow-host-name")) or ""
        slot = _text(args.get("slot"))
        path = _text(args.get("file-path"))
        comment = _text(args.get("comment")) or ""
        if kind != "file" or not slot or not path:
            raise failure(INVALID_PARAMETER)
        file_path = self.store.normalize_file_path(path)
        if export and not nqn:
            nqn = DEFAULT_NQN_PREFIX + slot
        source_ref = args.get("copy-from")
        async with self.store.lock:
            disk = Disk(slot, file_path, size or 0, export, port, nqn, allow, Traffic(), comment)
            if source_ref is not None:
                sources = self._resolve_disks(source_ref)
                if not sources:
                    raise failure(NO_SUCH_ITEM)
                if len(sources) > 1:
                    raise failure(INVALID_PARAMETER)
                source = self._file_disk(sources[0])
                disk.size = size if size is not None else source.size
                await self.store.copy_disk(disk, source, self.pool_full())
            else:
                if size is None:
                    raise failure(INVALID_PARAMETER)
                self.store.add_disk(disk, self.pool_full())
        return Outcome("", True)

    async def _disk_set(self, command: Command) -> Outcome:
        args = _split_args(command, _SET_ARGS, positional=1)
        ref = args.positional[0] if args.positional else args.named.get("numbers")
        size = _size(args.named.get("file-size"), "file-size")
        changes: dict[str, object] = {}
        export = _yes_no(args.named.get("nvme-tcp-export"), "nvme-tcp-export")
        if export is not None:
            changes["nvme_tcp_export"] = export
        port = _port(args.named.get("nvme-tcp-server-port"), "nvme-tcp-server-port")
        if port is not None:
            changes["nvme_tcp_server_port"] = port
        nqn = _text(args.named.get("nvme-tcp-server-nqn"))
        if nqn is not None:
            changes["nvme_tcp_server_nqn"] = nqn
        allow = _text(args.named.get("nvme-tcp-server-allow-host-name"))
        if allow is not None:
            changes["nvme_tcp_server_allow_host_name"] = allow
        comment = _text(args.named.get("comment"))
        if comment is not None:
            changes["comment"] = comment
        new_slot = _text(args.named.get("slot"))
        if new_slot is not None and not new_slot:
            raise failure(INVALID_PARAMETER)
        if ref is None:
            raise failure(NO_SUCH_ITEM)
        async with self.store.lock:
            slots = self._resolve_disks(ref)
            if not slots:
                # RouterOS itself may ignore an empty set; the driver relies on hearing it.
                raise failure(NO_SUCH_ITEM)
            disks = [self._file_disk(slot) for slot in slots]
            if new_slot is not None and len(disks) > 1:
                raise failure(INVALID_PARAMETER)  # two disks cannot take one name
            for disk in disks:
                if size is not None:
                    self.store.grow(disk.slot, size, self.pool_full())
                if changes:
                    self.store.update(disk.slot, **changes)
                if new_slot is not None:
                    self.store.rename_disk(disk.slot, new_slot)
        return Outcome("", True)

    async def _disk_remove(self, command: Command) -> Outcome:
        args = _split_args(command, {"numbers"}, positional=1)
        ref = args.positional[0] if args.positional else args.named.get("numbers")
        if ref is None:
            raise failure(NO_SUCH_ITEM)
        async with self.store.lock:
            disks = [self._file_disk(slot) for slot in self._resolve_disks(ref)]
            for disk in disks:
                self.store.remove_disk(disk.slot, self.refuse_remove_in_use)
        return Outcome("", True)

    async def _disk_print(self, command: Command) -> Outcome:
        args = _split_args(command, _PRINT_ARGS, flags=_PRINT_FLAGS)
        keys = _proplist(args, DISK_KEYS)
        items = _select(self._disk_items(command.where or ()), command.where or (), DISK_KEYS)
        if "count-only" in args.flags:
            return Outcome(f"{len(items)}\n", True)
        shown = [restrict(item, keys) for _, item in items]
        if "terse" in args.flags:
            return Outcome(render_terse(shown), True)
        return Outcome(render_items(shown, self.render), True)

    async def _disk_monitor(self, command: Command) -> Outcome:
        args = _split_args(command, (), positional=1, flags={"once"})
        if not args.positional:
            raise failure(NO_SUCH_ITEM)
        slots = self._resolve_disks(args.positional[0])
        if len(slots) != 1:
            raise failure(NO_SUCH_ITEM)
        slot = slots[0]

        def block() -> str:
            disk = self.store.disks.get(slot)
            traffic = disk.traffic if disk is not None else Traffic()
            return render_monitor(traffic_props(slot, traffic))

        if "once" in args.flags:
            return Outcome(block(), True)
        return Outcome(block(), True, stream=block)

    # --- files -------------------------------------------------------------------------

    def _file_items(self) -> list[tuple[str, Item]]:
        return [(info.name, file_item(info, self.date_style)) for info in self.store.list_files()]

    async def _file_print(self, command: Command) -> Outcome:
        args = _split_args(command, _PRINT_ARGS, flags=_PRINT_FLAGS)
        keys = _proplist(args, FILE_KEYS)
        items = _select(self._file_items(), command.where or (), FILE_KEYS)
        if "count-only" in args.flags:
            return Outcome(f"{len(items)}\n", True)
        shown = [restrict(item, keys) for _, item in items]
        if "terse" in args.flags:
            return Outcome(render_terse(shown), True)
        return Outcome(render_files(shown, self.render), True)

    async def _file_remove(self, command: Command) -> Outcome:
        args = _split_args(command, {"numbers"}, positional=1)
        ref = args.positional[0] if args.positional else args.named.get("numbers")
        if ref is None:
            raise failure(NO_SUCH_ITEM)
        async with self.store.lock:
            if ref.find is not None:
                names = [
                    key for key, _ in _select(self._file_items(), ref.find.conditions, FILE_KEYS)
                ]
            else:
                names = [ref.text]
            # Deepest first, so removing a directory never hides a file still listed.
            for name in sorted(names, reverse=True):
                if ref.find is not None and not self.store.real_path(name).exists():
                    continue
                self.store.remove_file(name)
        return Outcome("", True)

    async def _file_set(self, command: Command) -> Outcome:
        args = _split_args(command, _FILE_SET_ARGS, positional=1)
        ref = args.positional[0] if args.positional else args.named.get("numbers")
        new_name = _text(args.named.get("name"))
        if ref is None:
            raise failure(NO_SUCH_ITEM)
        if not new_name:
            raise failure(INVALID_PARAMETER)
        async with self.store.lock:
            if ref.find is not None:
                names = [
                    key for key, _ in _select(self._file_items(), ref.find.conditions, FILE_KEYS)
                ]
            else:
                names = [ref.text]
            if not names:
                raise failure(NO_SUCH_ITEM)
            if len(names) > 1:
                raise failure(INVALID_PARAMETER)
            self.store.rename_file(names[0], new_name)
        return Outcome("", True)

    # --- NVMe/TCP sessions -------------------------------------------------------------

    async def _connection_print(self, command: Command) -> Outcome:
        args = _split_args(command, _PRINT_ARGS, flags=_PRINT_FLAGS)
        keys = _proplist(args, CONNECTION_KEYS)
        items = [(str(conn.id), connection_item(conn)) for conn in self.store.connections]
        selected = _select(items, command.where or (), CONNECTION_KEYS)
        if "count-only" in args.flags:
            return Outcome(f"{len(selected)}\n", True)
        shown = [restrict(item, keys) for _, item in selected]
        if "terse" in args.flags:
            return Outcome(render_terse(shown), True)
        return Outcome(render_items(shown, self.render, flags_legend=False), True)
