"""`make test` runs the CSI conformance suite when this machine can (see runner.py): the
filesystem mode and the block mode, each against its own `rdscsi run`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from .runner import cannot_run, find_binary, run_mode

REASON = cannot_run()
# The reason shows in the run's summary (`-ra`): a skipped suite must not pass for a green one.
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"csi-sanity not run: {REASON}")


@pytest.mark.parametrize("mode", ["mount", "block"])
def test_csi_sanity(mode: str) -> None:
    binary = find_binary()
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="rdscsi-sanity-") as tmp:
        outcome = run_mode(binary, mode, Path(tmp).resolve())
    print(outcome.report())
    assert outcome.ok, outcome.report() + "\n" + outcome.log[-20_000:]
