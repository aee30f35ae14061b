"""Typed records the parsers return. Each keeps every field the device printed in ``raw``."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import attrs


@attrs.frozen
class PrintEntry:
    """One item of ``print`` output before interpretation."""

    index: int | None  # the item number in list form; None in single-item detail form
    flags: str  # flag letters between the index and the fields ("" if none)
    fields: Mapping[str, str] = attrs.field(hash=False)  # values unquoted and unescaped
    comment: str | None = None  # text of a `;;;` comment line, if any


@attrs.frozen
class DiskInfo:
    """A ``/disk`` item.

    ``size`` is exact bytes, or None when the device printed no byte count (a humanised
    size is never taken as exact). ``file_size_text`` is the humanised ``file-size`` and is
    informational only.
    """

    slot: str
    type: str
    size: int | None
    file_path: str | None
    file_size_text: str | None
    nvme_export: bool
    nvme_port: int | None
    nvme_nqn: str | None
    flags: str = ""
    raw: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    comment: str | None = None  # the item's comment, if it has one


@attrs.frozen
class PoolInfo:
    """The storage pool partition's capacity.

    ``exact`` is False if either of ``size``/``free`` came humanised (then it is rounded).
    """

    slot: str | None
    mount_point: str | None
    size: int
    free: int
    exact: bool
    use_percent: int | None
    file_system: str | None
    raw: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class FileInfo:
    """A ``/file`` item. ``name`` has no leading ``/``.

    ``size`` is usually parsed from a humanised text (``10.0GiB``) and then approximate;
    ``size_exact`` says whether the device printed a byte count.
    """

    name: str
    type: str | None
    size: int | None
    size_exact: bool
    last_modified: datetime.datetime | None  # naive: the device's local time
    raw: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class TrafficStats:
    """One ``monitor-traffic`` sample.

    ``values`` holds every field that reads as a number, in base units: rates in bits per
    second (``12.8Mbps`` -> 12_800_000.0), durations in seconds (``3ms`` -> 0.003),
    percentages as their number, counts as they are.
    """

    slot: str | None
    values: Mapping[str, float] = attrs.field(hash=False)
    raw: Mapping[str, str] = attrs.field(hash=False)


@attrs.frozen
class NvmeConnection:
    """One connected NVMe/TCP host (format unconfirmed: every field may be missing)."""

    slot: str | None
    nqn: str | None
    host_nqn: str | None
    remote_address: str | None
    remote_port: int | None = None
    raw: Mapping[str, str] = attrs.field(factory=dict, hash=False)
