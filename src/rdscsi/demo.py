"""`rdscsi demo`: drives a volume through its life against a running CSI endpoint.

Meant for `rdscsi run` in another shell (its endpoint is the default). It prints every call
and its answer. Everything it creates is registered for clean-up as soon as it exists, and the
clean-up runs whatever happens (a failed step, Ctrl-C) and reports what it removed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from .config import endpoint_problems
from .csi import csi_pb2 as pb
from .csi import csi_pb2_grpc

GIB = 1 << 30
Mode = pb.VolumeCapability.AccessMode
READY_WAIT = 10.0  # seconds to wait for a fresh `rdscsi run` to reach its appliance
NOT_RUNNING = "start `rdscsi run` (or `make run`) in another shell first, then run the demo again"


class StepFailed(Exception):
    """A step failed; it has been reported."""


Out = Callable[[str], None]


class Cleanup:
    """What the demo created, undone in reverse order, each undo reported."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self._undo: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = []

    def add(self, key: str, what: str, undo: Callable[[], Awaitable[Any]]) -> None:
        """`what` is how the report names it ("volume pvc-…"); `key` lets a step that undoes
        it in the normal course of the demo drop it (`done`)."""
        self._undo.append((key, what, undo))

    def done(self, key: str) -> None:
        self._undo = [u for u in self._undo if u[0] != key]

    async def run(self) -> bool:
        """Undoes everything registered; True when all of it went."""
        removed: list[str] = []
        left: list[str] = []
        while self._undo:
            _, what, undo = self._undo.pop()
            try:
                await undo()
            except grpc.aio.AioRpcError as err:
                left.append(f"{what} ({err.code().name}: {err.details()})")
            except OSError as err:
                left.append(f"{what} ({err.strerror or err})")
            else:
                removed.append(what)
        if removed:
            self.out(f"· cleanup: removed {', '.join(removed)}")
        if left:
            self.out(f"✗ cleanup: could not remove {'; '.join(left)}")
        if not removed and not left:
            self.out("· cleanup: nothing to remove")
        return not left


async def _step(out: Out, what: str, call: Awaitable[Any], show: Callable[[Any], str]) -> Any:
    try:
        reply = await call
    except grpc.aio.AioRpcError as err:
        out(f"✗ {what}: {err.code().name}: {err.details()}")
        raise StepFailed from None
    out(f"✓ {what}: {show(reply)}")
    return reply


async def _node_steps(
    channel: grpc.aio.Channel,
    vol: pb.Volume,
    cap: pb.VolumeCapability,
    out: Out,
    undo: Cleanup,
    kubelet: Path,
) -> None:
    """Stage, publish, write, read back, unpublish, unstage, if the endpoint serves Node."""
    node = csi_pb2_grpc.NodeStub(channel)
    try:
        await node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest())
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        out("· no Node service on this endpoint (the `rdscsi run` banner says why): skipping")
        out("  NodeStageVolume, NodePublishVolume and the write through the mount")
        return
    # The node plugin takes only paths inside its kubelet directory.
    tmp = Path(tempfile.mkdtemp(prefix="rdscsi-demo-", dir=kubelet))
    # rmdir only: a directory still mounted (or holding files) is reported, never emptied
    undo.add("tmp", f"directory {tmp}", lambda: _rmdirs(tmp, tmp / "pod", tmp / "staging"))
    staging, target = tmp / "staging", tmp / "pod"
    vid = vol.volume_id
    await _step(
        out,
        "NodeStageVolume (ext4)",
        node.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=vid,
                staging_target_path=str(staging),
                volume_capability=cap,
                volume_context=vol.volume_context,
            )
        ),
        lambda r: f"formatted and mounted at {staging}",
    )
    unstage = pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging))
    undo.add("stage", f"staging mount {staging}", lambda: node.NodeUnstageVolume(unstage))
    await _step(
        out,
        "NodePublishVolume",
        node.NodePublishVolume(
            pb.NodePublishVolumeRequest(
                volume_id=vid,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=cap,
                volume_context=vol.volume_context,
            )
        ),
        lambda r: f"bound at {target} (where a pod would see it)",
    )
    unpublish = pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target))
    undo.add("publish", f"pod mount {target}", lambda: node.NodeUnpublishVolume(unpublish))
    text = f"written through rdscsi {uuid.uuid4()}\n"
    try:
        (target / "hello.txt").write_text(text)
        back = (staging / "hello.txt").read_text()
    except OSError as err:
        out(f"✗ write {target / 'hello.txt'}: {err.strerror or err}")
        raise StepFailed from None
    if back != text:
        out(f"✗ read back through {staging}: got {back!r}")
        raise StepFailed
    out(f"✓ wrote {target / 'hello.txt'}, read it back through {staging}")
    await _step(
        out,
        "NodeGetVolumeStats",
        node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=str(target))
        ),
        lambda r: f"{r.usage[0].used} of {r.usage[0].total} bytes used",
    )
    await _step(
        out, "NodeUnpublishVolume", node.NodeUnpublishVolume(unpublish), lambda r: "unbound"
    )
    undo.done("publish")
    await _step(
        out,
        "NodeUnstageVolume",
        node.NodeUnstageVolume(unstage),
        lambda r: "unmounted, loop device detached",
    )
    undo.done("stage")


