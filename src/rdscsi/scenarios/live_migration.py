"""live-migration: a raw block volume moves between nodes while in use (KubeVirt)."""

from __future__ import annotations

import asyncio

from ..io.kube.wire import parse_time
from .cluster import Cluster
from .steps import (
    Undo,
    attach,
    block_pattern,
    detach,
    leave,
    provision,
    published_on,
    read_block,
    use,
    write_block,
)

ABOUT = (
    "A virtual machine's disk (raw block, ReadWriteMany) is in use on node-a; KubeVirt "
    "live-migrates the VM to node-b. For the migration the volume is on both nodes at once "
    "(the Attachment machine's `migrating`, bounded by a deadline); once the source pod "
    "on node-a lets go, the migration is complete and the volume is on node-b alone. A "
    "single-node volume is never on two nodes: only read-write-many block volumes migrate."
)


async def run(c: Cluster, undo: Undo) -> None:
    n = c.narrator
    a, b = c.nodes.get("node-a"), c.nodes.get("node-b")

    n.step("The VM's disk is in use on node-a")
    vol = await provision(c, undo, "vm-disk", block=True)
    await attach(c, undo, vol, "node-a")
    data = block_pattern("written on node-a")
    if a is not None:
        device_a = await use(c, undo, vol, a)
        write_block(device_a, data)
        n.ok(f"the VM on node-a wrote {len(data)} bytes at 1 MiB, straight to the device")
    else:
        n.note("no node plugins: no device on node-a, no data written (see above)")
    await c.events()

    n.step("Live migration: the target pod on node-b gets the disk too")
    # The driver tells source from target by their VolumeAttachments' creationTimestamps,
    # which have whole seconds: the target's is made in a later second, as in a cluster.
    source = c.attachment(vol.id, "node-a")
    n.expect(source is not None, "node-a's VolumeAttachment is gone")
    assert source is not None
    born = parse_time(source["metadata"]["creationTimestamp"]) or c.clock.wall()
    await asyncio.sleep(max(0.0, born + 1 - c.clock.wall()))
    n.note(
        "KubeVirt starts the target pod on node-b; its VolumeAttachment (created a second or "
        "more after node-a's: the driver tells source from target by that) asks for the disk"
    )
    await attach(c, undo, vol, "node-b", state="migrating")
    await n.until(lambda: c.attachment_state(vol.id) == "migrating", "the leader's view: migrating")
    model = c.ctl.app.passes.models[vol.id]
    n.ok(
        f"on both nodes until the migration completes (source {model.node}, target "
        f"{model.peer}), for at most {c.ctl.app.config.migration_timeout:g} s"
    )
    if b is not None:
        device_b = await use(c, undo, vol, b)
        got = read_block(device_b, len(data))
        n.expect(got == data, "node-b reads other bytes than node-a wrote")
        n.ok("node-b reads, from its own device, the bytes node-a wrote: one disk, two ends")
    else:
        n.note("no node plugins: node-b's device and the data are not shown")
    where = sorted(await published_on(c, vol))
    n.expect(where == ["node-a", "node-b"], f"ControllerGetVolume: published on {where}")
    n.ok("ControllerGetVolume: published on node-a and node-b")
    await c.events()

    n.step("The source lets go: the migration is complete")
    if a is not None:
        await leave(c, undo, vol, a)
    mark = n.mark()
    await detach(c, undo, vol, "node-a")
    done = await n.saw("controller", "attachment", vol.id, "attached", since=mark)
    n.expect(
        "MigrationCompleted" in done.hooks,
        f"the driver took node-a's detach as {', '.join(done.hooks) or 'nothing'}, not the "
        "source letting go",
    )
    n.ok("ControllerUnpublishVolume from node-a: its VolumeAttachment is gone")
    await n.until(lambda: c.attachment_state(vol.id) == "attached", "the leader's view: attached")
    where = await published_on(c, vol)
    n.expect(where == ["node-b"], f"ControllerGetVolume: published on {where}, not node-b")
    n.ok("ControllerGetVolume: published on node-b alone")
    if b is not None:
        got = read_block(device_b, len(data))
        n.expect(got == data, "node-b's device changed after node-a let go")
        n.ok("the VM on node-b still reads its disk")
    await c.events()
