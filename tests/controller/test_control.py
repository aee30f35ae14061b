"""The control package's parts on their own: the Node book (loss times from the objects,
bounded memory), the attachment records (in-flight publishes, claims order, standalone
persistence), the derivation (who stands before a publish) and the leader's pass (each
release reported once), plus the reconciler's constants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.control import derive, record, triggers
from rdscsi.control.derive import Deriver, Timing
from rdscsi.control.nodes import NodeBook, NodeView, to_monotonic
from rdscsi.control.reconcile import AttachmentPass
from rdscsi.control.record import INFLIGHT_PREFIX, Claim, ClusterRecord, LocalRecord
from rdscsi.csi import attachments
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.kube.attachments import AttachmentView, VolumeView

GRACE = 30.0


def rig(clock: ManualClock) -> tuple[NodeBook, Deriver, MemorySink, list[str]]:
    sink, triggered = MemorySink(), []
    machines = build_machines(clock, sink, triggered.append, CollectorRegistry())
    nodes = NodeBook(machines.node, clock)
    return (
        nodes,
        Deriver(machines.attachment, nodes, clock, Timing(GRACE, 300.0)),
        sink,
        triggered,
    )


def test_constants_of_the_control_loop() -> None:
    # part of the spec: a change here must be deliberate
    assert derive.SETTLE_LIMIT == 4
    assert (derive.TIE_S, derive.SETTLE_S) == (2.0, 5.0)
    assert record.INFLIGHT_TTL_S == 600.0
    assert attachments.CLAIM_WAIT_S == 5.0
    assert (triggers.RETRY_INITIAL_S, triggers.RETRY_CAP_S) == (1.0, 60.0)


# --- the Node book ------------------------------------------------------------------------


def test_a_node_is_lost_since_its_ready_condition_changed() -> None:
    clock = ManualClock()
    nodes, *_ = rig(clock)
    wall = clock.wall()
    nodes.observe(NodeView("n1", ready=False, since=wall - 50))
    assert nodes.lost_since("n1") == wall - 50
    assert nodes.lost_monotonic("n1") == clock.monotonic() - 50
    clock.advance(10)
    nodes.observe(NodeView("n1", ready=False, since=wall - 50))  # unchanged
    assert nodes.lost_since("n1") == wall - 50
    nodes.observe(NodeView("n1", ready=False, deleted=True, since=wall - 50))
    assert nodes.lost_since("n1") == wall - 50  # deleted after it was lost: still then
    # a time in the future (another machine's clock ahead) counts as now
    nodes.observe(NodeView("n2", ready=False, since=clock.wall() + 3600))
    assert nodes.lost_since("n2") == clock.wall()
    assert to_monotonic(clock, clock.wall() + 99) == clock.monotonic()
    # deleted while Ready: lost when the deletion is seen
    nodes.observe(NodeView("n3", ready=True))
    assert nodes.lost_since("n3") is None
    clock.advance(5)
    nodes.observe(NodeView("n3", ready=True, deleted=True))
    assert nodes.lost_since("n3") == clock.wall()


def test_a_node_never_seen_is_dated_from_the_first_question() -> None:
    clock = ManualClock()
    nodes, *_ = rig(clock)
    assert nodes.lost_since("ghost") is None  # before the full listing: no opinion
    nodes.synced = True
    first = nodes.lost_since("ghost")
    clock.advance(10)
    assert nodes.lost_since("ghost") == first and nodes.evidence("ghost")


def test_deleted_nodes_are_forgotten_unless_still_referenced() -> None:
    clock = ManualClock()
    nodes, *_ = rig(clock)
    for name in ("a", "b", "c"):
        nodes.observe(NodeView(name, ready=True))
        nodes.observe(NodeView(name, ready=True, deleted=True))
    assert nodes.forget_deleted(keep={"b"}) == 2
    assert set(nodes.models) == {"b"}
    nodes.synced = True
    assert nodes.lost("a") and nodes.evidence("a")  # forgotten still means gone
    assert nodes.forget_deleted() == 1 and nodes.models == {}


# --- records ----------------------------------------------------------------------------


def feed(rec: ClusterRecord, *vas: AttachmentView, pv: VolumeView | None = None) -> None:
    if pv is not None:
        rec.volume_changed(pv.name, None, pv)
    for va in vas:
        rec.attachment_changed(va.name, rec.attachments.get(va.name), va)


def test_claims_are_ordered_oldest_first_one_per_node() -> None:
    clock = ManualClock()
    rec = ClusterRecord(clock)
    feed(
        rec,
        AttachmentView("csi-b", "n2", "pv-1", False, 100.0),
        AttachmentView("csi-a", "n1", "pv-1", True, 100.0),  # same second: the name decides
        AttachmentView("csi-c", "n3", "pv-1", False, 99.0),
        pv=VolumeView("pv-1", "vol-1", False),
    )
    observed = rec.observe("vol-1")
    assert [c.node for c in observed.claims] == ["n3", "n1", "n2"]
    assert [c.node for c in observed.holders()] == ["n1"]
    assert [c.node for c in observed.pending()] == ["n3", "n2"]
    assert list(rec.volume_ids()) == ["vol-1"] and rec.nodes() == {"n1", "n2", "n3"}


def test_a_publish_in_flight_holds_until_its_attachment_says_so() -> None:
    clock = ManualClock()
    changed: list[str] = []
    rec = ClusterRecord(clock, on_change=changed.append)
    va = AttachmentView("csi-1", "n1", "pv-1", False, 10.0)
    feed(rec, va, pv=VolumeView("pv-1", "vol-1", False))
    assert rec.observe("vol-1").holders() == []
    rec.published("vol-1", "n1", False)
    [holder] = rec.observe("vol-1").holders()
    assert (holder.key, holder.node) == ("csi-1", "n1")  # the attachment, held in flight
    feed(rec, AttachmentView("csi-1", "n1", "pv-1", True, 10.0))  # the attacher recorded it
    assert rec._inflight == {} and [c.node for c in rec.observe("vol-1").holders()] == ["n1"]
    # without its attachment seen yet, an in-flight publish is a holder of its own
    rec.published("vol-2", "n2", False)
    [alone] = rec.observe("vol-2").holders()
    assert alone.key == INFLIGHT_PREFIX + "n2"
    rec.unpublished("vol-2", "n2")
    assert rec.observe("vol-2").holders() == []
    # and it is forgotten after a bound, whatever happens
    rec.published("vol-3", "n3", False)
    clock.advance(record.INFLIGHT_TTL_S + 1)
    assert rec.observe("vol-3").holders() == [] and "vol-3" not in rec._inflight
    assert "vol-1" in changed


def test_the_local_record_persists_and_reads_the_first_format(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "attachments.json"
    rec = LocalRecord(clock, path)
    rec.published("vol-1", "n1", True)
    clock.advance(5)
    rec.published("vol-1", "n2", True)
    again = LocalRecord(clock, path)
    observed = again.observe("vol-1")
    assert observed.rwx_block and [c.node for c in observed.holders()] == ["n1", "n2"]
    again.unpublished("vol-1", "n1")
    again.unpublished("vol-1", "n2")
    assert json.loads(path.read_text()) == {"version": 2, "volumes": {}}
    old = {"vol-9": {"state": "migrating", "node": "a", "peer": "b", "rwx_block": True}}
    path.write_text(json.dumps(old))
    assert [c.node for c in LocalRecord(clock, path).observe("vol-9").holders()] == ["a", "b"]


# --- derivation and the leader's pass -----------------------------------------------------


def test_older_pending_claims_stand_before_a_publish() -> None:
    clock = ManualClock()
    nodes, deriver, *_ = rig(clock)
    for n in ("n1", "n2", "n3"):
        nodes.observe(NodeView(n, ready=True))
    nodes.synced = True
    rec = ClusterRecord(clock)
    feed(
        rec,
        AttachmentView("csi-1", "n1", "pv-1", False, 100.0),
        AttachmentView("csi-2", "n2", "pv-1", False, 101.0),
        pv=VolumeView("pv-1", "vol-1", False),
    )
    observed = rec.observe("vol-1")
    assert deriver.blockers(observed, "n1") == []  # the oldest claim goes first
    assert [c.node for c in deriver.blockers(observed, "n2")] == ["n1"]
    # a claim on a node proven gone stands before nobody
    nodes.observe(NodeView("n1", ready=False, out_of_service=True))
    assert deriver.blockers(observed, "n2") == []
    # claims created together: no order every replica agrees on until both are settled
    now = clock.wall()
    feed(
        rec,
        AttachmentView("csi-9", "n3", "pv-2", False, now),
        AttachmentView("csi-8", "n2", "pv-2", False, now + 1),
        pv=VolumeView("pv-2", "vol-2", False),
    )
    together = rec.observe("vol-2")
    with pytest.raises(derive.Unsettled):
        deriver.blockers(together, "n3")
    clock.advance(derive.SETTLE_S + 1)
    assert [c.node for c in deriver.blockers(together, "n3")] == ["n2"]  # then by name
    assert deriver.blockers(together, "n2") == []
    # without a claim of its own, every pending claim stands before it
    assert [c.node for c in deriver.blockers(observed, "n3")] == ["n2"]
    assert Claim("csi-0", "n3", 50.0, True).order < observed.claims[0].order


def test_the_leader_reports_each_release_once() -> None:
    clock = ManualClock()
    nodes, deriver, sink, _ = rig(clock)
    nodes.observe(NodeView("n1", ready=True))
    nodes.synced = True
    rec = ClusterRecord(clock)
    feed(
        rec,
        AttachmentView("csi-1", "n1", "pv-1", True, clock.wall()),
        pv=VolumeView("pv-1", "vol-1", False),
    )
    passes = AttachmentPass(deriver, rec)
    assert passes.run() == {}
    assert passes.models["vol-1"].state == "attached"
    nodes.observe(NodeView("n1", ready=True, deleted=True))
    assert passes.run() == {"node_lost": 1, "waiting": 1}
    assert passes.next_due() == clock.monotonic() + GRACE
    clock.advance(GRACE)
    assert passes.run() == {"cleared": 1}
    for _ in range(3):  # the VolumeAttachment lingers: nothing more to report
        assert passes.run() == {}
    assert sink.reasons().count("StaleAttachmentCleared") == 1
    assert deriver.current(rec.observe("vol-1")).nodes == ()  # any replica agrees
    feed(rec)
    rec.attachment_changed("csi-1", rec.attachments["csi-1"], None)  # the detach ends
    passes.run()
    assert passes.released == {} and passes.models == {}
    passes.clear()


def test_a_volume_moved_off_a_dead_node_is_on_its_new_node() -> None:
    """The dead node's VolumeAttachment lingers (nothing can detach from it) while the
    volume is attached elsewhere: every replica, and each new leader, sees the new node."""
    clock = ManualClock()
    nodes, deriver, sink, _ = rig(clock)
    for n in ("n1", "n2"):
        nodes.observe(NodeView(n, ready=True))
    nodes.synced = True
    rec = ClusterRecord(clock)
    pv = VolumeView("pv-1", "vol-1", False)
    feed(rec, AttachmentView("csi-1", "n1", "pv-1", True, clock.wall()), pv=pv)
    nodes.observe(NodeView("n1", ready=False, out_of_service=True, since=clock.wall()))
    clock.advance(GRACE)
    feed(rec, AttachmentView("csi-2", "n2", "pv-1", True, clock.wall()))
    assert deriver.current(rec.observe("vol-1")).nodes == ("n2",)
    # a leader that starts now clears n1 and keeps n2 in the same pass
    passes = AttachmentPass(deriver, rec)
    assert passes.run() == {"node_lost": 1, "cleared": 1}
    assert passes.models["vol-1"].nodes == ("n2",)
    assert passes.run() == {}
    assert sink.reasons().count("StaleAttachmentCleared") == 1
    # before the grace period ends, a dead node still holds its volume: later holders wait
    nodes.observe(NodeView("n3", ready=True))
    pv2 = VolumeView("pv-2", "vol-2", False)
    feed(rec, AttachmentView("csi-3", "n3", "pv-2", True, clock.wall()), pv=pv2)
    nodes.observe(NodeView("n3", ready=False, out_of_service=True, since=clock.wall()))
    feed(rec, AttachmentView("csi-4", "n2", "pv-2", True, clock.wall() + 1))
    assert deriver.current(rec.observe("vol-2")).nodes == ("n3",)
    clock.advance(GRACE)
    assert deriver.current(rec.observe("vol-2")).nodes == ("n2",)
