"""How filesystems are made: the one allowlist for mkfs options, minimum sizes, and the
options that keep every filesystem mountable by the oldest kernel the driver supports.

The controller refuses a StorageClass's ``mkfsOptions`` at CreateVolume with
:func:`validate_mkfs_options`, and the node checks them again with the same function before
running mkfs: an option that passes one passes the other, so nothing accepted at create
time can break staging later.

Oldest kernel: **Linux 5.10 LTS** (:data:`KERNEL_FLOOR`). A volume outlives the node that
formatted it (a pod moves, a node is replaced, a KubeVirt VM migrates), so a filesystem
must mount on the oldest node of a cluster, not only on the one running mkfs. Newer mkfs
releases switch on features older kernels refuse to mount: xfsprogs 6.5 made ``nrext64``
(kernel 5.19) the default, and later releases add ``exchange`` (6.10), ``parent`` pointers
and ``metadir`` (6.12/6.13). :func:`compat_argv` turns off every such feature that the
installed mkfs knows (it reads mkfs.xfs's own usage text, so the options never name a
feature an older mkfs would reject). ext4 needs one: e2fsprogs 1.47 may enable
``orphan_file`` (kernel 5.15); an old kernel mounts such a filesystem read-only after an
unclean shutdown, so it is turned off where mke2fs knows it. Every other feature current
mke2fs and mkfs.xfs enable by default (xfs ``bigtime``/``inobtcount`` since xfsprogs 5.15,
``reflink``, ``finobt``, ``sparse``, ``rmapbt``; ext4 ``metadata_csum``, ``64bit``...) is
supported by 5.10. The options the driver manages are refused in ``mkfsOptions``.

Block sizes are capped at 4096 bytes: a filesystem block larger than the page size cannot
be mounted (before Linux 6.12 for xfs, and ever for ext4), and 4 KiB is the page size of
the nodes with the smallest pages (x86-64, most arm64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

SUPPORTED: Final = ("ext4", "xfs")
KERNEL_FLOOR: Final = "5.10"
MAX_BLOCK_SIZE: Final = 4096
MIB: Final = 1 << 20
# The smallest volume each filesystem is made on: mkfs.xfs refuses anything under 300 MiB
# (xfsprogs 5.19 and later); ext4 could go lower, but a journal and room to grow need more
# than a few blocks, and 16 MiB formats with every option the allowlist passes.
MINIMUM_SIZE: Final = {"ext4": 16 * MIB, "xfs": 300 * MIB}

# Features newer than KERNEL_FLOOR that some mkfs.xfs release enables by default, with the
# kernel that first mounts them.
XFS_TOO_NEW: Final = {"nrext64": "5.19", "exchange": "6.10", "parent": "6.12", "metadir": "6.13"}
EXT4_TOO_NEW: Final = {"orphan_file": "5.15"}


class UnsupportedFsError(ValueError):
    """A filesystem type this driver does not create or grow."""

    def __init__(self, fs_type: str) -> None:
        self.fs_type = fs_type
        super().__init__(
            f"unsupported filesystem type {fs_type!r} (supported: {', '.join(SUPPORTED)})"
        )


class InvalidFsOptionError(ValueError):
    """A mkfs option outside the allowlist; ``option`` is the rejected token."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"mkfs option {option!r} rejected: {reason}")


# A token never contains "/" (no paths: mkfs -d, -p, -r, journal devices...) nor anything
# a shell would read; "^" is allowed because ext4 feature negation needs it (-O ^has_journal).
_TOKEN: Final = re.compile(r"[A-Za-z0-9=,._:^-]+")
# Flag -> does it take a value. Flags absent here are refused: dry runs (-n for ext4, -N
# for xfs) that would "succeed" without formatting, -S (rewrites superblocks only), -d/-p
# (populate from a path), -r (realtime device), -e/-U (errors=panic, duplicate UUIDs)...
_MKFS_FLAGS: Final[dict[str, dict[str, bool]]] = {
    "ext4": {
        "-b": True,
        "-C": True,
        "-E": True,
        "-G": True,
        "-g": True,
        "-i": True,
        "-I": True,
        "-J": True,
        "-L": True,
        "-m": True,
        "-N": True,
        "-O": True,
        "-T": True,
        "-j": False,
    },
    "xfs": {
        "-b": True,
        "-d": True,
        "-i": True,
        "-l": True,
        "-L": True,
        "-m": True,
        "-n": True,
        "-s": True,
        "-K": False,
    },
}
# Sub-options (xfs, and ext4's -E/-J key=value lists) refused, with why.
_ELSEWHERE = "would put the filesystem or its log somewhere other than the volume"
_XFS_REFUSED: Final = {
    "name": _ELSEWHERE,
    "file": _ELSEWHERE,
    "logdev": _ELSEWHERE,
    "rtdev": _ELSEWHERE,
    "internal": _ELSEWHERE,
    "uuid": "a fixed UUID makes every volume formatted with it collide",
    **{
        feature: f"managed by the driver: Linux {KERNEL_FLOOR} cannot mount it (needs {kernel})"
        for feature, kernel in XFS_TOO_NEW.items()
    },
}
_EXT4_REFUSED_SUB: Final = {
    "offset": "the filesystem would not start at the beginning of the volume, so the volume "
    "would look blank and be formatted again",
    "device": _ELSEWHERE,
}
_EXT4_REFUSED_FEATURES: Final = {
    "journal_dev": "makes an external journal device, not a filesystem",
    **{
        feature: f"managed by the driver: Linux {KERNEL_FLOOR} cannot mount it cleanly "
        f"(needs {kernel})"
        for feature, kernel in EXT4_TOO_NEW.items()
    },
}
_SIZE: Final = re.compile(r"([0-9]{1,10})([kK])?")


