"""Helpers shared by the simulator tests (a module with a name no other test dir uses)."""

from __future__ import annotations

from collections.abc import Awaitable

import asyncssh

from rdscsi.sim import Simulator


async def connect(
    sim: Simulator, key: asyncssh.SSHKey, **kwargs: object
) -> asyncssh.SSHClientConnection:
    """A client pinned to the simulator's host key, as the driver connects."""
    return await asyncssh.connect(
        sim.host,
        sim.port,
        username="admin",
        client_keys=[key],
        known_hosts=asyncssh.import_known_hosts(sim.known_hosts_line() + "\n"),
        **kwargs,  # type: ignore[arg-type]
    )


async def run(conn: asyncssh.SSHClientConnection, line: str) -> tuple[str, int]:
    result = await conn.run(line)
    stdout = result.stdout
    assert isinstance(stdout, str)
    assert result.exit_status is not None
    return stdout, result.exit_status


def add_line(slot: str, size: str = "1G", path: str | None = None, extra: str = "") -> str:
    """The `/disk add` the driver sends for a volume."""
    file_path = path or f"/storage-pool/k8s/{slot}.img"
    return (
        f"/disk add type=file file-path={file_path} file-size={size} slot={slot} "
        f"nvme-tcp-export=yes nvme-tcp-server-port=4420 "
        f"nvme-tcp-server-nqn=nqn.2000-02.com.mikrotik:{slot} {extra}"
    ).rstrip()


# How a client sees a dropped connection: an exception, or (asyncssh's `run`) a result
# without exit status.
DROPPED = (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError, OSError)


async def assert_lost(awaitable: Awaitable[asyncssh.SSHCompletedProcess]) -> None:
    try:
        result = await awaitable
    except DROPPED:
        return
    assert result.exit_status is None, result
    assert result.stdout == ""
