"""node-death: a node dies with a volume attached; the volume comes up on another node."""

from __future__ import annotations

import asyncio
import math

import grpc

from .cluster import APPS, OUT_OF_SERVICE, Cluster
from .steps import Undo, attach, pod_writes, powered_off, published_on, use

ABOUT = (
    "A pod on node-a writes to its volume, then node-a dies. Nobody removes a finalizer or a "
    "VolumeAttachment by hand: once the driver has evidence that node-a is gone (the "
    "out-of-service taint) and the grace period has passed since node-a went NotReady, it "
    "releases the volume, takes node-a off the disk's allow-list on the appliance (fencing: "
    "node-a could not reconnect were it to come back), and only then lets node-b on; the "
    "pod's volume comes up on node-b with its data."
)


async def run(c: Cluster, undo: Undo) -> None:
    n = c.narrator
    a, b = c.nodes.get("node-a"), c.nodes.get("node-b")

    n.step("A pod on node-a uses the volume")
    vol, text, _ = await pod_writes(c, undo)

    n.step("node-a stops answering: Kubernetes marks it NotReady")
    # A Ready condition's lastTransitionTime has whole seconds: from the next one, the
    # grace period the driver counts from the object is the one printed here.
    await asyncio.sleep(math.ceil(c.clock.wall()) - c.clock.wall())
    lost = float(round(c.clock.wall()))
    mark = n.mark()
    c.set_node("node-a", ready=False, since=lost)
    n.ok("Node node-a: Ready=False (the node lifecycle controller: its kubelet went silent)")
    await n.saw("controller", "node", "node-a", "not_ready", since=mark)
    await n.saw("controller", "attachment", vol.id, "stale", since=mark)
    n.note("stale: node-a may only be cut off, and still writing; the volume stays where it is")
    holder = c.host_nqns.get("node-a", "")
    n.expect(c.allow_list(vol.id) == [holder], f"allow-list {c.allow_list(vol.id)}, not node-a's")
    n.ok("the disk's allow-list on the appliance: node-a's host only (a stale holder stays on)")
    mark = n.mark()
    try:
        await c.k8s.attach(vol.id, vol.pv, "node-b")
    except grpc.aio.AioRpcError as err:
        n.expect(
            err.code() == grpc.StatusCode.FAILED_PRECONDITION,
            f"ControllerPublishVolume to node-b: {err.code().name}: {err.details()}",
        )
        n.ok(f"ControllerPublishVolume to node-b (the pod rescheduled): refused, {err.details()}")
    else:
        raise n.fail("ControllerPublishVolume to node-b succeeded while node-a may still write")
    undo.add("attach node-b", "detached from node-b", lambda: c.k8s.detach(vol.id, "node-b"))
    await n.saw("controller", "attachment", vol.id, "stale", since=mark)
    n.expect(c.attachment_state(vol.id) == "stale", "the attachment is not stale")
    n.note("node-b's VolumeAttachment waits (attached=false); the attacher keeps retrying")
    await c.events()

    n.step("node-a is powered off")
    if a is not None:
        gone = await a.power_off()
        powered_off(c, undo, a)
        n.expect(not await a.devices(), "node-a still has a loop device")
        n.ok(f"node-a's plugin stopped; gone with its kernel: {' and '.join(gone)}")
        n.note("(one machine plays both nodes: a power cut is an unmount and a detach here)")
    else:
        n.note("nothing of node-a runs here (no node plugins): nothing to stop")

    n.step("Evidence: node-a is tainted out-of-service")
    mark = n.mark()
    c.set_node("node-a", ready=False, since=lost, taints=[OUT_OF_SERVICE])
    n.ok(
        "Node node-a: taint node.kubernetes.io/out-of-service=nodeshutdown:NoExecute "
        "(an operator or a fencing agent confirms it is off)"
    )
    await n.saw("controller", "node", "node-a", "not_ready", since=mark)
    left = lost + c.grace - c.clock.wall()
    n.note(
        f"grace period: {c.grace:g} s from node-a's NotReady, "
        + (f"{left:.1f} s left" if left > 0 else "over already")
    )
    answer = await c.explain("pvc", f"{APPS}/{vol.claim}")
    n.expect(c.attachment_state(vol.id) == "stale", "the volume left node-a before its grace")
    head, _, rest = answer.partition("\nevents now")
    n.expect(
        "blocked by clearable" in head and "grace period" in head,
        f"`rdscsi explain` does not say the grace period holds it:\n{head}",
    )
    n.ok(f"what the driver says it waits for, `rdscsi explain pvc {APPS}/{vol.claim}`:")
    n.quote(head)
    if rest:
        n.note(
            f"(and {len(rest.splitlines())} more lines: the events it would take now, its "
            "recent transitions, the cluster's objects, the appliance, the machine)"
        )

    n.step("The driver releases the volume from node-a")
    cleared = await n.saw(
        "controller", "attachment", vol.id, "detached", since=mark, timeout=c.grace + 15
    )
    after = cleared.at - n.since(lost)
    n.expect(after >= c.grace - 0.05, f"released {after:.1f} s after NotReady, before the grace")
    n.ok(f"released {after:.1f} s after node-a went NotReady: evidence, and the grace period over")
    n.expect(c.attachment(vol.id, "node-a") is not None, "node-a's VolumeAttachment is gone")
    n.note(
        "node-a's VolumeAttachment is still there: nothing can detach from a dead node, and "
        "the driver no longer waits for it"
    )
    mark_fence = n.mark()
    await n.until(
        lambda: any(s.event == "fence_out" for _, s in n.fence_steps(vol.id, since=mark)),
        "node-a taken off the disk's allow-list",
    )
    fenced = next(i for i, s in n.fence_steps(vol.id, since=mark) if s.event == "fence_out")
    n.expect(c.allow_list(vol.id) == [], f"allow-list after the release: {c.allow_list(vol.id)}")
    n.ok(
        "fenced: node-a's host taken off the disk's allow-list (NodeFenced), no host on it "
        "now; "
        "the appliance refuses node-a from here on, should it come back and reconnect"
    )
    refused = await c.admitted("node-a", vol.id)
    n.expect(refused is not None, "the appliance admitted node-a's host after the fence")
    n.ok(f"node-a's host asks the appliance to connect, as at `nvme connect`: {refused}")
    await c.events()

    n.step("The volume comes up on node-b")
    await attach(c, undo, vol, "node-b")
    steps = n.fence_steps(vol.id, since=mark_fence)
    on = [i for i, s in steps if s.event == "fence" and s.node == "node-b"]
    n.expect(bool(on) and on[0] > fenced, "node-b went on the allow-list before node-a came off")
    n.expect(
        c.allow_list(vol.id) == [c.host_nqns.get("node-b", "")],
        f"allow-list {c.allow_list(vol.id)}, not node-b's host alone",
    )
    n.ok(
        "the disk's allow-list: node-b's host alone, put on after node-a's came off (never "
        "two holders of a single-node volume on it)"
    )
    if b is not None:
        target = await use(c, undo, vol, b)
        got = (target / "data.txt").read_text()
        n.expect(got == text, f"node-b reads {got!r}, node-a wrote {text!r}")
        n.ok(f"data verified: the pod on node-b reads the {len(text)} bytes node-a wrote")
    else:
        n.note("no node plugins: staging on node-b and reading node-a's data are not shown")
    where = await published_on(c, vol)
    n.expect(where == ["node-b"], f"ControllerGetVolume: published on {where}, not node-b")
    n.ok("ControllerGetVolume: published on node-b")
    await c.events()
    moved = n.elapsed() - n.since(lost)
    where_now = "in use on node-b, with its data" if b is not None else "attached to node-b"
    n.para(
        f"\nnode-a went NotReady at {n.since(lost):.1f} s; {moved:.1f} s later its volume was "
        f"{where_now}. The one outside action was the out-of-service taint; the appliance "
        "itself keeps node-a out."
    )
