"""appliance-restart: the appliance restarts under an attached volume."""

from __future__ import annotations

import uuid
from collections import Counter

import grpc

from ..csi import csi_pb2 as pb
from ..testing.sidecars import mount_cap
from .cluster import GIB, Cluster
from .steps import Undo, pod_writes, published_on

ABOUT = (
    "The appliance restarts while a volume is attached and in use. The controller's "
    "Connection machine goes down, redials with backoff and comes back; a call made "
    "meanwhile is answered UNAVAILABLE (the sidecar retries it), the reconnect runs exactly "
    "one reconcile pass, and the volume is where it was."
)


async def run(c: Cluster, undo: Undo) -> None:
    n = c.narrator
    app = c.ctl.app
    link = app.rds.model.key

    n.step("A pod on node-a uses the volume")
    vol, text, target = await pod_writes(c, undo)

    n.step("The appliance restarts")
    await app.reconciler.wait_idle()
    passes, triggers = app.reconciler.passes, Counter(app.reconciler.triggers)
    mark = n.mark()
    await c.appliance.stop()
    n.ok("the RDS simulator is down: its SSH server is gone (its disks stay where they are)")
    await n.saw("controller", "connection", link, "backoff", since=mark)
    try:
        await c.k8s.stub.CreateVolume(
            pb.CreateVolumeRequest(
                name=f"pvc-{uuid.uuid4()}",
                volume_capabilities=[mount_cap()],
                capacity_range=pb.CapacityRange(required_bytes=GIB),
            )
        )
    except grpc.aio.AioRpcError as err:
        n.expect(
            err.code() == grpc.StatusCode.UNAVAILABLE,
            f"CreateVolume while the appliance is down: {err.code().name}: {err.details()}",
        )
        n.ok(f"CreateVolume meanwhile: UNAVAILABLE ({err.details()}); the provisioner retries")
    else:
        raise n.fail("CreateVolume succeeded while the appliance was down")
    await c.appliance.start()
    n.ok("the simulator is back: same address, same host key, the same disks")
    await n.saw("controller", "connection", link, "connected", since=mark, timeout=30)
    await app.reconciler.wait_idle()
    ran = app.reconciler.passes - passes
    why = sorted((Counter(app.reconciler.triggers) - triggers).elements())
    n.expect(
        ran == 1 and why == ["connection:succeeded"],
        f"{ran} reconcile pass(es) after the reconnect, triggered by {why}",
    )
    n.ok("exactly one reconcile pass, triggered by the reconnect (connection:succeeded)")
    await c.events()

    n.step("Nothing else moved")
    n.expect(c.attachment_state(vol.id) == "attached", "the attachment is not attached")
    where = await published_on(c, vol)
    n.expect(where == ["node-a"], f"ControllerGetVolume: published on {where}, not node-a")
    n.ok("ControllerGetVolume: published on node-a, as before; the attachment never moved")
    if target is not None:
        got = (target / "data.txt").read_text()
        n.expect(got == text, f"node-a reads {got!r}, it wrote {text!r}")
        n.ok("the pod on node-a reads data.txt back")
    listed = await c.k8s.stub.ListVolumes(pb.ListVolumesRequest())
    ids = [e.volume.volume_id for e in listed.entries]
    n.expect(ids == [vol.id], f"ListVolumes: {ids}")
    n.ok("ListVolumes: the one volume, nothing lost and nothing half-made")
