"""Steps the scenarios share: a volume provisioned, attached, used by a pod on a node, and
what undoes each of them at the end. Each step checks what it claims before printing it."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ..csi import csi_pb2 as pb
from ..testing.sidecars import NeverThrough, block_cap, mount_cap
from .cluster import APPS, GIB, NODES, Cluster, NodePlugin
from .narrate import Narrator, short

T = TypeVar("T")
BLOCK_OFFSET = 1 << 20  # where a raw block volume's test pattern is written
BLOCK_BYTES = 4096


@dataclass
class Vol:
    pv: str  # the PV's name, as the provisioner names it (pvc-<claim uid>)
    claim: str  # the PVC's name, in APPS
    volume: pb.Volume
    block: bool

    @property
    def id(self) -> str:
        return str(self.volume.volume_id)

    @property
    def cap(self) -> pb.VolumeCapability:
        return block_cap() if self.block else mount_cap()


class Undo:
    """What a scenario made, undone in reverse order at the end (whatever happened), each
    undo reported."""

    def __init__(self, narrator: Narrator) -> None:
        self.narrator = narrator
        self._undo: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = []

    def add(self, key: str, what: str, undo: Callable[[], Awaitable[Any]]) -> None:
        """`key` names it for `done` (the scenario undid it itself); adding a key again
        replaces the earlier entry."""
        self.done(key)
        self._undo.append((key, what, undo))

    def done(self, key: str) -> None:
        self._undo = [u for u in self._undo if u[0] != key]

    async def run(self) -> bool:
        if self._undo:
            self.narrator.para("\nCleanup, what the scenario made:")
        removed: list[str] = []
        left: list[str] = []
        while self._undo:
            _, what, undo = self._undo.pop()
            try:
                await undo()
            except grpc.aio.AioRpcError as err:
                left.append(f"{what} ({err.code().name}: {err.details()})")
            except Exception as exc:  # reported, and the rest is still undone
                left.append(f"{what} ({exc})")
            else:
                removed.append(what)
        if removed:
            self.narrator.note(f"{', '.join(removed)}")
        if left:
            self.narrator.fail(f"could not undo: {'; '.join(left)}")
        return not left


async def rpc(narrator: Narrator, what: str, call: Awaitable[T]) -> T:
    """A CSI call whose failure ends the scenario, named."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise narrator.fail(f"{what}: {err.code().name}: {err.details()}") from None
    except NeverThrough as exc:
        raise narrator.fail(f"{what}: {exc}") from None


async def provision(c: Cluster, undo: Undo, claim: str, block: bool = False) -> Vol:
    n = c.narrator
    pv = f"pvc-{uuid.uuid4()}"
    volume = await rpc(
        n,
        "CreateVolume",
        c.k8s.provision_volume(pv, rwx_block=block, size=GIB, claim=claim),
    )
    vol = Vol(pv, claim, volume, block)
    undo.add(f"volume {vol.id}", f"deleted volume {short(vol.id)}", lambda: delete(c, vol))
    n.expect(vol.id in c.appliance.store.disks, f"volume {vol.id} is not on the appliance")
    kind = "raw block, ReadWriteMany" if block else "ext4, ReadWriteOnce"
    n.ok(
        f"CreateVolume: {vol.id}, {volume.capacity_bytes // GIB} GiB ({kind}); "
        f"PV {short(pv)} bound to PVC {APPS}/{claim}"
    )
    return vol


async def delete(c: Cluster, vol: Vol) -> None:
    for node in NODES:
        if c.attachment(vol.id, node) is not None:
            await c.k8s.detach(vol.id, node)
    await c.k8s.delete(vol.id, vol.pv)


async def attach(c: Cluster, undo: Undo, vol: Vol, node: str, state: str = "attached") -> None:
    """The attach/detach controller asks for `node`; the attacher publishes; the controller's
    Attachment machine goes to `state`."""
    n = c.narrator
    mark = n.mark()
    name = await rpc(
        n,
        f"ControllerPublishVolume to {node}",
        c.k8s.attach(vol.id, vol.pv, node, rwx_block=vol.block),
    )
    undo.add(f"attach {node}", f"detached from {node}", lambda: c.k8s.detach(vol.id, node))
    await n.saw("controller", "attachment", vol.id, state, since=mark)
    va = c.attachment(vol.id, node)
    n.expect(
        va is not None and va.get("status", {}).get("attached") is True,
        f"VolumeAttachment {name[:12]}… for {node} is not attached",
    )
    n.ok(f"ControllerPublishVolume to {node}: VolumeAttachment {name[:12]}… attached=true")


async def detach(c: Cluster, undo: Undo, vol: Vol, node: str) -> None:
    """The VolumeAttachment for `node` is deleted: the attacher unpublishes, it goes."""
    await rpc(c.narrator, f"ControllerUnpublishVolume from {node}", c.k8s.detach(vol.id, node))
    undo.done(f"attach {node}")
    c.narrator.expect(
        c.attachment(vol.id, node) is None, f"the VolumeAttachment for {node} is still there"
    )


