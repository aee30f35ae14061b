"""Recovery without a human: the acceptance scenarios of the Kubernetes integration, with
the controller deriving every attachment from the cluster's objects."""

from __future__ import annotations

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb

from .conftest import GRACE, STEP, Replica, World, host_nqn, until
from .sidecars import Sidecars

OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}


def states(r: Replica, vids: list[str]) -> list[str]:
    """The leader's kept Attachment models (what it reconciles and exports)."""
    models = r.app.passes.models
    return [models[v].state if v in models else "detached" for v in vids]


async def setup(world: World, *nodes: str, pods: tuple[str, ...] = ("ctl-a",)) -> Sidecars:
    for n in nodes:
        world.node(n)
    for pod in pods:
        await world.replica(pod)
    await world.elect(pods[0])
    sidecars = Sidecars(world, pods)
    await sidecars.start()
    for kind in ("provisioner", "attacher", "resizer", "snapshotter"):
        await sidecars.move(kind, pods[0])
    return sidecars


async def attached(sidecars: Sidecars, n: int, node: str, tag: str) -> list[str]:
    vids = []
    for i in range(n):
        pvc = f"pvc-00000000-0000-4000-8000-00000000{tag}{i:02d}"
        vid = await sidecars.provision(pvc)
        await sidecars.attach(vid, pvc, node)
        vids.append(vid)
    return vids


async def test_deleted_node_releases_its_volumes_at_grace_expiry(world: World) -> None:
    sidecars = await setup(world, "n1", "n2")
    r = world.replicas["ctl-a"]
    vids = await attached(sidecars, 3, "n1", "a0")
    startup = world.events("StartupReconciliation")
    assert (
        len(startup) == 1 and startup[0]["reportingController"] == f"{r.app.config.name}/controller"
    )
    await world.settle()
    world.delete_node("n1")
    await until(lambda: states(r, vids) == ["stale"] * 3, "stale after the node is deleted")
    await world.tick(GRACE - STEP)
    assert states(r, vids) == ["stale"] * 3  # never before the grace period
    await world.tick(STEP)
    assert states(r, vids) == ["detached"] * 3
    await until(lambda: len(world.events("StaleAttachmentCleared")) == 3, "three events")
    ev = world.events("StaleAttachmentCleared")[0]
    assert ev["regarding"]["kind"] == "PersistentVolumeClaim"
    assert ev["reportingInstance"] == "ctl-a"
    assert r.sample("rds_csi_attachment_stale_cleared_total") == 3
    # the volumes can now go to a healthy node, though n1's VolumeAttachments linger
    await sidecars.attach(vids[0], "pvc-00000000-0000-4000-8000-00000000a000", "n2")


async def test_same_while_the_appliance_restarts(world: World) -> None:
    sidecars = await setup(world, "n1")
    r = world.replicas["ctl-a"]
    vids = await attached(sidecars, 3, "n1", "b0")
    await world.sim.stop()
    await until(lambda: r.app.rds.state == "backoff", "appliance lost")
    world.delete_node("n1")
    await until(lambda: states(r, vids) == ["stale"] * 3, "stale")
    await world.sim.start()
    await world.tick(r.app.rds.model.delay)
    await until(lambda: r.app.rds.connected, "reconnected")
    await world.settle()
    await world.tick(GRACE)
    assert states(r, vids) == ["detached"] * 3


async def test_a_new_leader_half_way_keeps_the_grace_period(world: World) -> None:
    sidecars = await setup(world, "n1", pods=("ctl-a", "ctl-b"))
    first, second = world.replicas["ctl-a"], world.replicas["ctl-b"]
    vids = await attached(sidecars, 3, "n1", "c0")
    world.delete_node("n1")
    await until(lambda: states(first, vids) == ["stale"] * 3, "stale")
    await world.tick(GRACE / 2)
    await first.stop(release=False)  # the leader crashes half-way through the grace period
    config = second.app.config
    await world.tick(config.lease_duration + 2 * config.retry_period + STEP)
    await until(lambda: second.leads, "takeover")
    # The new leader dates the loss from the objects: the grace period has run out by now
    # (a restarted one would hold the volumes for another 30 s).
    await until(lambda: states(second, vids) == ["detached"] * 3, "cleared by ctl-b")
    await until(lambda: len(world.events("StaleAttachmentCleared")) == 3, "events from ctl-b")
    assert {e["reportingInstance"] for e in world.events("StaleAttachmentCleared")} == {"ctl-b"}


