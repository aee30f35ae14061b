"""Reconciliation at scale, and failover, with attachments derived from the cluster.

Prints one JSON object with --json:
- derive_10k_s: from starting the informers (Nodes, VolumeAttachments, PVs listed over HTTP
  with the real client) to every one of 10,000 volumes on 1,000 nodes derived into its
  Attachment machine by a first reconcile pass; target <= 1 s. `of_which_api_list_s`: the
  lists alone.
- reconcile_pass_10k_ms: one steady reconcile pass over the 10k attachments (median of 5);
  target <= 100 ms.
- clear_after_grace_ms: real time from a deleted node's grace period running out to its
  attachments being cleared, with a 0.5 s grace; target <= 1000 ms.
- failover_act_s: two controller replicas; the leader crashes (no Lease release) just as a
  deleted node's attachments become clearable; the time from its death to the other
  replica having cleared them. Target: <= lease_duration_s + 1.
- lease_duration_s: the Lease duration that run used.
- pass_with_sessions_and_sweep_10k_ms: the leader's pass over 10,000 fenced attachments on
  1,000 nodes, one node not ready (so the appliance's session listing, 10,000 sessions, is read
  as evidence), and the appliance sweep: the inventory of 10,000 volume disks and files plus
  snapshots and a few orphans, every allow-list checked against the cluster, every object's
  claim looked up (median of 9 passes after the first); target <= 200 ms. Driver time only:
  the appliance's answers are the simulator's own output for that state, rendered beforehand
  and handed back without a round trip. `of_which_parse_ms`: parsing those answers when no
  line changed since the last pass (lines read before are not parsed again); `cold_parse_ms`
  and `first_pass_with_sessions_and_sweep_10k_ms`: the same with every line new (the first
  pass after a start or a failover); `listing_memo_10k_mb`: what the kept readings hold.
The API server is the project's own (rdscsi.testing.kubeapi): in its own process for the 10k
figures (a real apiserver is another process too), in-process for the failover.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _report import report
from kubernetes.aio.client import ApiClient, Configuration
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rdscsi.app import build_controller
from rdscsi.clock import LoopClock
from rdscsi.cluster import ClusterBinding
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.control.derive import Deriver, Timing
from rdscsi.control.nodes import NodeBook
from rdscsi.control.reconcile import AttachmentPass
from rdscsi.control.record import ClusterRecord
from rdscsi.control.triggers import Reconciler
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.kube.attachments import attachments_resource, volumes_resource
from rdscsi.io.kube.informer import Informer
from rdscsi.io.kube.nodes import NODES
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi import objects as k8s

DRIVER = "rds.csi.bench"
VOLUMES = 10_000
NODES_N = 1_000
PAGE = 500


def populate(kube: FakeKube, volumes: int, nodes: int, driver: str = DRIVER) -> None:
    for n in range(nodes):
        kube.put(k8s.node(f"node-{n:04d}"))
    for v in range(volumes):
        name = f"pvc-00000000-0000-4000-8000-{v:012d}"
        kube.put(k8s.pv(name, driver, name))
        kube.put(k8s.volume_attachment(f"csi-{v:012d}", driver, f"node-{v % nodes:04d}", name))


async def serve_api() -> None:
    """Child process: the API server, populated, until stdin closes."""
    async with FakeKube(history_limit=VOLUMES * 3) as kube:
        populate(kube, VOLUMES, NODES_N)
        print(kube.url, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


class Stamp:
    def __init__(self) -> None:
        self.cleared: list[float] = []

    def stale_cleared(self, step: object) -> None:
        self.cleared.append(time.perf_counter())


def controller_parts(grace: float, extra: tuple[object, ...] = ()) -> tuple[Any, ...]:
    clock = LoopClock()
    holder: list[Reconciler] = []
    machines = build_machines(
        clock,
        MemorySink(maxlen=100),
        lambda r: holder[0].trigger(r) if holder else None,
        CollectorRegistry(),
        extra_listeners=extra,
    )
    nodes = NodeBook(machines.node, clock)
    record = ClusterRecord(
        clock, on_change=lambda v: holder[0].trigger("attachment") if holder else None
    )
    deriver = Deriver(machines.attachment, nodes, clock, Timing(grace_s=grace, migration_s=300.0))
    return clock, machines, nodes, record, deriver, holder


async def measure_scale() -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-api",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    url = (await child.stdout.readline()).decode().strip()
    clock, _machines, nodes, record, deriver, _ = controller_parts(0.5)
    passes = AttachmentPass(deriver, record)
    api = ApiClient(Configuration(host=url))

    def node_changed(key: str, old: Any, new: Any) -> None:
        if new is not None:
            nodes.observe(new)

    informers = [
        Informer(api, NODES, clock, node_changed, page_size=PAGE),
        Informer(api, volumes_resource(DRIVER), clock, record.volume_changed, page_size=PAGE),
        Informer(
            api, attachments_resource(DRIVER), clock, record.attachment_changed, page_size=PAGE
        ),
    ]
    try:
        t0 = time.perf_counter()
        for informer in informers:
            informer.start()
        await asyncio.gather(*(i.has_synced.wait() for i in informers))
        listed = time.perf_counter() - t0
        nodes.synced = True
        passes.run()
        derived = time.perf_counter() - t0
        assert len(passes.models) == VOLUMES, len(passes.models)
        assert all(m.state == "attached" for m in passes.models.values())
        samples = []
        for _ in range(5):
            t1 = time.perf_counter()
            passes.run()
            samples.append(time.perf_counter() - t1)
    finally:
        for informer in informers:
            await informer.stop()
        await api.close()
        child.stdin.close()
        await child.wait()
    return {
        "derive_10k_s": round(derived, 4),
        "of_which_api_list_s": round(listed, 4),
        "reconcile_pass_10k_ms": round(sorted(samples)[2] * 1000, 3),
    }


async def measure_clearing() -> float:
    """A node is deleted; its 10 attachments must be released right after the 0.5 s grace."""
    stamp = Stamp()
    clock, _machines, nodes, record, deriver, holder = controller_parts(0.5, (stamp,))
    passes = AttachmentPass(deriver, record)
    due: list[Any] = []

    async def run_pass(reasons: frozenset[str]) -> None:
        passes.run()
        for handle in due:
            handle.cancel()
        nxt = passes.next_due()
        if nxt is not None:
            due.append(clock.call_later(nxt - clock.monotonic(), lambda: reconciler.trigger("due")))

    reconciler = Reconciler(run_pass, clock=clock)
    holder.append(reconciler)
    async with FakeKube() as kube:
        populate(kube, VOLUMES, NODES_N)
        api = ApiClient(Configuration(host=kube.url))

        def node_changed(key: str, old: Any, new: Any) -> None:
            import dataclasses

            nodes.observe(new if new is not None else dataclasses.replace(old, deleted=True))

        informers = [
            Informer(api, NODES, clock, node_changed, page_size=PAGE),
            Informer(api, volumes_resource(DRIVER), clock, record.volume_changed, page_size=PAGE),
            Informer(
                api, attachments_resource(DRIVER), clock, record.attachment_changed, page_size=PAGE
            ),
        ]
        for informer in informers:
            informer.start()
        await asyncio.gather(*(i.has_synced.wait() for i in informers))
        nodes.synced = True
        reconciler.start()
        reconciler.trigger("startup")
        await reconciler.wait_idle()
        await kube.wait_watchers(3, "")
        kube.remove("v1", "Node", "node-0007")
        deleted_at = time.perf_counter()
        while len(stamp.cleared) < VOLUMES // NODES_N:
            await asyncio.sleep(0.005)
        await reconciler.stop()
        for informer in informers:
            await informer.stop()
        await api.close()
    return max(stamp.cleared) - (deleted_at + 0.5)


async def measure_failover(lease: float = 2.0) -> dict[str, Any]:
    """Two replicas, the leader crashes as a deleted node's attachments become clearable."""
    volumes, grace = 20, 1.0
    registry: dict[str, CollectorRegistry] = {}
    async with FakeKube() as kube:
        populate(kube, volumes, 2, "rds.csi.mikrotik.com")
        apps = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("ctl-a", "ctl-b"):
                config = DriverConfig(
                    controller=True,
                    kubernetes=True,
                    endpoint=f"unix://{tmp}/{name}.sock",
                    rds=ApplianceConfig(
                        address="127.0.0.1", port=9, insecure_skip_host_key_check=True
                    ),
                    grace_period=grace,
                    lease_duration=lease,
                    renew_deadline=lease * 0.75,
                    retry_period=lease / 8,
                    lease_namespace="rdscsi-system",
                ).validate()
                clock = LoopClock()
                api = ApiClient(Configuration(host=kube.url))
                registry[name] = CollectorRegistry()
                sink = MemorySink(maxlen=100)
                app = build_controller(config, clock, sink, registry[name], identity=name)
                binding = ClusterBinding(app, api, sink, clock, name, registry=registry[name])
                await app.start(serve=False, lead=False)
                await binding.start()
                apps.append((app, binding, api))
                await binding.synced.wait()
                if name == "ctl-a":
                    while not app.leadership.leading:
                        await asyncio.sleep(0.01)
            (a, a_binding, _a_api), (b, _b_binding, _b_api) = apps
            kube.remove("v1", "Node", "node-0001")
            while b.nodes.lost("node-0001") is False:
                await asyncio.sleep(0.005)
            await asyncio.sleep(grace - 0.05)
            # ctl-a crashes: nothing released, nothing more sent
            died = time.perf_counter()
            elector = a_binding.elector
            elector._task.cancel()  # type: ignore[union-attr]
            await a.leadership.lost()
            for informer in a_binding.informers:
                await informer.stop()
            want = volumes // 2
            cleared = "rds_csi_attachment_stale_cleared_total"
            while registry["ctl-b"].get_sample_value(cleared) != want:
                await asyncio.sleep(0.005)
            acted = time.perf_counter() - died
            for app, binding, api in apps:
                await binding.stop()
                await app.stop()
                await api.close()
    return {"failover_act_s": round(acted, 3), "lease_duration_s": lease}