async def _rmdirs(*paths: Path) -> None:
    for path in reversed(paths):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)


def _listing(reply: pb.ListVolumesResponse) -> str:
    parts = []
    for e in reply.entries:
        nodes = ",".join(e.status.published_node_ids)
        parts.append(e.volume.volume_id + (f" on {nodes}" if nodes else ""))
    return ", ".join(parts)


async def _ready(identity: Any, out: Out) -> bool:
    """Probe until the driver reaches its appliance (a fresh `rdscsi run` is still dialling)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_WAIT
    while True:
        reply = await identity.Probe(pb.ProbeRequest())
        if reply.ready.value:
            out("✓ Probe: ready (connected to the appliance)")
            return True
        if loop.time() >= deadline:
            out(
                f"✗ Probe: not ready after {READY_WAIT:g} s: the driver has no appliance "
                "connection (the `rdscsi run` log says why)"
            )
            return False
        await asyncio.sleep(0.2)


def default_kubelet_dir(endpoint: str) -> Path:
    """`rdscsi run`'s kubelet directory: `kubelet/` beside its socket (in its state dir)."""
    return Path(endpoint.removeprefix("unix://")).parent / "kubelet"


async def demo(
    endpoint: str, node_id: str = "", out: Out = print, kubelet_dir: Path | None = None
) -> int:
    problems = endpoint_problems(endpoint)
    if problems:
        out(f"✗ --{problems[0]}")
        return 2
    path = Path(endpoint.removeprefix("unix://"))
    if not path.exists():
        out(f"✗ nothing is listening on {endpoint}: {NOT_RUNNING}")
        return 1
    if not os.access(path, os.W_OK):
        out(
            f"✗ {endpoint} belongs to another user: run the demo as the user `rdscsi run` runs "
            "as (e.g. `sudo .venv/bin/rdscsi demo` when it was started with sudo)"
        )
        return 1
    node = node_id or socket.gethostname()
    pvc, restored = f"pvc-{uuid.uuid4()}", f"pvc-{uuid.uuid4()}"
    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
    )
    async with grpc.aio.insecure_channel(endpoint) as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        ctl = csi_pb2_grpc.ControllerStub(channel)
        try:
            info = await identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            out(f"✗ nothing answers on {endpoint} ({err.code().name}): {NOT_RUNNING}")
            return 1
        out(f"✓ GetPluginInfo: {info.name} {info.vendor_version}")
        if not await _ready(identity, out):
            return 1
        undo = Cleanup(out)
        ok = False
        try:
            kubelet = kubelet_dir or default_kubelet_dir(endpoint)
            ok = await _tour(channel, ctl, node, pvc, restored, cap, out, undo, kubelet)
        finally:
            cleaned = await undo.run()
        return 0 if ok and cleaned else 1


