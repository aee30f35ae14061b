"""`rdscsi demo`: drives a volume through its life against a running CSI endpoint.

Meant for `rdscsi run` in another shell: it prints every call and its answer, and cleans up
what it created even when a step fails.
"""

from __future__ import annotations

import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from .csi import csi_pb2 as pb
from .csi import csi_pb2_grpc

GIB = 1 << 30
Mode = pb.VolumeCapability.AccessMode


async def _node_steps(
    channel: grpc.aio.Channel,
    step: Any,
    vol: pb.Volume,
    cap: pb.VolumeCapability,
    out: Callable[[str], None],
) -> None:
    """Stage, publish, write, read back, unpublish, unstage, if the endpoint serves Node."""
    node = csi_pb2_grpc.NodeStub(channel)
    try:
        await node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest())
    except grpc.aio.AioRpcError:
        out("· no Node service on this endpoint: skipping stage and publish")
        return
    with tempfile.TemporaryDirectory(prefix="rdscsi-demo-") as tmp:
        staging, target = Path(tmp) / "staging", Path(tmp) / "pod"
        vid = vol.volume_id
        await step(
            "NodeStageVolume (ext4)",
            node.NodeStageVolume(
                pb.NodeStageVolumeRequest(
                    volume_id=vid,
                    staging_target_path=str(staging),
                    volume_capability=cap,
                    volume_context=vol.volume_context,
                )
            ),
            lambda r: f"mounted at {staging}",
        )
        await step(
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
            lambda r: f"bound at {target}",
        )
        (target / "hello.txt").write_text("written through rdscsi\n")
        stats = await step(
            "NodeGetVolumeStats",
            node.NodeGetVolumeStats(
                pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=str(target))
            ),
            lambda r: f"{r.usage[0].used} of {r.usage[0].total} bytes used",
        )
        del stats
        await step(
            "NodeUnpublishVolume",
            node.NodeUnpublishVolume(
                pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target))
            ),
            lambda r: "unbound",
        )
        await step(
            "NodeUnstageVolume",
            node.NodeUnstageVolume(
                pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging))
            ),
            lambda r: "unmounted and disconnected",
        )


def _listing(reply: pb.ListVolumesResponse) -> str:
    parts = []
    for e in reply.entries:
        nodes = ",".join(e.status.published_node_ids)
        parts.append(e.volume.volume_id + (f" on {nodes}" if nodes else ""))
    return ", ".join(parts)


async def demo(endpoint: str, node_id: str = "", out: Callable[[str], None] = print) -> int:
    node = node_id or socket.gethostname()
    tag = uuid.uuid4()
    pvc, restored = f"pvc-{tag}", f"pvc-{uuid.uuid4()}"
    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
    )
    async with grpc.aio.insecure_channel(endpoint) as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        ctl = csi_pb2_grpc.ControllerStub(channel)

        async def step(what: str, call: Awaitable[Any], show: Callable[[Any], str]) -> Any:
            try:
                reply = await call
            except grpc.aio.AioRpcError as err:
                out(f"✗ {what}: {err.code().name}: {err.details()}")
                raise
            out(f"✓ {what}: {show(reply)}")
            return reply

        created: list[str] = []
        snap_id = ""
        try:
            info = await step(
                "GetPluginInfo",
                identity.GetPluginInfo(pb.GetPluginInfoRequest()),
                lambda r: f"{r.name} {r.vendor_version}",
            )
            del info
            await step(
                "Probe",
                identity.Probe(pb.ProbeRequest()),
                lambda r: "ready" if r.ready.value else "NOT ready (appliance down?)",
            )
            vol = (
                await step(
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
            created.append(vol.volume_id)
            await step(
                "GetCapacity",
                ctl.GetCapacity(pb.GetCapacityRequest()),
                lambda r: f"{r.available_capacity} bytes free",
            )
            await step(
                f"ControllerPublishVolume to {node}",
                ctl.ControllerPublishVolume(
                    pb.ControllerPublishVolumeRequest(
                        volume_id=vol.volume_id, node_id=node, volume_capability=cap
                    )
                ),
                lambda r: f"context {dict(r.publish_context)}",
            )
            snap = (
                await step(
                    "CreateSnapshot",
                    ctl.CreateSnapshot(
                        pb.CreateSnapshotRequest(
                            name=f"snapshot-{tag}", source_volume_id=vol.volume_id
                        )
                    ),
                    lambda r: f"{r.snapshot.snapshot_id}, ready={r.snapshot.ready_to_use}",
                )
            ).snapshot
            snap_id = snap.snapshot_id
            await step(
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
                await step(
                    "CreateVolume from the snapshot",
                    ctl.CreateVolume(
                        pb.CreateVolumeRequest(
                            name=restored,
                            volume_capabilities=[cap],
                            volume_content_source=pb.VolumeContentSource(
                                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap_id)
                            ),
                        )
                    ),
                    lambda r: f"{r.volume.volume_id}, {r.volume.capacity_bytes} bytes",
                )
            ).volume
            created.append(rvol.volume_id)
            await step("ListVolumes", ctl.ListVolumes(pb.ListVolumesRequest()), _listing)
            await _node_steps(channel, step, vol, cap, out)
            await step(
                "ControllerUnpublishVolume",
                ctl.ControllerUnpublishVolume(
                    pb.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=node)
                ),
                lambda r: "detached",
            )
        except grpc.aio.AioRpcError:
            return 1
        finally:
            if snap_id:
                await step(
                    "DeleteSnapshot",
                    ctl.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap_id)),
                    lambda r: "gone",
                )
            for vid in created:
                await ctl.ControllerUnpublishVolume(
                    pb.ControllerUnpublishVolumeRequest(volume_id=vid)
                )
                await step(
                    f"DeleteVolume {vid}",
                    ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid)),
                    lambda r: "gone",
                )
    return 0
