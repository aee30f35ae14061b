"""A fleet of two simulated appliances behind one controller, through the real gRPC socket.

The isolation test drives the volumes of one appliance without a pause while the other is
dropped, refused, hung and left to come back by itself; the upgrade test turns a
single-appliance configuration into a fleet under the volumes it made."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
import grpc

from rdscsi.csi import csi_pb2 as pb

from .conftest import (
    DRIVER,
    GIB,
    A,
    B,
    Fleet,
    fleet_yaml,
    mount_cap,
    start_fleet,
    start_sims,
    stop_fleet,
)

PVC_A = "pvc-0a1b2c3d-0000-4000-8000-00000000000a"
PVC_B = "pvc-0a1b2c3d-0000-4000-8000-00000000000b"
KEY = f"{DRIVER}/appliance"


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


def publish(vid: str, node: str) -> pb.ControllerPublishVolumeRequest:
    return pb.ControllerPublishVolumeRequest(
        volume_id=vid, node_id=node, volume_capability=mount_cap()
    )


def snapshot(name: str, source: str) -> pb.CreateSnapshotRequest:
    return pb.CreateSnapshotRequest(name=name, source_volume_id=source)


async def until(predicate: Any, fleet: Fleet, step: float = 1.0, limit: int = 200) -> None:
    """Let time pass on the driver's clock until `predicate()` holds (backoff timers fire)."""
    for _ in range(limit):
        if predicate():
            return
        fleet.clock.advance(step)
        await asyncio.sleep(0.02)
    raise AssertionError("the driver never got there")


class Traffic:
    """Every kind of call about one appliance's volumes, in a loop, each failure kept."""

    def __init__(self, fleet: Fleet, vid: str, snap: str, appliance: str) -> None:
        self.fleet, self.vid, self.snap, self.appliance = fleet, vid, snap, appliance
        self.calls: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _one(self, method: str, call: Any) -> Any:
        try:
            out = await asyncio.wait_for(call, 5)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            self.failures.append(f"{method}: {exc!r}"[:300])
            return None
        self.calls[method] += 1
        return out

    async def _loop(self) -> None:
        c, vid, n = self.fleet.controller, self.vid, 0
        while not self._stop.is_set():
            n += 1
            await self._one(
                "ControllerGetVolume",
                c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid)),
            )
            await self._one(
                "ControllerPublishVolume", c.ControllerPublishVolume(publish(vid, "node-b"))
            )
            await self._one(
                "ControllerUnpublishVolume",
                c.ControllerUnpublishVolume(
                    pb.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-b")
                ),
            )
            await self._one(
                "ValidateVolumeCapabilities",
                c.ValidateVolumeCapabilities(
                    pb.ValidateVolumeCapabilitiesRequest(
                        volume_id=vid, volume_capabilities=[mount_cap()]
                    )
                ),
            )
            await self._one(
                "ControllerExpandVolume",
                c.ControllerExpandVolume(
                    pb.ControllerExpandVolumeRequest(
                        volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=2 * GIB)
                    )
                ),
            )
            await self._one(
                "ListSnapshots", c.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=vid))
            )
            await self._one(
                "GetSnapshot", c.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=self.snap))
            )
            await self._one(
                "GetCapacity",
                c.GetCapacity(pb.GetCapacityRequest(parameters={"appliance": self.appliance})),
            )
            name = f"pvc-0a1b2c3d-0000-4000-8000-{n:012d}"
            made = await self._one("CreateVolume", self.fleet.create(name, self.appliance))
            if made is not None:
                snap = await self._one(
                    "CreateSnapshot",
                    c.CreateSnapshot(snapshot(f"snapshot-{name[4:]}", made.volume_id)),
                )
                if snap is not None:
                    await self._one(
                        "DeleteSnapshot",
                        c.DeleteSnapshot(
                            pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot.snapshot_id)
                        ),
                    )
                await self._one(
                    "DeleteVolume", c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=made.volume_id))
                )
            await asyncio.sleep(0)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def rounds(self, count: int) -> None:
        """Until `count` more full rounds have run."""
        target = self.calls["DeleteVolume"] + count
        for _ in range(500):
            if self.calls["DeleteVolume"] >= target or self.failures:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"traffic stalled: {dict(self.calls)}")

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


