"""The remove-by-pattern commands match our files for one slot and nothing else."""

from __future__ import annotations

import re

import pytest

from rdscsi.io.rds.commands import OWNED_SUFFIX, CommandBuilder
from rdscsi.io.rds.errors import InvalidValueError

B = CommandBuilder()


def _pattern(slot: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape("storage-pool/k8s/vol/" + slot) + OWNED_SUFFIX)


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("storage-pool/k8s/vol/pvc-1.img", True),
        ("storage-pool/k8s/vol/pvc-1.FROM.volume.pvc-2.img", True),
        ("storage-pool/k8s/vol/pvc-1.2.img", False),  # slot pvc-1.2
        ("storage-pool/k8s/vol/pvc-10.img", False),
        ("storage-pool/k8s/vol/pvc-1.img.bak", False),
        ("storage-pool/other/pvc-1.img", False),
        ("xstorage-pool/k8s/vol/pvc-1.img", False),
    ],
)
def test_owned_suffix(name: str, matches: bool) -> None:
    assert bool(_pattern("pvc-1").match(name)) is matches


def test_owned_commands() -> None:
    disk = B.disk_remove_owned("pvc-1", "/storage-pool/k8s/vol/")
    assert disk.line == (
        '/disk remove [find slot="pvc-1" '
        'file-path~"^/storage-pool/k8s/vol/pvc-1(\\\\.[A-Z][A-Za-z0-9._-]*)\\?\\\\.img\\$"]'
    )
    files = B.file_remove_owned("pvc-1", "/storage-pool/k8s/vol/")
    assert files.line.startswith('/file remove [find name~"^storage-pool/k8s/vol/pvc-1(')
    assert disk.mutating and files.mutating
    with pytest.raises(InvalidValueError, match="directory"):
        B.file_remove_owned("pvc-1", "/storage-pool/k8s/vol")
    with pytest.raises(InvalidValueError, match="slot"):
        B.disk_remove_owned('pvc-1"]; /system reboot', "/storage-pool/k8s/vol/")
