"""The fence in a cluster, through a controller killed at each of its steps.

One replica serves the sidecars; a sequence of attachments writes a known series of
allow-lists (a single-node volume handed from a node that dies to another, a live migration
that adds its target before it takes off its source). For every step of that series, a run
kills the controller right after the previous write (its next write, and everything after,
never reaches the appliance), starts it again, and lets the sidecars retry and the new term
sweep. Whatever the step: once converged, each disk's allow-list is exactly the hosts of the
nodes that hold the volume in the cluster's view, and a single-node volume's list never held
two hosts, at any moment, crash or not (every list the appliance ever accepted is checked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from rdscsi.io.rds.errors import TransportLostError
from rdscsi.io.rds.fence import NO_HOST

from .conftest import GRACE, World, host_nqn, until
from .sidecars import Sidecars

X = "pvc-00000000-0000-4000-8000-0000000000a1"  # single-node
Y = "pvc-00000000-0000-4000-8000-0000000000b1"  # read-write-many block (live migration)
POD = "ctl-a"


@dataclass
class Gate:
    """The appliance as the driver in POD reaches it: `allow` fence writes go through, the
    next one and everything after it does not (the process died there)."""

    allow: int
    writes: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    dead: bool = False
    restarted: bool = False

    def arm(self, world: World) -> None:
        store = world.replicas[POD].app.store
        real = store.set_allow_list

        async def gated(vid: str, hosts: frozenset[str]) -> None:
            if self.dead or len(self.writes) >= self.allow:
                self.dead = True
                raise TransportLostError("the controller died here")
            self.writes.append((vid, hosts))
            await real(vid, hosts)

        store.set_allow_list = gated  # type: ignore[method-assign]


def written(world: World, vid: str) -> list[list[str]]:
    """Every allow-list of `vid` the appliance accepted, in order."""
    key = f'[find slot="{vid}"] nvme-tcp-server-allow-host-name="'
    return [
        [h for h in line.split(key, 1)[1].rstrip('"').split(",") if h != NO_HOST]
        for line in world.sim.commands
        if key in line
    ]


async def survive(world: World, gate: Gate, op: Callable[[], Awaitable[object]]) -> None:
    """Run `op` (a sidecar's work, or time passing); if the controller dies meanwhile, kill it
    for good (no Lease release) and start it again: the sidecars retry against the new one."""
    task = asyncio.ensure_future(op())
    await until(lambda: task.done() or gate.dead, "the step or the crash", 60)
    if gate.dead and not gate.restarted:
        gate.restarted = True  # the new container is not gated: it runs on
        await world.replicas[POD].stop(release=False)
        await world.replica(POD, wait=False)
    await task


async def scenario(world: World, crash_after: int) -> Gate:
    world.node("n1")
    world.node("n2")
    await world.replica(POD)
    await world.elect(POD)
    sidecars = Sidecars(world, (POD,))
    await sidecars.start()
    gate = Gate(crash_after)
    gate.arm(world)
    x = await sidecars.provision(X)
    y = await sidecars.provision(Y, rwx_block=True)
    steps: list[Callable[[], Awaitable[object]]] = [
        lambda: sidecars.attach(x, X, "n1"),  # X: [n1]
        lambda: sidecars.attach(y, Y, "n1", rwx_block=True),  # Y: [n1]
        lambda: sidecars.attach(y, Y, "n2", rwx_block=True),  # Y: [n1, n2] (target on)
        lambda: sidecars.detach(y, "n1"),  # Y: [n2] (source off)
    ]
    for step in steps:
        await survive(world, gate, step)
    # n1 dies with X on it: released after the grace period, taken off X's list
    world.delete_node("n1")

    async def grace() -> None:
        await world.tick(GRACE + 2)

    await survive(world, gate, grace)

    async def handover() -> None:
        # the attach/detach controller retries: a controller that restarted meanwhile dates
        # n1's loss from when it first saw n1 gone, and refuses n2 until that grace is over
        for _ in range(int(GRACE) + 10):
            try:
                await sidecars.attach(x, X, "n2")  # X: [n2]
                return
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
            await world.tick(2.0)
        raise AssertionError("n2 never got the volume")

    await survive(world, gate, handover)
    return gate


@pytest.mark.parametrize("crash_after", range(7))
async def test_the_fence_converges_whichever_step_the_controller_dies_at(
    world: World, crash_after: int
) -> None:
    gate = await scenario(world, crash_after)
    assert gate.dead == (crash_after < 6), "every step was one fence write"
    # the new term swept at its start; time for the lease and a later sweep to pass
    config = world.replicas[POD].app.config
    await world.tick(config.lease_duration + 4)
    await until(lambda: world.replicas[POD].leads, "the restarted replica leads", 30)
    world.replicas[POD].app.reconciler.trigger("sweep")
    await world.settle()
    disks = world.sim.store.disks
    assert disks[X].nvme_tcp_server_allow_host_name == host_nqn("n2")
    assert disks[Y].nvme_tcp_server_allow_host_name == host_nqn("n2")
    # never two hosts on the single-node volume's list, at any moment
    assert all(len(hosts) <= 1 for hosts in written(world, X)), written(world, X)
    # the migration held both ends before it let go of its source
    assert [host_nqn("n1"), host_nqn("n2")] in [sorted(h) for h in written(world, Y)]