async def test_one_appliance_dropped_and_refused_the_others_volumes_served_throughout(
    fleet: Fleet,
) -> None:
    c = fleet.controller
    # Volumes on both: the default appliance's id has no name, the other's carries it.
    va = await fleet.create(PVC_A)
    vb = await fleet.create(PVC_B, B)
    assert (va.volume_id, vb.volume_id) == (PVC_A, f"{B}:{PVC_B}")
    assert dict(va.accessible_topology[0].segments) == {KEY: A}
    assert dict(vb.accessible_topology[0].segments) == {f"{KEY}.{B}": B}
    assert (va.volume_context["appliance"], vb.volume_context["appliance"]) == (A, B)
    assert sorted(fleet.sims[A].store.disks) == [PVC_A]  # each on its own box only
    assert sorted(fleet.sims[B].store.disks) == [PVC_B]
    sa = (await c.CreateSnapshot(snapshot("snapshot-a", va.volume_id))).snapshot
    sb = (await c.CreateSnapshot(snapshot("snapshot-b", vb.volume_id))).snapshot
    assert sb.snapshot_id.startswith(f"{B}:snap-") and sb.source_volume_id == vb.volume_id
    listed = await c.ListVolumes(pb.ListVolumesRequest())
    assert sorted(e.volume.volume_id for e in listed.entries) == [PVC_A, vb.volume_id]
    await c.ControllerPublishVolume(publish(vb.volume_id, "node-a"))

    traffic = Traffic(fleet, va.volume_id, sa.snapshot_id, A)
    traffic.start()
    await traffic.rounds(1)

    # B dropped, and every new connection refused.
    fleet.sims[B].faults.refuse = True
    fleet.sims[B].drop_connections()
    await until(lambda: fleet.rds(B).state == "backoff", fleet, step=0.0)
    await traffic.rounds(2)

    # B's volumes answer UNAVAILABLE at once, naming the appliance; A's are untouched.
    for call in (
        c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vb.volume_id)),
        c.ControllerPublishVolume(publish(vb.volume_id, "node-b")),
        c.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=sb.snapshot_id)),
        fleet.create("pvc-0a1b2c3d-0000-4000-8000-0000000000bb", B),
        c.GetCapacity(pb.GetCapacityRequest(parameters={"appliance": B})),
    ):
        code, details = await asyncio.wait_for(code_of(call), 5)
        assert code == grpc.StatusCode.UNAVAILABLE and B in details, details
    # A list is all or nothing: without B's volumes it would look like their deletion.
    code, details = await code_of(c.ListVolumes(pb.ListVolumesRequest()))
    assert code == grpc.StatusCode.UNAVAILABLE and f"appliance {B}" in details, details
    # ... but the calls that need no appliance still work for B's volumes.
    await c.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=vb.volume_id, node_id="node-a")
    )

    # What Probe, readiness, metrics and events say: ready (A serves), B named as down.
    assert (await fleet.identity.Probe(pb.ProbeRequest())).ready.value is True
    ok, why = fleet.app.ready()
    assert ok and f"appliance connection {B}: backoff" in why and A not in why
    assert fleet.sample("rds_csi_rds_connection_state", {"appliance": A}) == 1
    assert fleet.sample("rds_csi_rds_connection_state", {"appliance": B}) == 0
    failed = {"appliance": B, "status": "failure"}
    assert fleet.sample("rds_csi_rds_reconnect_total", failed) >= 1
    assert fleet.sample("rds_csi_rds_reconnect_total", {**failed, "appliance": A}) == 0
    lost = [e for e in fleet.sink.events if e.reason == "RDSDisconnected"]
    assert [e.regarding.name for e in lost] == [B] and B in lost[0].note

    # A reconcile pass runs through while B is down, and A's pool figures are read.
    fleet.app.reconciler.trigger("test")
    await asyncio.wait_for(fleet.app.reconciler.wait_idle(), 5)
    assert fleet.app.pool is not None
    await asyncio.wait_for(fleet.app.pool.wait(), 5)
    assert fleet.sample("rds_csi_pool_bytes", {"appliance": A, "kind": "free"}) > 0

    # B comes back by itself: the same connection redials on its backoff, nothing else.
    fleet.sims[B].faults.refuse = False
    await until(lambda: fleet.rds(B).connected, fleet)
    await traffic.rounds(1)
    got = await c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vb.volume_id))
    assert got.volume.volume_id == vb.volume_id
    await c.ControllerPublishVolume(publish(vb.volume_id, "node-b"))
    assert (await c.GetSnapshot(pb.GetSnapshotRequest(snapshot_id=sb.snapshot_id))).snapshot
    assert fleet.sample("rds_csi_rds_reconnect_total", {"appliance": B, "status": "success"}) == 1
    assert fleet.app.ready() == (True, "ok")
    assert [e.reason for e in fleet.sink.events if e.regarding.name == B][-1] == "RDSReconnected"

    # B hangs (connected, never answering): A's calls still answer at once.
    fleet.sims[B].faults.hang_match = ""
    hung = asyncio.ensure_future(
        c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vb.volume_id))
    )
    await asyncio.wait_for(fleet.sims[B].faults.wait_hanging(1), 5)
    await traffic.rounds(1)
    assert not hung.done()
    fleet.sims[B].faults.hang_match = None
    fleet.sims[B].faults.release_hangs()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await asyncio.wait_for(hung, 10)

    await traffic.stop()
    assert traffic.failures == []
    assert min(traffic.calls.values()) >= 4 and len(traffic.calls) == 12, dict(traffic.calls)