async def test_node_back_within_grace_keeps_its_volumes(world: World) -> None:
    sidecars = await setup(world, "n1")
    r = world.replicas["ctl-a"]
    vids = await attached(sidecars, 3, "n1", "d0")
    world.node("n1", ready=False)
    await until(lambda: states(r, vids) == ["stale"] * 3, "stale when not ready")
    await world.tick(GRACE / 2)
    world.node("n1", ready=True)
    await until(lambda: states(r, vids) == ["attached"] * 3, "back to attached")
    await world.tick(GRACE * 2)
    assert states(r, vids) == ["attached"] * 3
    assert world.events("StaleAttachmentCleared") == []


async def test_not_ready_without_evidence_is_never_cleared(world: World) -> None:
    sidecars = await setup(world, "n1", "n2")
    r = world.replicas["ctl-a"]
    [vid] = await attached(sidecars, 1, "n1", "e0")
    # n1 is still connected to the volume: the appliance lists its session
    world.sim.register_host_connection(vid, host_nqn("n1"))
    world.node("n1", ready=False)
    await until(lambda: states(r, [vid]) == ["stale"], "stale")
    await world.tick(GRACE * 3)
    assert states(r, [vid]) == ["stale"]  # suspicion alone is not evidence
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sidecars.attach(vid, "pvc-00000000-0000-4000-8000-00000000e000", "n2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    world.kube.put(
        {**world.kube.get("v1", "Node", "n1"), "spec": {"taints": [OUT_OF_SERVICE]}}  # type: ignore[dict-item]
    )
    await until(lambda: states(r, [vid]) == ["detached"], "cleared on the taint")


async def test_any_replica_serves_and_only_the_leader_reconciles(world: World) -> None:
    sidecars = await setup(world, "n1", "n2", pods=("ctl-a", "ctl-b"))
    a, b = world.replicas["ctl-a"], world.replicas["ctl-b"]
    assert a.leads and not b.leads and not b.app.reconciler.running
    await sidecars.move("attacher", "ctl-b")
    await sidecars.move("provisioner", "ctl-b")
    [vid] = await attached(sidecars, 1, "n1", "f0")  # through the follower
    await world.settle()
    # a single-node volume goes to one node, whichever replica is asked
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sidecars.attach(vid, "pvc-00000000-0000-4000-8000-00000000f000", "n2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await sidecars.move("attacher", "ctl-a")
    with pytest.raises(grpc.aio.AioRpcError):
        await sidecars.attach(vid, "pvc-00000000-0000-4000-8000-00000000f000", "n2")
    # both list it published on n1, from the informer view
    for r in (a, b):
        listed = await r.controller.ListVolumes(pb.ListVolumesRequest())
        assert {e.volume.volume_id: list(e.status.published_node_ids) for e in listed.entries} == {
            vid: ["n1"]
        }
        got = await r.controller.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid))
        assert list(got.status.published_node_ids) == ["n1"]
    # per-volume and per-node gauges: exported by the leader only
    assert a.sample("rds_csi_attachment_state", {"state": "attached"}) == 1
    assert b.sample("rds_csi_attachment_state", {"state": "attached"}) == 0
    assert (a.sample("rds_csi_leader"), b.sample("rds_csi_leader")) == (1, 0)
    assert a.app.leadership.exported() and not b.app.leadership.exported()
    await sidecars.stop()


