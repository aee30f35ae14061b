"""`rdscsi diagrams` writes specs/ and `--check` catches drift, naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rdscsi.cli import main
from rdscsi.machines import MACHINES, compile_machine
from rdscsi.machines.diagrams import expected_files

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_specs_are_current() -> None:
    assert main(["diagrams", "--check", "--out", str(SPECS)]) == 0


def test_every_transition_is_in_table_and_graphs() -> None:
    files = expected_files()
    for cls in MACHINES:
        d = compile_machine(cls)
        md, dot = files[f"{d.name}.md"], files[f"{d.name}.dot"]
        for t in d.transitions:
            assert f"| {t.index} | {t.source} | {t.event} |" in md
            assert f"    {t.source} --> {t.target} : {t.event}" in md
            assert f'"{t.source}" -> "{t.target}" [label="{t.event}' in dot
            for hook in t.hooks:
                assert hook in md


def test_check_names_the_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "specs"
    assert main(["diagrams", "--out", str(out)]) == 0
    assert main(["diagrams", "--check", "--out", str(out)]) == 0
    target = out / "attachment.md"
    target.write_text(target.read_text().replace("| stale |", "| limbo |", 1))
    (out / "node.dot").unlink()
    assert main(["diagrams", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "attachment.md" in err and "node.dot: missing" in err
    assert "connection.md" not in err


def test_written_specs_match_repository_copy(tmp_path: Path) -> None:
    shutil.copytree(SPECS, tmp_path / "s")
    assert main(["diagrams", "--out", str(tmp_path / "s")]) == 0
    for name in expected_files():
        assert (tmp_path / "s" / name).read_text() == (SPECS / name).read_text()
