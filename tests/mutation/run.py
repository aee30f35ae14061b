"""Mutation testing of the machines, their hooks and the reconciler (`make mutate`).

    python -m tests.mutation.run [--only FILE] [--sample N --seed S] [-j N] [--json]

Each mutant (`tests.mutation.mutants`) is written into a private copy of the tree (never
into the sources here, so an interrupted run leaves nothing behind) and the tests of the
module it changes run against it: `-x -q -p no:cacheprovider`, hypothesis profile `ci`
without its shrink phase (`noshrink.py`), a timeout per mutant (a hang counts as killed).
A kill is confirmed: the failing test must fail again alone, else the selection runs again.
A mutant of a machine is judged as a developer would make the change: `specs/` are
regenerated from the mutant first, so the committed-specs drift check is never what notices
it (a guard the exporter refuses does count). Killed: a test failed, errored or hung.
Survived: every selected test passed.

The allow-list (`equivalent.txt`, one `key  # reason` a line) names mutants proven
equivalent: they are reported apart and left out of the kill rate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .mutants import OPERATORS, ROOT, Mutant, all_mutants

ALLOW_LIST = Path(__file__).with_name("equivalent.txt")
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"
)
PYTEST_ARGS = (
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "tests.mutation.noshrink",  # the `ci` profile, minus shrinking: a failure is enough
    "--no-header",
    "-o",
    "addopts=-rfE",
)

_M = "tests/machines/"
# Module -> the tests that exercise it, most telling and quickest first (pytest runs them in
# this order; `-x` stops at the first failure). Directories expand to their test files.
TESTS: dict[str, tuple[str, ...]] = {
    "machines/connection.py": (
        _M + "test_connection_model.py",
        _M + "test_conformance.py",
        _M + "test_hooks.py",
        "tests/machines",
        "tests/adapter",
    ),
    "machines/attachment.py": (
        _M + "test_attachment_model.py",
        _M + "test_conformance.py",
        _M + "test_guards.py",
        _M + "test_hooks.py",
        "tests/machines",
        "tests/controller",
        "tests/scenarios",
    ),
    "machines/node.py": (
        _M + "test_node_model.py",
        _M + "test_conformance.py",
        _M + "test_hooks.py",
        "tests/machines",
        "tests/controller",
        "tests/kube/test_pure.py",
        "tests/scenarios",
    ),
    "machines/volume.py": (
        _M + "test_node_volume_model.py",
        _M + "test_conformance.py",
        _M + "test_guards.py",
        "tests/machines",
        "tests/node",
    ),
    "machines/engine.py": ("tests/machines", "tests/controller"),
    "machines/guards.py": (_M + "test_guards.py", "tests/machines", "tests/controller"),
    "machines/diagrams.py": (_M + "test_diagrams.py", "tests/machines", "tests/cli"),
    "machines/__init__.py": ("tests/machines",),
    "hooks/": (
        _M + "test_hooks.py",
        _M + "test_recorder.py",
        "tests/machines",
        "tests/controller",
        "tests/observability",
        "tests/scenarios",
    ),
    "control/": (
        "tests/controller",
        _M + "test_hooks.py",
        "tests/kube/test_pure.py",
        "tests/scenarios",
    ),
}
# Machine modules whose mutants get `specs/` regenerated (the exporter itself does not: its
# output is what the committed specs check).
REGENERATE_SPECS = ("src/rdscsi/machines/",)
NO_REGENERATE = ("src/rdscsi/machines/diagrams.py",)
# Priority of a full run: the declarations first (the spec), then what runs them.
ORDER = (
    "machines/attachment.py",
    "machines/connection.py",
    "machines/node.py",
    "machines/volume.py",
    "machines/engine.py",
    "machines/guards.py",
    "control/",
    "hooks/",
    "machines/",
)


def tests_for(file: str, root: Path = ROOT) -> list[str]:
    """The test files to run for a mutant of `file`, in order, each once."""
    rel = file.removeprefix("src/rdscsi/")
    spec = TESTS.get(rel)
    if spec is None:
        spec = next((v for k, v in TESTS.items() if k.endswith("/") and rel.startswith(k)), ())
    out: list[str] = []
    for entry in spec:
        path = root / entry
        files = sorted(path.rglob("test_*.py")) if path.is_dir() else [path]
        for f in files:
            name = f.relative_to(root).as_posix()
            if name not in out:
                out.append(name)
    if not out:
        raise SystemExit(f"mutate: no tests mapped for {file} (add it to TESTS)")
    return out


def priority(m: Mutant) -> int:
    rel = m.file.removeprefix("src/rdscsi/")
    return next((i for i, k in enumerate(ORDER) if rel == k or rel.startswith(k)), len(ORDER))


def load_allow_list(path: Path = ALLOW_LIST) -> dict[str, str]:
    """key -> reason. Lines: `<key>  # <reason>`; blank lines and `#` lines are comments."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.partition("  # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: expected `<key>  # <reason>`")
        out[key.strip()] = reason.strip()
    return out


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | error
    killer: str  # the first failing test (or `timeout`, `specs ...`); empty when survived
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            **self.mutant.summary(),
            "status": self.status,
            "killer": self.killer,
            "seconds": round(self.seconds, 1),
        }


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