async def test_placement_and_capacity_follow_the_class_and_the_topology(fleet: Fleet) -> None:
    c = fleet.controller
    both = pb.Topology(segments={KEY: A, f"{KEY}.{B}": B})
    only_b = pb.Topology(segments={f"{KEY}.{B}": B})
    # No parameter: the default appliance; refused where the topology excludes it.
    v1 = await fleet.create(
        PVC_A, accessibility_requirements=pb.TopologyRequirement(requisite=[both], preferred=[both])
    )
    assert v1.volume_context["appliance"] == A
    code, details = await code_of(
        fleet.create("w", accessibility_requirements=pb.TopologyRequirement(requisite=[only_b]))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"appliance {A} (the default" in details
    v2 = await fleet.create(
        PVC_B, B, accessibility_requirements=pb.TopologyRequirement(requisite=[only_b])
    )
    assert v2.volume_context["appliance"] == B and v2.volume_id == f"{B}:{PVC_B}"
    # Named by the class; a name the fleet lacks is refused, naming it and those it has.
    for call in (
        fleet.create("x", "rds-c"),
        c.GetCapacity(pb.GetCapacityRequest(parameters={"appliance": "rds-c"})),
    ):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "'rds-c' is not an appliance" in details and f"{A}, {B}" in details
    code, details = await code_of(
        fleet.create(
            "y", A, accessibility_requirements=(pb.TopologyRequirement(requisite=[only_b]))
        )
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and A in details
    # A copy goes where its source is; a class naming another box is refused.
    snap = (await c.CreateSnapshot(snapshot("snapshot-b", v2.volume_id))).snapshot
    source = pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
    )
    restored = await fleet.create("restored", volume_content_source=source)
    assert restored.volume_context["appliance"] == B
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    code, details = await code_of(fleet.create("z", A, volume_content_source=source))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "source is on appliance" in details
    # Capacity: per appliance, through the class's parameter and the node's segment.
    free_a = fleet.sims[A].store.pool_size - fleet.sims[A].store.used_bytes()
    free_b = fleet.sims[B].store.pool_size - fleet.sims[B].store.used_bytes()

    async def capacity(appliance: str, segments: dict[str, str] | None) -> int:
        req = pb.GetCapacityRequest(parameters={"appliance": appliance} if appliance else {})
        if segments is not None:
            req.accessible_topology.CopyFrom(pb.Topology(segments=segments))
        return int((await c.GetCapacity(req)).available_capacity)

    assert await capacity(B, None) == free_b and await capacity(A, None) == free_a
    assert await capacity("", dict(both.segments)) == free_a  # the default appliance
    assert await capacity("", dict(only_b.segments)) == 0  # the default is not reached there
    assert await capacity(A, dict(only_b.segments)) == 0  # that class cannot be made there
    assert await capacity(B, {KEY: A}) == 0


async def test_old_single_appliance_ids_still_resolve_after_the_config_becomes_a_fleet(
    tmp_path: Path, client_key: asyncssh.SSHKey, key_file: Path
) -> None:
    sims = await start_sims(tmp_path, client_key)
    fleet_data = fleet_yaml(sims, key_file, tmp_path)
    single = {k: v for k, v in fleet_data.items() if k != "appliances"}
    try:
        # Before: one appliance, the form every earlier release was configured with.
        one = await start_fleet(tmp_path, sims, key_file, single)
        try:
            c = one.controller
            old = await one.create(PVC_A)
            old_snap = (await c.CreateSnapshot(snapshot("snapshot-old", old.volume_id))).snapshot
            await c.ControllerPublishVolume(publish(old.volume_id, "node-a"))
            assert (old.volume_id, old_snap.snapshot_id) == (PVC_A, old_snap.snapshot_id)
            assert ":" not in old_snap.snapshot_id
            assert dict(old.accessible_topology[0].segments) == {KEY: A}
        finally:
            await stop_fleet(one)
        # After: the same `rds:` section, one more appliance beside it.
        fleet = await start_fleet(tmp_path, sims, key_file, fleet_data)
        try:
            c = fleet.controller
            got = await c.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=PVC_A))
            assert got.volume.volume_id == PVC_A and list(got.status.published_node_ids) == [
                "node-a"
            ]
            assert dict(got.volume.accessible_topology[0].segments) == {KEY: A}  # PVs hold it
            await c.ControllerPublishVolume(publish(PVC_A, "node-a"))  # idempotent, as before
            ok = await c.ValidateVolumeCapabilities(
                pb.ValidateVolumeCapabilitiesRequest(
                    volume_id=PVC_A, volume_capabilities=[mount_cap()]
                )
            )
            assert ok.HasField("confirmed")
            grown = await c.ControllerExpandVolume(
                pb.ControllerExpandVolumeRequest(
                    volume_id=PVC_A, capacity_range=pb.CapacityRange(required_bytes=2 * GIB)
                )
            )
            assert grown.capacity_bytes == 2 * GIB
            snaps = await c.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=PVC_A))
            assert [s.snapshot.snapshot_id for s in snaps.entries] == [old_snap.snapshot_id]
            source = pb.VolumeContentSource(
                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=old_snap.snapshot_id)
            )
            restored = await fleet.create("restored", volume_content_source=source)
            assert ":" not in restored.volume_id  # on the default appliance: the old form
            new_b = await fleet.create(PVC_B, B)
            listed = await c.ListVolumes(pb.ListVolumesRequest())
            ids = sorted(e.volume.volume_id for e in listed.entries)
            assert ids == sorted([PVC_A, restored.volume_id, new_b.volume_id])
            # One spelling per volume: the default appliance's name in front is not an id.
            code, _ = await code_of(c.ControllerPublishVolume(publish(f"{A}:{PVC_A}", "node-b")))
            assert code == grpc.StatusCode.NOT_FOUND
            # An id naming an appliance the configuration lacks is never answered "gone".
            code, details = await code_of(
                c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=f"rds-z:{PVC_A}"))
            )
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "rds-z" in details
            await c.ControllerUnpublishVolume(
                pb.ControllerUnpublishVolumeRequest(volume_id=PVC_A, node_id="node-a")
            )
            await c.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=old_snap.snapshot_id))
            await c.DeleteVolume(pb.DeleteVolumeRequest(volume_id=PVC_A))
            assert PVC_A not in sims[A].store.disks and PVC_B in sims[B].store.disks
        finally:
            await stop_fleet(fleet)
    finally:
        for sim in sims.values():
            await sim.stop()