async def _tour(
    channel: grpc.aio.Channel,
    ctl: Any,
    node: str,
    pvc: str,
    restored: str,
    cap: pb.VolumeCapability,
    out: Out,
    undo: Cleanup,
    kubelet: Path,
) -> bool:
    def delete_volume(vid: str) -> Callable[[], Awaitable[Any]]:
        return lambda: ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))

    try:
        vol = (
            await _step(
                out,
                "CreateVolume 1 GiB",
                ctl.CreateVolume(
                    pb.CreateVolumeRequest(
                        name=pvc,
                        volume_capabilities=[cap],
                        capacity_range=pb.CapacityRange(required_bytes=GIB),
                    )
                ),
                lambda r: (
                    f"{r.volume.volume_id}, {r.volume.capacity_bytes} bytes, "
                    f"NQN {r.volume.volume_context['nqn']}"
                ),
            )
        ).volume
        undo.add("volume", f"volume {vol.volume_id}", delete_volume(vol.volume_id))
        await _step(
            out,
            "GetCapacity",
            ctl.GetCapacity(pb.GetCapacityRequest()),
            lambda r: f"{r.available_capacity} bytes free",
        )
        await _step(
            out,
            f"ControllerPublishVolume to {node}",
            ctl.ControllerPublishVolume(
                pb.ControllerPublishVolumeRequest(
                    volume_id=vol.volume_id, node_id=node, volume_capability=cap
                )
            ),
            lambda r: f"attached, context {dict(r.publish_context)}",
        )
        detach = pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=node)
        undo.add("attach", f"attachment to {node}", lambda: ctl.ControllerUnpublishVolume(detach))
        snap = (
            await _step(
                out,
                "CreateSnapshot",
                ctl.CreateSnapshot(
                    pb.CreateSnapshotRequest(
                        name=f"snapshot-{uuid.uuid4()}", source_volume_id=vol.volume_id
                    )
                ),
                lambda r: f"{r.snapshot.snapshot_id}, ready={r.snapshot.ready_to_use}",
            )
        ).snapshot
        sid = snap.snapshot_id
        undo.add(
            "snapshot",
            f"snapshot {sid}",
            lambda: ctl.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=sid)),
        )
        await _step(
            out,
            "ControllerExpandVolume to 2 GiB",
            ctl.ControllerExpandVolume(
                pb.ControllerExpandVolumeRequest(
                    volume_id=vol.volume_id,
                    capacity_range=pb.CapacityRange(required_bytes=2 * GIB),
                    volume_capability=cap,
                )
            ),
            lambda r: (
                f"{r.capacity_bytes} bytes, node expansion "
                f"{'required' if r.node_expansion_required else 'not needed'}"
            ),
        )
        rvol = (
            await _step(
                out,
                "CreateVolume from the snapshot",
                ctl.CreateVolume(
                    pb.CreateVolumeRequest(
                        name=restored,
                        volume_capabilities=[cap],
                        volume_content_source=pb.VolumeContentSource(
                            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=sid)
                        ),
                    )
                ),
                lambda r: f"{r.volume.volume_id}, {r.volume.capacity_bytes} bytes",
            )
        ).volume
        undo.add("restored", f"volume {rvol.volume_id}", delete_volume(rvol.volume_id))
        await _step(out, "ListVolumes", ctl.ListVolumes(pb.ListVolumesRequest()), _listing)
        await _node_steps(channel, vol, cap, out, undo, kubelet)
        await _step(
            out,
            "ControllerUnpublishVolume",
            ctl.ControllerUnpublishVolume(detach),
            lambda r: "detached",
        )
        undo.done("attach")
    except StepFailed:
        return False
    except grpc.aio.AioRpcError as err:
        out(f"✗ {err.code().name}: {err.details()}")
        return False
    return True
