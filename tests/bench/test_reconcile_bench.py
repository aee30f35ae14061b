"""The sweep figure of bench/reconcile.py, at a small scale: the bench keeps working as the
sweep changes (its own assertions check what a pass did), and prints the figures it names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def reconcile(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_reconcile", BENCH / "reconcile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_reconcile", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "VOLUMES", 200)
    monkeypatch.setattr(module, "NODES_N", 20)
    return module


async def test_the_sweep_figures_are_measured(reconcile: ModuleType) -> None:
    figures = await reconcile.measure_sweep()
    assert set(figures) == {
        "pass_with_sessions_and_sweep_10k_ms",
        "first_pass_with_sessions_and_sweep_10k_ms",
        "of_which_parse_ms",
        "cold_parse_ms",
        "listing_memo_10k_mb",
        "appliance_commands_per_pass",
    }
    # one command per listing: four disk prefixes, the files, the sessions
    assert figures["appliance_commands_per_pass"] == 6
    assert figures["of_which_parse_ms"] < figures["cold_parse_ms"]