def _block_size(text: str) -> int | None:
    match = _SIZE.fullmatch(text)
    if match is None:
        return None
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def _check_value(fs_type: str, flag: str, value: str) -> None:
    pairs = [part.partition("=") for part in value.split(",")]
    if fs_type == "xfs":
        for key, _, sub in pairs:
            if key in _XFS_REFUSED:
                raise InvalidFsOptionError(value, f"sub-option {key!r} {_XFS_REFUSED[key]}")
            if flag == "-b" and key == "size":
                _check_block_size(value, _block_size(sub))
            if flag == "-b" and key == "log" and sub.isdigit() and int(sub) > 12:
                raise InvalidFsOptionError(value, f"block size above {MAX_BLOCK_SIZE} bytes")
        return
    if flag == "-b":
        _check_block_size(value, _block_size(value))
    if flag in ("-E", "-J"):
        for key, _, _ in pairs:
            if key in _EXT4_REFUSED_SUB:
                raise InvalidFsOptionError(value, f"{key!r} {_EXT4_REFUSED_SUB[key]}")
    if flag == "-O":
        for key, _, _ in pairs:
            feature = key.lstrip("^")
            if feature in _EXT4_REFUSED_FEATURES:
                raise InvalidFsOptionError(value, f"{feature!r}: {_EXT4_REFUSED_FEATURES[feature]}")


def _check_block_size(value: str, size: int | None) -> None:
    if size is None:
        raise InvalidFsOptionError(value, "block size must be a number of bytes")
    if size > MAX_BLOCK_SIZE:
        raise InvalidFsOptionError(
            value,
            f"block size above {MAX_BLOCK_SIZE} bytes (larger than the page size of most "
            "nodes: such a filesystem cannot be mounted there)",
        )


def validate_mkfs_options(fs_type: str, options: str) -> list[str]:
    """The whitespace-separated ``options`` as argv tokens, checked against the allowlist.

    Each flag is a separate token and its value (if it takes one) the next token, e.g.
    ``"-E lazy_itable_init=1,lazy_journal_init=1 -m 1 -L data"``. Raises
    UnsupportedFsError for an unknown fs type, InvalidFsOptionError naming the token.
    """
    if fs_type not in _MKFS_FLAGS:
        raise UnsupportedFsError(fs_type)
    flags = _MKFS_FLAGS[fs_type]
    tokens = options.split()
    for token in tokens:
        if not _TOKEN.fullmatch(token):
            raise InvalidFsOptionError(token, "characters outside [A-Za-z0-9=,._:^-]")
    result: list[str] = []
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        if flag not in flags:
            raise InvalidFsOptionError(flag, f"not an allowed mkfs.{fs_type} flag")
        result.append(flag)
        i += 1
        if not flags[flag]:
            continue
        if i >= len(tokens):
            raise InvalidFsOptionError(flag, "needs a value")
        value = tokens[i]
        if value.startswith("-"):
            raise InvalidFsOptionError(value, f"value of {flag} starts with '-'")
        _check_value(fs_type, flag, value)
        result.append(value)
        i += 1
    return result


# --------------------------------------------------------------------------- compatibility

_XFS_SECTION: Final = re.compile(r"\[-([a-zA-Z])\s+([^\]]*)\]?")
_WORD: Final = re.compile(r"([a-z0-9_]+)(?==)")
_MKE2FS_VERSION: Final = re.compile(r"mke2fs ([0-9]+)\.([0-9]+)")


@dataclass(frozen=True)
class XfsFeatures:
    """Which option section (``-m``, ``-i``, ``-n``...) each sub-option of the installed
    mkfs.xfs belongs to, read from its usage text."""

    sections: dict[str, str]

    @classmethod
    def from_usage(cls, usage: str) -> XfsFeatures:
        # A section's sub-options may wrap onto following lines: join everything up to
        # the next "[-x" first.
        text = " ".join(line.strip() for line in usage.splitlines())
        sections: dict[str, str] = {}
        for match in _XFS_SECTION.finditer(text):
            for word in _WORD.findall(match.group(2)):
                sections.setdefault(word, match.group(1))
        return cls(sections)


def xfs_compat_argv(features: XfsFeatures) -> list[str]:
    """``-<section> <feature>=0`` for each too-new feature the installed mkfs.xfs knows."""
    by_section: dict[str, list[str]] = {}
    for feature in XFS_TOO_NEW:
        section = features.sections.get(feature)
        if section is not None:
            by_section.setdefault(section, []).append(f"{feature}=0")
    argv: list[str] = []
    for section, parts in sorted(by_section.items()):
        argv += [f"-{section}", ",".join(parts)]
    return argv


def ext4_compat_argv(version_text: str) -> list[str]:
    """``-O ^orphan_file`` when the installed mke2fs (1.47 or later) knows the feature."""
    match = _MKE2FS_VERSION.search(version_text)
    if match is None:
        return []
    version = (int(match.group(1)), int(match.group(2)))
    return ["-O", "^" + ",^".join(EXT4_TOO_NEW)] if version >= (1, 47) else []
