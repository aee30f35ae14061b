"""The CSI Node service: every node RPC, and only RPCs, live here.

Each call observes the node first (the transport's device, mountinfo), restores the volume's
node-side machine to what it sees, and lets the machine pick the transition; then it carries
the transition out and observes again. A step that fails half-way sends `interrupted`
(the volume becomes `uncertain`) and the next call repairs from what it finds. Kubelet's
out-of-order calls (publish before stage, stage twice, unstage while published, repeats)
are answered from the real state, never from memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ..io.host import fs, mounts
from ..io.host.proc import CommandTimeout, ProcError
from ..io.host.transport import Target, Transport, TransportError, target_from_context
from ..machines import Engine, NodeVolumeInput, NodeVolumeModel, Step, TransitionNotAllowed
from . import csi_pb2 as pb
from . import csi_pb2_grpc
from .locks import OperationLocks
from .params import check_capability, validate_fs_type
from .rpc import rpc
from .status import RPCError, invalid, not_found, precondition, required

log = logging.getLogger("rdscsi.node")

# What a node step can fail with; any of them half-way leaves the volume `uncertain`.
IO_ERRORS = (ProcError, TransportError, OSError, RPCError, mounts.MountError, fs.FsError)

Cap = pb.NodeServiceCapability.RPC.Type
CAPABILITIES = (
    Cap.STAGE_UNSTAGE_VOLUME,
    Cap.GET_VOLUME_STATS,
    Cap.EXPAND_VOLUME,
    Cap.VOLUME_CONDITION,
    Cap.SINGLE_NODE_MULTI_WRITER,
)
READ_ONLY_MODES = {
    pb.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
    pb.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
}


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    plugin_name: str
    appliance: str
    transport: str  # which of the transports new volumes use when the context does not say
    state_dir: Path  # per-volume records: how to reach each staged volume's device
    max_volumes: int = 0  # 0: no limit reported

    @property
    def topology_key(self) -> str:
        return f"{self.plugin_name}/appliance"


@dataclass
class Record:
    """What NodeStage learnt from the volume context; later calls (which get no context)
    use it to find the device. A hint for reaching the device, never the state itself."""

    volume_id: str
    transport: str
    staging_path: str
    block: bool
    target: dict[str, Any]

    def as_target(self) -> Target:
        return Target(**self.target)


@dataclass
class Observation:
    state: str
    device: Path | None = None
    staging_mounted: bool = False
    targets: list[Path] = field(default_factory=list)
    reason: str = ""


def _mm(device: Path) -> str:
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


class NodeService(csi_pb2_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(
        self,
        settings: NodeSettings,
        transports: Mapping[str, Transport],
        engine: Engine,
        locks: OperationLocks | None = None,
    ) -> None:
        self.settings = settings
        self.transports = dict(transports)
        self.engine = engine
        self.locks = locks or OperationLocks()
        self.models: dict[str, NodeVolumeModel] = {}
        settings.state_dir.mkdir(parents=True, exist_ok=True)

    # --- records ---------------------------------------------------------------------------

    def _record_path(self, volume_id: str) -> Path:
        return self.settings.state_dir / f"{volume_id}.json"

    def _load(self, volume_id: str) -> Record | None:
        path = self._record_path(volume_id)
        try:
            return Record(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise RPCError(
                grpc.StatusCode.INTERNAL, f"volume {volume_id}: unreadable record {path}: {exc}"
            ) from exc

    def _save(self, record: Record) -> None:
        path = self._record_path(record.volume_id)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(record), sort_keys=True))
        os.replace(tmp, path)

    def _transport(self, name: str) -> Transport:
        transport = self.transports.get(name)
        if transport is None:
            raise invalid(f"volume_context transport {name!r} is not served by this node")
        return transport

    # --- observing and driving the machine -----------------------------------------------

    async def _observe(
        self,
        transport: Transport | None,
        target: Target | None,
        staging: Path | None,
        block: bool,
    ) -> Observation:
        device = await transport.find(target) if transport and target else None
        table = mounts.read_mounts()
        dev_mm = _mm(device) if device is not None else None
        staging_mounts = [m for m in table if staging and m.mount_point == staging]
        staging_mm = staging_mounts[-1].major_minor if staging_mounts else None
        targets: list[Path] = []
        if block:
            if device is not None:
                targets = [m.mount_point for m in mounts.mounts_of_device(device, table)]
        else:
            mm = staging_mm or dev_mm
            targets = [
                m.mount_point
                for m in table
                if mm and m.major_minor == mm and m.mount_point != staging
            ]
        obs = Observation("unstaged", device, bool(staging_mounts), targets)
        if staging_mounts and not block:
            if device is None:
                obs.state, obs.reason = "uncertain", f"device vanished under {staging}"
            elif staging_mm != dev_mm:
                obs.state = "uncertain"
                obs.reason = f"{staging} is mounted from {staging_mm}, the volume is on {dev_mm}"
            else:
                obs.state = "published" if targets else "staged"
        elif block:
            if device is None:
                obs.state = "uncertain" if targets else "unstaged"
                obs.reason = "publish mounts without a device" if targets else ""
            else:
                obs.state = "published" if targets else "connected"
        elif targets:
            obs.state, obs.reason = "uncertain", f"mounted at {targets[0]} but not staged"
        elif device is not None:
            obs.state = "connected"
        return obs

    def _restore(self, volume_id: str, state: str) -> NodeVolumeModel:
        model = self.models.get(volume_id)
        if model is not None:
            self.engine.forget(model)
        model = NodeVolumeModel(volume_id)
        self.engine.track(model, state)
        self.models[volume_id] = model
        return model

    def _drive(
        self, volume_id: str, obs: Observation, event: str, p: NodeVolumeInput, refusal: str
    ) -> tuple[NodeVolumeModel, Step]:
        model = self._restore(volume_id, obs.state)
        model.reason = obs.reason
        try:
            return model, self.engine.send(model, event, p)
        except TransitionNotAllowed:
            why = f" ({obs.reason})" if obs.reason else ""
            raise precondition(
                f"volume {volume_id}: {refusal}; the node shows it {obs.state}{why}"
            ) from None

    async def _settle(
        self, model: NodeVolumeModel, step: Step, after: Observation, what: str
    ) -> None:
        """The transition is done only if the node now shows its target state."""
        if after.state != step.target:
            self.engine.send(model, "interrupted", NodeVolumeInput())
            raise RPCError(
                grpc.StatusCode.INTERNAL,
                f"volume {model.volume_id}: after {what} the node shows "
                f"{after.state}, expected {step.target} {after.reason}".rstrip(),
            )

    def _interrupted(self, model: NodeVolumeModel, what: str, exc: Exception) -> RPCError:
        if model.state != "uncertain":
            with contextlib.suppress(TransitionNotAllowed):
                self.engine.send(model, "interrupted", NodeVolumeInput())
        if isinstance(exc, RPCError):
            return exc
        if isinstance(exc, fs.FormatRefusedError):
            return precondition(f"volume {model.volume_id}: {exc}")
        code = grpc.StatusCode.INTERNAL
        if isinstance(exc, CommandTimeout):
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        elif isinstance(exc, TransportError):
            code = grpc.StatusCode.UNAVAILABLE
        return RPCError(code, f"volume {model.volume_id}: {what} failed half-way: {exc}")

    # --- stage / unstage ---------------------------------------------------------------------

    @rpc
    async def NodeStageVolume(
        self, req: pb.NodeStageVolumeRequest, ctx: Any
    ) -> pb.NodeStageVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        required(req.staging_target_path, "staging_target_path")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability: required")
        cap = check_capability(req.volume_capability)
        staging = Path(req.staging_target_path)
        name = req.volume_context.get("transport", self.settings.transport)
        transport = self._transport(name)
        try:
            target = target_from_context(vid, req.volume_context)
        except ValueError as exc:
            raise invalid(f"volume_context: {exc}") from None
        fs_type = validate_fs_type(req.volume_capability.mount.fs_type) if not cap.block else ""
        options: list[str] = []
        if not cap.block:
            try:
                options = mounts.validate_mount_options(
                    list(req.volume_capability.mount.mount_flags)
                )
            except ValueError as exc:
                raise invalid(f"volume_capability.mount.mount_flags: {exc}") from None
        with self.locks.hold(vid):
            record = Record(vid, name, str(staging), cap.block, asdict(target))
            obs = await self._observe(transport, target, staging, cap.block)
            model, step = self._drive(
                vid,
                obs,
                "stage",
                NodeVolumeInput(block=cap.block, repairable=not obs.targets),
                "cannot be staged",
            )
            if step.source == step.target:
                self._save(record)
                return pb.NodeStageVolumeResponse()
            self._save(record)  # before any change: later calls must find the device
            try:
                if obs.staging_mounted and not cap.block:
                    await mounts.unmount(staging)  # stale: its device is gone or replaced
                device = await transport.connect(target)
                if not cap.block:
                    await self._format_and_mount(
                        vid,
                        device,
                        staging,
                        fs_type,
                        options,
                        req.volume_context.get("mkfsOptions", ""),
                    )
            except IO_ERRORS as exc:
                raise self._interrupted(model, "NodeStageVolume", exc) from exc
            after = await self._observe(transport, target, staging, cap.block)
            await self._settle(model, step, after, "NodeStageVolume")
        log.info("staged %s at %s (%s)", vid, staging, "block" if cap.block else fs_type)
        return pb.NodeStageVolumeResponse()

    async def _format_and_mount(
        self,
        vid: str,
        device: Path,
        staging: Path,
        fs_type: str,
        options: list[str],
        mkfs_options: str,
    ) -> None:
        found = await fs.detect(device)
        wanted = fs_type or "ext4"
        if found is None:
            await fs.make_fs(device, wanted, mkfs_options)
            found = wanted
        elif fs_type and found != fs_type:
            raise precondition(
                f"volume {vid}: device {device} holds {found}, not {fs_type}; "
                "it is never reformatted"
            )
        elif found not in ("ext4", "xfs"):
            raise precondition(f"volume {vid}: device {device} holds {found}; refusing to mount")
        mounts.make_dir_target(staging)
        await mounts.mount(device, staging, found, options)

    @rpc
    async def NodeUnstageVolume(
        self, req: pb.NodeUnstageVolumeRequest, ctx: Any
    ) -> pb.NodeUnstageVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        required(req.staging_target_path, "staging_target_path")
        staging = Path(req.staging_target_path)
        with self.locks.hold(vid):
            record = self._load(vid)
            transport = self._transport(record.transport) if record else None
            target = record.as_target() if record else None
            block = record.block if record else False
            obs = await self._observe(transport, target, staging, block)
            if obs.targets:
                raise precondition(
                    f"volume {vid} is still published at {', '.join(map(str, obs.targets))}"
                )
            model, step = self._drive(
                vid, obs, "unstage", NodeVolumeInput(block=block), "cannot be unstaged"
            )
            try:
                device = obs.device
                if device is not None:
                    self._refuse_if_open(vid, device)
                if obs.staging_mounted:
                    await mounts.unmount(staging)
                if device is not None:
                    elsewhere = mounts.mounts_of_device(device, mounts.read_mounts())
                    if elsewhere:
                        raise precondition(
                            f"volume {vid}: device {device} is still mounted at "
                            f"{', '.join(str(m.mount_point) for m in elsewhere)}"
                        )
                    self._refuse_if_open(vid, device)
                if transport is not None and target is not None:
                    await transport.disconnect(target)  # returns only once verifiably gone
            except IO_ERRORS as exc:
                raise self._interrupted(model, "NodeUnstageVolume", exc) from exc
            after = await self._observe(transport, target, staging, block)
            await self._settle(model, step, after, "NodeUnstageVolume")
            self._record_path(vid).unlink(missing_ok=True)
            self.engine.forget(model)
            self.models.pop(vid, None)
        log.info("unstaged %s from %s", vid, staging)
        return pb.NodeUnstageVolumeResponse()

    def _refuse_if_open(self, vid: str, device: Path) -> None:
        pids = fs.open_by(device)
        if pids:
            raise precondition(
                f"volume {vid}: device {device} is open by process(es) "
                f"{', '.join(map(str, pids))}; not disconnecting a device in use"
            )
        holders = fs.holders(device)
        if holders:
            raise precondition(f"volume {vid}: device {device} is held by {', '.join(holders)}")

    # --- publish / unpublish -----------------------------------------------------------------

    @rpc
    async def NodePublishVolume(
        self, req: pb.NodePublishVolumeRequest, ctx: Any
    ) -> pb.NodePublishVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        required(req.target_path, "target_path")
        if not req.staging_target_path:
            raise invalid("staging_target_path: required (STAGE_UNSTAGE_VOLUME)")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability: required")
        cap = check_capability(req.volume_capability)
        staging, dest = Path(req.staging_target_path), Path(req.target_path)
        read_only = req.readonly or req.volume_capability.access_mode.mode in READ_ONLY_MODES
        if read_only and cap.block:
            raise invalid(
                "readonly: a raw block volume cannot be published read-only (a "
                "read-only bind of a device node does not stop writes)"
            )
        with self.locks.hold(vid):
            record = self._load(vid)
            if record is None:
                raise precondition(
                    f"volume {vid} is not staged on this node (no NodeStageVolume "
                    f"at {staging}); stage it first"
                )
            transport, target = self._transport(record.transport), record.as_target()
            obs = await self._observe(transport, target, staging, cap.block)
            model, step = self._drive(
                vid,
                obs,
                "publish",
                NodeVolumeInput(target_path=str(dest), block=cap.block),
                f"cannot be published at {dest} before it is staged",
            )
            if dest in obs.targets:
                return pb.NodePublishVolumeResponse()  # a repeat
            try:
                if cap.block:
                    assert obs.device is not None
                    mounts.make_file_target(dest)
                    await mounts.bind(obs.device, dest, read_only=read_only)
                else:
                    mounts.make_dir_target(dest)
                    await mounts.bind(staging, dest, read_only=read_only)
            except IO_ERRORS as exc:
                raise self._interrupted(model, "NodePublishVolume", exc) from exc
            after = await self._observe(transport, target, staging, cap.block)
            if dest not in after.targets:
                await self._settle(
                    model,
                    step,
                    Observation("uncertain", reason=f"{dest} missing"),
                    "NodePublishVolume",
                )
        return pb.NodePublishVolumeResponse()

    @rpc
    async def NodeUnpublishVolume(
        self, req: pb.NodeUnpublishVolumeRequest, ctx: Any
    ) -> pb.NodeUnpublishVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        required(req.target_path, "target_path")
        dest = Path(req.target_path)
        with self.locks.hold(vid):
            record = self._load(vid)
            if record is not None:
                transport, target = self._transport(record.transport), record.as_target()
                obs = await self._observe(
                    transport, target, Path(record.staging_path), record.block
                )
                others = len([t for t in obs.targets if t != dest])
                self._drive(
                    vid,
                    obs,
                    "unpublish",
                    NodeVolumeInput(
                        target_path=str(dest), block=record.block, other_targets=others
                    ),
                    "cannot be unpublished",
                )
            # Stacked binds (a repeated publish by hand) all go; never a lazy unmount.
            for _ in range(8):
                if not mounts.is_mount_point(dest):
                    break
                await mounts.unmount(dest)
            if dest.exists() or dest.is_symlink():
                try:
                    mounts.safe_remove_target(dest)
                except mounts.MountError as exc:
                    raise precondition(f"volume {vid}: {exc}") from None
        return pb.NodeUnpublishVolumeResponse()

    # --- stats and expansion ------------------------------------------------------------------

    @rpc
    async def NodeGetVolumeStats(
        self, req: pb.NodeGetVolumeStatsRequest, ctx: Any
    ) -> pb.NodeGetVolumeStatsResponse:
        vid = required(req.volume_id, "volume_id")
        path = Path(required(req.volume_path, "volume_path"))
        if not path.exists():
            raise not_found(f"volume {vid}: volume_path {path} does not exist")
        condition = await self._condition(vid, path)
        if path.is_file() or path.is_block_device():
            record = self._load(vid)
            device = None
            if record is not None:
                device = await self._transport(record.transport).find(record.as_target())
            total = fs.block_size_bytes(device) if device is not None else 0
            return pb.NodeGetVolumeStatsResponse(
                usage=[pb.VolumeUsage(total=total, unit=pb.VolumeUsage.Unit.BYTES)],
                volume_condition=condition,
            )
        s = fs.stats(path)
        return pb.NodeGetVolumeStatsResponse(
            usage=[
                pb.VolumeUsage(
                    total=s.total_bytes,
                    available=s.available_bytes,
                    used=s.used_bytes,
                    unit=pb.VolumeUsage.Unit.BYTES,
                ),
                pb.VolumeUsage(
                    total=s.total_inodes,
                    available=s.free_inodes,
                    used=s.used_inodes,
                    unit=pb.VolumeUsage.Unit.INODES,
                ),
            ],
            volume_condition=condition,
        )

    async def _condition(self, vid: str, path: Path) -> pb.VolumeCondition:
        record = self._load(vid)
        if record is None:
            return pb.VolumeCondition(abnormal=True, message=f"volume {vid} is not staged here")
        device = await self._transport(record.transport).find(record.as_target())
        if device is None:
            return pb.VolumeCondition(
                abnormal=True, message=f"volume {vid}: its device is gone from the node"
            )
        here = [m for m in mounts.read_mounts() if m.mount_point == path]
        if here and not record.block and here[-1].major_minor != _mm(device):
            return pb.VolumeCondition(
                abnormal=True,
                message=f"volume {vid}: {path} is mounted from {here[-1].major_minor} but the "
                f"volume's device {device} is {_mm(device)} (stale mount)",
            )
        return pb.VolumeCondition(abnormal=False, message=f"volume {vid} is healthy on {device}")

    @rpc
    async def NodeExpandVolume(
        self, req: pb.NodeExpandVolumeRequest, ctx: Any
    ) -> pb.NodeExpandVolumeResponse:
        vid = required(req.volume_id, "volume_id")
        required(req.volume_path, "volume_path")
        with self.locks.hold(vid):
            record = self._load(vid)
            if record is None:
                raise not_found(f"volume {vid} is not staged on this node")
            transport, target = self._transport(record.transport), record.as_target()
            device = await transport.find(target)
            if device is None:
                raise precondition(f"volume {vid}: its device is not connected")
            try:
                await transport.refresh(target)
                if not record.block:
                    mount_point = Path(req.staging_target_path or req.volume_path)
                    here = [m for m in mounts.read_mounts() if m.mount_point == mount_point]
                    if not here:
                        raise precondition(f"volume {vid}: {mount_point} is not mounted")
                    await fs.grow_fs(device, mount_point, here[-1].fs_type)
            except IO_ERRORS as exc:
                raise RPCError(
                    grpc.StatusCode.INTERNAL, f"volume {vid}: expansion failed: {exc}"
                ) from exc
            size = fs.block_size_bytes(device)
        wanted = req.capacity_range.required_bytes if req.HasField("capacity_range") else 0
        if size < wanted:
            raise RPCError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"volume {vid}: device {device} is {size} bytes after a rescan, "
                f"{wanted} asked (has ControllerExpandVolume finished?)",
            )
        return pb.NodeExpandVolumeResponse(capacity_bytes=size)

    # --- identity of the node ------------------------------------------------------------------

    @rpc
    async def NodeGetCapabilities(
        self, req: pb.NodeGetCapabilitiesRequest, ctx: Any
    ) -> pb.NodeGetCapabilitiesResponse:
        return pb.NodeGetCapabilitiesResponse(
            capabilities=[
                pb.NodeServiceCapability(rpc=pb.NodeServiceCapability.RPC(type=c))
                for c in CAPABILITIES
            ]
        )

    @rpc
    async def NodeGetInfo(self, req: pb.NodeGetInfoRequest, ctx: Any) -> pb.NodeGetInfoResponse:
        return pb.NodeGetInfoResponse(
            node_id=self.settings.node_id,
            max_volumes_per_node=self.settings.max_volumes,
            accessible_topology=pb.Topology(
                segments={self.settings.topology_key: self.settings.appliance}
            ),
        )

    # --- start-up -------------------------------------------------------------------------------

    async def cleanup_orphans(self) -> list[str]:
        """Disconnect sessions of ours that no staged volume accounts for and that nothing
        mounts or opens; report every decision. Other sessions are never touched (each
        transport lists only sessions under the driver's own NQN prefix or files)."""
        report: list[str] = []
        table = mounts.read_mounts()
        for name, transport in self.transports.items():
            staged: set[Path] = set()
            for path in sorted(self.settings.state_dir.glob("*.json")):
                record = self._load(path.stem)
                if record is not None and record.transport == name:
                    device = await transport.find(record.as_target())
                    if device is not None:
                        staged.add(device)
            for session in await transport.sessions():
                dev = session.device
                if dev is not None and dev in staged:
                    continue
                if dev is not None and (mounts.mounts_of_device(dev, table) or fs.open_by(dev)):
                    report.append(f"kept {name} session {session.key}: {dev} is in use")
                    continue
                try:
                    await transport.disconnect_session(session)
                    report.append(f"disconnected orphaned {name} session {session.key}")
                except (TransportError, ProcError) as exc:
                    report.append(f"could not disconnect {name} session {session.key}: {exc}")
        for line in report:
            log.info("start-up: %s", line)
        return report


__all__ = ["NodeService", "NodeSettings"]