class Canned:
    """The appliance's answers, rendered beforehand by the simulator: no round trip."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.commands = 0
        self.connects = 1  # one link, as the sweep's "after each new link" reads it
        self.connected = True

    async def run(self, command: Any) -> str:
        self.commands += 1
        return self.answers[command.line]


def appliance_answers(volumes: int, nodes: int, host: Any) -> dict[str, str]:
    """What the simulator prints for the sweep's and the listing's commands, for `volumes`
    fenced volumes (files and sessions included), 100 snapshots and 10 half-made copies."""
    from rdscsi.io.rds.commands import INVENTORY_DISK_PROPERTIES, CommandBuilder
    from rdscsi.io.rds.fence import allow_list_value
    from rdscsi.sim.render import render_terse, restrict
    from rdscsi.sim.store import Disk, FileInfo, HostConnection
    from rdscsi.sim.views import connection_item, disk_item, file_item

    b = CommandBuilder("/storage-pool/")
    vol_dir, snap_dir = "/storage-pool/k8s/vol/", "/storage-pool/k8s/snap/"
    disks, snaps, files, sessions = [], [], [], []
    for v in range(volumes):
        slot = f"pvc-00000000-0000-4000-8000-{v:012d}"
        path = f"{vol_dir}{slot}.AS.ext4.snw.img"
        nqn = "nqn.2000-02.com.mikrotik:" + slot
        allow = allow_list_value([host(f"node-{v % nodes:04d}")])
        disks.append(Disk(slot, path, 1 << 30, True, 4420, nqn, allow))
        files.append(FileInfo(path[1:], "file", 1 << 30, 1_750_000_000.0))
        sessions.append(
            HostConnection(v, slot, nqn, host(f"node-{v % nodes:04d}"), "10.0.0.1", 1, 4420)
        )
    for i in range(100):
        slot = f"snap-{i:032x}"
        path = f"{snap_dir}{slot}.OF.pvc-00000000-0000-4000-8000-{i:012d}.AT.1750000000000.img"
        snaps.append(Disk(slot, path, 1 << 30))
        files.append(FileInfo(path[1:], "file", 1 << 30, 1_750_000_000.0))
    for i in range(10):
        name = f"{vol_dir}pvc-00000000-0000-4000-9000-{i:012d}.FROM.volume.pvc-x.img"
        files.append(FileInfo(name[1:], "file", 1 << 30, 1_750_000_000.0))
    files.sort(key=lambda f: f.name)
    keys = list(INVENTORY_DISK_PROPERTIES)

    def terse(disks: list[Disk]) -> str:
        return render_terse([restrict(disk_item(d), keys) for d in disks])

    answers = {
        b.disk_inventory("pvc-").line: terse(disks),
        b.disk_inventory("vol-").line: terse([]),
        b.disk_inventory("snap-").line: terse(snaps),
        b.disk_inventory("q").line: terse([]),
        b.file_inventory("/storage-pool/k8s/").line: render_terse(
            [restrict(file_item(f, "iso"), ["name"]) for f in files]
        ),
        b.nvme_connections(terse=True).line: render_terse([connection_item(c) for c in sessions]),
    }
    return answers


async def measure_sweep() -> dict[str, Any]:
    """The leader's pass with the session listing and the sweep, driver time only."""
    from rdscsi.appliances import Appliance, Appliances
    from rdscsi.control.audit import ApplianceAudit
    from rdscsi.control.evidence import SessionReader
    from rdscsi.control.fence import Fencer
    from rdscsi.control.nodes import NodeView
    from rdscsi.control.orphans import Claims, OrphanSweep, SweepSettings
    from rdscsi.csi.topology import Layout
    from rdscsi.io.kube.attachments import AttachmentView, VolumeView
    from rdscsi.io.rds.orphans import OrphanStore
    from rdscsi.io.rds.parse import ListingMemo, parse_disks, parse_names, parse_nvme_connections
    from rdscsi.io.rds.volumes import StoreSettings, VolumeStore

    def host(node: str) -> str:
        return f"nqn.2014-08.org.example:{node}"

    clock, machines, nodes, record, deriver, _ = controller_parts(30.0)
    for n in range(NODES_N):
        name = f"node-{n:04d}"
        nodes.observe(NodeView(name, ready=n != 7, host_nqn=host(name)))  # one not ready
    nodes.synced = True
    now = clock.wall()
    handles = set()
    for v in range(VOLUMES):
        slot = f"pvc-00000000-0000-4000-8000-{v:012d}"
        handles.add(slot)
        record.volume_changed(slot, None, VolumeView(slot, slot, False))
        view = AttachmentView(f"csi-{v:012d}", f"node-{v % NODES_N:04d}", slot, True, now - 60)
        record.attachment_changed(view.name, None, view)
    answers = appliance_answers(VOLUMES, NODES_N, host)
    conn = Canned(answers)
    store = VolumeStore(conn, StoreSettings(), clock.wall)  # type: ignore[arg-type]
    passes = AttachmentPass(deriver, record, fencing=True)
    # The default appliance of a fleet of one: ids are its slots.
    appliance = Appliance("bench", conn, store, "", default=True, fence=True)  # type: ignore[arg-type]
    fleet = Appliances(Layout("rds.csi", ("bench",), "bench"), [appliance])
    fencer = Fencer(machines.attachment, nodes, clock, lambda vid: (store, vid))
    reader = SessionReader(nodes, clock.monotonic)
    sweep = OrphanSweep(
        machines.orphan,
        OrphanStore(store),
        clock,
        SweepSettings("report", 3600.0, 604800.0),
        appliance.export_nqn,
        "bench",
    )
    snapshots = frozenset(f"snap-{i:032x}" for i in range(100))

    async def claims() -> Claims:
        return Claims(frozenset(handles), snapshots)

    audit = ApplianceAudit(
        appliance, fleet, passes, deriver, record, lambda: None, claims, fencer, reader, sweep
    )

    async def one_pass() -> None:
        sessions = await audit.sessions()
        assert sessions is not None
        passes.run(sessions)
        report = await audit.after_pass(frozenset({"sweep"}))
        assert report.sweep is not None and report.repairs is not None
        assert not report.repairs, report.repairs  # every list already agrees

    t0 = time.perf_counter()
    await one_pass()  # the first: models derived, the orphans reported, every line parsed
    first = time.perf_counter() - t0
    assert not sweep.models  # found unclaimed once: suspected if the next sweep agrees
    await one_pass()
    assert len(sweep.models) == 10, len(sweep.models)  # the half-made copies
    samples = []
    sent = conn.commands
    for _ in range(9):
        t0 = time.perf_counter()
        await one_pass()
        samples.append(time.perf_counter() - t0)
    per_pass = (conn.commands - sent) / 9

    def parse_all(memos: dict[str, ListingMemo]) -> None:
        for line, text in answers.items():
            memo = memos.setdefault(line, ListingMemo())
            if "connection" in line:
                parse_nvme_connections(text, None, memo)
            elif line.startswith("/file"):
                parse_names(text, None, memo)
            else:
                parse_disks(text, None, memo)

    cold, steady = [], []
    for _ in range(3):
        memos: dict[str, ListingMemo] = {}
        t0 = time.perf_counter()
        parse_all(memos)  # every line new
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        parse_all(memos)  # a pass later, nothing changed: no line parsed again
        steady.append(time.perf_counter() - t0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept: dict[str, ListingMemo] = {}
    parse_all(kept)  # what the memos hold between passes (the readings' items)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "pass_with_sessions_and_sweep_10k_ms": round(sorted(samples)[4] * 1000, 3),
        "first_pass_with_sessions_and_sweep_10k_ms": round(first * 1000, 3),
        "of_which_parse_ms": round(sorted(steady)[1] * 1000, 3),
        "cold_parse_ms": round(sorted(cold)[1] * 1000, 3),
        "listing_memo_10k_mb": round(held / 2**20, 2),
        "appliance_commands_per_pass": round(per_pass, 1),
    }


async def measure() -> dict[str, Any]:
    figures = await measure_scale()
    figures["clear_after_grace_ms"] = round(await measure_clearing() * 1000, 3)
    figures.update(await measure_failover())
    figures.update(await measure_sweep())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve-api", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.serve_api:
        asyncio.run(serve_api())
        return
    report(asyncio.run(measure()), args.json)


if __name__ == "__main__":
    main()
