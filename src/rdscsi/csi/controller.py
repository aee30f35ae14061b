"""The CSI Controller service: every controller RPC, and only RPCs, live here.

Volumes and snapshots are read from and written to their appliance through its
`VolumeStore`: the id names the appliance (`rdscsi.appliances`), so a call about one
volume reaches only that volume's box; a new volume's appliance is placed by
`rdscsi.csi.topology`. Where a volume may be used is decided by its Attachment machine
(`AttachmentBook`), restored from the cluster's objects on every call. Each RPC validates
its request first, holds a per-object lock (a concurrent call for the same volume or
snapshot gets ABORTED), and names the object in every error. No RPC depends on which
replica leads: any replica serves them all.
With `fence: allow-host` on a volume's appliance ControllerPublish and ControllerUnpublish
also set the disk's allow-list there (by its slot) before they answer (docs/fencing.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..appliances import Appliance, Appliances, Located, Unresolved
from ..control.fence import FenceRefused
from ..io.rds.errors import AlreadyExistsError, NotFoundError, RDSError
from ..io.rds.fence import AllowList
from ..io.rds.volumes import ForeignDiskError, Snapshot, Volume, VolumeSource
from . import csi_pb2 as pb
from . import csi_pb2_grpc
from .attachments import AttachmentBook, ClaimNotSeen, NodeDirectory
from .kind import COPY_OF, VolumeKind, kind_of
from .locks import OperationLocks
from .naming import is_snapshot_id, is_volume_id, snapshot_slot, volume_slot
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
    transport: str  # "nvme-tcp", or "loop" for the built-in simulator


class ControllerService(csi_pb2_grpc.ControllerServicer):  # type: ignore[misc]
    def __init__(
        self,
        settings: ControllerSettings,
        appliances: Appliances,
        attachments: AttachmentBook,
        nodes: NodeDirectory,
        locks: OperationLocks | None = None,
        on_pool: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_pool = on_pool  # records an appliance's pool size and free bytes when read
        self.appliances = appliances
        self.layout = appliances.layout
        self.attachments = attachments
        self.nodes = nodes
        self.locks = locks or OperationLocks()
        # (volume, node) -> readonly of its ControllerPublishVolume, to answer a second
        # publish with the other flag ALREADY_EXISTS. Memory only: after a restart the first
        # publish sets it again (the node enforces read-only from the publish context).
        self._readonly: dict[tuple[str, str], bool] = {}

    # --- helpers ------------------------------------------------------------------------------

    def _topology(self, appliance: Appliance) -> pb.Topology:
        return pb.Topology(segments=self.layout.segment(appliance.name))

    def _locate(self, ident: str, what: str = "volume") -> Located:
        """The appliance and slot of an id; NOT_FOUND when it names none of this fleet."""
        try:
            return self.appliances.locate(ident)
        except Unresolved as exc:
            raise not_found(f"{what} {shown(ident)} does not exist: {exc}") from None

    def _context(self, appliance: Appliance, vol: Volume, params: dict[str, str]) -> dict[str, str]:
        ctx = {
            "transport": self.settings.transport,
            "nvmeAddress": appliance.nvme_address,
            "nvmePort": str(vol.port),
            "nqn": vol.nqn,
            "appliance": appliance.name,
        }
        if self.settings.transport == "loop":
            ctx["filePath"] = vol.file_path  # the simulator's node side attaches this file
        kind = VolumeKind.from_store(vol.kind)
        if kind is not None:
            ctx.update(kind.context())
        if vol.source is not None:
            ctx[COPY_OF] = f"{vol.source.kind}/{appliance.id_of(vol.source.id)}"
        ctx.update(params)
        return ctx

    def _volume_message(
        self, appliance: Appliance, vol: Volume, params: dict[str, str] | None = None
    ) -> pb.Volume:
        msg = pb.Volume(
            volume_id=appliance.id_of(vol.id),
            capacity_bytes=vol.size,
            volume_context=self._context(appliance, vol, params or {}),
            accessible_topology=[self._topology(appliance)],
        )
        if vol.source is not None:
            if vol.source.kind == "snapshot":
                msg.content_source.snapshot.snapshot_id = appliance.id_of(vol.source.id)
            else:
                msg.content_source.volume.volume_id = appliance.id_of(vol.source.id)
        return msg

    @staticmethod
    def _condition(vid: str, vol: Volume, appliance: Appliance) -> pb.VolumeCondition:
        # The appliance is the source of truth: a disk whose NVMe/TCP export is off cannot
        # be reached by any node, whatever the attachments say.
        if not vol.nqn or not vol.port:
            return pb.VolumeCondition(
                abnormal=True, message=f"volume {vid} is not exported over NVMe/TCP"
            )
        return pb.VolumeCondition(
            abnormal=False,
            message=f"volume {vid} is exported as {vol.nqn} by appliance {appliance.name}",
        )

    async def _existing_volume(self, where: Located, vid: str, what: str = "volume") -> Volume:
        try:
            vol = await where.appliance.store.get_volume(where.slot)
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

    def _snapshot_message(self, appliance: Appliance, snap: Snapshot) -> pb.Snapshot:
        return pb.Snapshot(
            snapshot_id=appliance.id_of(snap.id),
            source_volume_id=appliance.id_of(snap.source_volume_id),
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
        source, source_id, origin = self._requested_source(req)
        requirement = (
            req.accessibility_requirements if req.HasField("accessibility_requirements") else None
        )
        placed = self.layout.place(
            params.appliance,
            requirement,
            origin.name if origin is not None else None,
            f"volume {shown(name)}",
        )
        appliance = self.appliances[placed.appliance]
        store = appliance.store
        slot = volume_slot(name)
        vid = appliance.id_of(slot)
        what = f"volume {shown(name)} ({vid})"
        rng = req.capacity_range if req.HasField("capacity_range") else None
        pick_size(rng, 0, what, kind.minimum_size)  # a range no size can meet fails first
        with self.locks.hold(vid):
            try:
                # The volume first: a retry finds what an earlier call made, even after its
                # source is gone (answering NOT_FOUND then would orphan the volume).
                existing = await store.get_volume(slot)
                if existing is not None:
                    vol = self._same_volume(appliance, existing, kind, source, rng, what)
                else:
                    floor = (
                        await self._source_floor(appliance, source, source_id, kind)
                        if source
                        else 0
                    )
                    size = pick_size(rng, floor, what, kind.minimum_size)
                    vol = await store.create_volume(
                        slot,
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
            "created volume %s (%s bytes, %s) on appliance %s (%s) for %s",
            vid,
            vol.size,
            kind.describe(),
            appliance.name,
            placed.why,
            shown(name),
        )
        return pb.CreateVolumeResponse(volume=self._volume_message(appliance, vol, params.context))

    def _requested_source(
        self, req: pb.CreateVolumeRequest
    ) -> tuple[VolumeSource | None, str, Appliance | None]:
        """(the source by its slot, its id, its appliance); NOT_FOUND for an id this fleet
        does not hold."""
        if not req.HasField("volume_content_source"):
            return None, "", None
        kind = req.volume_content_source.WhichOneof("type")
        if kind == "snapshot":
            sid = req.volume_content_source.snapshot.snapshot_id
            if not is_snapshot_id(sid):
                raise not_found(f"source snapshot {shown(sid)} does not exist")
            where = self._locate(sid, "source snapshot")
            return VolumeSource("snapshot", where.slot), sid, where.appliance
        if kind == "volume":
            src = req.volume_content_source.volume.volume_id
            if not is_volume_id(src):
                raise not_found(f"source volume {shown(src)} does not exist")
            where = self._locate(src, "source volume")
            return VolumeSource("volume", where.slot), src, where.appliance
        raise invalid("volume_content_source: snapshot or volume is required")

    async def _source_floor(
        self, appliance: Appliance, source: VolumeSource, source_id: str, kind: VolumeKind
    ) -> int:
        """The source's size (a copy is at least as large); NOT_FOUND if it is gone, and
        INVALID_ARGUMENT if a copy of it cannot have ``kind``."""
        what = f"source {source.kind} {source_id}"
        try:
            found = await appliance.store.get_source(source)
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
        appliance: Appliance,
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
            had = (
                "none"
                if vol.source is None
                else f"{vol.source.kind} {appliance.id_of(vol.source.id)}"
            )
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
        try:
            where = self.appliances.locate(vid)
        except Unresolved as exc:
            if exc.maybe_ours:  # an appliance left out of the configuration: never "gone"
                raise precondition(f"volume {vid}: {exc}; nothing was deleted") from None
            return pb.DeleteVolumeResponse()
        with self.locks.hold(vid):
            nodes = self.attachments.nodes(vid)
            if nodes:
                raise precondition(f"volume {vid} is still published to node(s) {', '.join(nodes)}")
            try:
                await where.appliance.store.delete_volume(where.slot)
            except RDSError as exc:
                raise from_rds(exc, f"volume {vid}") from exc
            self.attachments.forget(vid)
        log.info("deleted volume %s from appliance %s", vid, where.appliance.name)
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
        where = self._locate(vid)
        if not self.nodes.known(node):
            raise not_found(f"node {shown(node)} does not exist")
        with self.locks.hold(vid):
            vol = await self._existing_volume(where, vid)
            self._check_kind(vid, vol, cap)
            self._check_readonly(vid, node, req.readonly)
            fencer = self.attachments.fencer if where.appliance.fence else None
            try:
                if fencer is not None:
                    fencer.host_of(node)  # refused before anything is decided
                decision = await self.attachments.publish(
                    vid, node, cap.multi_node, vol.allow if fencer is not None else None
                )
            except ClaimNotSeen as exc:
                raise RPCError(grpc.StatusCode.ABORTED, f"{exc}; retry") from None
            except FenceRefused as exc:
                raise precondition(f"volume {vid}: {exc}") from None
            except RDSError as exc:
                raise from_rds(exc, "fence (the allow-list)") from exc
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
                "nvmeAddress": where.appliance.nvme_address,
                "nvmePort": str(vol.port),
                # The node stages the whole attachment read-only: a read-only mount, or the
                # block device's own read-only flag.
                "readonly": "true" if req.readonly else "false",
            }
        )

    @staticmethod
    def _check_kind(vid: str, vol: Volume, cap: CapabilityCheck) -> None:
        kind = VolumeKind.from_store(vol.kind)
        why = kind.refusal(cap) if kind is not None else None
        if why is not None:
            raise invalid(f"volume_capability: volume {vid} cannot be used so: {why}")

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
            allow = await self._allow_list(vid)
            # An empty node_id means: from every node (CSI spec).
            try:
                steps = await self.attachments.unpublish(vid, req.node_id, allow)
            except RDSError as exc:
                raise from_rds(exc, "fence (the allow-list)") from exc
            for step in steps:
                self._readonly.pop((vid, step.payload.node), None)
        return pb.ControllerUnpublishVolumeResponse()

    async def _allow_list(self, vid: str) -> AllowList | None:
        """The volume's allow-list as its appliance has it; None when that appliance does not
        fence, or there is no such volume of ours (nothing to fence)."""
        if not is_volume_id(vid):
            return None
        try:
            where = self.appliances.locate(vid)
        except Unresolved:
            return None
        if not where.appliance.fence:
            return None
        try:
            vol = await where.appliance.store.get_volume(where.slot)
        except ForeignDiskError:
            return None
        except RDSError as exc:
            raise from_rds(exc, f"volume {vid}") from exc
        return vol.allow if vol is not None else None

    @rpc
    async def ValidateVolumeCapabilities(
        self, req: pb.ValidateVolumeCapabilitiesRequest, ctx: Any
    ) -> pb.ValidateVolumeCapabilitiesResponse:
        vid = required(req.volume_id, "volume_id")
        if not req.volume_capabilities:
            raise invalid("volume_capabilities: at least one is required")
        if not is_volume_id(vid):
            raise not_found(f"volume {shown(vid)} does not exist")
        where = self._locate(vid)
        vol = await self._existing_volume(where, vid)
        kind = VolumeKind.from_store(vol.kind)
        try:
            caps = check_capabilities(list(req.volume_capabilities))
            for i, cap in enumerate(caps):
                why = kind.refusal(cap) if kind is not None else None
                if why is not None:
                    raise invalid(f"volume_capabilities[{i}]: {why}")
            fs = kind.fs if kind is not None else (caps[0].fs_type or DEFAULT_FS)
            params = volume_parameters(req.parameters, None if caps[0].block else fs)
            if params.appliance and params.appliance != where.appliance.name:
                raise invalid(
                    f"parameter appliance: volume {vid} is on appliance "
                    f"{where.appliance.name}, not {params.appliance}"
                )
        except RPCError as exc:
            return pb.ValidateVolumeCapabilitiesResponse(message=exc.message)
        return pb.ValidateVolumeCapabilitiesResponse(
            confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=req.volume_context,
                volume_capabilities=req.volume_capabilities,
                parameters=req.parameters,
            )
        )

    async def _every(
        self, what: str, read: Callable[[Appliance], Any]
    ) -> list[tuple[Appliance, Any]]:
        """`read(appliance)` on every appliance at once; the first failure fails the whole
        (a list without one appliance's objects would look like their deletion)."""
        appliances = list(self.appliances)
        results = await asyncio.gather(*(read(a) for a in appliances), return_exceptions=True)
        for appliance, result in zip(appliances, results, strict=True):
            if isinstance(result, RDSError):
                raise from_rds(result, f"{what} (appliance {appliance.name})") from result
            if isinstance(result, BaseException):
                raise result
        return list(zip(appliances, results, strict=True))

    @rpc
    async def ListVolumes(self, req: pb.ListVolumesRequest, ctx: Any) -> pb.ListVolumesResponse:
        by_id: dict[str, tuple[Appliance, Volume]] = {}
        for appliance, volumes in await self._every(
            "list volumes", lambda a: a.store.list_volumes()
        ):
            for vol in volumes:
                by_id[appliance.id_of(vol.id)] = (appliance, vol)
        page, next_token = _page(list(by_id), req.starting_token, req.max_entries, is_volume_id)
        entries = []
        for vid in page:
            appliance, vol = by_id[vid]
            entries.append(
                pb.ListVolumesResponse.Entry(
                    volume=self._volume_message(appliance, vol),
                    status=pb.ListVolumesResponse.VolumeStatus(
                        published_node_ids=list(self.attachments.nodes(vid)),
                        volume_condition=self._condition(vid, vol, appliance),
                    ),
                )
            )
        return pb.ListVolumesResponse(entries=entries, next_token=next_token)

    @rpc
    async def ControllerGetVolume(
        self, req: pb.ControllerGetVolumeRequest, ctx: Any
    ) -> pb.ControllerGetVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        if not is_volume_id(vid):
            raise not_found(f"volume {vid} does not exist")
        where = self._locate(vid)
        vol = await self._existing_volume(where, vid)
        return pb.ControllerGetVolumeResponse(
            volume=self._volume_message(where.appliance, vol),
            status=pb.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=list(self.attachments.nodes(vid)),
                volume_condition=self._condition(vid, vol, where.appliance),
            ),
        )

    @rpc
    async def GetCapacity(self, req: pb.GetCapacityRequest, ctx: Any) -> pb.GetCapacityResponse:
        for i, cap in enumerate(req.volume_capabilities):
            check_capability(cap, f"volume_capabilities[{i}]")
        params = volume_parameters(req.parameters)
        segments = (
            dict(req.accessible_topology.segments) if req.HasField("accessible_topology") else None
        )
        name = self.layout.capacity_appliance(params.appliance, segments)
        if name is None:  # no volume of this class can be made in that segment
            return pb.GetCapacityResponse(available_capacity=0)
        try:
            pool = await self.appliances[name].store.capacity()
        except RDSError as exc:
            raise from_rds(exc, f"pool capacity of appliance {name}") from exc
        if self._on_pool is not None and pool.size is not None and pool.free is not None:
            self._on_pool(name, pool.size, pool.free)
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
        where = self._locate(vid)
        with self.locks.hold(vid):
            vol = await self._existing_volume(where, vid)
            if cap is not None:
                self._check_kind(vid, vol, cap)
            size = expand_size(req.capacity_range, vol.size, f"volume {vid}")
            try:
                vol = await where.appliance.store.expand_volume(where.slot, size)
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
        if not is_volume_id(src):
            raise not_found(f"source volume {shown(src)} does not exist")
        where = self._locate(src, "source volume")
        appliance = where.appliance  # a snapshot is a copy on its volume's own pool
        slot = snapshot_slot(name)
        sid = appliance.id_of(slot)
        what = f"snapshot {shown(name)} ({sid})"
        with self.locks.hold(sid):
            try:
                existing = await appliance.store.get_snapshot(slot)
                if existing is not None and existing.source_volume_id != where.slot:
                    raise RPCError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"{what} exists for volume "
                        f"{appliance.id_of(existing.source_volume_id)}, not {src}",
                    )
                if existing is None:
                    await self._existing_volume(where, src, "source volume")
                snap = existing or await appliance.store.create_snapshot(slot, where.slot)
            except AlreadyExistsError as exc:
                raise RPCError(grpc.StatusCode.ALREADY_EXISTS, f"{what}: {exc}") from exc
            except RDSError as exc:
                raise from_rds(exc, what) from exc
        return pb.CreateSnapshotResponse(snapshot=self._snapshot_message(appliance, snap))

    @rpc
    async def DeleteSnapshot(
        self, req: pb.DeleteSnapshotRequest, ctx: Any
    ) -> pb.DeleteSnapshotResponse:
        sid = required(req.snapshot_id, "snapshot_id")
        if not is_snapshot_id(sid):
            return pb.DeleteSnapshotResponse()
        try:
            where = self.appliances.locate(sid)
        except Unresolved as exc:
            if exc.maybe_ours:
                raise precondition(f"snapshot {sid}: {exc}; nothing was deleted") from None
            return pb.DeleteSnapshotResponse()
        with self.locks.hold(sid):
            try:
                await where.appliance.store.delete_snapshot(where.slot)
            except RDSError as exc:
                raise from_rds(exc, f"snapshot {sid}") from exc
        return pb.DeleteSnapshotResponse()

    @rpc
    async def ListSnapshots(
        self, req: pb.ListSnapshotsRequest, ctx: Any
    ) -> pb.ListSnapshotsResponse:
        found: list[tuple[Appliance, Snapshot]] = []
        try:
            if req.snapshot_id:
                where = self._held(req.snapshot_id, is_snapshot_id)
                one = await where.appliance.store.get_snapshot(where.slot) if where else None
                if where is not None and one is not None:
                    found = [(where.appliance, one)]
                if req.source_volume_id:
                    found = [
                        (a, s)
                        for a, s in found
                        if a.id_of(s.source_volume_id) == req.source_volume_id
                    ]
            elif req.source_volume_id:
                # a volume this driver never issued has no snapshots
                where = self._held(req.source_volume_id, is_volume_id)
                if where is not None:
                    snaps = await where.appliance.store.list_snapshots(where.slot)
                    found = [(where.appliance, s) for s in snaps]
            else:
                for appliance, snaps in await self._every(
                    "list snapshots", lambda a: a.store.list_snapshots(None)
                ):
                    found += [(appliance, s) for s in snaps]
        except RDSError as exc:
            raise from_rds(exc, "list snapshots") from exc
        by_id = {a.id_of(s.id): (a, s) for a, s in found}
        page, next_token = _page(list(by_id), req.starting_token, req.max_entries, is_snapshot_id)
        return pb.ListSnapshotsResponse(
            entries=[
                pb.ListSnapshotsResponse.Entry(snapshot=self._snapshot_message(*by_id[i]))
                for i in page
            ],
            next_token=next_token,
        )

    def _held(self, ident: str, form: Callable[[str], bool]) -> Located | None:
        """Where an id's object would be; None for an id this fleet does not hold."""
        if not form(ident):
            return None
        try:
            return self.appliances.locate(ident)
        except Unresolved:
            return None

    @rpc
    async def GetSnapshot(self, req: pb.GetSnapshotRequest, ctx: Any) -> pb.GetSnapshotResponse:
        sid = required(req.snapshot_id, "snapshot_id")
        where = self._held(sid, is_snapshot_id)
        snap = None
        if where is not None:
            try:
                snap = await where.appliance.store.get_snapshot(where.slot)
            except RDSError as exc:
                raise from_rds(exc, f"snapshot {sid}") from exc
        if where is None or snap is None:
            raise not_found(f"snapshot {sid} does not exist")
        return pb.GetSnapshotResponse(snapshot=self._snapshot_message(where.appliance, snap))

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
