"""The allowlists for mount options and mkfs options: accepted and rejected, with reasons."""

from __future__ import annotations

import pytest

from rdscsi.io.host.mkfs import (
    InvalidFsOptionError,
    UnsupportedFsError,
    validate_mkfs_options,
)
from rdscsi.io.host.mounts import InvalidMountOptionError, validate_mount_options

ACCEPTED = [
    "ro",
    "rw",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "lazytime",
    "discard",
    "nodiscard",
    "sync",
    "async",
    "dirsync",
    "noexec",
    "nosuid",
    "nodev",
    "errors=continue",
    "errors=remount-ro",
    "data=ordered",
    "data=journal",
    "data=writeback",
    "barrier=0",
    "barrier=1",
    "nobarrier",
    "commit=30",
    "inode64",
    "logbsize=256k",
    "logbufs=8",
    "noquota",
    "usrquota",
    "grpquota",
    "prjquota",
    "nouuid",
]

# (option, text the error must contain besides the option itself)
REJECTED = [
    ("suid", "privilege"),
    ("dev", "privilege"),
    ("exec", "noexec"),
    ("defaults", "suid"),
    ("bind", "driver"),
    ("rbind", "driver"),
    ("remount", "driver"),
    ("move", "driver"),
    ("shared", "propagation"),
    ("rshared", "propagation"),
    ("slave", "propagation"),
    ("rslave", "propagation"),
    ("private", "propagation"),
    ("unbindable", "propagation"),
    ("loop", "loop"),
    ("offset=4096", "loop"),
    ("X-mount.mkdir", "helper"),
    ("x-systemd.automount", "helper"),
    ("uid=1000", "ownership"),
    ("gid=1000", "ownership"),
    ("context=system_u:object_r:container_file_t:s0", "SELinux"),
    ("fscontext=x", "SELinux"),
    ("rootcontext=x", "SELinux"),
    ("errors=panic", "panic"),
    ("journal_path=/dev/sdb", "device"),
    ("usrjquota=/x", "quota file"),
    ("user", "user mounts"),
    ("noatime,suid", "','"),
    ("no atime", "whitespace"),
    ("noatime\t", "control"),
    ("nöatime", "non-ASCII"),
    ("", "empty"),
    ("errors=explode", "bad value"),
    ("commit=-1", "bad value"),
    ("barrier=2", "bad value"),
    ("frobnicate", "unknown option"),
    ("frob=1", "unknown option 'frob'"),
    ("NOATIME", "unexpected characters"),
    ("data=../../etc", "unexpected characters"),
]


@pytest.mark.parametrize("option", ACCEPTED)
def test_accepted_mount_options(option: str) -> None:
    assert validate_mount_options([option]) == [option]


@pytest.mark.parametrize(("option", "why"), REJECTED)
def test_rejected_mount_options_name_the_option(option: str, why: str) -> None:
    with pytest.raises(InvalidMountOptionError) as caught:
        validate_mount_options(["noatime", option])
    assert caught.value.option == option
    assert repr(option) in str(caught.value)
    assert why in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_duplicates_dropped_order_kept() -> None:
    assert validate_mount_options(["noatime", "ro", "noatime", "discard"]) == [
        "noatime",
        "ro",
        "discard",
    ]
    assert validate_mount_options([]) == []


def test_ro_with_rw_is_refused() -> None:
    # mount takes the last of the two: their order must not decide about data safety.
    with pytest.raises(InvalidMountOptionError, match="conflicts with 'ro'"):
        validate_mount_options(["rw", "noatime", "ro"])


def test_a_bare_string_is_a_caller_mistake() -> None:
    with pytest.raises(TypeError):
        validate_mount_options("noatime")


def test_non_string_option() -> None:
    with pytest.raises(InvalidMountOptionError, match="not a string"):
        validate_mount_options([3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("fs_type", "options", "argv"),
    [
        ("ext4", "", []),
        (
            "ext4",
            "-E lazy_itable_init=1,lazy_journal_init=1 -m 1",
            ["-E", "lazy_itable_init=1,lazy_journal_init=1", "-m", "1"],
        ),
        ("ext4", "-b 4096  -i 16384 -N 1000", ["-b", "4096", "-i", "16384", "-N", "1000"]),
        ("ext4", "-L data -O ^metadata_csum -j", ["-L", "data", "-O", "^metadata_csum", "-j"]),
        (
            "xfs",
            "-m crc=1 -i size=512 -n ftype=1",
            ["-m", "crc=1", "-i", "size=512", "-n", "ftype=1"],
        ),
        ("xfs", "-L data -K -d su=64k,sw=4", ["-L", "data", "-K", "-d", "su=64k,sw=4"]),
    ],
)
def test_accepted_mkfs_options(fs_type: str, options: str, argv: list[str]) -> None:
    assert validate_mkfs_options(fs_type, options) == argv


@pytest.mark.parametrize(
    ("fs_type", "options", "rejected"),
    [
        ("ext4", "-n", "-n"),  # dry run: would "succeed" without formatting
        ("ext4", "-S", "-S"),
        ("ext4", "-d /etc", "/etc"),  # any path is refused by the character set
        ("ext4", "-d root", "-d"),
        ("ext4", "-E root_owner=0:0;reboot", "root_owner=0:0;reboot"),
        ("ext4", "-L", "-L"),  # value missing
        ("ext4", "-L -m", "-m"),  # a flag where the value should be
        ("ext4", "-m1", "-m1"),  # flag and value must be separate tokens
        ("ext4", "-e panic", "-e"),
        ("ext4", "$(reboot)", "$(reboot)"),
        ("xfs", "-N", "-N"),
        ("xfs", "-p proto", "-p"),
        ("xfs", "-r size=1g", "-r"),
        ("xfs", "-d name=other", "name=other"),
        ("xfs", "-l logdev=sdb", "logdev=sdb"),
        ("xfs", "-d file,size=1g", "file,size=1g"),
        ("xfs", "-O ^x", "-O"),  # an ext4 flag
        ("ext4", "-b 65536", "65536"),  # blocks larger than a page never mount
        ("ext4", "-b 64k", "64k"),
        ("ext4", "-E offset=4096", "offset=4096"),  # would look blank: formatted again
        ("ext4", "-J device=LABEL=j", "device=LABEL=j"),  # a journal elsewhere
        ("ext4", "-O journal_dev", "journal_dev"),
        ("ext4", "-O ^has_journal,orphan_file", "^has_journal,orphan_file"),  # managed
        ("xfs", "-d file=1", "file=1"),
        ("xfs", "-b size=65536", "size=65536"),
        ("xfs", "-b log=16", "log=16"),
        ("xfs", "-i nrext64=1", "nrext64=1"),  # Linux 5.10 cannot mount it
        (
            "xfs",
            "-m uuid=00000000-0000-0000-0000-000000000001",
            "uuid=00000000-0000-0000-0000-000000000001",
        ),
        ("xfs", "-l internal=0", "internal=0"),
    ],
)
def test_rejected_mkfs_options_name_the_token(fs_type: str, options: str, rejected: str) -> None:
    with pytest.raises(InvalidFsOptionError) as caught:
        validate_mkfs_options(fs_type, options)
    assert caught.value.option == rejected
    assert repr(rejected) in str(caught.value)


def test_mkfs_options_for_an_unknown_fs_type() -> None:
    with pytest.raises(UnsupportedFsError, match="'btrfs'"):
        validate_mkfs_options("btrfs", "")
