"""The fence, session evidence and the orphan sweep on a fleet of two appliances: each
volume's allow-list is set on its own appliance by its slot (nothing written on the other);
one appliance's session listing is evidence for its own volumes only; each appliance is swept
for its own orphans, and one appliance down or hung leaves the other's sweep running."""

from __future__ import annotations

import asyncio

from rdscsi.control.nodes import NodeView
from rdscsi.control.orphans import Claims
from rdscsi.csi import csi_pb2 as pb
from rdscsi.io.rds.fence import NO_HOST

from .conftest import A, B, Fleet, host_nqn, mount_cap
from .test_fleet import until

PVC_A = "pvc-0a1b2c3d-0000-4000-8000-00000000000a"
PVC_B = "pvc-0a1b2c3d-0000-4000-8000-00000000000b"
ORPHAN_A = "pvc-0a1b2c3d-0000-4000-8000-0000000000fa"
ORPHAN_B = "pvc-0a1b2c3d-0000-4000-8000-0000000000fb"
ALLOW = "nvme-tcp-server-allow-host-name"


def publish(vid: str, node: str) -> pb.ControllerPublishVolumeRequest:
    return pb.ControllerPublishVolumeRequest(
        volume_id=vid, node_id=node, volume_capability=mount_cap()
    )


def allowed(fleet: Fleet, appliance: str, slot: str) -> str:
    return str(fleet.sims[appliance].store.disks[slot].nvme_tcp_server_allow_host_name)


def fence_writes(fleet: Fleet, appliance: str) -> list[str]:
    return [line for line in fleet.sims[appliance].commands if f"{ALLOW}=" in line]


async def settle(fleet: Fleet, reason: str = "test") -> None:
    fleet.app.reconciler.trigger(reason)
    await asyncio.wait_for(fleet.app.reconciler.wait_idle(), 15)


async def test_a_volume_is_fenced_on_its_own_appliance_by_its_slot(fenced_fleet: Fleet) -> None:
    fleet = fenced_fleet
    c = fleet.controller
    vb = await fleet.create(PVC_B, B)
    assert vb.volume_id == f"{B}:{PVC_B}"
    before_a = len(fence_writes(fleet, A))
    await c.ControllerPublishVolume(publish(vb.volume_id, "node-a"))
    # B's disk, by its slot (not the id `rds-b:pvc-…`), holds node-a's host; A got nothing.
    assert allowed(fleet, B, PVC_B) == host_nqn("node-a")
    assert any(f'slot="{PVC_B}"' in line for line in fence_writes(fleet, B))
    assert len(fence_writes(fleet, A)) == before_a
    assert PVC_B not in fleet.sims[A].store.disks
    await c.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vb.volume_id, node_id="node-a")
    )
    assert allowed(fleet, B, PVC_B) == NO_HOST
    assert len(fence_writes(fleet, A)) == before_a
    # The fence's series carry the appliance.
    add = "rds_csi_fence_changes_total"
    assert fleet.sample(add, {"appliance": B, "change": "add"}) == 1
    assert fleet.sample(add, {"appliance": B, "change": "remove"}) == 1
    assert fleet.sample(add, {"appliance": A, "change": "add"}) == 0
    # The default appliance's volume: its id is its slot, fenced on A only.
    va = await fleet.create(PVC_A)
    await c.ControllerPublishVolume(publish(va.volume_id, "node-b"))
    assert allowed(fleet, A, PVC_A) == host_nqn("node-b")
    assert allowed(fleet, B, PVC_B) == NO_HOST
    assert fleet.sample(add, {"appliance": A, "change": "add"}) == 1


