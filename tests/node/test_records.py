"""Records survive their failures: an unreadable one is moved aside with an event and the
node goes on; a failed NodeStage leaves none (and no device) behind."""

from __future__ import annotations

import json

import grpc

from rdscsi.csi import csi_pb2 as pb

from .calls import fail, provision, publish, stage, unpublish, unstage
from .conftest import Node, block_cap, loops_for, mount_cap

Mode = pb.VolumeCapability.AccessMode
MIB = 1 << 20


async def test_an_unreadable_record_is_moved_aside_and_the_node_goes_on(node: Node) -> None:
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=16 * MIB)
    await stage(node, vol, cap)
    records = node.tmp / "node-state"
    record = records / f"{vol.volume_id}.json"
    record.write_text(record.read_text()[:40])  # truncated by a crash or a full disk
    (records / "not-a-volume.json").write_text("{}")
    assert node.app.server.node is not None
    report = await node.app.server.node.cleanup_orphans()  # what start-up runs
    assert any("in use" in line for line in report), report  # its device is left alone
    moved = sorted(p.name for p in (records / "unreadable").iterdir())
    assert [m.split(".json.")[0] for m in moved] == ["not-a-volume", vol.volume_id]
    assert not record.exists()
    events = [e for e in node.sink.events if e.reason == "NodeRecordUnreadable"]
    assert {e.regarding.name for e in events} >= {vol.volume_id}
    # the node still serves other volumes
    other = await provision(node, cap, size=16 * MIB, name="another-volume")
    await stage(node, other, cap)
    await unstage(node, other.volume_id)
    # and this one is not unstaged blindly: its staging mount is not provably its own now
    code, msg = await fail(unstage(node, vol.volume_id))
    assert code == grpc.StatusCode.NOT_FOUND and "left alone" in msg, msg


async def test_failed_stages_leave_no_record_and_no_device(node: Node) -> None:
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=16 * MIB)
    # data without a signature where a filesystem volume is expected: refused, undone
    with open(node.sim.backing_path(vol.volume_id), "r+b") as f:
        f.seek(8 * MIB)
        f.write(b"\x01" * MIB)
    gone = pb.Volume(  # a volume the appliance does not have
        volume_id="pvc-00000000-0000-4000-8000-00000000dead",
        volume_context={
            **vol.volume_context,
            "nqn": vol.volume_context["nqn"].replace(
                vol.volume_id, "pvc-00000000-0000-4000-8000-00000000dead"
            ),
            "filePath": vol.volume_context["filePath"].replace(
                vol.volume_id, "pvc-00000000-0000-4000-8000-00000000dead"
            ),
        },
    )
    for _ in range(20):
        code, msg = await fail(stage(node, vol, cap))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
        code, msg = await fail(stage(node, gone, cap))
        assert code == grpc.StatusCode.NOT_FOUND, msg
    assert sorted(p.name for p in (node.tmp / "node-state").iterdir()) == []
    assert loops_for(node.sim.store.files_root) == []
    assert not node.staging(vol.volume_id).exists()


async def test_records_are_whole_json_and_name_what_is_the_volumes(node: Node) -> None:
    cap = block_cap(Mode.SINGLE_NODE_WRITER)
    vol = await provision(node, cap, size=16 * MIB)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    record = json.loads((node.tmp / "node-state" / f"{vol.volume_id}.json").read_text())
    assert record["version"] == 2 and record["block"] is True
    assert record["staging_path"] == str(node.staging(vol.volume_id))
    assert list(record["targets"]) == [str(node.target(vol.volume_id))]
    assert record["device"].count(":") == 1 and record["kind"]["accessType"] == "block"
    assert not list((node.tmp / "node-state").glob("*.tmp"))
    await unpublish(node, vol.volume_id)
    await unstage(node, vol.volume_id)
    assert not (node.tmp / "node-state" / f"{vol.volume_id}.json").exists()


async def test_records_of_an_earlier_plugin_version_still_serve(node: Node) -> None:
    # An upgrade while volumes are staged and published: the first records had no targets,
    # no device number, no kind.
    cap = mount_cap("ext4")
    vol = await provision(node, cap, size=16 * MIB)
    await stage(node, vol, cap)
    await publish(node, vol, cap)
    path = node.tmp / "node-state" / f"{vol.volume_id}.json"
    first = json.loads(path.read_text())
    keep = ("volume_id", "transport", "staging_path", "block", "target")
    path.write_text(json.dumps({k: first[k] for k in keep}))
    await stage(node, vol, cap)  # kubelet repeats after the restart
    await publish(node, vol, cap)  # a repeat, not "a mount that is not its own"
    assert list(json.loads(path.read_text())["targets"]) == [str(node.target(vol.volume_id))]
    await unpublish(node, vol.volume_id)
    assert not node.target(vol.volume_id).exists()
    await unstage(node, vol.volume_id)
    assert loops_for(node.sim.store.files_root) == []
