"""Reconciliation at scale: 10,000 volumes attached across 1,000 nodes.

Prints {"rebuild_10k_s", "reconcile_pass_10k_ms", "clear_after_grace_ms"} with --json:
- rebuild_10k_s: a new leader's startup rebuild from the API (list VolumeAttachments and
  PersistentVolumes over HTTP with the real client, then rebuild the Attachment machines);
  target <= 1 s;
- reconcile_pass_10k_ms: one full reconcile pass over the 10k attachments; target <= 100 ms;
- clear_after_grace_ms: real time from a deleted node's grace period running out to its
  attachments being cleared, with a 0.5 s grace; target <= 1000 ms.
The API server is the project's own (rdscsi.testing.kubeapi) on loopback, in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

from _report import report
from kubernetes.aio.client import ApiClient, Configuration
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rdscsi.clock import LoopClock
from rdscsi.control.nodes import NodeBook, NodeView
from rdscsi.control.reconcile import reconcile_attachments
from rdscsi.csi.attachments import AttachmentBook
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.triggers import Reconciler
from rdscsi.hooks.wiring import build_machines
from rdscsi.io.kube.attachments import held_by_volume, list_attachments
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi import objects as k8s

DRIVER = "rds.csi.bench"
VOLUMES = 10_000
NODES = 1_000
PAGE = 500


def populate(kube: FakeKube) -> None:
    for n in range(NODES):
        kube.put(k8s.node(f"node-{n:04d}"))
    for v in range(VOLUMES):
        name = f"pvc-00000000-0000-4000-8000-{v:012d}"
        kube.put(k8s.pv(name, DRIVER, name))
        kube.put(k8s.volume_attachment(f"csi-{v:012d}", DRIVER, f"node-{v % NODES:04d}", name))


async def serve_api() -> None:
    """Child process: the API server, populated, until stdin closes (a real apiserver is
    another process too, so its serialisation is not counted as ours)."""
    async with FakeKube(history_limit=VOLUMES * 3) as kube:
        populate(kube)
        print(kube.url, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


async def measure() -> dict[str, Any]:
    clock = LoopClock()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-api",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    url = (await child.stdout.readline()).decode().strip()
    try:
        api = ApiClient(Configuration(host=url))
        try:
            machines = build_machines(
                clock, MemorySink(maxlen=100), lambda r: None, CollectorRegistry()
            )
            book = AttachmentBook(machines.attachment, clock, 0.5, 300.0)
            t0 = time.perf_counter()
            views = await list_attachments(api, DRIVER, page_size=PAGE)
            listed = time.perf_counter() - t0
            book.rebuild(held_by_volume(views))
            rebuild = time.perf_counter() - t0
            assert len(book.models) == VOLUMES, len(book.models)
        finally:
            await api.close()
    finally:
        child.stdin.close()
        await child.wait()

    nodes = NodeBook(machines.node)
    for n in range(NODES):
        nodes.observe(NodeView(f"node-{n:04d}", ready=True))
    nodes.synced = True
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        reconcile_attachments(book, nodes)
        samples.append(time.perf_counter() - t0)
    pass_ms = sorted(samples)[len(samples) // 2] * 1000

    # A node is deleted; its 10 attachments must be released right after the 0.5 s grace.
    cleared: list[float] = []

    class Stamp:
        def stale_cleared(self, step: object) -> None:
            cleared.append(time.perf_counter())

    machines = build_machines(
        clock,
        MemorySink(maxlen=100),
        lambda r: None,
        CollectorRegistry(),
        extra_listeners=(Stamp(),),
    )
    holder: list[Reconciler] = []
    book = AttachmentBook(
        machines.attachment, clock, 0.5, 300.0, wake=lambda reason: holder[0].trigger(reason)
    )
    nodes = NodeBook(machines.node)

    async def run_pass(reasons: frozenset[str]) -> None:
        reconcile_attachments(book, nodes)

    reconciler = Reconciler(run_pass)
    holder.append(reconciler)
    book.rebuild({f"pvc-{v}": [(f"node-{v % NODES:04d}", False)] for v in range(VOLUMES)})
    for n in range(NODES):
        nodes.observe(NodeView(f"node-{n:04d}", ready=True))
    nodes.synced = True
    reconciler.start()
    nodes.observe(NodeView("node-0007", ready=False, deleted=True))
    reconciler.trigger("node:delete")
    deleted_at = time.perf_counter()
    await reconciler.wait_idle()
    while len(cleared) < VOLUMES // NODES:
        await asyncio.sleep(0.005)
    await reconciler.stop()
    delay = max(cleared) - (deleted_at + 0.5)
    return {
        "rebuild_10k_s": round(rebuild, 4),
        "of_which_api_list_s": round(listed, 4),
        "reconcile_pass_10k_ms": round(pass_ms, 3),
        "clear_after_grace_ms": round(delay * 1000, 3),
    }


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
