"""Run-time control of a simulator in another process: JSON lines on a unix socket.

A request is one JSON object with `op` and its arguments; the answer is one JSON object
with `ok` and either the result fields or `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rdscsi.sim.errors import DeviceError
from rdscsi.sim.render import RENDERS
from rdscsi.sim.simulator import Simulator
from rdscsi.sim.units import parse_size

CONTROL_SOCKET = "control.sock"
_MAX_UNIX_PATH = 107

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    pass


def _count(request: dict[str, Any]) -> int:
    count = int(request.get("count", 1))
    if count < 0:
        raise ControlError("count must be >= 0")
    return count


def _on(request: dict[str, Any]) -> bool:
    value = request.get("on")
    if not isinstance(value, bool):
        raise ControlError("`on` must be true or false")
    return value


class ControlServer:
    def __init__(self, sim: Simulator, path: Path) -> None:
        self.sim = sim
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._ops: dict[str, Handler] = {
            "status": self._status,
            "latency": self._latency,
            "hang-next": self._hang_next,
            "hang-match": self._hang_match,
            "release": self._release,
            "fail-next": self._fail_next,
            "malformed-next": self._malformed_next,
            "drop-mid": self._drop_mid,
            "kill-mid": self._kill_mid,
            "refuse-channels": self._refuse_channels,
            "stderr": self._stderr,
            "drop": self._drop,
            "pool-full": self._pool_full,
            "refuse": self._refuse,
            "restart": self._restart,
            "clear": self._clear,
            "connect-host": self._connect_host,
            "disconnect-host": self._disconnect_host,
            "admit-host": self._admit_host,
            "leave-host": self._leave_host,
            "render": self._render,
            "pool-size": self._pool_size,
            "traffic": self._traffic,
        }

    async def start(self) -> None:
        if len(str(self.path)) > _MAX_UNIX_PATH:
            raise OSError(f"control socket path too long for a unix socket: {self.path}")
        if self.path.exists():
            if await _alive(self.path):
                raise OSError(f"a simulator is already running with {self.path}")
            self.path.unlink()  # left over by a process that did not stop cleanly
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self.handle(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ControlError("a request is a JSON object")
            handler = self._ops.get(str(request.get("op")))
            if handler is None:
                raise ControlError(f"unknown op {request.get('op')!r}; known: {sorted(self._ops)}")
            return {"ok": True, **await handler(request)}
        except (ControlError, ValueError, TypeError, KeyError) as error:
            return {"ok": False, "error": str(error)}

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        sim = self.sim
        return {
            "host": sim.host,
            "port": sim.port,
            "running": sim.running,
            "host_key": sim.host_key,
            "connections": len(sim.connections),
            "disks": len(sim.store.disks),
            "render": sim.render,
            "pool_size": sim.pool_size,
            "faults": sim.faults.status(),
        }

    async def _latency(self, request: dict[str, Any]) -> dict[str, Any]:
        seconds = float(request["seconds"])
        if seconds < 0:
            raise ControlError("latency must be >= 0")
        self.sim.faults.latency = seconds
        return {"latency": seconds}

    async def _hang_next(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.hang_next(_count(request))
        return {}

    async def _hang_match(self, request: dict[str, Any]) -> dict[str, Any]:
        text = request.get("text")
        self.sim.faults.hang_match = None if text in (None, "") else str(text)
        return {}

    async def _release(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.release_hangs()
        return {}

    async def _fail_next(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.fail_next(_count(request), str(request.get("text", "not enough space")))
        return {}

    async def _malformed_next(self, request: dict[str, Any]) -> dict[str, Any]:
        text = request.get("text")
        self.sim.faults.malformed_next(_count(request), None if text is None else str(text))
        return {}

    async def _drop_mid(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.drop_mid_next(_count(request), apply=bool(request.get("apply", True)))
        return {}

    async def _kill_mid(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.kill_mid_next(_count(request))
        return {}

    async def _refuse_channels(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.refuse_channels_next(_count(request))
        return {}

    async def _stderr(self, request: dict[str, Any]) -> dict[str, Any]:
        text = request.get("text")
        self.sim.faults.stderr_noise = None if text in (None, "") else str(text)
        return {}

    async def _drop(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"dropped": self.sim.faults.drop_connections()}

    async def _pool_full(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.pool_full = _on(request)
        return {}

    async def _refuse(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.refuse = _on(request)
        return {}

    async def _restart(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.sim.restart()
        return {"port": self.sim.port}

    async def _clear(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sim.faults.clear()
        return {}

    async def _connect_host(self, request: dict[str, Any]) -> dict[str, Any]:
        conn_id = self.sim.register_host_connection(
            str(request["slot"]),
            str(request["host_nqn"]),
            str(request.get("remote_address", "127.0.0.1")),
            int(request.get("remote_port", 0)),
        )
        return {"id": conn_id}

    async def _disconnect_host(self, request: dict[str, Any]) -> dict[str, Any]:
        conn_id = request.get("id")
        removed = self.sim.unregister_host_connection(
            None if conn_id is None else int(conn_id),
            slot=request.get("slot"),
            host_nqn=request.get("host_nqn"),
        )
        return {"removed": removed}

    async def _admit_host(self, request: dict[str, Any]) -> dict[str, Any]:
        """A node connects (the loop transport asks): the export's allow-list decides."""
        try:
            conn = self.sim.admit_host(
                str(request["nqn"]),
                str(request["host_nqn"]),
                str(request.get("remote_address", "127.0.0.1")),
            )
        except DeviceError as error:
            raise ControlError(error.text) from None
        return {"id": conn}

    async def _leave_host(self, request: dict[str, Any]) -> dict[str, Any]:
        removed = self.sim.leave_host(str(request["nqn"]), str(request["host_nqn"]))
        return {"removed": removed}

    async def _render(self, request: dict[str, Any]) -> dict[str, Any]:
        render = request.get("render")
        if render not in RENDERS:
            raise ControlError(f"render must be one of {RENDERS}")
        self.sim.render = render
        return {}

    async def _pool_size(self, request: dict[str, Any]) -> dict[str, Any]:
        size = parse_size(str(request["size"]))
        if size is None:
            raise ControlError(f"not a size: {request['size']!r}")
        self.sim.pool_size = size
        return {"pool_size": size}

    async def _traffic(self, request: dict[str, Any]) -> dict[str, Any]:
        values = request.get("values", {})
        if not isinstance(values, dict):
            raise ControlError("`values` must be an object")
        try:
            self.sim.set_traffic(str(request["slot"]), **{k: int(v) for k, v in values.items()})
        except AttributeError as error:
            raise ControlError(str(error)) from None
        return {}


async def _alive(path: Path) -> bool:
    try:
        _reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return True


async def request(path: Path, message: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a running simulator's control socket and return the answer."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise ConnectionError("the simulator closed the control connection")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError("malformed control answer")
    return answer
