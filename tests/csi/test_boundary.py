"""The validation boundary, unit by unit: sizes, kinds, paths, messages, records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi.confine import Confinement, PathRefused
from rdscsi.csi.kind import VolumeKind, from_context, kind_of
from rdscsi.csi.params import (
    SECTOR,
    check_capability,
    expand_size,
    minimum_size,
    pick_size,
    size_fits,
    volume_parameters,
)
from rdscsi.csi.records import Published, Record, RecordStore
from rdscsi.csi.rpc import MAX_MESSAGE, bounded
from rdscsi.csi.status import RPCError, shown

Mode = pb.VolumeCapability.AccessMode
MIB = 1 << 20
VID = "pvc-0a1b2c3d-0000-4000-8000-0000000000a1"


def cap(
    block: bool = False, fs: str = "", mode: int = Mode.SINGLE_NODE_WRITER
) -> pb.VolumeCapability:
    access = pb.VolumeCapability.AccessMode(mode=mode)
    if block:
        return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(), access_mode=access)
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs), access_mode=access
    )


def code(call: object, *args: object) -> grpc.StatusCode:
    try:
        call(*args)  # type: ignore[operator]
    except RPCError as exc:
        return exc.code
    return grpc.StatusCode.OK


# --- sizes --------------------------------------------------------------------------------


@given(
    st.integers(0, 1 << 44),
    st.integers(0, 1 << 44),
    st.integers(0, 1 << 40),
    st.sampled_from(["", "ext4", "xfs"]),
)
def test_picked_sizes_are_whole_blocks_within_the_range(
    required: int, limit: int, floor: int, fs: str
) -> None:
    rng = pb.CapacityRange(required_bytes=required, limit_bytes=limit)
    minimum = minimum_size(fs)
    try:
        size = pick_size(rng, floor, "v", minimum)
    except RPCError as exc:
        assert exc.code == grpc.StatusCode.OUT_OF_RANGE
        # refused only when no whole-block size over the minimum fits the range
        lowest = -(-max(required, floor, minimum) // SECTOR) * SECTOR
        assert limit and (lowest > limit or (not (required or floor) and limit < minimum))
        return
    assert size % SECTOR == 0 and size >= max(required, floor, minimum)
    assert not limit or size <= limit
    assert size_fits(size, rng, "v")


@given(st.integers(1, 1 << 44), st.integers(0, 1 << 44), st.integers(SECTOR, 1 << 44))
def test_expansions_are_whole_blocks_and_never_shrink(
    required: int, limit: int, current: int
) -> None:
    rng = pb.CapacityRange(required_bytes=required, limit_bytes=limit)
    try:
        size = expand_size(rng, current, "v")
    except RPCError as exc:
        assert exc.code == grpc.StatusCode.OUT_OF_RANGE
        assert limit and (limit < current or limit < -(-required // SECTOR) * SECTOR)
        return
    assert size >= current and size >= required
    assert size == current or size % SECTOR == 0


def test_expansion_without_a_size_is_invalid() -> None:
    assert code(expand_size, None, 4096, "v") == grpc.StatusCode.INVALID_ARGUMENT
    empty = pb.CapacityRange()
    assert code(expand_size, empty, 4096, "v") == grpc.StatusCode.INVALID_ARGUMENT


# --- parameters and capabilities ----------------------------------------------------------


def test_the_claim_is_recorded_and_checked() -> None:
    params = volume_parameters(
        {
            "csi.storage.k8s.io/pvc/name": "data-0",
            "csi.storage.k8s.io/pvc/namespace": "shop",
            "csi.storage.k8s.io/pv/name": "pvc-1",
            "csi.storage.k8s.io/fstype": "xfs",  # another sidecar key: not used
        },
        "ext4",
    )
    assert params.comment == "pvc=shop/data-0 pv=pvc-1" and params.context == {}
    long = volume_parameters({"csi.storage.k8s.io/pvc/name": "a" * 253}, None)
    assert len(long.comment) == 255 and long.comment.endswith("...")
    for bad in ("Data", "a b", "x\ny", "../x"):
        assert code(volume_parameters, {"csi.storage.k8s.io/pvc/name": bad}) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


def test_mkfs_options_are_checked_for_the_volumes_filesystem() -> None:
    ok = volume_parameters({"mkfsOptions": "-O ^has_journal"}, "ext4")
    assert ok.context == {"mkfsOptions": "-O ^has_journal"}
    for fs, options in (("ext4", "-n"), ("ext4", "-b 65536"), ("xfs", "-d file=1")):
        assert code(volume_parameters, {"mkfsOptions": options}, fs) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    # a block volume is never formatted: its mkfsOptions are not carried to the node
    assert volume_parameters({"mkfsOptions": "-n"}, None).context == {}


def test_an_unknown_access_mode_is_invalid_not_internal() -> None:
    assert code(check_capability, cap(mode=99)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(check_capability, cap(mode=-1)) == grpc.StatusCode.INVALID_ARGUMENT


# --- kinds ---------------------------------------------------------------------------------


def test_a_kind_is_one_access_type_and_one_filesystem() -> None:
    kind = kind_of([check_capability(cap(fs="")), check_capability(cap(fs="xfs"))])
    assert (kind.block, kind.fs) == (False, "xfs")
    assert kind_of([check_capability(cap())]).fs == "ext4"  # the default, recorded
    for caps in ([cap(block=True), cap()], [cap(fs="ext4"), cap(fs="xfs")]):
        assert code(kind_of, [check_capability(c) for c in caps]) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


@pytest.mark.parametrize(
    ("recorded", "asked", "allowed"),
    [
        (Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER, True),
        (Mode.SINGLE_NODE_WRITER, Mode.MULTI_NODE_MULTI_WRITER, False),
        (Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_WRITER, False),
        (Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_READER_ONLY, True),
        (Mode.SINGLE_NODE_READER_ONLY, Mode.SINGLE_NODE_WRITER, False),
        (Mode.MULTI_NODE_MULTI_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER, True),
    ],
)
def test_recorded_modes_permit_only_what_they_cover(
    recorded: int, asked: int, allowed: bool
) -> None:
    kind = VolumeKind(True, "", frozenset({recorded}))
    assert (kind.refusal(check_capability(cap(block=True, mode=asked))) is None) == allowed


def test_kinds_round_trip_through_the_context_and_the_appliance() -> None:
    for kind in (
        VolumeKind(True, "", frozenset({Mode.MULTI_NODE_MULTI_WRITER})),
        VolumeKind(
            False, "xfs", frozenset({Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY})
        ),
    ):
        assert from_context(kind.context()) == kind
        assert VolumeKind.from_store(kind.to_store()) == kind
    assert from_context({}) is None  # an older driver's volume
    for bad in (
        {"accessType": "tape"},
        {"accessType": "block", "fsType": "ext4"},
        {"accessType": "mount", "fsType": "zfs", "accessModes": "SINGLE_NODE_WRITER"},
        {"accessType": "mount", "fsType": "ext4", "accessModes": "MULTI_NODE_READER_ONLY"},
    ):
        assert code(from_context, bad) == grpc.StatusCode.INVALID_ARGUMENT


# --- paths ---------------------------------------------------------------------------------


def test_paths_resolve_once_inside_the_kubelet_directory(tmp_path: Path) -> None:
    real = tmp_path / "real-kubelet"
    (real / "pods").mkdir(parents=True)
    os.symlink(real, tmp_path / "kubelet")
    os.symlink(tmp_path, real / "escape")
    os.symlink(real / "pods", real / "pods-link")
    confine = Confinement(tmp_path / "kubelet")
    assert confine.root == real
    inside = confine.resolve(str(tmp_path / "kubelet" / "pods-link" / "x"), "p")
    assert inside == real / "pods" / "x"
    for bad in (
        "relative",
        str(tmp_path / "kubelet"),  # the root itself
        str(tmp_path / "kubelet" / ".." / "x"),
        str(tmp_path / "kubelet" / "escape" / "x"),  # a symlink out
        str(tmp_path / "elsewhere"),
        str(tmp_path / "kubelet" / "a\nb"),
        str(tmp_path / "kubelet" / ("n" * 256)),
        "/" + "a/" * 2100,
    ):
        with pytest.raises(PathRefused):
            confine.resolve(bad, "p")


@given(st.text(max_size=60))
def test_no_path_resolves_outside_the_root(text: str) -> None:
    confine = Confinement(Path("/var/lib/kubelet"))
    for value in (text, "/var/lib/kubelet/" + text):
        try:
            resolved = confine.resolve(value, "p")
        except PathRefused:
            continue
        assert resolved.is_relative_to(confine.root) and resolved != confine.root


# --- messages ------------------------------------------------------------------------------


def test_request_text_is_escaped_and_cut() -> None:
    assert shown("a\nb") == "'a\\nb'"
    long = shown("x" * 100_000)
    assert len(long) < 200 and long.endswith("(+99872 chars)")
    message = bounded("one\ntwo\x1b[31m" + "y" * 10_000)
    assert "\n" not in message and "\x1b" not in message and len(message) == MAX_MESSAGE


# --- records -------------------------------------------------------------------------------


def _record() -> Record:
    return Record(
        VID,
        "loop",
        "/var/lib/kubelet/staging/x",
        False,
        {"volume_id": VID, "nqn": "nqn.2000-02.com.mikrotik:" + VID},
        fs_type="ext4",
        targets={"/var/lib/kubelet/pods/p/x": Published(False, Mode.SINGLE_NODE_WRITER, False)},
    )


def test_records_round_trip_and_older_ones_still_read(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.save(_record())
    assert store.load(VID) == _record()
    assert [p.name for p in tmp_path.iterdir()] == [f"{VID}.json"]  # no temporary left
    older = {k: v for k, v in json.loads((tmp_path / f"{VID}.json").read_text()).items()}
    for key in ("targets", "device", "kind", "version", "mode", "read_only", "device_ro"):
        older.pop(key)
    (tmp_path / f"{VID}.json").write_text(json.dumps(older))
    assert store.load(VID) == Record(**{**older})  # a first-version record reads


def test_unreadable_records_are_moved_aside_and_reported(tmp_path: Path) -> None:
    reported: list[tuple[str, str]] = []
    store = RecordStore(tmp_path, lambda vid, path, moved, why: reported.append((vid, why)))
    for body in ("{", "[]", '{"volume_id": "../x"}', json.dumps({"volume_id": "vol-" + "0" * 32})):
        (tmp_path / f"{VID}.json").write_text(body)
        assert store.load(VID) is None
    (tmp_path / "notes.json").write_text("{}")
    assert store.volume_ids() == []
    assert len(list((tmp_path / "unreadable").iterdir())) == 5
    assert len(reported) == 5 and reported[-1][0] == "notes"
    with pytest.raises(ValueError):
        store.path("../../tmp/victim")  # ids that are not the driver's never reach the disk
