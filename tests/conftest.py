"""Test-wide settings: hypothesis profiles.

`ci` (what `make test` uses): derandomised, enough examples to find real bugs in a few
minutes on two cores. `dev`: quicker, random. `heavy`: opt-in long runs
(`HYPOTHESIS_PROFILE=heavy make unit`).
"""

from __future__ import annotations

import os

import asyncssh
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    stateful_step_count=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "heavy",
    max_examples=5_000,
    stateful_step_count=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    """The SSH key every simulator in the suite authorises (one per session: keygen is slow)."""
    return asyncssh.generate_private_key("ssh-ed25519")