async def use(c: Cluster, undo: Undo, vol: Vol, node: NodePlugin) -> Path:
    """The kubelet stages and publishes the volume for the pod on `node`: the pod's path."""
    n = c.narrator
    context = c.k8s.publish_contexts[(vol.id, node.name)]
    mark = n.mark()
    where = await rpc(
        n, f"NodeStageVolume on {node.name}", node.stage(vol.pv, vol.volume, vol.cap, context)
    )
    undo.add(
        f"stage {node.name}",
        f"unstaged on {node.name}",
        lambda: node.unstage(vol.pv, vol.id, vol.block),
    )
    await n.saw(
        node.name, "node_volume", vol.id, "staged" if not vol.block else "connected", since=mark
    )
    devices = await node.devices()
    n.expect(len(devices) == 1, f"{node.name} has loop devices {devices}, expected one")
    if vol.block:
        n.ok(f"NodeStageVolume on {node.name}: {devices[0]} (its own loop device)")
    else:
        n.ok(f"NodeStageVolume on {node.name}: ext4 on {devices[0]}, the node's staging mount")
    await rpc(
        n,
        f"NodePublishVolume on {node.name}",
        node.publish(vol.pv, vol.volume, vol.cap, context),
    )
    undo.add(
        f"publish {node.name}",
        f"unpublished on {node.name}",
        lambda: node.unpublish(vol.pv, vol.id, vol.block),
    )
    await n.saw(node.name, "node_volume", vol.id, "published", since=mark)
    n.ok(f"NodePublishVolume on {node.name}: bound into the pod ({short_path(c, where.target)})")
    return where.target


async def leave(c: Cluster, undo: Undo, vol: Vol, node: NodePlugin) -> None:
    """The pod on `node` is gone: the kubelet unpublishes and unstages."""
    n = c.narrator
    await rpc(n, f"NodeUnpublishVolume on {node.name}", node.unpublish(vol.pv, vol.id, vol.block))
    undo.done(f"publish {node.name}")
    await rpc(n, f"NodeUnstageVolume on {node.name}", node.unstage(vol.pv, vol.id, vol.block))
    undo.done(f"stage {node.name}")
    n.expect(not await node.devices(), f"{node.name} still has a loop device")
    n.ok(f"NodeUnpublishVolume, NodeUnstageVolume on {node.name}: its loop device is detached")


def powered_off(c: Cluster, undo: Undo, node: NodePlugin) -> None:
    """A powered-off node's pod and mounts are gone: nothing of it is left to undo."""
    undo.done(f"publish {node.name}")
    undo.done(f"stage {node.name}")


def short_path(c: Cluster, path: Path) -> str:
    """A kubelet path, its long ids cut: `nodes/node-a/kubelet/pods/73a9…/volumes/…/mount`."""
    parts = []
    for part in path.relative_to(c.root).parts:
        parts.append(part[:4] + "…" if len(part) > 16 else part)
    return "/".join(parts)


async def pod_writes(c: Cluster, undo: Undo) -> tuple[Vol, str, Path | None]:
    """The file scenarios' opening: a volume provisioned, attached to node-a and mounted in a
    pod there, which writes data.txt. The volume, the text written, and the mount (None
    without node plugins: nothing is written then)."""
    vol = await provision(c, undo, "data")
    await attach(c, undo, vol, "node-a")
    text = f"written on node-a by rdscsi demo {uuid.uuid4()}\n"
    node = c.nodes.get("node-a")
    target = None
    if node is not None:
        target = await use(c, undo, vol, node)
        write_file(target / "data.txt", text)
        c.narrator.ok(f"the pod on node-a wrote data.txt ({len(text)} bytes) and synced it")
    else:
        c.narrator.note("no node plugins: no stage, no mount, no data written (see above)")
    await c.events()
    return vol, text, target


# --- data -------------------------------------------------------------------------------


def write_file(path: Path, text: str) -> None:
    """Written and synced: on the appliance, whatever happens to the node next."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def block_pattern(tag: str) -> bytes:
    head = f"rdscsi demo {tag} {uuid.uuid4()}\n".encode()
    return (head * (BLOCK_BYTES // len(head) + 1))[:BLOCK_BYTES]


def write_block(device: Path, data: bytes, offset: int = BLOCK_OFFSET) -> None:
    """Straight to the device (O_DIRECT, then fsync): no page cache of this node holds it."""
    buf = mmap.mmap(-1, len(data))  # page-aligned, as O_DIRECT needs
    buf.write(data)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwritev(fd, [buf], offset)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def read_block(device: Path, size: int = BLOCK_BYTES, offset: int = BLOCK_OFFSET) -> bytes:
    """From the device itself (O_DIRECT): what the appliance holds, not a cached copy."""
    buf = mmap.mmap(-1, size)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [buf], offset)
        return bytes(buf)
    finally:
        os.close(fd)
        buf.close()


async def published_on(c: Cluster, vol: Vol) -> list[str]:
    """Where ControllerGetVolume says the volume is published (any replica answers this)."""
    got = await rpc(
        c.narrator,
        "ControllerGetVolume",
        c.k8s.stub.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vol.id)),
    )
    return list(got.status.published_node_ids)
