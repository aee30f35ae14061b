"""pytest plugin for mutant runs: the `ci` hypothesis profile without the shrink phase.

A mutant is judged by whether a test fails, not by the smallest failing example, and
shrinking a failing stateful run can take minutes. Loaded with `-p` by the runner; it acts
after the test suite's conftest has registered and loaded its profiles.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings


def pytest_configure(config: pytest.Config) -> None:
    base = settings.get_profile("ci")
    phases = tuple(p for p in base.phases if p is not Phase.shrink)
    settings.register_profile("ci-noshrink", base, phases=phases)
    settings.load_profile("ci-noshrink")
