"""rdscsi.io.host.proc: real subprocesses, no shell, hard timeouts."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from rdscsi.io.host import proc
from rdscsi.io.host.proc import CommandFailed, CommandTimeout, Completed, NotInstalled, run

PY = sys.executable


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_for_file(path: Path) -> str:
    for _ in range(500):
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never written")


async def test_success_returns_output() -> None:
    done = await run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert done == Completed((PY, "-c", done.argv[2]), 0, "out\n", "err\n")


async def test_no_shell_is_involved(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    done = await run(["echo", f"x; touch {marker}", "$(id)"])
    assert done.stdout == f"x; touch {marker} $(id)\n"
    assert not marker.exists()


async def test_input_is_fed_to_stdin() -> None:
    done = await run(["cat"], input=b"hello\n")
    assert done.stdout == "hello\n"


async def test_non_zero_exit_raises_naming_command_and_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        await run([PY, "-c", "import sys; sys.stderr.write('boom: disk on fire'); sys.exit(3)"])
    exc = info.value
    assert exc.returncode == 3
    assert exc.stderr == "boom: disk on fire"
    assert "exited with status 3" in str(exc)
    assert "boom: disk on fire" in str(exc)
    assert PY in str(exc)


async def test_long_stderr_is_truncated_in_the_message() -> None:
    with pytest.raises(CommandFailed) as info:
        await run([PY, "-c", "import sys; sys.stderr.write('e' * 5000); sys.exit(1)"])
    assert len(info.value.stderr) == 5000  # kept whole on the exception
    assert len(str(info.value)) < 600
    assert "(+4700 chars)" in str(info.value)


async def test_stdout_is_used_when_stderr_is_empty() -> None:
    with pytest.raises(CommandFailed, match="said it on stdout"):
        await run([PY, "-c", "import sys; print('said it on stdout'); sys.exit(1)"])


async def test_check_false_returns_the_failure() -> None:
    done = await run([PY, "-c", "import sys; sys.exit(7)"], check=False)
    assert done.returncode == 7


async def test_missing_binary_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(NotInstalled) as info:
        await run([str(tmp_path / "no-such-nvme"), "list"])
    assert info.value.binary == str(tmp_path / "no-such-nvme")
    assert "not installed" in str(info.value)


async def test_non_executable_file_is_not_installed(tmp_path: Path) -> None:
    script = tmp_path / "nvme"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(NotInstalled, match="not executable"):
        await run([str(script)])


async def test_timeout_kills_and_reaps_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        await run([PY, "-c", code], timeout=1.0)
    assert time.monotonic() - started < 10
    assert info.value.timeout == 1.0
    assert "did not finish within 1s" in str(info.value)
    assert gone(int(pidfile.read_text()))  # killed and reaped: not even a zombie


async def test_timeout_also_kills_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # A wrapper script whose child holds the pipes open: the whole group must go.
    script = tmp_path / "wrapper"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    with pytest.raises(CommandTimeout):
        await run([str(script)], timeout=1.0)
    pid = int(pidfile.read_text())
    for _ in range(200):  # the orphan is reaped by init, not by us: give it a moment
        if gone(pid):
            break
        await asyncio.sleep(0.01)
    assert gone(pid)


async def test_cancellation_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.create_task(run([PY, "-c", code], timeout=60))
    pid = int(await wait_for_file(pidfile))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(pid)


async def test_output_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "MAX_OUTPUT", 1000)
    done = await run([PY, "-c", "import sys; sys.stdout.write('x' * 200000)"])
    assert done.stdout == "x" * 1000  # the rest was drained, not kept; no deadlock


async def test_messages_are_untranslated() -> None:
    done = await run([PY, "-c", "import os; print(os.environ['LC_ALL'])"])
    assert done.stdout == "C\n"


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        await run([])
    with pytest.raises(TypeError):
        await run(["echo", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        await run(["true"], timeout=0)
