"""The mutation harness itself works (`make mutate` is opt-in; this keeps it honest).

Three mutants through the real runner, each against two quick tests of the hooks: a backoff
step doubled and the stale-clearing guard negated must be killed; a change that alters no
behaviour (a comment) must be reported as surviving. Plus the generator's own promises.
"""

from __future__ import annotations

import ast
from dataclasses import replace

from .mutants import ROOT, Mutant, mutants_of
from .run import report, run

CONNECTION = ROOT / "src/rdscsi/machines/connection.py"
ATTACHMENT = ROOT / "src/rdscsi/machines/attachment.py"
QUICK = [
    "tests/machines/test_hooks.py::test_reconnect_metrics_and_events",
    "tests/machines/test_hooks.py::test_stale_clear_counts_and_reports",
]


def _one(mutants: list[Mutant], operator: str, original: str, mutated: str) -> Mutant:
    found = [
        m
        for m in mutants
        if m.operator == operator and m.original.startswith(original) and mutated in m.mutated
    ]
    assert len(found) == 1, [m.key for m in found]
    return found[0]


def test_killed_and_survived_are_told_apart() -> None:
    step = _one(mutants_of(CONNECTION), "constant", "BACKOFF_STEPS =", "BACKOFF_STEPS = (2.0, 2.0,")
    guard = _one(
        mutants_of(ATTACHMENT),
        "negate-guard",
        'stale.to(detached, cond="clearable"',
        'unless="clearable"',
    )
    text = CONNECTION.read_text()
    noop = replace(
        step,
        description="a comment added",
        source=text + "# a comment changes nothing\n",
        mutated="# a comment changes nothing",
    )
    results = run([step, guard, noop], tests=lambda m: QUICK, regenerate=False)
    status = {r.mutant.key: (r.status, r.killer) for r in results}
    assert status[step.key] == ("killed", QUICK[0]), status
    assert status[guard.key] == ("killed", QUICK[1]), status
    assert status[noop.key] == ("survived", ""), status
    rep = report(results, {})
    assert (rep["killed"], rep["survived"], rep["kill_rate"]) == (2, 1, 66.67)
    # the sources here were never touched
    assert CONNECTION.read_text() == text


def test_every_mutant_is_a_real_change_of_the_module() -> None:
    for path in (CONNECTION, ATTACHMENT, ROOT / "src/rdscsi/control/derive.py"):
        original = ast.dump(ast.parse(path.read_text()))
        mutants = mutants_of(path)
        assert mutants
        keys = [m.key for m in mutants]
        assert len(keys) == len(set(keys))  # the allow-list can name each one
        for m in mutants:
            assert ast.dump(ast.parse(m.source)) != original, m.key


def test_the_operators_reach_the_declarations() -> None:
    ops = {m.operator for m in mutants_of(CONNECTION)}
    assert {
        "retarget",
        "delete-transition",
        "drop-hook",
        "constant",
        "jitter-sign",
        "drop-action-stmt",
    } <= ops
    ops = {m.operator for m in mutants_of(ATTACHMENT)}
    assert {"drop-guard", "negate-guard", "drop-conjunct", "compare"} <= ops
    # `mark_lost` dropped from `lost` is a mutant (a survivor once)
    assert any(
        m.operator == "drop-hook" and "mark_lost" in m.original and "mark_lost" not in m.mutated
        for m in mutants_of(CONNECTION)
    )


def test_allow_list_names_live_mutants() -> None:
    from .run import load_allow_list

    allowed = load_allow_list()
    files = {k.split("::", 1)[0] for k in allowed}
    live = {m.key for f in files for m in mutants_of(ROOT / f)}
    assert set(allowed) <= live, sorted(set(allowed) - live)
    assert all(reason for reason in allowed.values())


def test_module_paths_resolve() -> None:
    from .run import tests_for

    for rel in ("machines/attachment.py", "hooks/metrics.py", "control/reconcile.py"):
        tests = tests_for(f"src/rdscsi/{rel}")
        assert tests and all((ROOT / t).exists() for t in tests)
