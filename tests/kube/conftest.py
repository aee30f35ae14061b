"""Fixtures for the Kubernetes I/O tests: FakeKube, a real `kubernetes.aio` client on it,
and a ManualClock. Time-based behaviour is driven with `clock.advance`; tests wait for
conditions (never for a period of real time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes.aio.client import ApiClient, Configuration

from rdscsi.clock import ManualClock
from rdscsi.testing.kubeapi import FakeKube

# A port nothing listens on: requests there fail at once with "connection refused".
DEAD_URL = "http://127.0.0.1:9"


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as k:
        yield k


@pytest.fixture
async def api(kube: FakeKube) -> AsyncIterator[ApiClient]:
    client = ApiClient(kube.configuration())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def new_client(url: str) -> ApiClient:
    return ApiClient(Configuration(host=url))


async def until(condition: Callable[[], bool], what: str = "condition", limit: float = 5.0) -> None:
    """Let the loop run (real HTTP included) until `condition` holds; `limit` (real seconds)
    only turns a hang into a failure, nothing waits for it to pass."""
    try:
        async with asyncio.timeout(limit):
            while not condition():
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def our_tasks() -> list[asyncio.Task[object]]:
    """Tasks running rdscsi code; FakeKube's own handler tasks are not counted."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "/rdscsi/" in code.co_filename:
            found.append(task)
    return found
