"""The CSI calls the node tests make, as kubelet and the sidecars make them."""

from __future__ import annotations

from pathlib import Path

import grpc

from rdscsi.csi import csi_pb2 as pb

from .conftest import GIB, NODE, Node

PVC = "pvc-0a1b2c3d-0000-4000-8000-0000000000a1"


def _has_cap(bit: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:")).split()[1]
    return bool(int(eff, 16) >> bit & 1)


# Online ext4 growth (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which some sandboxes drop.
CAN_GROW_EXT4 = _has_cap(24)


async def fail(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


async def provision(
    n: Node,
    cap: pb.VolumeCapability,
    size: int = GIB,
    name: str = PVC,
    source: pb.VolumeContentSource | None = None,
    readonly: bool = False,
) -> pb.Volume:
    vol = (
        await n.controller.CreateVolume(
            pb.CreateVolumeRequest(
                name=name,
                volume_capabilities=[cap],
                capacity_range=pb.CapacityRange(required_bytes=size),
                volume_content_source=source,
            )
        )
    ).volume
    await attach(n, vol, cap, readonly)
    return vol


async def attach(
    n: Node, vol: pb.Volume, cap: pb.VolumeCapability, readonly: bool = False
) -> dict[str, str]:
    """ControllerPublishVolume; the publish context goes on to NodeStage (kubelet's way)."""
    resp = await n.controller.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=NODE, volume_capability=cap, readonly=readonly
        )
    )
    n.publish_context[vol.volume_id] = dict(resp.publish_context)
    return dict(resp.publish_context)


def stage(n: Node, vol: pb.Volume, cap: pb.VolumeCapability) -> object:
    return n.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(n.staging(vol.volume_id)),
            volume_capability=cap,
            volume_context=vol.volume_context,
            publish_context=n.publish_context.get(vol.volume_id, {}),
        )
    )


def unstage(n: Node, vid: str) -> object:
    return n.node.NodeUnstageVolume(
        pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(n.staging(vid)))
    )


def publish(
    n: Node, vol: pb.Volume, cap: pb.VolumeCapability, pod: str = "pod-1", readonly: bool = False
) -> object:
    return n.node.NodePublishVolume(
        pb.NodePublishVolumeRequest(
            volume_id=vol.volume_id,
            staging_target_path=str(n.staging(vol.volume_id)),
            target_path=str(n.target(vol.volume_id, pod)),
            volume_capability=cap,
            readonly=readonly,
            volume_context=vol.volume_context,
        )
    )


def unpublish(n: Node, vid: str, pod: str = "pod-1") -> object:
    return n.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(n.target(vid, pod)))
    )


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)