_SPACES: list[Workspace] = []  # every live copy, for a SIGTERM to stop


class Workspace:
    """A private copy of the tree that one worker writes its mutants into."""

    def __init__(self, root: Path = ROOT, python: str = sys.executable) -> None:
        self.root = root
        self.python = python
        self.dir = Path(tempfile.mkdtemp(prefix="rdscsi-mutate-"))
        self.tree = self.dir / "tree"
        shutil.copytree(root, self.tree, ignore=COPY_IGNORE, symlinks=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.tree / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",  # a mutant never runs from a stale .pyc
            "HYPOTHESIS_PROFILE": "ci",
        }
        self.live: set[subprocess.Popen[str]] = set()
        _SPACES.append(self)

    def stop(self) -> None:
        """End what runs in the copy (interrupted)."""
        for proc in list(self.live):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _SPACES.remove(self)

    def _run(self, argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
        proc = subprocess.Popen(
            argv,
            cwd=self.tree,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,  # a hang is killed with everything it started
        )
        self.live.add(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return None, out
        finally:
            self.live.discard(proc)

    def pytest(self, tests: Sequence[str], timeout: float) -> tuple[int | None, str]:
        return self._run([self.python, "-m", "pytest", *PYTEST_ARGS, *tests], timeout)

    def run(
        self, m: Mutant, tests: Sequence[str], timeout: float, regenerate: bool = True
    ) -> Result:
        start = time.monotonic()
        target = self.tree / m.file
        original = target.read_bytes()
        specs = self.tree / "specs"
        regen = regenerate and m.file.startswith(REGENERATE_SPECS) and m.file not in NO_REGENERATE
        try:
            target.write_text(m.source)
            if regen:
                rc, out = self._run(
                    [self.python, "-m", "rdscsi.cli", "diagrams", "--out", str(specs)], timeout
                )
                if rc != 0:
                    last = (out.strip().splitlines() or ["?"])[-1][:160]
                    what = "import fails" if "Traceback" in out else "rdscsi diagrams refuses"
                    return Result(m, "killed", f"{what}: {last}", _since(start))
            rc, out = self.pytest(tests, timeout)
            found = _FAILED.search(out) if rc in (1, 2, 3) else None
            if found and "::" in found.group(1):
                # Confirm: the failing test fails again alone. A test that passes alone
                # failed by chance (load) or by order: judge the mutant on a second run.
                again, _ = self.pytest([found.group(1)], timeout)
                if again == 0:
                    rc, out = self.pytest(tests, timeout)
        finally:
            target.write_bytes(original)
            if regen:
                shutil.rmtree(specs, ignore_errors=True)
                shutil.copytree(self.root / "specs", specs)
        if rc is None:
            return Result(m, "killed", "timeout", _since(start))
        if rc == 0:
            return Result(m, "survived", "", _since(start))
        if rc in (1, 2, 3):
            found = _FAILED.search(out)
            killer = found.group(1) if found else f"pytest exit {rc}"
            return Result(m, "killed", killer, _since(start))
        tail = " | ".join(out.strip().splitlines()[-3:])
        return Result(m, "error", f"pytest exit {rc}: {tail}", _since(start))


def _since(start: float) -> float:
    return time.monotonic() - start


def baseline(
    ws: Workspace, selections: Iterable[tuple[str, ...]]
) -> tuple[dict[tuple[str, ...], float], list[str]]:
    """Every selected test passes on the unmutated tree (each file in its own run, so one
    test's failure cannot hang the next). Returns how long each selection takes, and the
    tests that failed there but passed when run again alone: flaky under load, so left out
    of the mutant runs (a flaky failure would count a mutant killed that no test noticed)."""
    sels = list(selections)
    per_file: dict[str, float] = {}
    flaky: list[str] = []
    groups: dict[str, list[str]] = {}  # test ids of one file run together
    for entry in sorted({e for sel in sels for e in sel}):
        groups.setdefault(entry.split("::")[0], []).append(entry)
    for f, entries in groups.items():
        start = time.monotonic()
        rc, text = ws.pytest([*entries, "--maxfail=1000000"], timeout=1800)
        for entry in entries:
            per_file[entry] = time.monotonic() - start
        if rc == 0:
            continue
        failed = sorted(set(_FAILED.findall(text))) if rc is not None else []
        if not failed:
            tail = "\n".join(text.strip().splitlines()[-15:])
            why = "hangs" if rc is None else "fails"
            raise SystemExit(f"mutate: the unmutated tree {why} in {f}:\n{tail}")
        for nodeid in failed:
            again, out = ws.pytest([nodeid], timeout=600)
            if again != 0:
                tail = "\n".join(out.strip().splitlines()[-15:])
                raise SystemExit(f"mutate: the unmutated tree fails {nodeid}:\n{tail}")
            flaky.append(nodeid)
            print(f"mutate: {nodeid} failed once and passed alone: left out", file=sys.stderr)
    return {sel: sum(per_file[f] for f in sel) for sel in sels}, flaky


def run(
    mutants: Sequence[Mutant],
    jobs: int = 1,
    timeout_factor: float = 10.0,
    tests: Callable[[Mutant], list[str]] | None = None,
    progress: Callable[[Result, int, int], None] | None = None,
    root: Path = ROOT,
    regenerate: bool = True,
    cache: Path | None = None,
) -> list[Result]:
    """Run each mutant against its tests; `jobs` workers, each with its own tree copy.
    `regenerate=False` skips writing `specs/` from machine mutants (for tests that do not
    read them). `cache`: a file keeping the baseline between resumed runs."""
    pick = tests or (lambda m: tests_for(m.file, root))
    selections = {m.key: tuple(pick(m)) for m in mutants}
    spaces = [Workspace(root) for _ in range(max(1, min(jobs, len(mutants))))]
    free: list[Workspace] = list(spaces)
    lock = threading.Lock()
    results: list[Result] = []
    try:
        wanted = sorted(set(selections.values()))
        kept = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
        if kept and all(" ".join(sel) in kept["times"] for sel in wanted):
            times = {sel: float(kept["times"][" ".join(sel)]) for sel in wanted}
            flaky = list(kept["flaky"])
        else:
            times, flaky = baseline(spaces[0], wanted)
            if cache is not None:
                saved = {"times": {" ".join(k): v for k, v in times.items()}, "flaky": flaky}
                cache.write_text(json.dumps(saved))
        deselect = [f"--deselect={nodeid}" for nodeid in flaky]

        def one(m: Mutant) -> Result:
            with lock:
                ws = free.pop()
            try:
                sel = selections[m.key]
                timeout = timeout_factor * times[sel] + 60.0
                return ws.run(m, (*sel, *deselect), timeout, regenerate)
            finally:
                with lock:
                    free.append(ws)

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(spaces))
        try:
            futures = [pool.submit(one, m) for m in mutants]
            for fut in concurrent.futures.as_completed(futures):
                r = fut.result()
                results.append(r)
                if progress is not None:
                    progress(r, len(results), len(mutants))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # interrupted: none queued runs
    finally:
        for ws in spaces:
            ws.close()
    order = {m.key: i for i, m in enumerate(mutants)}
    return sorted(results, key=lambda r: order[r.mutant.key])


def report(results: Sequence[Result], allowed: dict[str, str]) -> dict[str, object]:
    """The run as one object: counts, kill rate (allow-listed mutants left out), survivors."""
    judged = [r for r in results if r.mutant.key not in allowed]
    killed = sum(r.status == "killed" for r in judged)
    survived = [r for r in judged if r.status == "survived"]
    errors = [r for r in judged if r.status == "error"]
    equivalent = [r for r in results if r.mutant.key in allowed]
    scored = killed + len(survived)
    by_op: dict[str, Counter[str]] = {}
    by_file: dict[str, Counter[str]] = {}
    for r in results:
        status = "equivalent" if r.mutant.key in allowed else r.status
        by_op.setdefault(r.mutant.operator, Counter())[status] += 1
        by_file.setdefault(r.mutant.file, Counter())[status] += 1
    return {
        "mutants": len(results),
        "killed": killed,
        "survived": len(survived),
        "equivalent": len(equivalent),
        "errors": len(errors),
        "kill_rate": round(100.0 * killed / scored, 2) if scored else None,
        "by_operator": {k: dict(v) for k, v in sorted(by_op.items())},
        "by_file": {k: dict(v) for k, v in sorted(by_file.items())},
        "killed_at_import": sum(r.killer.startswith("import fails") for r in judged),
        "killed_by_exporter": sum(r.killer.startswith("rdscsi diagrams") for r in judged),
        "killed_by_timeout": sum(r.killer == "timeout" for r in judged),
        "survivors": [r.as_dict() for r in survived],
        "errors_list": [r.as_dict() for r in errors],
        "equivalent_list": [{**r.as_dict(), "reason": allowed[r.mutant.key]} for r in equivalent],
        "seconds": round(sum(r.seconds for r in results), 1),
    }


def summary_text(rep: dict[str, object]) -> str:
    lines = [
        f"mutation: {rep['mutants']} mutants, {rep['killed']} killed, {rep['survived']} "
        f"survived, {rep['equivalent']} equivalent (allow-listed), {rep['errors']} errors; "
        f"kill rate {rep['kill_rate']}%"
    ]
    survivors = rep["survivors"]
    errors = rep["errors_list"]
    assert isinstance(survivors, list) and isinstance(errors, list)
    for s in survivors:
        lines.append(f"SURVIVED {s['file']}:{s['line']} {s['operator']}: {s['description']}")
        lines.append(f"    - {s['original']}")
        lines.append(f"    + {s['mutated']}")
    for s in errors:
        lines.append(f"ERROR {s['file']}:{s['line']} {s['operator']}: {s['killer']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tests.mutation.run",
        description="Mutation testing of machines/, hooks/ and control/ (see tests/mutation).",
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="FILE",
        help="mutate only this module (its path, a tail like machines/node.py, or a regex)",
    )
    ap.add_argument(
        "--operator", action="append", default=[], choices=OPERATORS, help="only this operator"
    )
    ap.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="N",
        help="run N mutants picked at random, in random order (N >= all: everything, shuffled)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument(
        "--survivors-of",
        type=Path,
        metavar="LOG",
        help="only the mutants that survived in this --log file (after adding tests)",
    )
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument(
        "--timeout-factor",
        type=float,
        default=10.0,
        help="a mutant's timeout: this times the unmutated run of its tests, plus 60 s "
        "(generous: a loaded machine must not pass for a hang)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--log", type=Path, help="append each result to this JSON-lines file")
    ap.add_argument(
        "--resume", action="store_true", help="with --log: skip the mutants already in it"
    )
    return ap


