"""Waiting for SIGINT/SIGTERM in the long-running commands.

The first signal starts an orderly stop (sockets removed, loop devices detached, the
simulator's state saved). A second one while that runs means "now": the process exits at
once with one line and no traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_stopped(stop: asyncio.Event | None = None, name: str = "rdscsi") -> None:
    """Returns on SIGINT, SIGTERM or `stop` being set. After a signal, the handlers stay
    installed for the shutdown that follows: another signal exits at once (`exit_now`)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signalled: list[int] = []

    def first(signum: int) -> None:
        signalled.append(signum)
        # From here on another signal means "now": installed before anyone can read the
        # line below and send one (once this task resumed, it would be too late).
        for other in STOP_SIGNALS:
            loop.add_signal_handler(other, exit_now, name, other)
        again = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
        print(f"{name}: stopping{again}", file=sys.stderr, flush=True)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, first, signum)
    try:
        await stop.wait()
    finally:
        if not signalled:  # stopped by `stop`: the handlers go
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)


def exit_now(name: str, signum: int) -> None:
    """The second signal: leave without cleaning up, quietly (exit status 128 + signal)."""
    print(f"{name}: exiting at once, cleanup skipped", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)
