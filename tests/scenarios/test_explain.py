"""`/debug/explain` for each situation the reconciler knows a volume can be stuck in: the
replicas of `conftest.World` (FakeKube, the simulator, one ManualClock), each serving the
endpoint as `serve` does (`explain.service.for_controller` + `bind_cluster`, through the
real `MetricsServer`), read over HTTP. Each answer is checked field by field: the blocking
guard, and the evidence or the time that unblocks it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.explain import render
from rdscsi.explain.service import bind_cluster, for_controller
from rdscsi.observe import MetricsServer
from rdscsi.testing.kubeapi import objects as k8s

from .conftest import DRIVER, GRACE, STEP, TOKEN, Replica, World, host_nqn, until
from .sidecars import attachment_name
from .test_recovery import OUT_OF_SERVICE, attached, setup, states

JSON = dict[str, Any]
EVIDENCE = (
    "evidence that node n1 is gone: the Node deleted, or tainted "
    "node.kubernetes.io/out-of-service, or (rds.fence allow-host) no NVMe/TCP session of its "
    "host to the volume in the appliance's listing"
)


def iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


async def serve_explain(world: World, r: Replica) -> str:
    """The replica's metrics endpoint with /debug/explain, as `serve` wires it."""
    explainer = for_controller(r.app)
    bind_cluster(explainer, r.binding)
    server = MetricsServer(
        "127.0.0.1:0", CollectorRegistry(), lambda: (True, "ok"), explain=explainer.answer
    )
    await server.start()
    world.cleanups.append(server.stop)
    return server.url


async def get(url: str, **query: str) -> tuple[int, JSON]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/debug/explain", params=query) as reply,
    ):
        assert reply.content_type == "application/json"
        return reply.status, json.loads(await reply.text())


async def explain(url: str, **query: str) -> JSON:
    status, body = await get(url, **query)
    assert status == 200, body
    render.text(body)  # every answer prints
    render.text(body, mermaid=True)
    return body


def pvc_name(tag: str, i: int = 0) -> str:
    return f"pvc-00000000-0000-4000-8000-00000000{tag}{i:02d}"


def guard(body: JSON, name: str) -> JSON:
    found = [g for g in body["next"]["blocked_by"] if g.get("guard") == name]
    assert len(found) == 1, body["next"]
    return found[0]


async def test_a_release_on_session_evidence_is_explained_as_the_leader_made_it(
    world: World,
) -> None:
    # n1 lost with no session of its host on the appliance: after the grace period the
    # leader releases it and fences it out; any replica's explanation reads the same listing
    # and derives the same release (the VolumeAttachment still lingers)
    sidecars = await setup(world, "n1", "n2", pods=("ctl-a", "ctl-b"))
    leader, follower = world.replicas["ctl-a"], world.replicas["ctl-b"]
    [vid] = await attached(sidecars, 1, "n1", "e3")
    world.node("n1", ready=False)
    await until(lambda: states(leader, [vid]) == ["stale"], "stale")
    await world.tick(GRACE + 5)
    assert states(leader, [vid]) == ["detached"]
    for r in (leader, follower):
        url = await serve_explain(world, r)
        body = await explain(url, kind="volume", name=vid)
        assert body["machine"]["current"] == "detached", r.app.leadership.identity
        cleared = body["derivation"][-1]
        assert cleared["transition"] == "stale --reconcile [clearable]--> detached"
        assert cleared["reason"] == (
            "node n1 not Ready; no NVMe/TCP session of its host to the volume on the appliance"
        )
        assert body["appliance"]["fence"]["allow_list"] == "closed: no host may connect"
        assert body["appliance"]["sessions"] == []