def _stop(signum: int, frame: object) -> None:
    for ws in list(_SPACES):
        ws.stop()
    raise SystemExit(128 + signum)  # unwinds: the tree copies are removed


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    mutants = all_mutants(ROOT, args.only)
    if args.operator:
        mutants = [m for m in mutants if m.operator in args.operator]
    if args.survivors_of:
        lines = args.survivors_of.read_text().splitlines()
        keep = {d["key"] for d in map(json.loads, lines) if d["status"] == "survived"}
        mutants = [m for m in mutants if m.key in keep]
    if args.sample:  # in random order: a partial run is a fair sample of the whole
        mutants = random.Random(args.seed).sample(mutants, min(args.sample, len(mutants)))
    else:
        mutants.sort(key=priority)  # stable: source order within a file
    if args.list:
        for m in mutants:
            print(f"{m.file}:{m.line} {m.operator}: {m.description}\n    + {m.mutated}")
        print(f"{len(mutants)} mutants")
        return 0
    allowed = load_allow_list()
    previous: list[Result] = []
    if args.log and args.resume and args.log.exists():
        by_key = {m.key: m for m in mutants}
        for line in args.log.read_text().splitlines():
            d = json.loads(line)
            done = by_key.pop(str(d["key"]), None)
            if done is not None:
                status, killer = str(d["status"]), str(d["killer"])
                previous.append(Result(done, status, killer, float(d["seconds"])))
        mutants = [m for m in mutants if m.key in by_key]
    log_file = args.log.open("a") if args.log else None

    def progress(r: Result, n: int, total: int) -> None:
        if log_file is not None:
            log_file.write(json.dumps(r.as_dict()) + "\n")
            log_file.flush()
        if not args.json:
            m = r.mutant
            killer = f"  <- {r.killer}" if r.killer else ""
            print(
                f"[{n}/{total}] {r.status:8} {r.seconds:6.1f}s {m.file}:{m.line} "
                f"{m.operator}: {m.description}{killer}",
                file=sys.stderr,
                flush=True,
            )

    try:
        cache = args.log.with_suffix(".baseline.json") if args.log else None
        results = (
            run(mutants, args.jobs, args.timeout_factor, progress=progress, cache=cache)
            if mutants
            else []
        )
    finally:
        if log_file is not None:
            log_file.close()
    rep = report(previous + results, allowed)
    if not (args.only or args.sample or args.operator):
        seen = {r.mutant.key for r in previous + results}
        rep["stale_allow_list"] = sorted(set(allowed) - seen)  # names no mutant: fix the list
    print(json.dumps(rep) if args.json else summary_text(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
