"""`rdscsi diagrams` writes specs/ and `--check` catches drift, naming the file.

The pictures merge the transitions between two states into one edge and are rendered by
graphviz; the SVG check must catch a stale picture and never fail because another graphviz
or other fonts are installed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rdscsi.cli import main
from rdscsi.machines import MACHINES, compile_machine, diagrams
from rdscsi.machines.diagrams import edges, expected_files, expected_text

SPECS = Path(__file__).resolve().parents[2] / "specs"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")


def test_specs_are_current() -> None:
    assert main(["diagrams", "--check", "--out", str(SPECS)]) == 0


def _edges_of(dot: str) -> list[tuple[str, str, list[str]]]:
    out = []
    for m in re.finditer(r'^  "(\w+)" -> "(\w+)" \[label="(.*)"\];$', dot, re.M):
        out.append((m.group(1), m.group(2), m.group(3).split("\\l")[:-1]))
    return out


def test_every_transition_is_in_the_table_and_on_its_edge() -> None:
    files = expected_text()
    for cls in MACHINES:
        d = compile_machine(cls)
        md, dot = files[f"{d.name}.md"], files[f"{d.name}.dot"]
        drawn = {(s, t): lines for s, t, lines in _edges_of(dot)}
        seen: set[tuple[str, str]] = set()
        for t in d.transitions:
            assert f"| {t.index} | {t.source} | {t.event} |" in md
            # an unguarded alternative after others of its event is their `else`
            guard = t.guard_text if t.conds else ("else" if (t.source, t.event) in seen else "")
            seen.add((t.source, t.event))
            line = t.event + (f" [{guard}]" if guard else "")
            line += f" / {', '.join(t.hooks)}" if t.hooks else ""
            assert line in drawn[(t.source, t.target)], (t, drawn[(t.source, t.target)])
            for hook in t.hooks:
                assert hook in md


def test_parallel_transitions_share_one_edge_and_self_loops_keep_every_label() -> None:
    for cls in MACHINES:
        d = compile_machine(cls)
        drawn = _edges_of(expected_text()[f"{d.name}.dot"])
        pairs = [(s, t) for s, t, _ in drawn]
        assert len(pairs) == len(set(pairs)), f"{d.name}: two edges between the same states"
        for source, target, lines in drawn:
            wanted = [t for t in d.transitions if (t.source, t.target) == (source, target)]
            assert len(lines) == len(set(lines)) <= len(wanted)
            assert {x.split(" ")[0] for x in lines} == {t.event for t in wanted}


def test_the_attachment_conflict_loops_are_labelled() -> None:
    # Mermaid dropped these (parallel self-loops): the reason pictures are graphviz now
    d = compile_machine(next(c for c in MACHINES if c.machine_name == "attachment"))
    loops = {s: lines for s, t, lines in edges(d) if s == t}
    for state in ("attached", "migrating", "stale"):
        assert "publish [else] / AttachmentConflict" in loops[state], loops[state]


def test_markdown_shows_the_svg_not_mermaid() -> None:
    for name, text in expected_text().items():
        if name.endswith(".md"):
            stem = name.removesuffix(".md")
            assert f"]({stem}.svg)" in text and "mermaid" not in text


def test_check_names_the_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "specs"
    shutil.copytree(SPECS, out)
    assert main(["diagrams", "--check", "--out", str(out)]) == 0
    target = out / "attachment.md"
    target.write_text(target.read_text().replace("| stale |", "| limbo |", 1))
    (out / "node.dot").unlink()
    assert main(["diagrams", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "attachment.md" in err and "node.dot: missing" in err
    assert "connection.md" not in err


def _stamped(svg: Path, **fields: str) -> None:
    text = svg.read_text()
    m = diagrams.SVG_STAMP.search(text)
    assert m is not None
    stamp = m.group(0)
    for key, value in fields.items():
        stamp = stamp.replace(m.group(key), value)
    svg.write_text(text.replace(m.group(0), stamp))


def test_an_svg_drawn_from_another_dot_is_stale_on_any_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "specs"
    shutil.copytree(SPECS, out)
    _stamped(out / "node.svg", source="0" * 64, renderer="f" * 16)
    monkeypatch.setattr(diagrams.shutil, "which", lambda name: None)  # no graphviz at all
    diagrams.renderer.cache_clear()
    try:
        assert main(["diagrams", "--check", "--out", str(out)]) == 1
    finally:
        diagrams.renderer.cache_clear()
    err = capsys.readouterr().err
    assert f"{out / 'node.svg'}: drawn from an older node.dot" in err


def test_another_renderer_is_never_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "specs"
    shutil.copytree(SPECS, out)
    # drawn elsewhere (other graphviz or fonts): bytes differ, the source is the same
    svg = out / "attachment.svg"
    _stamped(svg, renderer="f" * 16, version="graphviz version 99.0.0 (0)")
    svg.write_text(svg.read_text().replace('font-size="10.00"', 'font-size="10.50"'))
    assert main(["diagrams", "--check", "--out", str(out)]) == 0
    assert "drawn by another graphviz or fonts (graphviz version 99.0.0 (0))" in (
        capsys.readouterr().out
    )
    monkeypatch.setattr(diagrams.shutil, "which", lambda name: None)
    diagrams.renderer.cache_clear()
    try:
        assert main(["diagrams", "--check", "--out", str(out)]) == 0
        assert "graphviz not installed; checked against attachment.dot only" in (
            capsys.readouterr().out
        )
    finally:
        diagrams.renderer.cache_clear()


@needs_dot
def test_same_renderer_checks_the_svg_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "specs"
    shutil.copytree(SPECS, out)
    stamp = diagrams._stamp(out / "node.svg")
    assert stamp is not None
    if stamp["renderer"] != diagrams.renderer()[0]:
        pytest.skip("specs/ were drawn by another graphviz or fonts than this machine's")
    svg = out / "node.svg"
    svg.write_text(svg.read_text().replace("not_ready", "not_raedy", 1))
    assert main(["diagrams", "--check", "--out", str(out)]) == 1
    assert "node.svg: differs from graphviz's rendering of node.dot" in capsys.readouterr().err


@needs_dot
def test_rendering_is_byte_stable() -> None:
    d = compile_machine(MACHINES[0])
    dot = diagrams.render_dot(d)
    assert diagrams.render_svg(d.name, dot) == diagrams.render_svg(d.name, dot)


@needs_dot
def test_write_keeps_an_svg_drawn_from_the_same_dot(tmp_path: Path) -> None:
    out = tmp_path / "specs"
    shutil.copytree(SPECS, out)
    svg = out / "connection.svg"
    _stamped(svg, renderer="f" * 16)  # as if drawn by another graphviz: no churn
    before = svg.read_text()
    assert diagrams.write(out) == []
    assert svg.read_text() == before
    (out / "connection.dot").write_text("stale")  # the .dot is rewritten; its SVG is drawn
    _stamped(svg, source="0" * 64)
    assert set(diagrams.write(out)) == {out / "connection.dot", svg}
    assert diagrams.check(out).stale == []


@needs_dot
def test_written_specs_match_repository_copy(tmp_path: Path) -> None:
    assert main(["diagrams", "--out", str(tmp_path / "s")]) == 0
    files = expected_files()
    for name, text in files.items():
        written = (tmp_path / "s" / name).read_text()
        if name.endswith(".svg"):
            fresh, committed = diagrams._stamp(tmp_path / "s" / name), diagrams._stamp(SPECS / name)
            assert fresh is not None and committed is not None
            assert fresh["source"] == committed["source"]
        else:
            assert written == (SPECS / name).read_text() == text


def test_diagrams_without_graphviz_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diagrams.shutil, "which", lambda name: None)
    diagrams.renderer.cache_clear()
    try:
        assert main(["diagrams", "--out", str(tmp_path / "s")]) == 1
    finally:
        diagrams.renderer.cache_clear()
    assert "apt-get install graphviz" in capsys.readouterr().err
