"""The CSI Controller service: every controller RPC, and only RPCs, live here.

Volumes and snapshots are read from and written to the appliance through `VolumeStore`;
where a volume may be used is decided by its Attachment machine (`AttachmentBook`), restored
from the cluster's objects on every call. Each RPC validates its request first, holds a
per-object lock (a concurrent call for the same volume or snapshot gets ABORTED), and names
the object in every error. No RPC depends on which replica leads: any replica serves them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..io.rds.errors import AlreadyExistsError, NotFoundError, RDSError
from ..io.rds.volumes import Snapshot, Volume, VolumeSource, VolumeStore
from . import csi_pb2 as pb
from . import csi_pb2_grpc
from .attachments import AttachmentBook, ClaimNotSeen, NodeDirectory
from .kind import COPY_OF, VolumeKind, kind_of
from .locks import OperationLocks
from .naming import is_snapshot_id, is_volume_id, snapshot_id, volume_id
from .params import (
    DEFAULT_FS,
    CapabilityCheck,
    check_capabilities,
    check_capability,
    expand_size,
    pick_size,
    size_fits,
    volume_parameters,
)
from .rpc import rpc
from .status import RPCError, from_rds, invalid, not_found, precondition, required, shown

log = logging.getLogger("rdscsi.controller")

Cap = pb.ControllerServiceCapability.RPC.Type
CAPABILITIES = (
    Cap.CREATE_DELETE_VOLUME,
    Cap.PUBLISH_UNPUBLISH_VOLUME,
    Cap.LIST_VOLUMES,
    Cap.GET_CAPACITY,
    Cap.CREATE_DELETE_SNAPSHOT,
    Cap.LIST_SNAPSHOTS,
    Cap.CLONE_VOLUME,
    Cap.EXPAND_VOLUME,
    Cap.LIST_VOLUMES_PUBLISHED_NODES,
    Cap.VOLUME_CONDITION,
    Cap.GET_VOLUME,
    Cap.SINGLE_NODE_MULTI_WRITER,
    Cap.GET_SNAPSHOT,
    Cap.PUBLISH_READONLY,
)


@dataclass(frozen=True)
class ControllerSettings:
    plugin_name: str
    appliance: str  # topology value
    nvme_address: str
    transport: str  # "nvme-tcp", or "loop" for the built-in simulator

    @property
    def topology_key(self) -> str:
        return f"{self.plugin_name}/appliance"


class ControllerService(csi_pb2_grpc.ControllerServicer):  # type: ignore[misc]
    def __init__(
        self,
        settings: ControllerSettings,
        store: VolumeStore,
        attachments: AttachmentBook,
        nodes: NodeDirectory,
        locks: OperationLocks | None = None,
        on_pool: Callable[[int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_pool = on_pool  # records pool size and free bytes whenever they are read
        self.store = store
        self.attachments = attachments
        self.nodes = nodes
        self.locks = locks or OperationLocks()
        # (volume, node) -> readonly of its ControllerPublishVolume, to answer a second
        # publish with the other flag ALREADY_EXISTS. Memory only: after a restart the first
        # publish sets it again (the node enforces read-only from the publish context).
        self._readonly: dict[tuple[str, str], bool] = {}

    # --- helpers ------------------------------------------------------------------------------

    def _topology(self) -> pb.Topology:
        return pb.Topology(segments={self.settings.topology_key: self.settings.appliance})

    def _reachable(self, req: pb.TopologyRequirement) -> bool:
        """Whether our appliance satisfies the requirement (no requirement: yes)."""
        requisite = list(req.requisite) or list(req.preferred)
        if not requisite:
            return True
        mine = dict(self._topology().segments)
        return any(all(mine.get(k) == v for k, v in t.segments.items()) for t in requisite)

    def _context(self, vol: Volume, params: dict[str, str]) -> dict[str, str]:
        ctx = {
            "transport": self.settings.transport,
            "nvmeAddress": self.settings.nvme_address,
            "nvmePort": str(vol.port),
            "nqn": vol.nqn,
            "appliance": self.settings.appliance,
        }
        if self.settings.transport == "loop":
            ctx["filePath"] = vol.file_path  # the simulator's node side attaches this file
        kind = VolumeKind.from_store(vol.kind)
        if kind is not None:
            ctx.update(kind.context())
        if vol.source is not None:
            ctx[COPY_OF] = f"{vol.source.kind}/{vol.source.id}"
        ctx.update(params)
        return ctx

    def _volume_message(self, vol: Volume, params: dict[str, str] | None = None) -> pb.Volume:
        msg = pb.Volume(
            volume_id=vol.id,
            capacity_bytes=vol.size,
            volume_context=self._context(vol, params or {}),
            accessible_topology=[self._topology()],
        )
        if vol.source is not None:
            if vol.source.kind == "snapshot":
                msg.content_source.snapshot.snapshot_id = vol.source.id
            else:
                msg.content_source.volume.volume_id = vol.source.id
        return msg

    def _condition(self, vol: Volume) -> pb.VolumeCondition:
        # The appliance is the source of truth: a disk whose NVMe/TCP export is off cannot
        # be reached by any node, whatever the attachments say.
        if not vol.nqn or not vol.port:
            return pb.VolumeCondition(
                abnormal=True, message=f"volume {vol.id} is not exported over NVMe/TCP"
            )
        return pb.VolumeCondition(
            abnormal=False, message=f"volume {vol.id} is exported as {vol.nqn}"
        )

    async def _existing_volume(self, vid: str, what: str = "volume") -> Volume:
        try:
            vol = await self.store.get_volume(vid)
        except RDSError as exc:
            raise from_rds(exc, f"{what} {vid}") from exc
        if vol is None:
            raise not_found(f"{what} {vid} does not exist")
        return vol

    @staticmethod
    def _timestamp(seconds: float) -> Timestamp:
        ts = Timestamp()
        ts.FromNanoseconds(int(seconds * 1e9))
        return ts

    def _snapshot_message(self, snap: Snapshot) -> pb.Snapshot:
        return pb.Snapshot(
            snapshot_id=snap.id,
            source_volume_id=snap.source_volume_id,
            size_bytes=snap.size,
            creation_time=self._timestamp(snap.created_at),
            ready_to_use=True,
        )

    # --- volumes --------------------------------------------------------------------------------

    @rpc
    async def CreateVolume(self, req: pb.CreateVolumeRequest, ctx: Any) -> pb.CreateVolumeResponse:
        name = required(req.name, "name")
        kind = kind_of(check_capabilities(list(req.volume_capabilities)))
        params = volume_parameters(req.parameters, None if kind.block else kind.fs)
        vid = volume_id(name)
        what = f"volume {shown(name)} ({vid})"
        if req.HasField("accessibility_requirements") and not self._reachable(
            req.accessibility_requirements
        ):
            raise RPCError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{what}: accessibility requirements exclude appliance {self.settings.appliance}",
            )
        source = self._requested_source(req)
        rng = req.capacity_range if req.HasField("capacity_range") else None
        pick_size(rng, 0, what, kind.minimum_size)  # a range no size can meet fails first
        with self.locks.hold(vid):
            try:
                # The volume first: a retry finds what an earlier call made, even after its
                # source is gone (answering NOT_FOUND then would orphan the volume).
                existing = await self.store.get_volume(vid)
                if existing is not None:
                    vol = self._same_volume(existing, kind, source, rng, what)
                else:
                    floor = await self._source_floor(source, kind) if source else 0
                    size = pick_size(rng, floor, what, kind.minimum_size)
                    vol = await self.store.create_volume(
                        vid,
                        size,
                        source,
                        kind.to_store(),
                        comment=params.comment,
                        lookup=False,
                    )
            except AlreadyExistsError as exc:
                raise RPCError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"{what} exists with different settings: {exc}",
                ) from exc
            except RDSError as exc:
                raise from_rds(exc, what) from exc
        log.info(
            "created volume %s (%s bytes, %s) for %s", vid, vol.size, kind.describe(), shown(name)
        )
        return pb.CreateVolumeResponse(volume=self._volume_message(vol, params.context))

    @staticmethod
    def _requested_source(req: pb.CreateVolumeRequest) -> VolumeSource | None:
        if not req.HasField("volume_content_source"):
            return None
        kind = req.volume_content_source.WhichOneof("type")
        if kind == "snapshot":
            sid = req.volume_content_source.snapshot.snapshot_id
            if not is_snapshot_id(sid):
                raise not_found(f"source snapshot {shown(sid)} does not exist")
            return VolumeSource("snapshot", sid)
        if kind == "volume":
            src = req.volume_content_source.volume.volume_id
            if not is_volume_id(src):
                raise not_found(f"source volume {shown(src)} does not exist")
            return VolumeSource("volume", src)
        raise invalid("volume_content_source: snapshot or volume is required")

    async def _source_floor(self, source: VolumeSource, kind: VolumeKind) -> int:
        """The source's size (a copy is at least as large); NOT_FOUND if it is gone, and
        INVALID_ARGUMENT if a copy of it cannot have ``kind``."""
        what = f"source {source.kind} {source.id}"
        try:
            found = await self.store.get_source(source)
        except NotFoundError as exc:
            raise not_found(f"{what} does not exist") from exc
        recorded = VolumeKind.from_store(found.kind)
        if recorded is not None and recorded.block != kind.block:
            if recorded.block:
                raise invalid(
                    f"{what} holds raw block data; a filesystem volume made from it would "
                    "look blank and be formatted over it: restore it as a block volume"
                )
        elif recorded is not None and recorded.fs != kind.fs:
            raise invalid(
                f"{what} holds {recorded.fs}; a copy of it cannot be {kind.fs}: ask for "
                f"fs_type {recorded.fs}"
            )
        return found.size

    @staticmethod
    def _same_volume(
        vol: Volume,
        kind: VolumeKind,
        source: VolumeSource | None,
        rng: pb.CapacityRange | None,
        what: str,
    ) -> Volume:
        """``vol`` if it is compatible with this CreateVolume (CSI: then the answer is OK),
        else ALREADY_EXISTS naming what differs."""
        differences: list[str] = []
        if not size_fits(vol.size, rng, what):
            differences.append(f"size {vol.size} bytes is outside the requested range")
        if vol.source != source:
            had = "none" if vol.source is None else f"{vol.source.kind} {vol.source.id}"
            differences.append(f"it was copied from {had}")
        recorded = VolumeKind.from_store(vol.kind)
        if recorded is not None and (
            (recorded.block, recorded.fs) != (kind.block, kind.fs)
            or not kind.modes <= recorded.modes
        ):
            differences.append(f"it is {recorded.describe()}")
        if not vol.nqn or not vol.port:
            differences.append("it has no NVMe/TCP export")
        if differences:
            raise RPCError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"{what} already exists, but {'; '.join(differences)}",
            )
        return vol

    @rpc
    async def DeleteVolume(self, req: pb.DeleteVolumeRequest, ctx: Any) -> pb.DeleteVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        if not is_volume_id(vid):
            return pb.DeleteVolumeResponse()  # never ours, so already gone
        with self.locks.hold(vid):
            nodes = self.attachments.nodes(vid)
            if nodes:
                raise precondition(f"volume {vid} is still published to node(s) {', '.join(nodes)}")
            try:
                await self.store.delete_volume(vid)
            except RDSError as exc:
                raise from_rds(exc, f"volume {vid}") from exc
            self.attachments.forget(vid)
        log.info("deleted volume %s", vid)
        return pb.DeleteVolumeResponse()

    @rpc
    async def ControllerPublishVolume(
        self, req: pb.ControllerPublishVolumeRequest, ctx: Any
    ) -> pb.ControllerPublishVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        node = required(req.node_id, "node_id")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability: required")
        cap = check_capability(req.volume_capability)
        if not is_volume_id(vid):
            raise not_found(f"volume {shown(vid)} does not exist")
        if not self.nodes.known(node):
            raise not_found(f"node {shown(node)} does not exist")
        with self.locks.hold(vid):
            vol = await self._existing_volume(vid)
            self._check_kind(vol, cap)
            self._check_readonly(vid, node, req.readonly)
            try:
                decision = await self.attachments.publish(vid, node, cap.multi_node)
            except ClaimNotSeen as exc:
                raise RPCError(grpc.StatusCode.ABORTED, f"{exc}; retry") from None
            if decision.refused:
                holders = ", ".join(decision.holders)
                how = (
                    "claimed first by an older VolumeAttachment on"
                    if decision.pending
                    else "attached to"
                )
                raise precondition(
                    f"volume {vid} is {how} node {holders}; cannot attach it to {node}"
                )
            self._readonly[(vid, node)] = req.readonly
        return pb.ControllerPublishVolumeResponse(
            publish_context={
                "nqn": vol.nqn,
                "nvmeAddress": self.settings.nvme_address,
                "nvmePort": str(vol.port),
                # The node stages the whole attachment read-only: a read-only mount, or the
                # block device's own read-only flag.
                "readonly": "true" if req.readonly else "false",
            }
        )

    @staticmethod
    def _check_kind(vol: Volume, cap: CapabilityCheck) -> None:
        kind = VolumeKind.from_store(vol.kind)
        why = kind.refusal(cap) if kind is not None else None
        if why is not None:
            raise invalid(f"volume_capability: volume {vol.id} cannot be used so: {why}")

    def _check_readonly(self, vid: str, node: str, readonly: bool) -> None:
        was = self._readonly.get((vid, node))
        if was is not None and was != readonly and node in self.attachments.nodes(vid):
            raise RPCError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"volume {vid} is published to node {node} with readonly={str(was).lower()}; "
                "unpublish it before publishing it again with another readonly flag",
            )

    @rpc
    async def ControllerUnpublishVolume(
        self, req: pb.ControllerUnpublishVolumeRequest, ctx: Any
    ) -> pb.ControllerUnpublishVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        with self.locks.hold(vid):
            # An empty node_id means: from every node (CSI spec).
            for step in self.attachments.unpublish(vid, req.node_id):
                self._readonly.pop((vid, step.payload.node), None)
        return pb.ControllerUnpublishVolumeResponse()

    @rpc
    async def ValidateVolumeCapabilities(
        self, req: pb.ValidateVolumeCapabilitiesRequest, ctx: Any
    ) -> pb.ValidateVolumeCapabilitiesResponse:
        vid = required(req.volume_id, "volume_id")
        if not req.volume_capabilities:
            raise invalid("volume_capabilities: at least one is required")
        if not is_volume_id(vid):
            raise not_found(f"volume {shown(vid)} does not exist")
        vol = await self._existing_volume(vid)
        kind = VolumeKind.from_store(vol.kind)
        try:
            caps = check_capabilities(list(req.volume_capabilities))
            for i, cap in enumerate(caps):
                why = kind.refusal(cap) if kind is not None else None
                if why is not None:
                    raise invalid(f"volume_capabilities[{i}]: {why}")
            fs = kind.fs if kind is not None else (caps[0].fs_type or DEFAULT_FS)
            volume_parameters(req.parameters, None if caps[0].block else fs)
        except RPCError as exc:
            return pb.ValidateVolumeCapabilitiesResponse(message=exc.message)
        return pb.ValidateVolumeCapabilitiesResponse(
            confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=req.volume_context,
                volume_capabilities=req.volume_capabilities,
                parameters=req.parameters,
            )
        )

    @rpc
    async def ListVolumes(self, req: pb.ListVolumesRequest, ctx: Any) -> pb.ListVolumesResponse:
        try:
            volumes = await self.store.list_volumes()
        except RDSError as exc:
            raise from_rds(exc, "list volumes") from exc
        page, next_token = _page(
            [v.id for v in volumes], req.starting_token, req.max_entries, is_volume_id
        )
        by_id = {v.id: v for v in volumes}
        entries = []
        for vid in page:
            vol = by_id[vid]
            entries.append(
                pb.ListVolumesResponse.Entry(
                    volume=self._volume_message(vol),
                    status=pb.ListVolumesResponse.VolumeStatus(
                        published_node_ids=list(self.attachments.nodes(vid)),
                        volume_condition=self._condition(vol),
                    ),
                )
            )
        return pb.ListVolumesResponse(entries=entries, next_token=next_token)

    @rpc
    async def ControllerGetVolume(
        self, req: pb.ControllerGetVolumeRequest, ctx: Any
    ) -> pb.ControllerGetVolumeResponse:
        required(req.volume_id, "volume_id")
        if not is_volume_id(req.volume_id):
            raise not_found(f"volume {req.volume_id} does not exist")
        vol = await self._existing_volume(req.volume_id)
        return pb.ControllerGetVolumeResponse(
            volume=self._volume_message(vol),
            status=pb.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=list(self.attachments.nodes(vol.id)),
                volume_condition=self._condition(vol),
            ),
        )

    @rpc
    async def GetCapacity(self, req: pb.GetCapacityRequest, ctx: Any) -> pb.GetCapacityResponse:
        for i, cap in enumerate(req.volume_capabilities):
            check_capability(cap, f"volume_capabilities[{i}]")
        volume_parameters(req.parameters)
        if req.HasField("accessible_topology"):
            mine = dict(self._topology().segments)
            if any(mine.get(k) != v for k, v in req.accessible_topology.segments.items()):
                return pb.GetCapacityResponse(available_capacity=0)
        try:
            pool = await self.store.capacity()
        except RDSError as exc:
            raise from_rds(exc, "pool capacity") from exc
        if self._on_pool is not None and pool.size is not None and pool.free is not None:
            self._on_pool(pool.size, pool.free)
        return pb.GetCapacityResponse(
            available_capacity=pool.free, maximum_volume_size=_wrap(pool.free)
        )

    @rpc
    async def ControllerExpandVolume(
        self, req: pb.ControllerExpandVolumeRequest, ctx: Any
    ) -> pb.ControllerExpandVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        if not req.HasField("capacity_range"):
            raise invalid("capacity_range: required")
        cap = check_capability(req.volume_capability) if req.HasField("volume_capability") else None
        if not is_volume_id(vid):
            raise not_found(f"volume {shown(vid)} does not exist")
        with self.locks.hold(vid):
            vol = await self._existing_volume(vid)
            if cap is not None:
                self._check_kind(vol, cap)
            size = expand_size(req.capacity_range, vol.size, f"volume {vid}")
            try:
                vol = await self.store.expand_volume(vid, size)
            except RDSError as exc:
                raise from_rds(exc, f"volume {vid}") from exc
        kind = VolumeKind.from_store(vol.kind)
        block = kind.block if kind is not None else (cap is not None and cap.block)
        return pb.ControllerExpandVolumeResponse(
            capacity_bytes=vol.size, node_expansion_required=not block
        )

    # --- snapshots ------------------------------------------------------------------------------

    @rpc
    async def CreateSnapshot(
        self, req: pb.CreateSnapshotRequest, ctx: Any
    ) -> pb.CreateSnapshotResponse:
        name = required(req.name, "name")
        src = required(req.source_volume_id, "source_volume_id")
        sid = snapshot_id(name)
        what = f"snapshot {shown(name)} ({sid})"
        if not is_volume_id(src):
            raise not_found(f"source volume {shown(src)} does not exist")
        with self.locks.hold(sid):
            try:
                existing = await self.store.get_snapshot(sid)
                if existing is not None and existing.source_volume_id != src:
                    raise RPCError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"{what} exists for volume {existing.source_volume_id}, not {src}",
                    )
                if existing is None:
                    await self._existing_volume(src, "source volume")
                snap = existing or await self.store.create_snapshot(sid, src)
            except AlreadyExistsError as exc:
                raise RPCError(grpc.StatusCode.ALREADY_EXISTS, f"{what}: {exc}") from exc
            except RDSError as exc:
                raise from_rds(exc, what) from exc
        return pb.CreateSnapshotResponse(snapshot=self._snapshot_message(snap))

    @rpc
    async def DeleteSnapshot(
        self, req: pb.DeleteSnapshotRequest, ctx: Any
    ) -> pb.DeleteSnapshotResponse:
        sid = required(req.snapshot_id, "snapshot_id")
        if not is_snapshot_id(sid):
            return pb.DeleteSnapshotResponse()
        with self.locks.hold(sid):
            try:
                await self.store.delete_snapshot(sid)
            except RDSError as exc:
                raise from_rds(exc, f"snapshot {sid}") from exc
        return pb.DeleteSnapshotResponse()

    @rpc
    async def ListSnapshots(
        self, req: pb.ListSnapshotsRequest, ctx: Any
    ) -> pb.ListSnapshotsResponse:
        try:
            if req.snapshot_id:
                one = (
                    await self.store.get_snapshot(req.snapshot_id)
                    if is_snapshot_id(req.snapshot_id)
                    else None
                )
                snaps = [one] if one is not None else []
                if req.source_volume_id:
                    snaps = [s for s in snaps if s.source_volume_id == req.source_volume_id]
            elif req.source_volume_id and not is_volume_id(req.source_volume_id):
                snaps = []  # a volume this driver never issued has no snapshots
            else:
                snaps = await self.store.list_snapshots(req.source_volume_id or None)
        except RDSError as exc:
            raise from_rds(exc, "list snapshots") from exc
        page, next_token = _page(
            [s.id for s in snaps], req.starting_token, req.max_entries, is_snapshot_id
        )
        by_id = {s.id: s for s in snaps}
        return pb.ListSnapshotsResponse(
            entries=[
                pb.ListSnapshotsResponse.Entry(snapshot=self._snapshot_message(by_id[i]))
                for i in page
            ],
            next_token=next_token,
        )

    @rpc
    async def GetSnapshot(self, req: pb.GetSnapshotRequest, ctx: Any) -> pb.GetSnapshotResponse:
        sid = required(req.snapshot_id, "snapshot_id")
        snap = None
        if is_snapshot_id(sid):
            try:
                snap = await self.store.get_snapshot(sid)
            except RDSError as exc:
                raise from_rds(exc, f"snapshot {sid}") from exc
        if snap is None:
            raise not_found(f"snapshot {sid} does not exist")
        return pb.GetSnapshotResponse(snapshot=self._snapshot_message(snap))

    @rpc
    async def ControllerGetCapabilities(
        self, req: pb.ControllerGetCapabilitiesRequest, ctx: Any
    ) -> pb.ControllerGetCapabilitiesResponse:
        return pb.ControllerGetCapabilitiesResponse(
            capabilities=[
                pb.ControllerServiceCapability(rpc=pb.ControllerServiceCapability.RPC(type=c))
                for c in CAPABILITIES
            ]
        )


def _wrap(value: int) -> Any:
    from google.protobuf.wrappers_pb2 import Int64Value

    return Int64Value(value=value)


def _page(ids: Sequence[str], token: str, max_entries: int, valid: Any) -> tuple[list[str], str]:
    """Ids after `token` (the last id of the previous page), at most `max_entries`.

    The token is an id, so pages stay stable when objects are added or removed meanwhile.
    """
    if max_entries < 0:
        raise invalid(f"max_entries: must be >= 0, got {max_entries}")
    ordered = sorted(ids)
    if token:
        if not valid(token):
            raise RPCError(grpc.StatusCode.ABORTED, f"starting_token {token!r} is not valid")
        ordered = [i for i in ordered if i > token]
    if max_entries and len(ordered) > max_entries:
        page = ordered[:max_entries]
        return page, page[-1]
    return ordered, ""
