"""The CSI Node service: every node RPC, and only RPCs, live here.

Each call is validated at the boundary first (:mod:`rdscsi.csi.confine`): the volume id must
be one the driver issues, every path absolute, resolved once and inside the kubelet
directory; capabilities, mount flags, mkfs options and the volume context pass the same
allowlists the controller uses, and the capability must be one the volume was created for
(:mod:`rdscsi.csi.kind`). Then it observes the node (the transport's device, mountinfo),
restores the volume's node-side machine to what it sees, and lets the machine pick the
transition; then it carries the transition out and observes again. A step that fails
half-way sends `interrupted` (the volume becomes `uncertain`) and the next call repairs
from what it finds. Kubelet's out-of-order calls (publish before stage, stage twice,
unstage while published, repeats) are answered from the real state, never from memory.

Nothing outside a volume's own paths and device is ever created, removed or unmounted: the
volume's record (:mod:`rdscsi.csi.records`) names its staging path, its publish targets and
its device number, and a mount counts as the volume's only when it is of that device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from ..hooks.events import WARNING, ClusterEvent, EventSink, ObjectRef
from ..io.host import fs, mounts
from ..io.host.proc import CommandTimeout, ProcError
from ..io.host.transport import InvalidTarget, Target, TargetMissing, Transport, TransportError
from ..io.host.transport import target_from_context as _target_from_context
from ..machines import Engine, NodeVolumeInput, NodeVolumeModel, Step, TransitionNotAllowed
from . import csi_pb2 as pb
from . import csi_pb2_grpc
from .confine import Confinement, volume_id
from .kind import COPY_OF, VolumeKind, from_context
from .locks import OperationLocks
from .naming import is_volume_id
from .params import (
    DEFAULT_FS,
    READ_ONLY_MODES,
    AccessMode,
    CapabilityCheck,
    check_capability,
    check_mkfs_options,
    mode_name,
    out_of_range,
)
from .records import Published, Record, RecordStore
from .rpc import rpc
from .status import RPCError, invalid, not_found, precondition, required, shown

log = logging.getLogger("rdscsi.node")

# What a node step can fail with; any of them half-way leaves the volume `uncertain`.
IO_ERRORS = (ProcError, TransportError, OSError, RPCError, mounts.MountError, fs.FsError)
# A filesystem this much smaller than its device (a copy into a larger volume, a volume
# grown while unstaged) is grown when it is staged.
GROW_SLACK = 1 << 20

Cap = pb.NodeServiceCapability.RPC.Type
CAPABILITIES = (
    Cap.STAGE_UNSTAGE_VOLUME,
    Cap.GET_VOLUME_STATS,
    Cap.EXPAND_VOLUME,
    Cap.VOLUME_CONDITION,
    Cap.SINGLE_NODE_MULTI_WRITER,
)
SINGLE_WRITER = AccessMode.SINGLE_NODE_SINGLE_WRITER


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    plugin_name: str
    topology: dict[str, str]  # the segment of each appliance this node reaches (csi.topology)
    transport: str  # which of the transports new volumes use when the context does not say
    state_dir: Path  # per-volume records: how to reach each staged volume's device
    max_volumes: int = 0  # 0: no limit reported
    kubelet_dir: Path = Path("/var/lib/kubelet")  # every request path must lie inside


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


def _rdev(mm: str) -> int:
    major, _, minor = mm.partition(":")
    return os.makedev(int(major), int(minor))


class NodeService(csi_pb2_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(
        self,
        settings: NodeSettings,
        transports: Mapping[str, Transport],
        engine: Engine,
        locks: OperationLocks | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.transports = dict(transports)
        self.engine = engine
        self.locks = locks or OperationLocks()
        self.models: dict[str, NodeVolumeModel] = {}
        self.events = events
        self.paths = Confinement(settings.kubelet_dir)
        self.records = RecordStore(settings.state_dir, self._unreadable)

    # --- boundary --------------------------------------------------------------------------

    def _unreadable(self, vid: str, path: Path, moved: Path, why: str) -> None:
        if self.events is None:
            return
        node = ObjectRef("Node", self.settings.node_id)
        regarding = ObjectRef("PersistentVolume", vid) if is_volume_id(vid) else node
        self.events.emit(
            ClusterEvent(
                "NodeRecordUnreadable",
                WARNING,
                regarding,
                f"node {self.settings.node_id}: the record of volume {shown(vid)} was unreadable "
                f"({why}) and was moved to {moved}; unstage the volume by hand if it is "
                "still staged there",
                "Quarantine",
                node,
            )
        )

    def _transport(self, name: str) -> Transport:
        transport = self.transports.get(name)
        if transport is None:
            raise invalid(f"volume_context transport {shown(name)} is not served by this node")
        return transport

    def _target(self, vid: str, ctx: Mapping[str, str], transport: Transport) -> Target:
        """The target the context describes, which must be this volume's own: the export's
        NQN ends with the volume id, and a backing file is named after it (the controller
        makes both so). A context naming another volume's export is refused, or a request
        for one volume could mount another's data."""
        try:
            target = _target_from_context(vid, ctx)
            transport.check(target)
        except InvalidTarget as exc:
            raise invalid(f"volume_context: {exc}") from None
        if not target.nqn.endswith(vid):
            raise invalid(f"volume_context nqn {shown(target.nqn)} is not volume {vid}'s export")
        if target.file_path and not Path(target.file_path).name.startswith(vid + "."):
            raise invalid(
                f"volume_context filePath {shown(target.file_path)} is not volume {vid}'s file"
            )
        return target

    @staticmethod
    def _fit_for(path: Path, field: str, directory: bool) -> None:
        """A staging or target path must be absent or what will be mounted on: an empty
        directory (filesystem) or an empty regular file (raw block). Anything else is not
        the volume's to cover or to remove afterwards."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if mounts.is_mount_point(path):
            return  # judged later by whose mount it is (a repeated call finds its own)
        if directory and stat.S_ISDIR(st.st_mode):
            if not any(path.iterdir()):
                return
            raise precondition(f"{field} {path} is a directory with content; not covering it")
        if not directory and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return
        what = "a directory" if stat.S_ISDIR(st.st_mode) else mounts.describe_kind(st)
        wanted = "an empty directory" if directory else "an empty regular file"
        raise precondition(f"{field} {path} exists and is {what}, not {wanted}")

    @staticmethod
    def _kind(
        vid: str, ctx: Mapping[str, str], cap: CapabilityCheck, what: str
    ) -> VolumeKind | None:
        kind = from_context(ctx)
        why = kind.refusal(cap) if kind is not None else None
        if why is not None:
            raise precondition(f"volume {vid} cannot be {what} as asked: {why}")
        return kind

    @staticmethod
    def _capability(req: Any) -> CapabilityCheck:
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability: required")
        return check_capability(req.volume_capability)

    @staticmethod
    def _mount_flags(cap: pb.VolumeCapability) -> list[str]:
        try:
            return mounts.validate_mount_options(list(cap.mount.mount_flags))
        except ValueError as exc:
            raise invalid(f"volume_capability.mount.mount_flags: {exc}") from None

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

    def _ours(self, mount: mounts.Mount | None, record: Record, device: Path | None) -> bool:
        """Whether ``mount`` is of this volume's device (a filesystem mount or bind of it, or
        a bind of its device node), judged by device number, never by path or source text."""
        if mount is None:
            return False
        mm = _mm(device) if device is not None else record.device
        if not mm:
            return False
        if not record.block:
            return mount.major_minor == mm
        if device is not None and mount in mounts.mounts_of_device(device, [mount]):
            return True
        if mount.root == "/" or mount.fs_type not in mounts.DEVICE_NODE_FS:
            return False  # stat only in-memory device-node filesystems: nothing can hang
        try:
            st = os.stat(mount.mount_point)
        except OSError:
            return False
        return stat.S_ISBLK(st.st_mode) and st.st_rdev == _rdev(mm)

    def _published(self, record: Record, device: Path | None) -> list[Path]:
        """The recorded targets still mounted from this volume (a vanished device too)."""
        table = mounts.read_mounts()
        return [
            Path(path)
            for path in record.targets
            if self._ours(mounts.top_mount(path, table), record, device)
        ]

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
        if obs.reason and not p.reason:
            p = replace(p, reason=obs.reason)
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
        if isinstance(exc, TargetMissing):
            return not_found(f"volume {model.volume_id} does not exist on the appliance: {exc}")
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
        required(req.staging_target_path, "staging_target_path")
        cap = self._capability(req)
        vid = volume_id(req.volume_id)
        staging = self.paths.path(req.staging_target_path, "staging_target_path")
        ctx_map = dict(req.volume_context)
        kind = self._kind(vid, ctx_map, cap, "staged")
        name = ctx_map.get("transport", self.settings.transport)
        transport = self._transport(name)
        target = self._target(vid, ctx_map, transport)
        options: list[str] = []
        mkfs_options = ""
        if not cap.block:
            options = self._mount_flags(req.volume_capability)
            mkfs_options = ctx_map.get("mkfsOptions", "")
            fs_for_mkfs = cap.fs_type or (kind.fs if kind else DEFAULT_FS)
            check_mkfs_options(fs_for_mkfs, mkfs_options, "volume_context mkfsOptions")
        read_only = req.publish_context.get("readonly") == "true" or cap.mode in READ_ONLY_MODES
        with self.locks.hold(vid):
            record = self.records.load(vid)
            if record is not None and Path(record.staging_path) != staging:
                if await self._still_staged(record):
                    raise precondition(
                        f"volume {vid} is staged at {record.staging_path}, not at {staging}; "
                        "unstage it there first"
                    )
                record = None  # a finished or abandoned stage elsewhere: start afresh
            obs = await self._observe(transport, target, staging, cap.block)
            top = mounts.top_mount(staging)
            if record is None and top is not None:
                raise precondition(
                    f"staging_target_path {staging} is already a mount point ({top.fs_type} "
                    f"from {top.source}), not of volume {vid}: left alone"
                )
            if record is not None and obs.state in ("connected", "staged", "published"):
                self._same_stage(vid, record, cap, read_only, staging)
            model, step = self._drive(
                vid,
                obs,
                "stage",
                NodeVolumeInput(block=cap.block, repairable=not obs.targets),
                "cannot be staged",
            )
            new = Record(
                vid,
                name,
                str(staging),
                cap.block,
                asdict(target),
                fs_type=record.fs_type if record else "",
                read_only=read_only,
                device_ro=record.device_ro if record else False,
                mode=cap.mode,
                device=record.device if record else "",
                kind=kind.context() if kind else None,
                targets=record.targets if record else {},
            )
            if step.source == step.target:
                self.records.save(new)
                return pb.NodeStageVolumeResponse()
            self.records.save(new)  # before any change: later calls must find the device
            try:
                if obs.staging_mounted and not cap.block:
                    await mounts.unmount(staging)  # stale: its device is gone or replaced
                device = await transport.connect(target)
                new.device = _mm(device)
                self.records.save(new)
                # Per attachment, and every time: the flag outlives a loop device's detach, so
                # a reused device may carry another volume's. A filesystem's read-only is
                # its mount's (a read-only device would stop mount from replaying a journal).
                fs.set_read_only(device, cap.block and read_only)
                new.device_ro = cap.block and read_only
                if not cap.block:
                    new.fs_type = await self._format_and_mount(
                        vid,
                        device,
                        staging,
                        cap.fs_type or (kind.fs if kind else ""),
                        options,
                        mkfs_options,
                        kind,
                        read_only,
                        copy=COPY_OF in ctx_map,
                    )
                self.records.save(new)
            except IO_ERRORS as exc:
                error = self._interrupted(model, "NodeStageVolume", exc)
                if record is None:
                    await self._undo_stage(new, transport, target, staging)
                raise error from exc
            after = await self._observe(transport, target, staging, cap.block)
            await self._settle(model, step, after, "NodeStageVolume")
        how = "block" if cap.block else new.fs_type
        log.info("staged %s at %s (%s%s)", vid, staging, how, ", read-only" if read_only else "")
        return pb.NodeStageVolumeResponse()

    @staticmethod
    def _same_stage(
        vid: str, record: Record, cap: CapabilityCheck, read_only: bool, staging: Path
    ) -> None:
        """A stage repeated with other arguments: ALREADY_EXISTS (the spec's "published
        but incompatible"), never a silent OK over a volume staged differently."""
        was = "raw block" if record.block else (record.fs_type or "a filesystem")
        if record.block != cap.block:
            now = "raw block" if cap.block else "a filesystem"
            differs = f"as {now}"
        elif not cap.block and cap.fs_type and record.fs_type and cap.fs_type != record.fs_type:
            differs = f"as {cap.fs_type}"
        elif record.read_only != read_only:
            differs = "read-only" if read_only else "writable"
        else:
            return
        raise RPCError(
            grpc.StatusCode.ALREADY_EXISTS,
            f"volume {vid} is staged at {staging} as {was}"
            f"{' read-only' if record.read_only else ''}; it cannot be staged again {differs}",
        )

    async def _still_staged(self, record: Record) -> bool:
        transport = self.transports.get(record.transport)
        device = await transport.find(record.as_target()) if transport else None
        top = mounts.top_mount(record.staging_path)
        return device is not None or self._ours(top, record, device)

    async def _undo_stage(
        self, record: Record, transport: Transport, target: Target, staging: Path
    ) -> None:
        """A first stage failed: take back what it did, and its record if nothing is left
        (a failed NodeStage leaves nothing behind; if the undo fails too, the record stays
        so that NodeUnstage or the next NodeStage can find the device)."""
        try:
            device = await transport.find(target)
            if (
                device is not None
                and not record.block
                and self._ours(mounts.top_mount(staging), record, device)
            ):
                await mounts.unmount(staging)
            if (
                device is not None
                and not mounts.mounts_of_device(device)
                and not fs.open_by(device)
            ):
                await transport.disconnect(target)
            if await transport.find(target) is None and not mounts.is_mount_point(staging):
                self.records.delete(record.volume_id)
        except IO_ERRORS as exc:
            log.warning("volume %s: undoing a failed stage failed too: %s", record.volume_id, exc)

    async def _format_and_mount(
        self,
        vid: str,
        device: Path,
        staging: Path,
        fs_type: str,
        options: list[str],
        mkfs_options: str,
        kind: VolumeKind | None,
        read_only: bool,
        copy: bool,
    ) -> str:
        found = await fs.detect(device)
        fresh = False
        if found is None:
            if read_only:
                raise precondition(
                    f"volume {vid} is blank and attached read-only: it cannot be formatted"
                )
            if kind is None:
                log.warning(
                    "volume %s has no recorded kind (made by an older driver): formatting it "
                    "because it is blank at both ends and blkid knows no signature on it",
                    vid,
                )
            await fs.make_fs(device, fs_type or DEFAULT_FS, mkfs_options)
            found, fresh = fs_type or DEFAULT_FS, True
        elif found not in ("ext4", "xfs"):
            raise precondition(f"volume {vid}: device {device} holds {found}; refusing to mount")
        elif fs_type and found != fs_type:
            raise precondition(
                f"volume {vid}: device {device} holds {found}, not {fs_type}; "
                "it is never reformatted"
            )
        flags = [o for o in options if not (read_only and o == "rw")]
        flags += [*mounts.CONFINED, *(["ro"] if read_only else [])]
        if found == "xfs" and (copy or kind is None):
            flags.append("nouuid")  # a copy carries its source's UUID: xfs refuses a twin
        grow = not fresh and not read_only and self._needs_growth(device, found)
        if grow and found == "ext4":
            await fs.grow_offline(device, found)  # online growth needs CAP_SYS_RESOURCE
        mounts.make_dir_target(staging)
        await mounts.mount(device, staging, found, list(dict.fromkeys(flags)))
        if grow and found == "xfs":
            await fs.grow_fs(device, staging, found)
        if grow:
            log.info(
                "volume %s: grew its %s to the device's %s bytes",
                vid,
                found,
                fs.block_size_bytes(device),
            )
        return found

    @staticmethod
    def _needs_growth(device: Path, fs_type: str) -> bool:
        return fs.block_size_bytes(device) - fs.filesystem_bytes(device, fs_type) > GROW_SLACK

    @rpc
    async def NodeUnstageVolume(
        self, req: pb.NodeUnstageVolumeRequest, ctx: Any
    ) -> pb.NodeUnstageVolumeResponse:
        required(req.staging_target_path, "staging_target_path")
        vid = volume_id(req.volume_id)
        staging = self.paths.path(req.staging_target_path, "staging_target_path")
        with self.locks.hold(vid):
            record = self.records.load(vid)
            if record is None:
                if mounts.is_mount_point(staging):
                    raise not_found(
                        f"volume {vid} is not staged on this node (no record of it); "
                        f"{staging} holds a mount that is not provably its own: left alone"
                    )
                return pb.NodeUnstageVolumeResponse()  # nothing of it here: a repeat
            if Path(record.staging_path) != staging:
                raise precondition(
                    f"volume {vid} is staged at {record.staging_path}, not {staging}"
                )
            transport, target = self._transport(record.transport), record.as_target()
            obs = await self._observe(transport, target, staging, record.block)
            busy = list(dict.fromkeys([*obs.targets, *self._published(record, obs.device)]))
            if busy:
                raise precondition(
                    f"volume {vid} is still published at {', '.join(map(str, busy))}"
                )
            model, step = self._drive(
                vid, obs, "unstage", NodeVolumeInput(block=record.block), "cannot be unstaged"
            )
            try:
                device = obs.device
                if device is not None:
                    self._refuse_if_open(vid, device)
                if obs.staging_mounted and not record.block:  # a block volume mounts nothing
                    await mounts.unmount(staging)
                if device is not None:
                    elsewhere = mounts.mounts_of_device(device, mounts.read_mounts())
                    if elsewhere:
                        raise precondition(
                            f"volume {vid}: device {device} is still mounted at "
                            f"{', '.join(str(m.mount_point) for m in elsewhere)}"
                        )
                    self._refuse_if_open(vid, device)
                    if record.device_ro or record.read_only:
                        fs.set_read_only(device, False)  # leave no flag to the next user
                await transport.disconnect(target)  # returns only once verifiably gone
            except IO_ERRORS as exc:
                raise self._interrupted(model, "NodeUnstageVolume", exc) from exc
            after = await self._observe(transport, target, staging, record.block)
            await self._settle(model, step, after, "NodeUnstageVolume")
            self.records.delete(vid)
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
        required(req.target_path, "target_path")
        cap = self._capability(req)
        vid = volume_id(req.volume_id)
        dest = self.paths.path(req.target_path, "target_path")
        if not req.staging_target_path:
            raise precondition("staging_target_path: not set; this plugin stages volumes first")
        staging = self.paths.path(req.staging_target_path, "staging_target_path")
        if dest == staging or dest.is_relative_to(staging) or staging.is_relative_to(dest):
            raise invalid(f"target_path {dest} and staging_target_path {staging} overlap")
        self._kind(vid, dict(req.volume_context), cap, "published")
        flags = [] if cap.block else self._mount_flags(req.volume_capability)
        asked_ro = req.readonly or cap.mode in READ_ONLY_MODES
        self._fit_for(dest, "target_path", directory=not cap.block)
        with self.locks.hold(vid):
            record = self.records.load(vid)
            if record is None or Path(record.staging_path) != staging:
                raise precondition(
                    f"volume {vid} is not staged on this node at {staging}; stage it first"
                )
            if record.block != cap.block:
                was = "raw block" if record.block else "a filesystem"
                raise precondition(
                    f"volume {vid} is staged as {was}; it cannot be published "
                    f"{'as raw block' if cap.block else 'as a filesystem'}"
                )
            if cap.fs_type and record.fs_type and cap.fs_type != record.fs_type:
                raise precondition(f"volume {vid} is staged as {record.fs_type}, not {cap.fs_type}")
            transport, target = self._transport(record.transport), record.as_target()
            obs = await self._observe(transport, target, staging, cap.block)
            read_only = asked_ro or record.read_only
            want = Published(cap.block, cap.mode, read_only, flags)
            published = self._published(record, obs.device)
            if dest in published:
                if record.targets[str(dest)] == want:
                    return pb.NodePublishVolumeResponse()  # a repeat
                raise RPCError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"volume {vid} is published at {dest} with other arguments "
                    f"({self._describe(record.targets[str(dest)])}, not {self._describe(want)})",
                )
            others = [p for p in published if p != dest]
            single = [p for p in others if record.targets[str(p)].mode == SINGLE_WRITER]
            if others and (cap.mode == SINGLE_WRITER or single):
                raise precondition(
                    f"volume {vid} is {mode_name(SINGLE_WRITER)} and already published at "
                    f"{', '.join(map(str, single or others))}; one target at a time"
                )
            model, step = self._drive(
                vid,
                obs,
                "publish",
                NodeVolumeInput(target_path=str(dest), block=cap.block),
                f"cannot be published at {dest} before it is staged",
            )
            top = mounts.top_mount(dest)
            if top is not None and self._ours(top, record, obs.device):
                # Published by an earlier version of the plugin, whose records did not
                # list targets: a repeat. Recorded now, so that unpublish knows it.
                record.targets[str(dest)] = want
                self.records.save(record)
                return pb.NodePublishVolumeResponse()
            if top is not None:
                raise precondition(
                    f"target_path {dest} is already a mount point ({top.fs_type} from "
                    f"{top.source}), not of volume {vid}: left alone"
                )
            if cap.block:
                self._block_read_only(vid, record, obs.device, read_only, others)
            record.targets[str(dest)] = want
            self.records.save(record)  # first: an unpublish after a crash may clean it
            created = not (dest.exists() or dest.is_symlink())
            try:
                if cap.block:
                    assert obs.device is not None
                    mounts.make_file_target(dest)
                    await mounts.bind(obs.device, dest)
                else:
                    mounts.make_dir_target(dest)
                    await mounts.bind(staging, dest, read_only, mounts.bind_flags(flags))
            except IO_ERRORS as exc:
                error = self._interrupted(model, "NodePublishVolume", exc)
                if created and not mounts.is_mount_point(dest):
                    with contextlib.suppress(mounts.MountError, OSError):
                        mounts.safe_remove_target(dest)
                    record.targets.pop(str(dest), None)
                    self.records.save(record)
                raise error from exc
            after = await self._observe(transport, target, staging, cap.block)
            if dest not in after.targets:
                await self._settle(
                    model,
                    step,
                    Observation("uncertain", reason=f"{dest} missing"),
                    "NodePublishVolume",
                )
        return pb.NodePublishVolumeResponse()

    @staticmethod
    def _describe(p: Published) -> str:
        kind = "block" if p.block else "mount"
        flags = f" {','.join(p.flags)}" if p.flags else ""
        return f"{kind} {mode_name(p.mode)}{' read-only' if p.read_only else ''}{flags}"

    def _block_read_only(
        self, vid: str, record: Record, device: Path | None, read_only: bool, others: list[Path]
    ) -> None:
        """A raw block volume is read-only through its device's flag, which every user on
        this node shares: set for the first read-only publish, cleared when it goes."""
        if device is None or read_only == record.device_ro:
            return
        if record.read_only:
            return  # attached read-only: every publish is, whatever it asks
        if others:
            raise precondition(
                f"volume {vid} is published {'writable' if read_only else 'read-only'} at "
                f"{', '.join(map(str, others))}; a raw block volume is read-only for all its "
                "users on a node or for none"
            )
        fs.set_read_only(device, read_only)
        record.device_ro = read_only

    @rpc
    async def NodeUnpublishVolume(
        self, req: pb.NodeUnpublishVolumeRequest, ctx: Any
    ) -> pb.NodeUnpublishVolumeResponse:
        required(req.target_path, "target_path")
        vid = volume_id(req.volume_id)
        dest = self.paths.path(req.target_path, "target_path")
        with self.locks.hold(vid):
            record = self.records.load(vid)
            top = mounts.top_mount(dest)
            if record is None:
                if top is not None:
                    raise not_found(
                        f"volume {vid} is not staged on this node (no record of it); "
                        f"{dest} holds a mount that is not provably its own: left alone"
                    )
                return pb.NodeUnpublishVolumeResponse()  # nothing of it here
            transport, target = self._transport(record.transport), record.as_target()
            obs = await self._observe(transport, target, Path(record.staging_path), record.block)
            if top is not None and not self._ours(top, record, obs.device):
                raise precondition(
                    f"target_path {dest} is a mount of {top.source} ({top.major_minor}), not "
                    f"of volume {vid}: left alone"
                )
            others = len([t for t in obs.targets if t != dest])
            self._drive(
                vid,
                obs,
                "unpublish",
                NodeVolumeInput(target_path=str(dest), block=record.block, other_targets=others),
                "cannot be unpublished",
            )
            # Stacked binds of this volume (a repeated publish by hand) all go; never lazily.
            for _ in range(8):
                if not self._ours(mounts.top_mount(dest), record, obs.device):
                    break
                await mounts.unmount(dest)
            if str(dest) in record.targets or top is not None:
                try:
                    mounts.safe_remove_target(dest)  # only what it made: never recursive
                except mounts.MountError as exc:
                    raise precondition(f"volume {vid}: {exc}") from None
            record.targets.pop(str(dest), None)
            if record.block and record.device_ro and not record.read_only and not record.targets:
                if obs.device is not None:
                    fs.set_read_only(obs.device, False)
                record.device_ro = False
            self.records.save(record)
        return pb.NodeUnpublishVolumeResponse()

    # --- stats and expansion ------------------------------------------------------------------

    def _own_path(self, vid: str, record: Record | None, path: Path) -> Record:
        if record is None:
            raise not_found(f"volume {vid} is not staged on this node")
        if path != Path(record.staging_path) and str(path) not in record.targets:
            raise not_found(f"volume {vid} is not staged or published at {path}")
        return record

    @rpc
    async def NodeGetVolumeStats(
        self, req: pb.NodeGetVolumeStatsRequest, ctx: Any
    ) -> pb.NodeGetVolumeStatsResponse:
        required(req.volume_path, "volume_path")
        vid = volume_id(req.volume_id)
        path = self.paths.lookup(req.volume_path, "volume_path", vid)
        record = self._own_path(vid, self.records.load(vid), path)
        top = mounts.top_mount(path)
        if top is None:
            raise not_found(f"volume {vid}: nothing is mounted at {path}")
        device = await self._transport(record.transport).find(record.as_target())
        if not self._ours(top, record, device):
            return pb.NodeGetVolumeStatsResponse(
                volume_condition=pb.VolumeCondition(
                    abnormal=True,
                    message=f"volume {vid}: {path} is mounted from {top.major_minor}, not from "
                    f"the volume's device {record.device} (stale mount)",
                )
            )
        condition = self._condition(vid, device)
        if record.block:
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

    @staticmethod
    def _condition(vid: str, device: Path | None) -> pb.VolumeCondition:
        if device is None:
            return pb.VolumeCondition(
                abnormal=True, message=f"volume {vid}: its device is gone from the node"
            )
        return pb.VolumeCondition(abnormal=False, message=f"volume {vid} is healthy on {device}")

    @rpc
    async def NodeExpandVolume(
        self, req: pb.NodeExpandVolumeRequest, ctx: Any
    ) -> pb.NodeExpandVolumeResponse:
        required(req.volume_path, "volume_path")
        vid = volume_id(req.volume_id)
        path = self.paths.path(req.volume_path, "volume_path")
        if req.staging_target_path:
            self.paths.path(req.staging_target_path, "staging_target_path")
        wanted = req.capacity_range.required_bytes if req.HasField("capacity_range") else 0
        limit = req.capacity_range.limit_bytes if req.HasField("capacity_range") else 0
        if wanted < 0 or limit < 0 or (limit and wanted > limit):
            raise out_of_range(f"volume {vid}: capacity_range {wanted}..{limit} is not a range")
        with self.locks.hold(vid):
            record = self._own_path(vid, self.records.load(vid), path)
            if req.HasField("volume_capability"):
                cap = check_capability(req.volume_capability)
                if cap.block != record.block:
                    raise invalid(
                        f"volume_capability: volume {vid} is staged as "
                        f"{'raw block' if record.block else 'a filesystem'}"
                    )
            transport, target = self._transport(record.transport), record.as_target()
            device = await transport.find(target)
            if device is None:
                raise precondition(f"volume {vid}: its device is not connected")
            staging = Path(record.staging_path)
            try:
                await transport.refresh(target)
                if not record.block and not record.read_only:
                    if not self._ours(mounts.top_mount(staging), record, device):
                        raise precondition(f"volume {vid}: {staging} is not its staging mount")
                    await fs.grow_fs(device, staging, record.fs_type or DEFAULT_FS)
            except IO_ERRORS as exc:
                if isinstance(exc, RPCError):
                    raise
                raise RPCError(
                    grpc.StatusCode.INTERNAL, f"volume {vid}: expansion failed: {exc}"
                ) from exc
            size = fs.block_size_bytes(device)
        if size < wanted:
            raise precondition(
                f"volume {vid}: device {device} is {size} bytes after a rescan, "
                f"{wanted} asked (has ControllerExpandVolume finished?)"
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
            accessible_topology=pb.Topology(segments=self.settings.topology),
        )

    # --- start-up -------------------------------------------------------------------------------

    async def cleanup_orphans(self) -> list[str]:
        """Disconnect sessions of ours that no staged volume accounts for and that nothing
        mounts or opens; report every decision. Other sessions are never touched (each
        transport lists only sessions under the driver's own NQN prefix or files). Records
        that cannot be read are moved aside (with an event) and start-up goes on."""
        report: list[str] = []
        table = mounts.read_mounts()
        records = [r for vid in self.records.volume_ids() if (r := self.records.load(vid))]
        for name, transport in self.transports.items():
            staged: set[Path] = set()
            for record in records:
                if record.transport == name:
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
