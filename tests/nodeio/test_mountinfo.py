"""mountinfo parsing and the pure queries, on recorded tables (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.io.host.mounts import (
    Mount,
    device_of_mount,
    is_mount_point,
    mounts_at,
    parse_mountinfo,
    read_mounts,
    top_mount,
)

FIXTURES = Path(__file__).parent / "fixtures"
NODE = (FIXTURES / "mountinfo_node.txt").read_text()
EDGE = (FIXTURES / "mountinfo_edge.txt").read_text()
KUBELET = "/var/lib/kubelet"
STAGING = f"{KUBELET}/plugins/kubernetes.io/csi/rdscsi.example.com/4f1e8a0c2b/globalmount"
PUBLISH = (
    f"{KUBELET}/pods/7a3b9c1e-1111-4c2d-9e8f-0123456789ab/volumes/kubernetes.io~csi/pvc-5d1f/mount"
)


def by_id(mounts: list[Mount], mount_id: int) -> Mount:
    return next(m for m in mounts if m.mount_id == mount_id)


def test_node_table_fields() -> None:
    mounts = parse_mountinfo(NODE)
    assert len(mounts) == 15
    staging = by_id(mounts, 1205)
    assert staging == Mount(
        mount_id=1205,
        parent_id=27,
        major_minor="259:5",
        root="/",
        mount_point=Path(STAGING),
        options=("rw", "noatime"),
        fs_type="ext4",
        source="/dev/nvme1n1",
        super_options=("rw",),
        optional_fields=("shared:612",),
    )
    assert not staging.read_only


def test_binds_keep_the_device_and_show_their_root() -> None:
    mounts = parse_mountinfo(NODE)
    publish, subpath = by_id(mounts, 1240), by_id(mounts, 1241)
    assert (publish.major_minor, publish.root) == ("259:5", "/")
    assert (subpath.major_minor, subpath.root) == ("259:5", "/data/sub")
    # A bind of the device node shows devtmpfs, its number and the node's path in it.
    block = by_id(mounts, 1251)
    assert (block.fs_type, block.major_minor, block.root) == ("devtmpfs", "0:5", "/nvme2n1")
    assert block.read_only
    assert block.super_options[0] == "rw"


def test_octal_escapes_are_decoded_everywhere() -> None:
    mounts = parse_mountinfo(EDGE)
    assert by_id(mounts, 40).mount_point == Path("/mnt/my disk")
    tricky = by_id(mounts, 41)
    assert tricky.mount_point == Path("/mnt/tab\tand\nnewline\\back")
    assert tricky.source == "/dev/disk/by-label/a b"
    assert by_id(mounts, 42).mount_point == Path("/srv/block target")
    assert by_id(mounts, 43).root == "/sub dir"


def test_optional_fields_end_at_the_separator() -> None:
    mounts = parse_mountinfo(EDGE)
    bind = by_id(mounts, 42)
    assert bind.optional_fields == ("master:2", "propagate_from:1")
    assert bind.fs_type == "devtmpfs"
    assert by_id(mounts, 40).optional_fields == ()


def test_quoted_commas_stay_in_one_option() -> None:
    labelled = by_id(parse_mountinfo(EDGE), 60)
    assert labelled.super_options == (
        "rw",
        'context="system_u:object_r:container_file_t:s0:c1,c2"',
        "size=64k",
    )


def test_empty_source_field() -> None:
    mount = by_id(parse_mountinfo(EDGE), 61)
    assert (mount.fs_type, mount.source, mount.super_options) == ("fsopen", "", ("rw",))


def test_non_utf8_path_round_trips_to_the_os_path() -> None:
    raw = b"70 26 7:9 / /mnt/caf\xe9\\040x rw - ext4 /dev/loop9 rw\n"
    (mount,) = parse_mountinfo(raw.decode("utf-8", "surrogateescape"))
    assert bytes(mount.mount_point) == b"/mnt/caf\xe9 x"


@pytest.mark.parametrize(
    "line",
    [
        "1 2 7:3 / /mnt rw ext4 /dev/loop3 rw",  # no separator
        "1 2 7:3 / /mnt rw - ext4 /dev/loop3",  # too few fields after it
        "x 2 7:3 / /mnt rw - ext4 /dev/loop3 rw",  # bad id
        "1 2 seven / /mnt rw - ext4 /dev/loop3 rw",  # bad major:minor
    ],
)
def test_malformed_lines_raise_with_the_line_number(line: str) -> None:
    text = "1 0 7:1 / / rw - ext4 /dev/loop1 rw\n" + line + "\n"
    with pytest.raises(ValueError, match="line 2"):
        parse_mountinfo(text)


def test_stacked_mounts_bottom_first_last_wins() -> None:
    mounts = parse_mountinfo(EDGE)
    assert [m.source for m in mounts_at("/mnt/stack", mounts)] == ["first", "second", "/dev/loop3"]
    top = top_mount("/mnt/stack", mounts)
    assert top is not None and top.mount_id == 52
    # The stacking comes from parent links, not from the order of the lines.
    shuffled = list(reversed(mounts))
    assert [m.mount_id for m in mounts_at("/mnt/stack", shuffled)] == [50, 51, 52]


def test_is_mount_point_and_device_of_mount_on_a_table() -> None:
    mounts = parse_mountinfo(NODE)
    assert is_mount_point(STAGING, mounts)
    assert is_mount_point(Path(PUBLISH), mounts)
    assert not is_mount_point(STAGING + "/lost+found", mounts)
    assert device_of_mount(STAGING, mounts) == "259:5"
    assert device_of_mount(PUBLISH, mounts) == "259:5"
    assert device_of_mount("/nowhere", mounts) is None


def test_read_mounts_reads_this_process_table() -> None:
    mounts = read_mounts()
    assert any(m.mount_point == Path("/") for m in mounts)
    assert any(m.mount_point == Path("/proc") for m in mounts)


def test_read_mounts_from_a_file(tmp_path: Path) -> None:
    copy = tmp_path / "mountinfo"
    copy.write_text(EDGE)
    assert read_mounts(copy) == parse_mountinfo(EDGE)
