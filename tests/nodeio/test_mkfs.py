"""Filesystems made to mount on Linux 5.10: the options for the installed mkfs, read from
mkfs itself, and what the filesystems it made on this machine carry."""

from __future__ import annotations

import subprocess

from rdscsi.io.host import fs
from rdscsi.io.host.mkfs import (
    XfsFeatures,
    ext4_compat_argv,
    validate_mkfs_options,
    xfs_compat_argv,
)

from .conftest import MiB, Node

# mkfs.xfs's usage as xfsprogs 6.1 prints it (this machine), and as a later release might:
# features move between sections and new ones appear; the options must follow the text.
USAGE_6_1 = """Usage: mkfs.xfs
/* blocksize */\t\t[-b size=num]
/* metadata */\t\t[-m crc=0|1,finobt=0|1,uuid=xxx,rmapbt=0|1,reflink=0|1,
\t\t\t    inobtcount=0|1,bigtime=0|1]
/* inode size */\t[-i perblock=n|size=num,maxpct=n,attr=0|1|2,
\t\t\t    projid32bit=0|1,sparse=0|1,nrext64=0|1]
/* naming */\t\t[-n size=num,version=2|ci,ftype=0|1]
"""
USAGE_LATER = """Usage: mkfs.xfs
/* metadata */\t\t[-m crc=0|1,finobt=0|1,uuid=xxx,rmapbt=0|1,reflink=0|1,
\t\t\t    inobtcount=0|1,bigtime=0|1,metadir=0|1,autofsck=0|1]
/* inode size */\t[-i perblock=n|size=num,maxpct=n,attr=0|1|2,
\t\t\t    projid32bit=0|1,sparse=0|1,nrext64=0|1,exchange=0|1]
/* naming */\t\t[-n size=num,version=2|ci,ftype=0|1,parent=0|1]
"""
USAGE_5_10 = """Usage: mkfs.xfs
/* metadata */\t\t[-m crc=0|1,finobt=0|1,uuid=xxx,rmapbt=0|1,reflink=0|1,
\t\t\t    inobtcount=0|1,bigtime=0|1]
/* inode size */\t[-i log=n|perblock=n|size=num,maxpct=n,attr=0|1|2,
\t\t\t    projid32bit=0|1,sparse=0|1]
"""


def test_xfs_options_follow_what_the_installed_mkfs_knows() -> None:
    assert xfs_compat_argv(XfsFeatures.from_usage(USAGE_6_1)) == ["-i", "nrext64=0"]
    assert xfs_compat_argv(XfsFeatures.from_usage(USAGE_LATER)) == [
        "-i",
        "nrext64=0,exchange=0",
        "-m",
        "metadir=0",
        "-n",
        "parent=0",
    ]
    # an older mkfs.xfs is never handed an option it would reject
    assert xfs_compat_argv(XfsFeatures.from_usage(USAGE_5_10)) == []


def test_ext4_options_follow_the_installed_mke2fs() -> None:
    assert ext4_compat_argv("mke2fs 1.47.0 (5-Feb-2023)") == ["-O", "^orphan_file"]
    assert ext4_compat_argv("mke2fs 1.46.5 (30-Dec-2021)") == []
    assert ext4_compat_argv("garbage") == []


def test_user_options_and_compat_options_never_collide() -> None:
    # the features the driver turns off are refused in mkfsOptions, so mkfs never sees one
    # twice ("-i nrext64 option respecified")
    for feature, section in (("nrext64", "-i"), ("exchange", "-i"), ("metadir", "-m")):
        try:
            validate_mkfs_options("xfs", f"{section} {feature}=1")
        except ValueError as exc:
            assert feature in str(exc)
        else:
            raise AssertionError(feature)


async def test_filesystems_made_here_carry_no_feature_newer_than_the_floor(node: Node) -> None:
    xfs_dev, ext4_dev = node.loop(300 * MiB).device, node.loop(64 * MiB).device
    await fs.make_fs(xfs_dev, "xfs", "-i size=512")  # user options merge with ours
    await fs.make_fs(ext4_dev, "ext4")
    info = subprocess.run(
        ["xfs_db", "-r", "-c", "version", str(xfs_dev)], capture_output=True, text=True
    ).stdout
    assert "NREXT64" not in info.upper() and "EXCHANGE" not in info.upper(), info
    assert "V5" in info  # crc, reflink, sparse... stay
    header = subprocess.run(
        ["dumpe2fs", "-h", str(ext4_dev)], capture_output=True, text=True
    ).stdout
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features"))
    assert "orphan_file" not in features and "metadata_csum" in features
    argv = await fs.compat_argv("xfs")
    assert argv == xfs_compat_argv(
        XfsFeatures.from_usage(subprocess.run(["mkfs.xfs"], capture_output=True, text=True).stderr)
    )
