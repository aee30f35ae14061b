"""Waiting for SIGINT/SIGTERM in the long-running commands."""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_stopped(stop: asyncio.Event | None = None) -> None:
    """Returns on SIGINT, SIGTERM or `stop` being set; handlers are removed afterwards."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