async def test_stale_waiting_for_evidence_names_clearable_and_the_missing_evidence(
    world: World,
) -> None:
    sidecars = await setup(world, "n1", "n2", pods=("ctl-a", "ctl-b"))
    leader, follower = world.replicas["ctl-a"], world.replicas["ctl-b"]
    [vid] = await attached(sidecars, 1, "n1", "e1")
    # n1 still holds its session: the appliance gives no evidence either
    world.sim.register_host_connection(vid, host_nqn("n1"))
    lost_at = world.clock.wall()
    world.node("n1", ready=False)
    await until(lambda: states(leader, [vid]) == ["stale"], "stale")
    await world.tick(GRACE + 5)  # the grace period is over: only evidence is missing
    url = await serve_explain(world, leader)
    body = await explain(url, kind="pvc", name=f"apps/{pvc_name('e1')}")

    assert body["kind"] == "volume"
    assert body["asked"] == {
        "kind": "pvc",
        "name": f"apps/{pvc_name('e1')}",
        "pv": pvc_name("e1"),
        "pvc": f"apps/{pvc_name('e1')}",
    }
    assert body["object"] == {
        "volume_id": vid,
        "appliance": "sim",
        "pv": pvc_name("e1"),
        "pvc": f"apps/{pvc_name('e1')}",
    }
    assert body["replica"]["identity"] == "ctl-a"
    assert body["replica"]["leader"] is True
    assert body["replica"]["lease_holder"] == "ctl-a"
    assert body["replica"]["mode"] == "cluster"
    machine = body["machine"]
    assert machine["name"] == "attachment" and machine["current"] == "stale"
    assert machine["states"] == ["detached", "attached", "migrating", "stale"]
    assert machine["since"] == iso(lost_at)  # dated by the Node's Ready condition
    assert body["model"]["node"] == "n1" and body["model"]["stale_since"] == iso(lost_at)
    assert [s["transition"] for s in body["derivation"]] == [
        "attached --node_lost [on_node]--> stale",
        "stale --reconcile [else]--> stale",
    ]
    assert body["derivation"][0]["reason"] == "node n1 not Ready"

    nxt = body["next"]
    assert nxt["status"] == "blocked"
    assert nxt["event"] == "reconcile"
    assert nxt["transition"]["text"] == "stale --reconcile [clearable]--> detached"
    assert nxt["then"]["text"] == "stale --reconcile [else]--> stale"
    assert nxt["at"] is None and nxt["in_s"] is None  # no time unblocks it: evidence does
    clearable = guard(body, "clearable")
    assert clearable["machine"] == "attachment"
    assert clearable["refuses"] is True and clearable["holds"] is False
    assert clearable["can_unblock"] is True
    assert clearable["text"] == "node n1 is proven gone and its grace period is over"
    evidence, grace = clearable["waiting_for"]
    assert evidence == {"kind": "evidence", "text": EVIDENCE, "met": False}
    assert grace["kind"] == "after" and grace["met"] is True
    assert grace["text"] == "the grace period (30 s from when node n1 was lost)"
    assert grace["at"] == iso(lost_at + GRACE) and grace["in_s"] == -5.0
    assert nxt["summary"] == (
        "stale on node n1; stale --reconcile [clearable]--> detached blocked by clearable: "
        f"waiting for {EVIDENCE} (now: not deleted, no out-of-service taint, its host has a "
        "session to the volume on the appliance)"
    )
    ways = {w["transition"]["text"]: w for w in nxt["ways_out"]}
    assert set(ways) == {
        "stale --unpublish [on_node]--> detached",
        "stale --node_ready [on_node]--> attached",
    }
    assert ways["stale --node_ready [on_node]--> attached"]["sent_by"] == (
        "the reconciler: node n1 is Ready again"
    )

    n1 = body["cluster"]["nodes"][0]
    assert n1["name"] == "n1" and n1["state"] == "not_ready"
    assert n1["ready"] is False and n1["deleted"] is False
    assert n1["evidence"] is False and n1["out_of_service"] is False
    assert n1["taints"] == []
    assert n1["conditions"] == [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
    assert n1["lost_since"] == iso(lost_at) and n1["ready_since"] == iso(lost_at)
    [va] = body["cluster"]["volume_attachments"]
    assert va["name"] == attachment_name(vid, "n1")
    assert (va["node"], va["attached"], va["deleting"], va["holds"]) == ("n1", True, False, True)
    assert body["cluster"]["pv"] == {
        "name": pvc_name("e1"),
        "claim": f"apps/{pvc_name('e1')}",
        "rwx_block": False,
    }
    appliance = body["appliance"]
    assert appliance["name"] == "sim" and appliance["connection"] == "connected"
    assert appliance["read"] is True and appliance["disk"]["slot"] == vid
    assert appliance["export"]["nqn"].endswith(vid)

    # The leader's flight recorder: the publish it answered, the loss, the waiting passes.
    history = body["history"]
    assert [h["transition"] for h in history[:3]] == [
        "detached --publish--> attached",
        "attached --fence [admissible]--> attached",  # n1's host on the disk's allow-list
        "attached --node_lost [on_node]--> stale",
    ]
    assert history[0]["reason"] == "ControllerPublishVolume for node n1"
    assert history[1]["reason"] == (
        f"ControllerPublishVolume for node n1: its host {host_nqn('n1')} goes on the disk's "
        "allow-list before the answer"
    )
    assert history[2]["reason"] == "node n1 not Ready"
    fence = appliance["fence"]
    assert fence == {"setting": "allow-host", "allow_list": host_nqn("n1")}  # a stale one stays
    assert appliance["sessions"] == [host_nqn("n1")]
    waits = [h for h in history if h["transition"] == "stale --reconcile [else]--> stale"]
    assert waits and waits[-1]["refused"] == [
        {"transition": "stale --reconcile [clearable]--> detached", "guard": "clearable"}
    ]
    assert sum(h["repeats"] for h in waits) >= 2  # repeats counted in place

    # The follower derives the same state and next step; it says it does not reconcile.
    fbody = await explain(await serve_explain(world, follower), kind="volume", name=vid)
    assert fbody["replica"]["leader"] is False and fbody["replica"]["lease_holder"] == "ctl-a"
    assert "the leader is ctl-a" in fbody["replica"]["note"]
    assert fbody["next"]["transition"] == nxt["transition"]
    assert fbody["next"]["blocked_by"] == nxt["blocked_by"]
    assert fbody["next"]["by"] == "the reconciler: ctl-a (not this replica)"
    assert fbody["history"] == []  # it answered no call for this volume

    out = render.text(body)
    assert "next: stale on node n1" in out
    assert "✗ guard clearable (attachment): node n1 is proven gone" in out
    assert f"✗ {EVIDENCE}" in out
    assert "✓ the grace period (30 s from when node n1 was lost): over" in out
    assert "▶ stale" in out
    assert "    class stale current" in render.text(body, mermaid=True)

    # the evidence comes: the same guard now holds, and the leader clears the attachment
    node = world.kube.get("v1", "Node", "n1")
    assert node is not None
    world.kube.put({**node, "spec": {"taints": [OUT_OF_SERVICE]}})
    await until(lambda: states(leader, [vid]) == ["detached"], "cleared on the taint")
    after = await explain(url, kind="node", name="n1")
    assert after["cluster"]["node"]["taints"] == ["node.kubernetes.io/out-of-service:NoExecute"]
    assert after["cluster"]["node"]["evidence"] is True
    await sidecars.stop()


async def test_stale_waiting_for_grace_names_the_time(world: World) -> None:
    sidecars = await setup(world, "n1")
    r = world.replicas["ctl-a"]
    [vid] = await attached(sidecars, 1, "n1", "e2")
    gone_at = world.clock.wall()
    world.delete_node("n1")
    await until(lambda: states(r, [vid]) == ["stale"], "stale")
    await world.tick(10.0)
    url = await serve_explain(world, r)
    body = await explain(url, name=pvc_name("e2"))  # a PV's name: the kind is found
    assert body["asked"] == {
        "kind": None,
        "name": pvc_name("e2"),
        "pv": pvc_name("e2"),
        "pvc": f"apps/{pvc_name('e2')}",
    }
    nxt = body["next"]
    assert nxt["status"] == "blocked"
    assert nxt["transition"]["text"] == "stale --reconcile [clearable]--> detached"
    clearable = guard(body, "clearable")
    evidence, grace = clearable["waiting_for"]
    assert evidence["met"] is True
    assert grace == {
        "kind": "after",
        "text": "the grace period (30 s from when node n1 was lost)",
        "met": False,
        "at": iso(gone_at + GRACE),
        "in_s": 20.0,
    }
    assert clearable["can_unblock"] is True and clearable["unblocks_in_s"] == 20.0
    assert (nxt["at"], nxt["in_s"]) == (iso(gone_at + GRACE), 20.0)
    assert nxt["summary"].endswith(
        "blocked by clearable: the grace period (30 s from when node n1 was lost) ends in 20 s"
    )
    n1 = body["cluster"]["nodes"][0]
    assert (n1["state"], n1["deleted"], n1["evidence"]) == ("deleted", True, True)
    assert "due 20" not in render.text(body)  # times print as clock times
    assert f"due {render.clock(iso(gone_at + GRACE))} (in 20 s)" in render.text(body)
    node = await explain(url, kind="node", name="n1")
    assert node["next"]["status"] == "blocked"
    assert node["next"]["summary"].startswith("1 volume(s) on node n1 are stale: ")
    assert [v["volume_id"] for v in node["volumes"]] == [vid]
    await world.tick(GRACE - 10.0 + STEP)
    assert states(r, [vid]) == ["detached"]
    await sidecars.stop()


async def test_migration_deadline_then_past_it(world: World) -> None:
    world.config_overrides["migration_timeout"] = 20.0
    sidecars = await setup(world, "n1", "n2")
    r = world.replicas["ctl-a"]
    pvc = pvc_name("e3")
    vid = await sidecars.provision(pvc, rwx_block=True)
    await sidecars.attach(vid, pvc, "n1", rwx_block=True)
    await world.tick(3.0)  # apart by more than creationTimestamp's step: n1 is the source
    target_created = world.clock.wall()
    await sidecars.attach(vid, pvc, "n2", rwx_block=True)
    await until(lambda: states(r, [vid]) == ["migrating"], "migrating")
    url = await serve_explain(world, r)
    body = await explain(url, kind="pv", name=pvc)
    assert body["machine"]["current"] == "migrating"
    assert (body["model"]["node"], body["model"]["peer"]) == ("n1", "n2")
    assert body["model"]["deadline"] == iso(target_created + 20.0)
    nxt = body["next"]
    assert nxt["transition"]["text"] == "migrating --reconcile [deadline_passed]--> attached"
    g = guard(body, "deadline_passed")
    assert g["waiting_for"] == [
        {
            "kind": "after",
            "text": "the migration's deadline (node n2 must take over or let go by then)",
            "met": False,
            "at": iso(target_created + 20.0),
            "in_s": 20.0,
        }
    ]
    assert (nxt["at"], nxt["in_s"]) == (iso(target_created + 20.0), 20.0)
    ways = {w["transition"]["text"] for w in nxt["ways_out"]}
    assert "migrating --unpublish [on_node]--> attached" in ways  # the source lets go: done

    # Past the deadline: the leader ended it; node n2's VolumeAttachment still says attached,
    # and a publish for n2 is refused: the migration window closed at the deadline.
    await world.tick(21.0)
    await until(lambda: states(r, [vid]) == ["attached"], "expired")
    body = await explain(url, kind="volume", name=vid)
    assert body["machine"]["current"] == "attached" and body["model"]["node"] == "n1"
    assert [s["transition"] for s in body["derivation"]] == [
        "migrating --reconcile [deadline_passed]--> attached"
    ]
    assert any(
        h["transition"] == "migrating --reconcile [deadline_passed]--> attached"
        and h["hooks"] == ["MigrationFailed", "migration_expired"]
        for h in body["history"]
    )
    [publish] = [e for e in body["events"] if e["event"] == "publish"]
    assert publish["input"]["node"] == "n2"
    assert publish["takes"]["text"] == "attached --publish [else]--> attached"
    assert publish["takes"]["hooks"] == ["AttachmentConflict"]
    nxt = body["next"]
    assert nxt["status"] == "blocked"
    assert nxt["transition"]["text"] == "attached --publish [on_node]--> attached"
    migrate = next(
        g
        for c in publish["refused"]
        for g in c["guards"]
        if g["guard"] == "can_migrate" and g["refuses"]
    )
    window = migrate["waiting_for"][-1]
    assert window["kind"] == "before" and window["met"] is False
    assert window["at"] == iso(target_created + 20.0) and window["in_s"] == -1.0
    assert migrate["can_unblock"] is False  # a closed window never opens again
    assert "closed at" in render.text(body)
    await sidecars.stop()


async def test_appliance_disconnected_names_the_backoff_timer(world: World) -> None:
    sidecars = await setup(world, "n1")
    r = world.replicas["ctl-a"]
    vid = await sidecars.provision(pvc_name("e4"))
    url = await serve_explain(world, r)
    await world.sim.stop()
    await until(lambda: r.app.rds.state == "backoff", "appliance lost")
    conn = r.app.rds.model
    due = conn.entered_at + conn.delay
    body = await explain(url, kind="appliance", name="sim")
    assert body["kind"] == "appliance"
    assert body["object"] == {"appliance": "sim", "connection": conn.key}
    assert body["machine"]["current"] == "backoff"
    assert body["model"]["attempt"] == conn.attempt >= 1
    nxt = body["next"]
    assert nxt["status"] == "blocked" and nxt["event"] == "retry"
    assert nxt["transition"]["text"] == "backoff --retry--> reconnecting"
    [blocker] = nxt["blocked_by"]
    assert (blocker["machine"], blocker["object"], blocker["guard"]) == ("connection", "sim", None)
    [timer] = blocker["waiting_for"]
    assert timer["kind"] == "after" and timer["met"] is False
    assert timer["text"] == (
        f"the backoff timer ({conn.delay:.1f} s after failed attempt {conn.attempt})"
    )
    times = r.app.clock
    assert timer["at"] == iso(times.wall() - (times.monotonic() - due))
    assert nxt["in_s"] == timer["in_s"] == round(due - times.monotonic(), 1)
    assert body["appliance"]["read"] is False
    assert [h["event"] for h in body["history"]][-2:] in (["retry", "failed"], ["lost", "failed"])
    assert body["history"][-1]["reason"]  # why the dial failed

    # A volume waiting to attach: the appliance blocks it, and says until when.
    world.kube.put(
        k8s.volume_attachment(
            attachment_name(vid, "n1"), DRIVER, "n1", pvc_name("e4"), attached=False
        )
    )
    await until(lambda: r.app.record.observe(vid).claims != [], "the VolumeAttachment in the view")
    vol = await explain(url, kind="volume", name=vid)
    assert vol["machine"]["current"] == "detached"
    assert vol["next"]["status"] == "due"  # the machine would attach it...
    assert vol["next"]["transition"]["text"] == "detached --publish--> attached"
    appliance = [g for g in vol["next"]["blocked_by"] if g["machine"] == "connection"]
    assert len(appliance) == 1 and appliance[0]["waiting_for"] == [timer]  # ...but for this
    assert vol["appliance"] == {
        "name": "sim",
        "connection": "backoff",
        "address": world.sim.host,
        "port": world.sim.port,
        "user": "admin",
        "nvme_address": world.sim.host,
        "read": False,
        "why": "appliance sim is backoff",
    }
    await world.sim.start()
    await sidecars.stop()


async def test_conflicting_attach_names_the_holder_and_its_guards(world: World) -> None:
    sidecars = await setup(world, "n1", "n2")
    r = world.replicas["ctl-a"]
    [vid] = await attached(sidecars, 1, "n1", "e5")
    with pytest.raises(Exception, match="attached to node n1"):
        await sidecars.attach(vid, pvc_name("e5"), "n2")
    url = await serve_explain(world, r)
    body = await explain(url, kind="pvc", name=f"apps/{pvc_name('e5')}")
    assert body["machine"]["current"] == "attached"
    [publish] = body["events"]
    assert publish["event"] == "publish" and publish["input"]["node"] == "n2"
    assert publish["takes"]["text"] == "attached --publish [else]--> attached"
    assert publish["takes"]["hooks"] == ["AttachmentConflict"]
    refused = [
        (c["transition"]["text"], [g["guard"] for g in c["guards"] if g["refuses"]])
        for c in publish["refused"]
    ]
    assert refused == [
        ("attached --publish [on_node]--> attached", ["on_node"]),
        ("attached --publish [can_migrate]--> migrating", ["can_migrate"]),
    ]
    nxt = body["next"]
    assert nxt["status"] == "blocked" and nxt["event"] == "publish"
    on_node = guard(body, "on_node")
    assert on_node["waiting_for"] == [
        {"kind": "fact", "text": "node n2 is the holder (the holder is n1)", "met": False}
    ]
    assert on_node["can_unblock"] is False
    ways = {w["transition"]["text"]: w["sent_by"] for w in nxt["ways_out"]}
    assert ways == {
        "attached --unpublish [on_node]--> detached": (
            "ControllerUnpublishVolume from node n1 (its VolumeAttachment is deleted)"
        ),
        "attached --node_lost [on_node]--> stale": (
            "the reconciler: node n1 went NotReady or was deleted"
        ),
    }
    # the refusals are on record, with the guards that decided
    conflicts = [h for h in body["history"] if h["hooks"] == ["AttachmentConflict"]]
    assert conflicts and conflicts[0]["refused"] == [
        {"transition": "attached --publish [on_node]--> attached", "guard": "on_node"},
        {"transition": "attached --publish [can_migrate]--> migrating", "guard": "can_migrate"},
    ]
    assert conflicts[0]["reason"] == "ControllerPublishVolume for node n2"
    [n2] = [va for va in body["cluster"]["volume_attachments"] if va["node"] == "n2"]
    assert (n2["attached"], n2["holds"]) == (False, False)
    await sidecars.stop()


async def test_the_endpoint_is_read_only_strict_and_keeps_secrets(world: World) -> None:
    sidecars = await setup(world, "n1")
    r = world.replicas["ctl-a"]
    [vid] = await attached(sidecars, 1, "n1", "e6")
    url = await serve_explain(world, r)
    for query, status, line in [
        (
            {"kind": "secret", "name": "x"},
            400,
            "kind: 'secret' is not one of pvc, pv, volume, node, appliance",
        ),
        ({"kind": "pvc"}, 400, "name: required with kind=pvc"),
        ({"name": "a b"}, 400, "name: only printable ASCII without spaces"),
        ({"name": "x" * 300}, 400, "name: longer than 253 characters"),
        ({"token": "1"}, 400, "unknown parameter(s): token (use kind and name)"),
        (
            {"kind": "pvc", "name": "apps/nothing"},
            404,
            "no PV of this driver is bound to PVC apps/nothing",
        ),
        ({"kind": "node", "name": "n9"}, 404, "no node n9 in this replica's view"),
        (
            {"name": "nothing"},
            404,
            "nothing: no appliance, node, PVC (NAMESPACE/NAME), PV or "
            "volume id of this driver by that name",
        ),
    ]:
        got = await get(url, **query)
        assert got == (status, {"error": line}), query
    async with aiohttp.ClientSession() as http, http.post(f"{url}/debug/explain") as reply:
        assert reply.status == 405
    answers = [
        await explain(url),
        await explain(url, kind="volume", name=vid),
        await explain(url, kind="node", name="n1"),
        await explain(url, kind="appliance", name="sim"),
    ]
    text = json.dumps(answers)
    key = world.key_file.read_text()
    for secret in [*key.strip().splitlines()[1:-1], TOKEN, "PRIVATE KEY", str(world.key_file)]:
        assert secret not in text
    overview = answers[0]
    assert overview["kind"] == "overview"
    assert overview["appliances"] == [{"name": "sim", "connection": "connected"}]
    assert overview["volumes_not_at_rest"] == [] and overview["nodes_not_ready"] == []
    await sidecars.stop()
