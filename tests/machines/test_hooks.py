"""Listeners: events carry names, metrics move, reconcile triggers coalesce."""

from __future__ import annotations

import asyncio

from rdscsi.hooks.triggers import Reconciler
from rdscsi.machines import (
    AttachInput,
    AttachmentModel,
    ConnectionModel,
    ConnInput,
    NodeInput,
    NodeModel,
)

from .support import make_rig


def test_attachment_events_name_volume_and_node() -> None:
    rig = make_rig()
    eng = rig.machines.attachment
    vol = eng.track(AttachmentModel("pvc-7"))
    eng.send(vol, "publish", AttachInput(node="n1"))
    eng.send(vol, "publish", AttachInput(node="n2"))
    conflict = rig.sink.events[-1]
    assert conflict.reason == "AttachmentConflict" and conflict.type == "Warning"
    assert "pvc-7" in conflict.note and "n2" in conflict.note and "n1" in conflict.note
    assert conflict.regarding.kind == "PersistentVolume" and conflict.regarding.name == "pvc-7"


def test_stale_clear_counts_and_reports() -> None:
    rig = make_rig()
    eng = rig.machines.attachment
    vol = eng.track(AttachmentModel("pvc-s"))
    eng.send(vol, "publish", AttachInput(node="n1"))
    eng.send(vol, "node_lost", AttachInput(now=rig.clock.monotonic(), node="n1"))
    rig.clock.advance(31)
    eng.send(vol, "reconcile", AttachInput(now=rig.clock.monotonic(), node="n1", evidence=True))
    assert vol.state == "detached"
    assert rig.sample("rds_csi_attachment_stale_cleared_total") == 1
    assert rig.sample("rds_csi_attachment_reconcile_total", {"action": "clear_stale"}) == 1
    assert rig.sample("rds_csi_attachment_reconcile_total", {"action": "mark_stale"}) == 1
    assert rig.sink.events[-1].reason == "StaleAttachmentCleared"
    assert "stale for 31s" in rig.sink.events[-1].note
    tis = rig.sample(
        "rds_csi_fsm_time_in_state_seconds_sum", {"machine": "attachment", "state": "stale"}
    )
    assert tis == 31


def test_reconnect_metrics_and_events() -> None:
    rig = make_rig()
    eng = rig.machines.connection
    conn = eng.track(ConnectionModel("rds-a:22"))
    now = rig.clock.monotonic
    for event in ("dial", "succeeded", "lost", "retry", "failed", "retry", "succeeded"):
        if event == "retry" and conn.state == "backoff":
            rig.clock.advance(conn.delay)
        eng.send(conn, event, ConnInput(now=now()))
    assert [e.reason for e in rig.sink.events] == ["RDSDisconnected", "RDSReconnected"]
    # the outage is told in the event, measured from the loss (1 s of backoff here)
    assert rig.sink.events[-1].note == "RDS rds-a:22: reconnected after 1.0s"
    on = {"appliance": "rds-a:22"}  # a connection without a fleet name is known by address
    assert rig.sample("rds_csi_rds_reconnect_total", {**on, "status": "success"}) == 1
    assert rig.sample("rds_csi_rds_reconnect_total", {**on, "status": "failure"}) == 1
    assert rig.sample("rds_csi_rds_reconnect_duration_seconds_count", on) == 1
    assert rig.sample("rds_csi_rds_reconnect_duration_seconds_sum", on) == 1.0
    assert rig.triggers == ["connection:succeeded", "connection:succeeded"]
    assert (
        rig.sample(
            "rds_csi_fsm_transitions_total",
            {
                "machine": "connection",
                "source": "backoff",
                "target": "reconnecting",
                "event": "retry",
            },
        )
        == 1
    )


def test_node_loss_triggers_reconcile() -> None:
    rig = make_rig()
    eng = rig.machines.node
    node = eng.track(NodeModel("w1"))
    eng.send(node, "became_ready", NodeInput())
    assert rig.triggers == []
    eng.send(node, "became_not_ready", NodeInput())
    eng.send(node, "delete", NodeInput())
    assert rig.triggers == ["node:became_not_ready", "node:delete"]


async def test_triggers_coalesce_into_one_more_pass() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    passes: list[frozenset[str]] = []

    async def run_pass(reasons: frozenset[str]) -> None:
        passes.append(reasons)
        started.set()
        await release.wait()

    rec = Reconciler(run_pass)
    rec.trigger("before-start")  # not running: a harmless no-op
    rec.start()
    rec.trigger("a")
    rec.trigger("b")  # pending together with "a": one pass
    await started.wait()
    started.clear()
    for i in range(50):  # during the running pass: exactly one more pass
        rec.trigger(f"c{i % 3}")
    release.set()
    await rec.wait_idle()
    assert passes == [frozenset({"a", "b"}), frozenset({"c0", "c1", "c2"})]
    assert rec.passes == 2
    await rec.stop()
    rec.trigger("after-stop")
    await asyncio.sleep(0)
    assert rec.passes == 2


async def test_failing_pass_is_counted_and_retried_after_a_backoff() -> None:
    from rdscsi.clock import ManualClock
    from rdscsi.control.triggers import RETRY_CAP_S, RETRY_INITIAL_S
    from rdscsi.io.kube.ratelimit import Backoff

    # The reconciler's retry delays are part of the spec: 1 s, doubling to a 60 s cap.
    assert (RETRY_INITIAL_S, RETRY_CAP_S) == (1.0, 60.0)
    calls = 0

    async def run_pass(reasons: frozenset[str]) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("appliance said no")

    clock = ManualClock()
    rec = Reconciler(run_pass, clock=clock, backoff=Backoff(1.0, 60.0, jitter=0.0))
    rec.start()
    rec.trigger("x")
    for _ in range(20):
        await asyncio.sleep(0)
    # Never a tight loop: after a failure the next attempt waits on the clock.
    assert (calls, rec.failures) == (1, 1)
    assert clock.pending() == [clock.monotonic() + 1.0]
    clock.advance(1.0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert (calls, rec.failures) == (2, 2)
    assert clock.pending() == [clock.monotonic() + 2.0]  # doubled
    clock.advance(2.0)
    await rec.wait_idle()
    assert (calls, rec.failures, rec.passes) == (3, 2, 3)
    assert rec.triggers["x"] == 1  # retried on its own, nobody had to ask again
    rec.trigger("y")
    await rec.wait_idle()
    assert calls == 4 and clock.pending() == []  # a success reset the delays
    await rec.stop()
