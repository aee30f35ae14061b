"""The orphan sweep in each mode, on a cluster holding every kind of object it must tell
apart: a volume and a snapshot claimed (their PV, their VolumeSnapshotContent), a volume whose
PV was deleted while the controller was down, a clone whose PV never came, a snapshot no
VolumeSnapshotContent names, the halves a clone and a snapshot cut short on the appliance
left, disks and files that are not the driver's, and a fresh volume whose PV comes within
the minimum age. In each mode exactly what should be reported, quarantined, deleted or
restored is, and nothing else is touched; a volume whose PV comes back during its
quarantine is restored whole."""

from __future__ import annotations

import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.explain.appliance import explain_appliance
from rdscsi.explain.service import for_controller
from rdscsi.testing.kubeapi import objects as k8s

from .conftest import DRIVER, World, mount_cap
from .sidecars import Sidecars

POD = "ctl-a"
MIN_AGE, RETENTION, EVERY = 60.0, 300.0, 30.0
STEP = 10.0
CLAIMED = "pvc-00000000-0000-4000-8000-0000000000c1"
GONE = "pvc-00000000-0000-4000-8000-0000000000c2"  # its PV deleted while the controller was down
FRESH = "pvc-00000000-0000-4000-8000-0000000000c3"  # its PV comes within the minimum age
CLONE = "pvc-00000000-0000-4000-8000-0000000000c4"  # a clone whose PV never came
HALF_CLONE = "pvc-00000000-0000-4000-8000-0000000000c5"
VOL = "storage-pool/k8s/vol"
SNAP = "storage-pool/k8s/snap"


async def setup(world: World, mode: str) -> tuple[Sidecars, dict[str, str]]:
    world.config_overrides = {
        "orphans": mode,
        "orphan_min_age": MIN_AGE,
        "orphan_retention": RETENTION,
        "sweep_interval": EVERY,
        # long leases: time moves in STEP jumps here
        "lease_duration": 600.0,
        "renew_deadline": 400.0,
        "retry_period": STEP,
    }
    world.node("n1")
    await world.replica(POD)
    await world.elect(POD)
    sidecars = Sidecars(world, (POD,))
    await sidecars.start()
    for pvc in (CLAIMED, GONE):
        await sidecars.provision(pvc)
    kept = await sidecars.snapshot(CLAIMED, "snapshot-kept")
    lost = await sidecars.snapshot(CLAIMED, "snapshot-lost")
    world.kube.put(k8s.volume_snapshot_content("snapcontent-kept", DRIVER, kept))
    controller = world.replicas[POD].controller
    source = pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=CLAIMED))
    await controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=CLONE, volume_capabilities=[mount_cap()], volume_content_source=source
        )
    )
    # What a clone and a snapshot cut short on the appliance leave: a copy's file, no disk.
    files = world.sim.store.files_root
    half = {
        "clone": f"{VOL}/{HALF_CLONE}.FROM.volume.{CLAIMED}.AS.ext4.snw.img",
        "snapshot": f"{SNAP}/snap-half.OF.{CLAIMED}.AT.1750000000000.AS.ext4.snw.img",
    }
    for name in half.values():
        (files / name).write_bytes(b"half")
    # Not the driver's: another slot, our slot prefix outside our directory, stray files.
    for line in (
        '/disk add type=file file-path="/storage-pool/other/data.img" file-size=1M slot="data-1"',
        '/disk add type=file file-path="/storage-pool/other/p.img" file-size=1M slot="pvc-x1"',
    ):
        assert (await world.sim.execute(line)).ok
    (files / VOL / "notes.img").write_bytes(b"not ours")
    (files / "storage-pool/k8s/README.img").write_bytes(b"not ours either")
    # The controller is down while GONE's PV is deleted; it comes back and sweeps.
    await world.replicas[POD].stop()
    world.kube.remove("v1", "PersistentVolume", GONE)
    await world.replica(POD)
    await world.elect(POD)
    await world.settle()
    return sidecars, {"kept": kept, "lost": lost, **half}


def reasons(world: World, reason: str) -> list[str]:
    """Each object the Events of `reason` name (a volume's have a series of their own; the
    snapshots' and files' share one, counted in it)."""
    out = []
    for e in world.events(reason):
        out += [e["note"].split(": ")[1]] * e.get("series", {}).get("count", 1)
    return sorted(out)


def count(world: World, reason: str) -> int:
    return len(reasons(world, reason))


def state(world: World) -> tuple[set[str], set[str]]:
    """The appliance: disk slots, and file names under the driver's directory."""
    root = world.sim.store.files_root
    files = {str(p.relative_to(root)) for p in (root / "storage-pool/k8s").rglob("*.img")}
    return set(world.sim.store.disks), files


