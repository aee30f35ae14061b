"""How each simulated object is printed: its properties, in the device's order and groups."""

from __future__ import annotations

import time
from typing import Literal

from rdscsi.sim.render import (
    Item,
    Prop,
    byte_count,
    comment,
    flag,
    human_size,
    literal,
    number,
    string,
    word,
)
from rdscsi.sim.store import Disk, FileInfo, HostConnection, Store, Traffic
from rdscsi.sim.units import bits_per_second, percent

DateStyle = Literal["iso", "legacy"]
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def disk_item(disk: Disk) -> Item:
    """Fields and line groups of the reference's detail capture of a file disk."""
    return (
        (comment(disk.comment),),
        (
            literal("type", "file"),
            string("slot", disk.slot),
            string("slot-default", ""),
            string("parent", ""),
            literal("fs", "-"),
        ),
        (string("model", disk.file_path),),
        (
            byte_count("size", disk.size),
            flag("mount-filesystem", True),
            flag("mount-read-only", False),
            flag("compress", False),
            number("sector-size", 512),
            literal("raid-master", "none"),
        ),
        (
            flag("nvme-tcp-export", disk.nvme_tcp_export),
            number("nvme-tcp-server-port", disk.nvme_tcp_server_port),
            string("nvme-tcp-server-nqn", disk.nvme_tcp_server_nqn),
            string("nvme-tcp-server-allow-host-name", disk.nvme_tcp_server_allow_host_name),
            flag("iscsi-export", False),
        ),
        (word("file-path", disk.file_path),),
        (human_size("file-size", disk.size), number("file-offset", 0)),
    )


def pool_item(store: Store) -> Item:
    """The capacity line of the reference: the pool as a partition with size/free/use."""
    free = store.free_bytes()
    return (
        (
            literal("slot", store.pool_name),
            literal("type", "partition"),
            literal("mount-point", store.pool_name),
            literal("file-system", "btrfs"),
            byte_count("size", store.pool_size),
            byte_count("free", free),
            literal("use", percent(store.pool_size - free, store.pool_size)),
        ),
    )


def format_time(timestamp: float, style: DateStyle) -> str:
    moment = time.gmtime(timestamp)
    clock = time.strftime("%H:%M:%S", moment)
    if style == "legacy":
        return f"{_MONTHS[moment.tm_mon - 1]}/{moment.tm_mday:02d}/{moment.tm_year} {clock}"
    return time.strftime("%Y-%m-%d ", moment) + clock


def file_type(info: FileInfo) -> str:
    if info.kind != "file":
        return info.kind
    base = info.name.rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    return f".{extension} file" if dot and stem else "file"


def file_item(info: FileInfo, style: DateStyle) -> Item:
    props: list[Prop] = [word("name", info.name), literal("type", file_type(info))]
    if info.kind == "file":
        props.append(human_size("size", info.size))
    props.append(literal("last-modified", format_time(info.mtime, style)))
    return (tuple(props),)


def connection_item(conn: HostConnection) -> Item:
    """Unconfirmed on the device; chosen to carry what a driver would look for."""
    return (
        (string("slot", conn.slot), string("nqn", conn.nqn)),
        (string("host-nqn", conn.host_nqn),),
        (
            word("remote-address", conn.remote_address),
            number("remote-port", conn.remote_port),
            number("local-port", conn.local_port),
            literal("state", "connected"),
        ),
    )


def traffic_props(slot: str, traffic: Traffic) -> list[Prop]:
    return [
        literal("slot", slot),
        number("read-ops-per-second", traffic.read_ops_per_second),
        number("write-ops-per-second", traffic.write_ops_per_second),
        literal("read-rate", bits_per_second(traffic.read_rate)),
        literal("write-rate", bits_per_second(traffic.write_rate)),
        literal("read-time", f"{traffic.read_time}ms"),
        literal("write-time", f"{traffic.write_time}ms"),
        number("in-flight-ops", traffic.in_flight_ops),
    ]


# Property names `where`/`[find]` accept per menu (others are a syntax error).
_SAMPLE_DISK = Disk(slot="", file_path="/x/y", size=0)
DISK_KEYS = frozenset(prop.key for group in disk_item(_SAMPLE_DISK) for prop in group) | frozenset(
    {"mount-point", "file-system", "free", "use"}
)
FILE_KEYS = frozenset({"name", "type", "size", "last-modified"})
CONNECTION_KEYS = frozenset(
    prop.key for group in connection_item(HostConnection(0, "", "", "", "", 0, 0)) for prop in group
)
