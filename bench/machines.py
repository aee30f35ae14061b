"""Machine throughput and footprint for 10,000 volumes on 1,000 nodes.

Prints {"events_per_s", "build_10k_s", "build_10k_mb", "restore_10k_s", ...} with --json.
Targets (issue 2): events_per_s >= 20,000 with every listener attached; 10k attachment
machines built in <= 1 s and <= 50 MB; 10k restored from stored state in <= 1 s. The library's
own engine is measured in the same run for a ratio that does not depend on the machine's load.

The flight recorder (issue 16): `recorder_10k_mb`, what it holds for 10k volumes with their
last 16 transitions each (target <= 20 MB), and `events_per_s_with_recorder`, the engine with
only the recorder attached (target >= 100,000), beside `events_per_s_engine`, the same engine
with no listener, measured in the same run (`recorder_cost_us` per transition). These two are
timed in process CPU time, so that other processes on the machine do not count.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from typing import Any

from _report import report
from prometheus_client import CollectorRegistry

from rdscsi.clock import ManualClock
from rdscsi.hooks.events import MemorySink
from rdscsi.hooks.recorder import DEPTH, FlightRecorder
from rdscsi.hooks.wiring import build_machines
from rdscsi.machines import (
    AttachInput,
    AttachmentMachine,
    AttachmentModel,
    Engine,
    compile_machine,
)

VOLUMES = 10_000
NODES = 1_000


def _machines() -> Any:
    triggers: list[str] = []
    return build_machines(
        ManualClock(), MemorySink(maxlen=1000), triggers.append, CollectorRegistry()
    )


def _build(n: int) -> list[AttachmentModel]:
    """n volumes tracked and attached, each to one of 1,000 nodes."""
    m = _machines()
    models = []
    for i in range(n):
        vol = m.attachment.track(AttachmentModel(f"pvc-{i:08d}"))
        m.attachment.send(vol, "publish", AttachInput(node=f"node-{i % NODES}"))
        models.append(vol)
    return models


def build(n: int) -> tuple[float, float, list[AttachmentModel]]:
    gc.collect()
    t0 = time.perf_counter()
    models = _build(n)
    elapsed = time.perf_counter() - t0
    del models
    gc.collect()
    # memory in a second pass: tracemalloc slows allocation several times over
    tracemalloc.start()
    models = _build(n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 2**20, models


def restore(stored: list[dict[str, Any]]) -> float:
    m = _machines()
    t0 = time.perf_counter()
    for rec in stored:
        vol = AttachmentModel(rec["volume_id"])
        vol.node = rec["node"]
        vol.rwx_block = rec["rwx_block"]
        m.attachment.track(vol, rec["state"])
    return time.perf_counter() - t0


def events_per_s(n_events: int) -> float:
    """A realistic mix: publish, node loss, recovery, unpublish; all listeners attached."""
    m = _machines()
    eng = m.attachment
    vols = [eng.track(AttachmentModel(f"pvc-{i}")) for i in range(1000)]
    cycle = ("publish", "node_lost", "node_ready", "unpublish")
    payloads = [AttachInput(now=1.0, node=f"node-{i % NODES}") for i in range(len(vols))]
    t0 = time.perf_counter()
    done = 0
    while done < n_events:
        for event in cycle:
            for vol, p in zip(vols, payloads, strict=True):
                eng.send(vol, event, p)
            done += len(vols)
    return done / (time.perf_counter() - t0)


CYCLE = ("publish", "node_lost", "node_ready", "unpublish")


def _payloads(n: int) -> dict[str, list[AttachInput]]:
    """Per event, one input per volume, with the reasons the driver gives (shared per node)."""
    reasons = {
        "publish": "ControllerPublishVolume for node {}",
        "node_lost": "node {} not Ready",
        "node_ready": "node {} Ready",
        "unpublish": "ControllerUnpublishVolume from node {}",
    }
    return {
        e: [
            AttachInput(now=1.0, node=f"node-{i % NODES}", reason=r.format(f"node-{i % NODES}"))
            for i in range(n)
        ]
        for e, r in reasons.items()
    }


def engine_events_per_s(n_events: int, recorder: bool) -> float:
    """The same cycle on the bare engine, alone or with the flight recorder (CPU time)."""
    d = compile_machine(AttachmentMachine)
    listeners: list[object] = []
    if recorder:
        rec = FlightRecorder()
        listeners.append(rec)
    eng = Engine(d, listeners)
    vols = [eng.track(AttachmentModel(f"pvc-{i}")) for i in range(1000)]
    payloads = _payloads(len(vols))
    gc.collect()
    t0 = time.process_time()
    done = 0
    while done < n_events:
        for event in CYCLE:
            for vol, p in zip(vols, payloads[event], strict=True):
                eng.send(vol, event, p)
            done += len(vols)
    return done / (time.process_time() - t0)


def recorder_mb(n: int) -> float:
    """What the recorder holds for n volumes with DEPTH transitions each."""
    d = compile_machine(AttachmentMachine)
    rec = FlightRecorder()
    eng = Engine(d, [rec])
    vols = [eng.track(AttachmentModel(f"pvc-{i:08d}")) for i in range(n)]
    payloads = _payloads(n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for k in range(DEPTH):
        event = ("publish", "unpublish")[k % 2]
        for vol, p in zip(vols, payloads[event], strict=True):
            eng.send(vol, event, p)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert all(len(rec.history("attachment", v.volume_id)) == DEPTH for v in vols[:10])
    return held / 2**20


def library_events_per_s(n_events: int) -> float:
    """The same cycle through python-statemachine's own engine, one instance per volume."""

    names = compile_machine(AttachmentMachine).hook_names
    hooks = type("Hooks", (), {h: (lambda self: None) for h in names})
    machines = [
        AttachmentMachine(model=AttachmentModel(f"pvc-{i}"), listeners=[hooks()])
        for i in range(100)
    ]
    cycle = ("publish", "node_lost", "node_ready", "unpublish")
    payloads = [AttachInput(now=1.0, node=f"node-{i}") for i in range(len(machines))]
    t0 = time.perf_counter()
    done = 0
    while done < n_events:
        for event in cycle:
            for sm, p in zip(machines, payloads, strict=True):
                sm.send(event, p=p)
            done += len(machines)
    return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    build_s, build_mb, models = build(VOLUMES)
    stored = [
        {"volume_id": v.volume_id, "state": v.state, "node": v.node, "rwx_block": v.rwx_block}
        for v in models
    ]
    del models
    figures = {
        "events_per_s": round(events_per_s(200_000)),
        "build_10k_s": round(build_s, 4),
        "build_10k_mb": round(build_mb, 2),
        "restore_10k_s": round(restore(stored), 4),
    }
    lib = library_events_per_s(8_000)
    figures["library_events_per_s"] = round(lib)
    figures["speedup_vs_library"] = round(figures["events_per_s"] / lib, 1)
    bare = engine_events_per_s(200_000, recorder=False)
    recorded = engine_events_per_s(200_000, recorder=True)
    figures["events_per_s_engine"] = round(bare)
    figures["events_per_s_with_recorder"] = round(recorded)
    figures["recorder_cost_us"] = round(1e6 / recorded - 1e6 / bare, 2)
    figures["recorder_10k_mb"] = round(recorder_mb(VOLUMES), 2)
    report(figures, args.json)


if __name__ == "__main__":
    main()
