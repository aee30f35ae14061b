"""VolumeStore against the simulator over real SSH: idempotency, exact sizes, ownership."""

from __future__ import annotations

import pytest

from rdscsi.io.rds.commands import Command
from rdscsi.io.rds.errors import (
    AlreadyExistsError,
    InUseError,
    InvalidValueError,
    NotEnoughSpaceError,
    NotFoundError,
    TransportLostError,
    UnavailableError,
    grpc_code_name,
)
from rdscsi.io.rds.volumes import (
    ForeignDiskError,
    Kind,
    Snapshot,
    StoreSettings,
    Volume,
    VolumeSource,
    VolumeStore,
)

from .conftest import Bench, until

GIB = 1 << 30
ODD = GIB + 4097  # not a multiple of anything: catches any rounding
NQN = "nqn.2000-02.com.mikrotik:"


def write(bench: Bench, slot: str, offset: int, data: bytes) -> None:
    with open(bench.sim.backing_path(slot), "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def read(bench: Bench, slot: str, offset: int, length: int) -> bytes:
    with open(bench.sim.backing_path(slot), "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


# --- volumes ---------------------------------------------------------------------------------


async def test_round_trip_with_exact_odd_sizes(bench: Bench) -> None:
    store = bench.store
    a = await store.create_volume("pvc-a", ODD)
    assert a == Volume(
        id="pvc-a",
        size=ODD,
        file_path="/storage-pool/k8s/vol/pvc-a.img",
        nqn=NQN + "pvc-a",
        port=4420,
        source=None,
    )
    assert bench.sim.backing_path("pvc-a").stat().st_size == ODD
    b = await store.create_volume("vol-0123abcd", 3 * GIB + 1)
    assert await store.get_volume("pvc-a") == a
    assert await store.get_volume("pvc-missing") is None
    assert await store.list_volumes() == [a, b]
    await store.delete_volume("pvc-a")
    assert await store.get_volume("pvc-a") is None
    assert await store.list_volumes() == [b]
    assert bench.disks() == ["vol-0123abcd"]
    assert bench.files() == ["k8s/vol/vol-0123abcd.img"]


async def test_capacity_reports_exact_pool_bytes(bench: Bench) -> None:
    pool = await bench.store.capacity()
    await bench.store.create_volume("pvc-a", ODD)
    after = await bench.store.capacity()
    assert after.size == pool.size == bench.sim.pool_size
    assert pool.free - after.free == ODD
    missing = VolumeStore(bench.conn, StoreSettings(pool_root="/no-such-pool/"))
    with pytest.raises(NotFoundError, match="no-such-pool"):
        await missing.capacity()


async def test_create_is_idempotent_and_names_what_differs(bench: Bench) -> None:
    store = bench.store
    first = await store.create_volume("pvc-a", ODD)
    adds = bench.sent("/disk add")
    assert await store.create_volume("pvc-a", ODD) == first
    assert bench.sent("/disk add") == adds  # found, not added again
    with pytest.raises(AlreadyExistsError, match=rf"pvc-a.*size {ODD} bytes, not {ODD + 1}"):
        await store.create_volume("pvc-a", ODD + 1)
    await store.create_snapshot("snap-s", "pvc-a")
    with pytest.raises(AlreadyExistsError, match=r"pvc-a.*source none, not snapshot snap-s"):
        await store.create_volume("pvc-a", ODD, VolumeSource("snapshot", "snap-s"))
    clone = await store.create_volume("pvc-c", ODD, VolumeSource("volume", "pvc-a"))
    assert await store.create_volume("pvc-c", ODD, VolumeSource("volume", "pvc-a")) == clone
    with pytest.raises(AlreadyExistsError, match=r"pvc-c.*source volume pvc-a, not none"):
        await store.create_volume("pvc-c", ODD)
    assert bench.disks() == ["pvc-a", "pvc-c", "snap-s"]


async def test_create_while_unavailable_is_unavailable_not_absent(bench: Bench) -> None:
    await bench.sim.stop()
    await until(bench.conn, lambda: bench.conn.state == "backoff")
    with pytest.raises(UnavailableError, match="volume pvc-a: disk-print") as caught:
        await bench.store.create_volume("pvc-a", GIB)
    assert grpc_code_name(caught.value) == "UNAVAILABLE"
    with pytest.raises(UnavailableError, match="snapshot snap-s"):
        await bench.store.delete_snapshot("snap-s")


async def test_reply_lost_mid_add_retry_converges(bench: Bench) -> None:
    bench.drop_on("disk-add")
    with pytest.raises((TransportLostError, UnavailableError), match="pvc-a"):
        await bench.store.create_volume("pvc-a", ODD)
    assert bench.disks() == ["pvc-a"]  # it happened; the caller could not know
    await bench.reconnected()
    volume = await bench.store.create_volume("pvc-a", ODD)
    assert volume.size == ODD
    assert bench.sent("/disk add") == 1  # never a duplicate
    assert bench.disks() == ["pvc-a"]
    assert bench.files() == ["k8s/vol/pvc-a.img"]


async def test_losing_a_create_race_answers_like_a_retry(bench: Bench) -> None:
    # Another caller adds the same disk between our lookup and our add.
    async def other_caller_first(command: Command) -> None:
        assert (await bench.sim.execute(command.line)).ok

    bench.before("disk-add", other_caller_first)
    volume = await bench.store.create_volume("pvc-a", ODD)
    assert volume.size == ODD and bench.disks() == ["pvc-a"]

    async def other_size_first(command: Command) -> None:
        line = command.line.replace(f'file-size="{ODD}"', f'file-size="{2 * GIB}"')
        assert (await bench.sim.execute(line)).ok

    bench.before("disk-copy", other_size_first)
    with pytest.raises(
        AlreadyExistsError, match=rf"volume pvc-b: .*size {2 * GIB} bytes, not {ODD}"
    ):
        await bench.store.create_volume("pvc-b", ODD, VolumeSource("volume", "pvc-a"))

    async def other_snapshot_first(command: Command) -> None:
        assert (await bench.sim.execute(command.line)).ok

    bench.before("disk-copy", other_snapshot_first)
    snapshot = await bench.store.create_snapshot("snap-1", "pvc-a")
    assert snapshot.source_volume_id == "pvc-a"
    assert bench.disks() == ["pvc-a", "pvc-b", "snap-1"]


async def test_reply_lost_mid_delete_retry_removes_the_file(bench: Bench) -> None:
    store = bench.store
    await store.create_volume("pvc-1", GIB)
    # Neighbours whose file names share the prefix "pvc-1" must survive the file search.
    await store.create_volume("pvc-10", GIB)
    await store.create_volume("pvc-1.2", GIB)
    bench.drop_on("disk-remove")
    with pytest.raises((TransportLostError, UnavailableError), match="pvc-1"):
        await store.delete_volume("pvc-1")
    assert bench.disks() == ["pvc-1.2", "pvc-10"]
    assert "k8s/vol/pvc-1.img" in bench.files()  # the disk went, its file stayed
    await bench.reconnected()
    await store.delete_volume("pvc-1")
    assert bench.files() == ["k8s/vol/pvc-1.2.img", "k8s/vol/pvc-10.img"]
    await store.delete_volume("pvc-1")  # and again: nothing left to do, still success
    assert [v.id for v in await store.list_volumes()] == ["pvc-1.2", "pvc-10"]


async def test_reply_lost_mid_delete_of_a_copy_finds_its_file(bench: Bench) -> None:
    await bench.store.create_volume("pvc-a", GIB)
    await bench.store.create_volume("pvc-b", GIB, VolumeSource("volume", "pvc-a"))
    bench.drop_on("disk-remove")
    with pytest.raises((TransportLostError, UnavailableError)):
        await bench.store.delete_volume("pvc-b")
    await bench.reconnected()
    await bench.store.delete_volume("pvc-b")
    assert bench.files() == ["k8s/vol/pvc-a.img"]


async def test_delete_of_a_never_created_id_succeeds(bench: Bench) -> None:
    await bench.store.create_volume("pvc-kept", GIB)
    await bench.store.delete_volume("pvc-never")
    await bench.store.delete_snapshot("snap-never")
    assert bench.disks() == ["pvc-kept"] and bench.files() == ["k8s/vol/pvc-kept.img"]


async def test_pool_full_is_not_enough_space(bench: Bench) -> None:
    bench.sim.faults.pool_full = True
    with pytest.raises(NotEnoughSpaceError, match="volume pvc-a") as caught:
        await bench.store.create_volume("pvc-a", GIB)
    assert grpc_code_name(caught.value) == "RESOURCE_EXHAUSTED"
    assert bench.disks() == [] and bench.files() == []
    bench.sim.faults.pool_full = False
    await bench.store.create_volume("pvc-a", GIB)
    with pytest.raises(NotEnoughSpaceError, match="volume pvc-a"):
        await bench.store.expand_volume("pvc-a", bench.sim.pool_size + 1)


async def test_expand_grows_exactly_and_is_idempotent(bench: Bench) -> None:
    store = bench.store
    await store.create_volume("pvc-a", GIB)
    grown = await store.expand_volume("pvc-a", ODD)
    assert grown.size == ODD == bench.sim.backing_path("pvc-a").stat().st_size
    sets = bench.sent("/disk set")
    assert await store.expand_volume("pvc-a", ODD) == grown  # a retried expand
    assert await store.expand_volume("pvc-a", GIB) == grown  # never shrinks
    assert bench.sent("/disk set") == sets == 1
    with pytest.raises(NotFoundError, match="volume pvc-missing"):
        await store.expand_volume("pvc-missing", GIB)


async def test_delete_in_use_propagates(bench: Bench) -> None:
    bench.sim.interpreter.refuse_remove_in_use = True
    await bench.store.create_volume("pvc-a", GIB)
    bench.sim.register_host_connection("pvc-a", "nqn.2014-08.org.nvmexpress:uuid:node-1")
    with pytest.raises(InUseError, match="volume pvc-a"):
        await bench.store.delete_volume("pvc-a")
    assert bench.disks() == ["pvc-a"] and bench.files() == ["k8s/vol/pvc-a.img"]


async def test_invalid_ids_and_sizes_are_refused_before_any_command(bench: Bench) -> None:
    store = bench.store
    sent = len(bench.sim.commands)
    cases = [
        (store.create_volume("PVC-A", GIB), "volume id"),
        (store.create_volume("snap-a", GIB), "volume id"),
        (store.create_volume('pvc-a"]; /system reboot', GIB), "volume id"),
        (store.create_volume("pvc-a", 0), "size"),
        (
            store.create_volume("pvc-a", GIB, VolumeSource("snapshot", "pvc-b")),
            "source snapshot id",
        ),
        (store.create_volume("pvc-a_b", GIB), "nvme nqn"),  # a slot, but not an NQN suffix
        (store.get_volume("vol-$x"), "volume id"),
        (store.expand_volume("pvc-a", -1), "size"),
        (store.create_snapshot("pvc-a", "pvc-b"), "snapshot id"),
        (store.create_snapshot("snap-a", "snap-b"), "source volume id"),
        (store.get_snapshot(""), "snapshot id"),
        (store.list_snapshots("x y"), "source volume id"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidValueError) as caught:
            await call
        assert caught.value.field == field
    assert len(bench.sim.commands) == sent


async def test_bad_settings_fail_at_construction(bench: Bench) -> None:
    for settings, field in [
        (StoreSettings(volume_dir="k8s/../etc"), "volume dir"),
        (StoreSettings(pool_root="relative/"), "pool root"),
        (StoreSettings(nvme_port=0), "nvme port"),
        (StoreSettings(nqn_prefix="iqn.x:"), "nqn prefix"),
    ]:
        with pytest.raises(InvalidValueError) as caught:
            VolumeStore(bench.conn, settings)
        assert caught.value.field == field


# --- snapshots, restores, clones ---------------------------------------------------------------


async def test_snapshot_round_trip(bench: Bench) -> None:
    store = bench.store
    await store.create_volume("pvc-a", ODD)
    await store.create_volume("pvc-b", GIB)
    s1 = await store.create_snapshot("snap-1", "pvc-a")
    assert s1 == Snapshot(
        id="snap-1",
        source_volume_id="pvc-a",
        size=ODD,
        created_at=1_700_000_000.123,
        file_path="/storage-pool/k8s/snap/snap-1.OF.pvc-a.AT.1700000000123.img",
    )
    assert not bench.sim.store.disks["snap-1"].nvme_tcp_export  # snapshots are not exported
    bench.wall.now += 60
    s2 = await store.create_snapshot("snap-2", "pvc-b")
    assert s2.created_at == pytest.approx(1_700_000_060.123)
    s3 = await store.create_snapshot("snap-3", "pvc-a")
    assert await store.get_snapshot("snap-1") == s1
    assert await store.get_snapshot("snap-missing") is None
    assert await store.list_snapshots() == [s1, s2, s3]
    assert await store.list_snapshots("pvc-a") == [s1, s3]
    assert await store.list_snapshots("pvc-b") == [s2]
    assert await store.list_snapshots("pvc-none") == []
    assert [v.id for v in await store.list_volumes()] == ["pvc-a", "pvc-b"]  # no snapshots
    # idempotent: the same request returns the first snapshot, its time unchanged
    bench.wall.now += 60
    assert await store.create_snapshot("snap-1", "pvc-a") == s1
    with pytest.raises(AlreadyExistsError, match=r"snap-1.*of volume pvc-a, not pvc-b"):
        await store.create_snapshot("snap-1", "pvc-b")
    with pytest.raises(NotFoundError, match=r"snapshot snap-4.*pvc-missing"):
        await store.create_snapshot("snap-4", "pvc-missing")
    await store.delete_snapshot("snap-1")
    await store.delete_snapshot("snap-1")
    assert await store.list_snapshots("pvc-a") == [s3]
    assert not any(name.startswith("k8s/snap/snap-1.") for name in bench.files())


async def test_snapshot_reply_lost_retry_keeps_the_first_time(bench: Bench) -> None:
    await bench.store.create_volume("pvc-a", GIB)
    bench.drop_on("disk-copy")
    with pytest.raises((TransportLostError, UnavailableError), match="snap-1"):
        await bench.store.create_snapshot("snap-1", "pvc-a")
    await bench.reconnected()
    bench.wall.now += 5
    snapshot = await bench.store.create_snapshot("snap-1", "pvc-a")
    assert snapshot.created_at == 1_700_000_000.123
    assert bench.sent("/disk add") == 2  # the volume and one copy


async def test_snapshot_reply_lost_mid_delete_retry_removes_the_file(bench: Bench) -> None:
    await bench.store.create_volume("pvc-a", GIB)
    await bench.store.create_snapshot("snap-1", "pvc-a")
    bench.drop_on("disk-remove")
    with pytest.raises((TransportLostError, UnavailableError)):
        await bench.store.delete_snapshot("snap-1")
    await bench.reconnected()
    await bench.store.delete_snapshot("snap-1")
    assert bench.disks() == ["pvc-a"] and bench.files() == ["k8s/vol/pvc-a.img"]


async def test_restore_and_clone_carry_data_and_report_their_source(bench: Bench) -> None:
    store = bench.store
    await store.create_volume("pvc-a", ODD)
    write(bench, "pvc-a", 4097, b"before the snapshot")
    await store.create_snapshot("snap-1", "pvc-a")
    write(bench, "pvc-a", 4097, b"AFTER  the snapshot")

    restored = await store.create_volume("pvc-r", 2 * GIB, VolumeSource("snapshot", "snap-1"))
    assert restored.size == 2 * GIB  # larger than the source is allowed
    assert restored.source == VolumeSource("snapshot", "snap-1")
    assert restored.nqn == NQN + "pvc-r" and restored.port == 4420
    assert restored.file_path == "/storage-pool/k8s/vol/pvc-r.FROM.snapshot.snap-1.img"
    assert read(bench, "pvc-r", 4097, 19) == b"before the snapshot"

    clone = await store.create_volume("pvc-c", ODD, VolumeSource("volume", "pvc-a"))
    assert clone.size == ODD and clone.source == VolumeSource("volume", "pvc-a")
    assert read(bench, "pvc-c", 4097, 19) == b"AFTER  the snapshot"
    assert await store.get_volume("pvc-c") == clone
    assert {v.id: v.source for v in await store.list_volumes()} == {
        "pvc-a": None,
        "pvc-c": VolumeSource("volume", "pvc-a"),
        "pvc-r": VolumeSource("snapshot", "snap-1"),
    }

    with pytest.raises(InvalidValueError, match=rf"pvc-s.*smaller than volume pvc-a \({ODD}\)"):
        await store.create_volume("pvc-s", ODD - 1, VolumeSource("volume", "pvc-a"))
    with pytest.raises(NotFoundError, match=r"volume pvc-x.*snapshot snap-missing"):
        await store.create_volume("pvc-x", GIB, VolumeSource("snapshot", "snap-missing"))
    assert "pvc-s" not in bench.disks() and "pvc-x" not in bench.disks()


async def test_deleting_a_volume_keeps_its_snapshots_usable(bench: Bench) -> None:
    # Copy-on-write copies are independent files: the snapshot outlives its volume.
    store = bench.store
    await store.create_volume("pvc-a", GIB)
    write(bench, "pvc-a", 0, b"keep me")
    await store.create_snapshot("snap-1", "pvc-a")
    await store.delete_volume("pvc-a")
    restored = await store.create_volume("pvc-r", GIB, VolumeSource("snapshot", "snap-1"))
    assert read(bench, "pvc-r", 0, 7) == b"keep me"
    assert [s.source_volume_id for s in await store.list_snapshots()] == ["pvc-a"]
    assert restored.source == VolumeSource("snapshot", "snap-1")


# --- disks the driver did not create ---------------------------------------------------------


async def test_foreign_disks_are_ignored_and_never_adopted(bench: Bench) -> None:
    store = bench.store
    for line in [
        "/disk add type=file file-path=/storage-pool/other/pvc-f.img file-size=1G slot=pvc-f",
        # inside our directory, but not the scheme's name for its slot
        "/disk add type=file file-path=/storage-pool/k8s/vol/pvc-g.img file-size=1G slot=pvc-h",
        "/disk add type=file file-path=/storage-pool/snap-f.img file-size=1G slot=snap-f",
    ]:
        assert (await bench.sim.execute(line)).ok, line
    await store.create_volume("pvc-a", GIB)
    assert [v.id for v in await store.list_volumes()] == ["pvc-a"]
    assert await store.list_snapshots() == []
    for slot in ("pvc-f", "pvc-h"):
        with pytest.raises(ForeignDiskError, match=f"volume {slot}.*did not create") as caught:
            await store.create_volume(slot, GIB)
        assert grpc_code_name(caught.value) == "ALREADY_EXISTS"
        with pytest.raises(ForeignDiskError, match=f"volume {slot}"):
            await store.get_volume(slot)
        await store.delete_volume(slot)  # not ours: nothing of it is touched
        with pytest.raises(ForeignDiskError, match=f"volume {slot}"):
            await store.expand_volume(slot, 2 * GIB)
    with pytest.raises(ForeignDiskError, match="snapshot snap-f"):
        await store.create_snapshot("snap-f", "pvc-a")
    with pytest.raises(NotFoundError, match="snapshot snap-x: source volume pvc-f is a disk"):
        await store.create_snapshot("snap-x", "pvc-f")
    await store.delete_snapshot("snap-f")
    with pytest.raises(NotFoundError, match=r"volume pvc-x: source snapshot snap-f is a disk"):
        await store.create_volume("pvc-x", GIB, VolumeSource("snapshot", "snap-f"))
    assert bench.disks() == ["pvc-a", "pvc-f", "pvc-h", "snap-f"]
    assert bench.sim.store.disks["pvc-f"].size == GIB  # untouched
    assert (bench.pool_dir / "k8s/vol/pvc-g.img").exists()  # pvc-h's foreign file kept


async def test_leftover_file_without_disk_is_a_conflict_until_deleted(bench: Bench) -> None:
    # Only an interrupted delete leaves a file of ours without its disk; create will not
    # overwrite or adopt it, and a delete of the id clears it.
    await bench.store.create_volume("pvc-a", GIB)
    assert (await bench.sim.execute('/disk remove [find slot="pvc-a"]')).ok
    with pytest.raises(AlreadyExistsError, match=r"volume pvc-a.*exists without a disk"):
        await bench.store.create_volume("pvc-a", GIB)
    await bench.store.delete_volume("pvc-a")
    assert bench.files() == []
    assert (await bench.store.create_volume("pvc-a", GIB)).size == GIB


# --- kinds and comments ----------------------------------------------------------------------

EXT4_RWO = Kind("ext4", frozenset({"snw", "snro"}))
BLOCK_RWX = Kind("block", frozenset({"mnmw"}))


async def test_a_volume_keeps_its_kind_in_its_path(bench: Bench) -> None:
    store = bench.store
    vol = await store.create_volume("pvc-a", ODD, kind=EXT4_RWO)
    assert vol.file_path == "/storage-pool/k8s/vol/pvc-a.AS.ext4.snro-snw.img"
    again = await store.get_volume("pvc-a")
    assert again is not None and again.kind == EXT4_RWO
    assert await store.create_volume("pvc-a", ODD, kind=EXT4_RWO) == again  # a retry
    with pytest.raises(AlreadyExistsError, match=r"kind ext4\.snro-snw, not block\.mnmw"):
        await store.create_volume("pvc-a", ODD, kind=BLOCK_RWX)
    # a snapshot carries its source's kind, and a restore of it its own
    snap = await store.create_snapshot("snap-1", "pvc-a")
    assert snap.kind == EXT4_RWO and snap.file_path.endswith(".AS.ext4.snro-snw.img")
    restored = await store.create_volume(
        "pvc-b", ODD, VolumeSource("snapshot", "snap-1"), kind=BLOCK_RWX
    )
    assert restored.file_path.endswith("/pvc-b.FROM.snapshot.snap-1.AS.block.mnmw.img")
    listed = {v.id: (v.source, v.kind) for v in await store.list_volumes()}
    assert listed == {
        "pvc-a": (None, EXT4_RWO),
        "pvc-b": (VolumeSource("snapshot", "snap-1"), BLOCK_RWX),
    }
    await store.delete_volume("pvc-b")
    await store.delete_snapshot("snap-1")
    await store.delete_volume("pvc-a")
    assert bench.files() == [] and bench.disks() == []


async def test_volumes_without_a_kind_stay_ours(bench: Bench) -> None:
    old = await bench.store.create_volume("pvc-old", GIB)  # as an older driver made it
    assert old.kind is None and old.file_path.endswith("/vol/pvc-old.img")
    # a retry that now knows its kind still finds it
    assert (await bench.store.create_volume("pvc-old", GIB, kind=EXT4_RWO)).id == "pvc-old"
    # a path with a malformed kind is not the scheme's: not ours, never adopted
    bench.sim.store.disks["pvc-old"].file_path = "/storage-pool/k8s/vol/pvc-old.AS.zfs.x.img"
    with pytest.raises(ForeignDiskError):
        await bench.store.get_volume("pvc-old")
    assert [v.id for v in await bench.store.list_volumes()] == []


async def test_the_claim_goes_into_the_disks_comment_best_effort(bench: Bench) -> None:
    vol = await bench.store.create_volume("pvc-a", GIB, comment="pvc=shop/data-0 pv=pvc-a")
    assert vol.comment == "pvc=shop/data-0 pv=pvc-a"
    assert bench.sim.store.disks["pvc-a"].comment == vol.comment
    assert (await bench.store.get_volume("pvc-a")).comment == vol.comment  # type: ignore[union-attr]
    assert bench.sent('comment="pvc=shop/data-0 pv=pvc-a"') == 1
    # an appliance that refuses the comment still gives the volume

    async def arm(_command: Command) -> None:
        bench.sim.faults.fail_next(1, "invalid parameter")

    bench.before("disk-comment", arm)
    vol = await bench.store.create_volume("pvc-b", GIB, comment="pvc=shop/data-1")
    assert vol.id == "pvc-b" and "pvc-b" in bench.disks()
    with pytest.raises(InvalidValueError):
        await bench.store.create_volume("pvc-c", GIB, comment='quote"d')
