"""`rdscsi demo --scenario NAME`: the driver's recoveries, watched on one machine.

Each scenario starts a small cluster (`cluster.Cluster`: a built-in Kubernetes API, the RDS
simulator over SSH, the controller as `serve --controller --kubernetes` runs it, and two node
plugins on loop devices), plays Kubernetes' part around it, and narrates every step with the
machine transitions it caused (`narrate`). What a step claims is checked before it is
printed. Without root (or loop devices) the node plugins cannot run: the controller's side
runs in full and the node steps say they are not shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..cli import SCENARIOS as TITLES  # the names and titles `rdscsi demo --help` lists
from ..signals import STOP_SIGNALS, exit_now
from . import appliance_restart, live_migration, node_death
from .cluster import SYSTEM, Cluster, ScenarioDirError, wipe
from .narrate import Narrator, Out, ScenarioFailed
from .steps import Undo

GRACE_S = 5.0  # the demo's grace period (30 s by default): long enough to see, short to wait


@dataclass(frozen=True)
class Scenario:
    title: str
    about: str
    run: Callable[[Cluster, Undo], Awaitable[None]]


SCENARIOS = {
    name: Scenario(TITLES[name], module.ABOUT, module.run)
    for name, module in (
        ("node-death", node_death),
        ("appliance-restart", appliance_restart),
        ("live-migration", live_migration),
    )
}


def scenario_dir(state_dir: Path, name: str) -> Path:
    return state_dir.resolve() / "scenarios" / name


def _setting(c: Cluster, shown: Path) -> None:
    n = c.narrator
    n.note(
        "Kubernetes' sidecars and kubelets are played by the demo: it writes the objects "
        "they write and makes the CSI calls they make"
    )
    if not c.sockets.is_relative_to(c.root):
        n.note(f"the CSI sockets are in {c.sockets}: a socket's path must be short")


async def run_scenario(name: str, state_dir: Path, out: Out = print, grace: float = GRACE_S) -> int:
    scenario = SCENARIOS[name]
    root = scenario_dir(state_dir, name)
    try:
        shown = root.relative_to(Path.cwd())
    except ValueError:
        shown = root
    narrator = Narrator(out)
    narrator.title(f"rdscsi demo --scenario {name}: {scenario.title}")
    narrator.para(scenario.about)
    try:
        await wipe(root)
        root.mkdir(parents=True)
    except ScenarioDirError as exc:
        narrator.fail(str(exc))
        return 1
    except OSError as exc:
        narrator.fail(f"{root}: {exc.strerror or exc}")
        return 1
    with _logging_to(root / "log"):
        return await _run(scenario, root, shown, narrator, grace)


async def _run(
    scenario: Scenario, root: Path, shown: Path, narrator: Narrator, grace: float
) -> int:
    cluster = Cluster(root, narrator, grace)
    undo = Undo(narrator)
    ok = False
    narrator.para(f"\nSetting, all on this machine (under {shown}, with the log):")
    with _interruptible() as interrupted:
        try:
            await cluster.start()
            _setting(cluster, shown)
            await cluster.events()
            await scenario.run(cluster, undo)
            if interrupted:  # the cancellation was swallowed on its way (see _interruptible)
                raise asyncio.CancelledError
            ok = True
        except ScenarioFailed:
            pass
        except asyncio.CancelledError:
            narrator.para("\n· interrupted (Ctrl-C): cleaning up")
            if not interrupted:  # not ours (the caller cancelled): clean up, then go on
                raise
        except Exception as exc:
            logging.getLogger("rdscsi.scenarios").exception("scenario failed")
            narrator.fail(f"unexpected {type(exc).__name__}: {exc} (the log has the traceback)")
        finally:
            # In a task of its own: after Ctrl-C this one is being cancelled, and the parts'
            # shutdowns rightly stop short inside a task that is. A Ctrl-C during the cleanup
            # asks for what is already happening: wait for it.
            cleaning = asyncio.create_task(_clean_up(cluster, undo))
            while not cleaning.done():
                try:
                    await asyncio.shield(cleaning)
                except asyncio.CancelledError:
                    if not interrupted:
                        raise
            cleaned = cleaning.result()
    if interrupted:
        raise KeyboardInterrupt  # `rdscsi demo: interrupted`, exit status 130
    if ok and cleaned:
        narrator.para(f"✓ done; the log of every transition and call: {shown / 'log'}")
    else:
        narrator.para(f"✗ the scenario failed; the log: {shown / 'log'}")
    return 0 if ok and cleaned else 1


@contextlib.contextmanager
def _interruptible() -> Iterator[list[int]]:
    """Ctrl-C (or SIGTERM) while a scenario runs: noted, and the scenario's task cancelled;
    the cleanup still runs, and another signal exits at once. asyncio's own handler cancels
    once, and Python 3.11's `wait_for` swallows a cancellation that arrives as its awaitable
    completes: the note makes the interruption stick whatever step it lands in."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signalled: list[int] = []

    def first(signum: int) -> None:
        signalled.append(signum)
        for other in STOP_SIGNALS:
            loop.add_signal_handler(other, exit_now, "rdscsi demo", other)
        if task is not None:
            task.cancel()

    try:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, first, signum)
    except (ValueError, RuntimeError):  # not the main thread: the caller's handlers stand
        yield signalled
        return
    try:
        yield signalled
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def _clean_up(cluster: Cluster, undo: Undo) -> bool:
    try:
        return await undo.run()
    finally:
        cluster.narrator.quiet = True
        await cluster.stop()


class _logging_to:
    """While a scenario runs, the driver's log goes to a file: the narration is the output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = logging.getLogger()
        self.saved: list[logging.Handler] = []
        self.level = self.root.level

    def __enter__(self) -> None:
        handler = logging.FileHandler(self.path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.saved = list(self.root.handlers)
        for h in self.saved:
            self.root.removeHandler(h)
        self.root.addHandler(handler)
        self.root.setLevel(logging.INFO)
        self.handler = handler

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.handler)
        self.handler.close()
        for h in self.saved:
            self.root.addHandler(h)
        self.root.setLevel(self.level)


__all__ = ["GRACE_S", "SCENARIOS", "SYSTEM", "run_scenario", "scenario_dir"]