async def test_session_evidence_from_one_appliance_never_clears_the_other_s(
    fenced_fleet: Fleet,
) -> None:
    fleet = fenced_fleet
    c, app = fleet.controller, fleet.app
    va = await fleet.create(PVC_A)
    vb = await fleet.create(PVC_B, B)
    for vol in (va, vb):
        await c.ControllerPublishVolume(publish(vol.volume_id, "node-a"))
    await settle(fleet)
    # A goes down: its listing is absent evidence. B lists no session of node-a anywhere.
    fleet.sims[A].faults.refuse = True
    fleet.sims[A].drop_connections()
    await until(lambda: fleet.rds(A).state == "backoff", fleet, step=0.0)
    app.nodes.observe(NodeView("node-a", ready=False, host_nqn=host_nqn("node-a")))
    fleet.clock.advance(app.config.grace_period * 3)
    await settle(fleet)
    # B's volume: no session on B is evidence there: released, node-a fenced off on B.
    assert app.attachments.nodes(vb.volume_id) == ()
    assert allowed(fleet, B, PVC_B) == NO_HOST
    # A's volume: B's listing says nothing about it, and A's is absent: kept, fence kept.
    assert app.attachments.nodes(va.volume_id) == ("node-a",)
    assert allowed(fleet, A, PVC_A) == host_nqn("node-a")
    listed = "rds_csi_session_listings_total"
    assert fleet.sample(listed, {"appliance": B, "outcome": "listed"}) >= 1
    assert fleet.sample(listed, {"appliance": A, "outcome": "listed"}) == 0
    # A back, with node-a's session on it: A's own listing keeps its volume attached.
    fleet.sims[A].register_host_connection(PVC_A, host_nqn("node-a"))
    fleet.sims[A].faults.refuse = False
    await until(lambda: fleet.rds(A).connected, fleet)
    await settle(fleet)
    assert app.attachments.nodes(va.volume_id) == ("node-a",)
    assert fleet.sample(listed, {"appliance": A, "outcome": "listed"}) >= 1
    # ... and once that session is gone, A's listing is the evidence that clears it.
    fleet.sims[A].unregister_host_connection(slot=PVC_A, host_nqn=host_nqn("node-a"))
    await settle(fleet)
    assert app.attachments.nodes(va.volume_id) == ()
    assert allowed(fleet, A, PVC_A) == NO_HOST


async def test_the_sweep_finds_each_appliance_s_orphans_there_only(fenced_fleet: Fleet) -> None:
    fleet = fenced_fleet
    app = fleet.app
    for name, appliance in ((PVC_A, ""), (ORPHAN_A, ""), (PVC_B, B), (ORPHAN_B, B)):
        await fleet.create(name, appliance)

    async def claims() -> Claims:
        # The PVs: A's volume by its slot, B's by `rds-b:<slot>`; and an id of the default
        # appliance that happens to carry B's orphan's slot: it claims nothing on B.
        return Claims(frozenset({PVC_A, f"{B}:{PVC_B}", ORPHAN_B}), frozenset())

    app.audit.claims = claims
    await settle(fleet, "sweep")  # found unclaimed once: suspected if the next sweep agrees
    assert all(not app.audit[n].sweep.models for n in (A, B))  # type: ignore[union-attr]
    await settle(fleet, "sweep")
    suspected = {n: sorted(m.volume for m in app.audit[n].sweep.models.values()) for n in (A, B)}  # type: ignore[union-attr]
    assert suspected == {A: [ORPHAN_A], B: [ORPHAN_B]}
    actions = "rds_csi_orphan_actions_total"
    for name in (A, B):
        assert fleet.sample(actions, {"appliance": name, "action": "suspect"}) >= 1
        done = {"appliance": name, "outcome": "completed"}
        assert fleet.sample("rds_csi_orphan_sweeps_total", done) >= 1

    # B down: the interval's sweep runs on A, B's stays due until it is back.
    fleet.sims[B].faults.refuse = True
    fleet.sims[B].drop_connections()
    await until(lambda: fleet.rds(B).state == "backoff", fleet, step=0.0)
    swept = {n: app.audit[n].sweeps for n in (A, B)}
    await settle(fleet, "sweep")
    assert app.audit[A].sweeps == swept[A] + 1 and app.audit[B].sweeps == swept[B]
    fleet.sims[B].faults.refuse = False
    await until(lambda: fleet.rds(B).connected, fleet)
    await settle(fleet)  # any pass after the reconnect: B's sweep was owed
    assert app.audit[B].sweeps == swept[B] + 1
    assert app.audit[A].sweeps == swept[A] + 1  # A's was not: no new link, no interval

    # B hung (connected, never answering): the pass waits a bounded time, A's sweep runs.
    app.audit.wait_s = 0.5
    fleet.sims[B].faults.hang_match = ""
    try:
        await settle(fleet, "sweep")
        assert app.audit[A].sweeps == swept[A] + 2
        assert app.audit[B].sweeps == swept[B] + 1  # still hanging
        await settle(fleet, "sweep")  # B's work still running: skipped, not waited for
        assert app.audit[A].sweeps == swept[A] + 3
    finally:
        fleet.sims[B].faults.hang_match = None
        fleet.sims[B].faults.release_hangs()