async def test_the_socket_answers_only_after_the_informers_synced(world: World) -> None:
    world.node("n1")
    world.kube.delay(0.3, "volumeattachments")
    r = await world.replica("ctl-a", wait=False)
    await until(lambda: r.app.rds.connected, "connected")
    assert not r.binding.synced.is_set()
    assert not world.socket("ctl-a").exists()  # no call can be answered from an empty view
    await until(lambda: r.binding.synced.is_set(), "synced", 10)
    assert world.socket("ctl-a").exists()
    probe = await r.identity.Probe(pb.ProbeRequest())
    assert probe.ready.value
    world.kube.delay(0.0, "volumeattachments")


async def test_a_leader_that_cannot_sync_lets_go_and_backs_off(world: World) -> None:
    world.node("n1")
    world.config_overrides = {"lease_duration": 8.0, "renew_deadline": 6.0, "retry_period": 1.0}
    a = await world.replica("ctl-a")
    await world.replica("ctl-b")
    await world.elect("ctl-a")
    bound = a.binding.sync_timeout
    assert bound == 30.0  # max(30 s, twice the lease duration)
    # ctl-a's VolumeAttachment watch goes half-open and every list after it fails
    world.kube.half_open("volumeattachments")
    world.kube.throttle(10_000, retry_after=1, resource="volumeattachments")
    await world.tick(a.binding.attachments_informer._read_timeout or 0)  # noticed
    await until(lambda: not a.binding.current(), "ctl-a behind")
    await world.tick(bound)
    await until(lambda: not a.leads, "ctl-a let go")
    assert a.binding.releases == 1
    assert a.sample("rds_csi_lease_transitions_total", {"event": "released"}) == 1

    # b is behind too (same API server): it may take the Lease, and lets go in turn.
    def lease_writes() -> int:
        return sum(
            1 for x in world.kube.accesses() if x.resource == "leases" and x.verb == "update"
        )

    before = lease_writes()
    await world.tick(3 * bound)
    # at most a renewal a second and a few hand-overs: no tight loop of Lease writes
    assert lease_writes() - before <= 3 * bound + 10
    world.kube._throttle.clear()  # the API server heals
    for _ in range(300):
        if world.leader() is not None and world.leader().binding.current():  # type: ignore[union-attr]
            break
        await world.tick(STEP)
    leader = world.leader()
    assert leader is not None and leader.binding.current()


async def test_losing_the_lease_stops_reconciler_work_before_its_next_command(
    world: World,
) -> None:
    world.node("n1")
    r = await world.replica("ctl-a")
    await world.elect("ctl-a")
    config = r.app.config
    # renewals start failing: past the renew deadline the replica no longer counts as the
    # leader on its own clock, before its elector has even noticed
    world.kube.throttle(10_000, retry_after=1, resource="leases")
    world.clock.advance(config.renew_deadline + 0.5)
    assert not r.binding.elector.is_leader
    await r.app.audit.wait()  # the appliances' work from earlier passes (tasks of their own)
    before = len(world.sim.commands)
    r.app.reconciler.trigger("test")
    await r.app.reconciler.wait_idle()
    assert len(world.sim.commands) == before
    await world.settle()
    await until(lambda: not r.leads, "leadership ended")
    world.kube._throttle.clear()


async def test_liveness_is_the_process_readiness_the_appliance(world: World) -> None:
    import asyncio

    world.node("n1")
    r = await world.replica("ctl-a")
    assert r.app.alive() == (True, "ok") and r.app.ready() == (True, "ok")
    await world.sim.stop()
    await until(lambda: not r.app.rds.connected, "appliance lost")
    assert r.app.alive() == (True, "ok")  # an outage is no reason to restart
    ready, why = r.app.ready()
    assert not ready and "appliance connection" in why
    assert not (await r.identity.Probe(pb.ProbeRequest())).ready.value
    await world.sim.start()
    # a task of the process that died is one
    informer = r.binding.volumes_informer
    assert informer.task is not None
    informer.task.cancel()
    await asyncio.gather(informer.task, return_exceptions=True)

    async def crash() -> None:
        raise RuntimeError("informer bug")

    informer._task = asyncio.get_running_loop().create_task(crash(), name="informer-pv")
    await asyncio.gather(informer._task, return_exceptions=True)
    alive, why = r.app.alive()
    assert not alive and "informer bug" in why