@pytest.mark.parametrize("mode", ["report", "quarantine", "delete"])
async def test_the_sweep_in_each_mode(world: World, mode: str) -> None:
    sidecars, ids = await setup(world, mode)
    app = world.replicas[POD].app
    disks0, files0 = state(world)
    # the first sweep (the new term's) finds them unclaimed once: nothing suspected yet (an
    # object may be made a moment before its PV exists); the next one suspects them
    assert world.events("OrphanSuspected") == []
    await world.tick(EVERY, step=STEP)
    suspects = [
        f"volume disk {GONE}",
        f"copy disk {CLONE}",
        f"snapshot disk {ids['lost']}",
        f"half-made copy file {ids['clone']}",
        f"half-made copy file {ids['snapshot']}",
    ]
    assert count(world, "OrphanSuspected") == len(suspects)
    named = set(reasons(world, "OrphanSuspected"))
    assert {f"volume disk {GONE}", f"copy disk {CLONE}"} <= named <= set(suspects)
    assert state(world) == (disks0, files0)
    # `rdscsi explain appliance` shows the sweep's objects and what each waits for
    shown = (await explain_appliance(for_controller(app), app.config.rds.name))["appliance"]
    assert shown["fence"] == "allow-host" and shown["sessions"].endswith("session(s) listed")
    assert shown["orphan_sweep"]["mode"] == mode
    assert shown["orphan_sweep"]["suspected"] == len(suspects)
    (line,) = [x for x in shown["orphans"] if x.startswith(f"disk {GONE} (volume): suspected")]
    assert "suspected --sweep [quarantinable]--> quarantined needs" in line
    assert "the minimum age (60 s seen unclaimed) (ends " in line
    assert ("the sweep's mode acts" in line) is (mode == "report")
    assert "first_sighting" not in line
    # a fresh volume, created now: its PV comes within the minimum age
    await sidecars.provision(FRESH)
    await world.tick(MIN_AGE / 2, step=STEP)
    await world.tick(MIN_AGE, step=STEP)
    disks, files = state(world)
    untouched = {CLAIMED, FRESH, ids["kept"], "data-1", "pvc-x1"}
    assert untouched <= disks
    assert {f"{VOL}/notes.img", "storage-pool/k8s/README.img"} <= files
    if mode == "report":
        assert (disks, files) == ({*disks0, FRESH}, {*files0, f"{VOL}/{FRESH}.AS.ext4.snw.img"})
        assert world.events("OrphanQuarantined") == []
    else:
        # quarantined: renamed with the time, export off, nothing deleted
        for slot in (GONE, CLONE, ids["lost"]):
            assert slot not in disks
            (renamed,) = [d for d in disks if d.endswith("." + slot) and d.startswith("q")]
            assert not world.sim.store.disks[renamed].nvme_tcp_export
        for path in (ids["clone"], ids["snapshot"]):
            directory, name = path.rsplit("/", 1)
            assert path not in files
            assert any(f.startswith(f"{directory}/q") and f.endswith("." + name) for f in files)
        assert count(world, "OrphanQuarantined") == 5
    # GONE's PV comes back (a restore of the cluster's objects): GONE is restored whole
    world.kube.put(k8s.pv(GONE, DRIVER, GONE, ("apps", GONE)))
    await world.tick(STEP, step=STEP)
    disks, _ = state(world)
    assert GONE in disks and world.sim.store.disks[GONE].nvme_tcp_export
    if mode != "report":
        assert reasons(world, "OrphanRestored") == [f"volume disk {GONE}"]
    # past the retention: only `delete` deletes, and only what stayed quarantined
    await world.tick(RETENTION + EVERY, step=STEP)
    disks, files = state(world)
    assert untouched | {GONE} <= disks
    if mode == "delete":
        assert disks == untouched | {GONE}
        assert not any(f.rsplit("/", 1)[1].startswith("q") for f in files)
        assert count(world, "OrphanDeleted") == 4
    else:
        assert world.events("OrphanDeleted") == []
        assert len(disks) == len(untouched) + 3  # GONE back, the clone and the snapshot kept
    appliance = app.rds.config.name  # the sweep's series carry the appliance swept

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return world.replicas[POD].sample(name, {"appliance": appliance, **labels})

    assert (sample("rds_csi_orphan_sweeps_total", {"outcome": "completed"}) or 0) >= 3
    assert sample("rds_csi_orphan_actions_total", {"action": "suspect"}) == 5
    expected = {"report": 0, "quarantine": 5, "delete": 5}[mode]
    assert sample("rds_csi_orphan_actions_total", {"action": "quarantine"}) == expected
    assert sample("rds_csi_orphan_actions_total", {"action": "delete"}) == (
        4 if mode == "delete" else 0
    )
    assert app.audit.sweeps >= 3


async def test_a_volume_whose_pv_comes_after_one_sweep_is_never_suspected(world: World) -> None:
    """CreateVolume answered, the provisioner not yet done writing the PV (or it answered on
    another replica): a sweep in between finds the volume unclaimed once, and only a volume
    still unclaimed at the next sweep is suspected."""
    late, never = FRESH, GONE
    world.config_overrides = {
        "orphans": "quarantine",
        "orphan_min_age": MIN_AGE,
        "sweep_interval": EVERY,
        "lease_duration": 600.0,
        "renew_deadline": 400.0,
        "retry_period": STEP,
    }
    world.node("n1")
    await world.replica(POD)
    await world.elect(POD)
    controller = world.replicas[POD].controller
    for name in (late, never):
        request = pb.CreateVolumeRequest(name=name, volume_capabilities=[mount_cap()])
        await controller.CreateVolume(request)
    audit = world.replicas[POD].app.audit

    async def next_sweep() -> None:
        done = audit.sweeps
        while audit.sweeps == done:
            await world.tick(STEP, step=STEP)

    await next_sweep()  # both unclaimed
    assert world.events("OrphanSuspected") == []
    world.kube.put(k8s.pv(late, DRIVER, late, ("apps", late)))
    await world.settle()  # the PV informer has it
    await next_sweep()  # `late` is claimed now
    assert reasons(world, "OrphanSuspected") == [f"volume disk {never}"]
    await world.tick(MIN_AGE + EVERY, step=STEP)
    disks, _ = state(world)
    assert late in disks and never not in disks  # quarantined: the unclaimed one only
