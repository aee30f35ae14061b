"""A small cluster on one machine, for the scenarios: every part real but the apiserver.

- Kubernetes API: `rdscsi.testing.kubeapi.FakeKube` over HTTP (what the real `kubernetes`
  client talks to in the tests), with a kubeconfig file like any cluster's.
- The appliance: the RDS simulator over SSH, its host key pinned.
- The controller: `serve.in_cluster`, the assembly `rdscsi serve --controller --kubernetes`
  starts (informers, Lease, events to the API), with a short grace period.
- Two nodes: two node plugins as `rdscsi serve --node` builds them, each with its own node
  id, state directory, kubelet directory and socket. Each reaches the appliance's files
  through its own bind mount of them (`appliance/`), so each attaches its own loop devices
  as two hosts would have their own NVMe/TCP sessions. They need root and loop devices;
  without them the cluster runs without node plugins and says why.
- The rest of Kubernetes (the sidecars, the attach/detach controller, kubelet) is played by
  the scenario: `rdscsi.testing.sidecars.OneDriver` and `NodePlugin`'s kubelet calls.

Everything lives under the scenario's directory, which is wiped (mounts and loop devices of
an interrupted run first) when a scenario starts; volumes are deleted when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from ..app import NodeApp, build_node
from ..clock import LoopClock
from ..config import UNIX_PATH_MAX, ApplianceConfig, DriverConfig
from ..csi import csi_pb2 as pb
from ..csi import csi_pb2_grpc
from ..hooks.events import MemorySink
from ..io.host import mounts
from ..io.host.identity import ensure_identity, nvme_dir
from ..io.host.loop import LoopTransport
from ..io.host.transport import Target, TransportError
from ..io.kube.client import api_client
from ..io.kube.events import KubeRef
from ..io.kube.nodes import host_nqn_annotation
from ..io.kube.wire import parse_time
from ..io.rds.fence import parse_allow_list
from ..machines.node import OUT_OF_SERVICE_TAINT
from ..run import node_support
from ..serve import InCluster, in_cluster
from ..sim import SimConfig, Simulator
from ..sim.admission import SimAdmission
from ..sim.control import ControlServer
from ..sim.main import ensure_client_key
from ..testing.kubeapi import FakeKube
from ..testing.kubeapi import objects as k8s
from ..testing.sidecars import OneDriver
from .narrate import Narrator

log = logging.getLogger("rdscsi.scenarios")

DRIVER = "rds.csi.mikrotik.com"
APPS = "demo"  # the claims' namespace
SYSTEM = "kube-system"  # the Lease's and the controller pod's
CONTROLLER_POD = "rdscsi-controller-0"
NODES = ("node-a", "node-b")
GIB = 1 << 30
OUT_OF_SERVICE = {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}


class ScenarioDirError(RuntimeError):
    """The scenario's directory cannot be made fresh (one line, what to do)."""


def _ours_first(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: len(p.parts), reverse=True)


async def wipe(root: Path) -> None:
    """Make `root` empty: unmount what an interrupted run left mounted under it (deepest
    first), detach loop devices of files under it, remove it. Nothing outside is touched."""
    root = root.resolve()
    if not root.exists():
        return
    if os.geteuid() == 0:
        loops = LoopTransport(root)
        # A loop device holds its file open through a node's view (a bind mount), which
        # stays busy until the device goes, which may be mounted itself: rounds until clear.
        for _ in range(3):
            stale = [
                m.mount_point for m in mounts.read_mounts() if m.mount_point.is_relative_to(root)
            ]
            for point in _ours_first(stale):
                with contextlib.suppress(mounts.MountError, OSError):
                    await mounts.unmount(point)
            for session in await loops.sessions():
                with contextlib.suppress(Exception):
                    await loops.disconnect_session(session)
            if not stale:
                break
    left = [m.mount_point for m in mounts.read_mounts() if m.mount_point.is_relative_to(root)]
    if left:
        raise ScenarioDirError(
            f"{left[0]} is still mounted (in use?): unmount it, then run the scenario again"
        )
    try:
        shutil.rmtree(root)
    except PermissionError as exc:
        raise ScenarioDirError(
            f"{root} cannot be cleared ({exc.strerror}): it was made by another user (a run "
            "with sudo?); run as that user, or give this run its own --state-dir"
        ) from None


@dataclass
class Paths:
    """Where the kubelet of a node puts a volume (its real layout, under `kubelet`)."""

    staging: Path
    target: Path


class NodePlugin:
    """One node: its plugin (as `rdscsi serve --node`), and the kubelet's calls to it."""

    def __init__(
        self,
        name: str,
        root: Path,
        files: Path,
        socket: Path,
        narrator: Narrator,
        control: Path,
    ) -> None:
        self.name = name
        self.root = root
        self.host = root / "host"  # its NVMe host identity (<host>/etc/nvme), as node-init makes
        self.control = control  # the simulator's control socket: admission at each connect
        self.files = files  # the simulator's files
        self.view = root / "appliance"  # this node's way to them (a bind mount)
        self.kubelet = root / "kubelet"
        self.socket = socket
        self.narrator = narrator
        self.app: NodeApp | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self.pod_uid = str(uuid.uuid4())  # the pod using the volumes here
        self.up = False

    async def start(self) -> None:
        self.view.mkdir(parents=True, exist_ok=True)
        self.kubelet.mkdir(parents=True, exist_ok=True)
        await mounts.bind(self.files, self.view)
        config = DriverConfig(
            name=DRIVER,
            node=True,
            node_id=self.name,
            endpoint=f"unix://{self.socket}",
            transport="loop",
            loop_root=str(self.view),
            # its host NQN, and the appliance's allow-list asked at each connect
            host_nqn_file=str(nvme_dir(self.host) / "hostnqn"),
            loop_control=str(self.control),
            node_state_dir=str(self.root / "state"),
            kubelet_dir=str(self.kubelet),
            rds=ApplianceConfig(name="sim"),
        ).validate()
        config = config.prepare()
        self.app = build_node(
            config,
            LoopClock(),
            MemorySink(log_events=True),
            CollectorRegistry(),
            listeners=(self.narrator.listener(self.name),),
        )
        await self.app.start()
        self.channel = grpc.aio.insecure_channel(config.endpoint)
        self.stub = csi_pb2_grpc.NodeStub(self.channel)
        self.up = True

    @property
    def loops(self) -> LoopTransport:
        assert self.app is not None
        transport = self.app.node.transports["loop"]
        assert isinstance(transport, LoopTransport)
        return transport

    async def devices(self) -> list[Path]:
        """The loop devices this node has attached (through its own view)."""
        return [s.device for s in await self.loops.sessions() if s.device is not None]

    async def stop(self) -> None:
        """The plugin stops (what it has staged stays, as on a plugin restart)."""
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.app is not None and self.up:
            await self.app.stop()
        self.up = False

    async def power_off(self) -> list[str]:
        """The machine goes off: its plugin stops, and everything its kernel held goes (here:
        unmounted and detached, the nearest one host comes to a power cut). What went."""
        await self.stop()
        gone: list[str] = []
        points = [
            m.mount_point
            for m in mounts.read_mounts()
            if m.mount_point.is_relative_to(self.kubelet)
        ]
        unmounted = 0
        for point in _ours_first(points):
            unmounted += await mounts.unmount(point)
        if unmounted:
            gone.append(f"{unmounted} mount{'s' if unmounted > 1 else ''}")
        for session in await self.loops.sessions():
            await self.loops.disconnect_session(session)
            gone.append(f"{session.device or 'a loop device'}")
        return gone

    async def unmount_view(self) -> None:
        with contextlib.suppress(mounts.MountError, OSError):
            await mounts.unmount(self.view)

    # --- the kubelet's side ---------------------------------------------------------------

    def paths(self, pv: str, handle: str, block: bool) -> Paths:
        csi = self.kubelet / "plugins" / "kubernetes.io" / "csi"
        if block:
            return Paths(
                csi / "volumeDevices" / "staging" / pv,
                csi / "volumeDevices" / "publish" / pv / self.pod_uid,
            )
        digest = hashlib.sha256(handle.encode()).hexdigest()
        return Paths(
            csi / DRIVER / digest / "globalmount",
            self.kubelet / "pods" / self.pod_uid / "volumes" / "kubernetes.io~csi" / pv / "mount",
        )

    async def stage(
        self, pv: str, volume: pb.Volume, cap: pb.VolumeCapability, context: dict[str, str]
    ) -> Paths:
        where = self.paths(pv, volume.volume_id, cap.HasField("block"))
        await self.stub.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=volume.volume_id,
                publish_context=context,
                staging_target_path=str(where.staging),
                volume_capability=cap,
                volume_context=volume.volume_context,
            )
        )
        return where

    async def publish(
        self, pv: str, volume: pb.Volume, cap: pb.VolumeCapability, context: dict[str, str]
    ) -> Paths:
        where = self.paths(pv, volume.volume_id, cap.HasField("block"))
        await self.stub.NodePublishVolume(
            pb.NodePublishVolumeRequest(
                volume_id=volume.volume_id,
                publish_context=context,
                staging_target_path=str(where.staging),
                target_path=str(where.target),
                volume_capability=cap,
                volume_context=volume.volume_context,
            )
        )
        return where

    async def unpublish(self, pv: str, volume_id: str, block: bool) -> None:
        where = self.paths(pv, volume_id, block)
        await self.stub.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(where.target))
        )

    async def unstage(self, pv: str, volume_id: str, block: bool) -> None:
        where = self.paths(pv, volume_id, block)
        await self.stub.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(where.staging))
        )


@dataclass
class Cluster:
    root: Path
    narrator: Narrator
    grace: float
    clock: LoopClock = field(default_factory=LoopClock)
    kube: FakeKube | None = None
    sim: Simulator | None = None
    control: ControlServer | None = None  # the simulator's control socket (admission)
    host_nqns: dict[str, str] = field(default_factory=dict)  # node -> its NVMe host NQN
    controller: InCluster | None = None
    sidecars: OneDriver | None = None
    nodes: dict[str, NodePlugin] = field(default_factory=dict)
    node_service: bool = False
    why_no_nodes: str = ""
    sockets: Path = Path()  # the CSI sockets' directory
    _temp_sockets: bool = False
    _events_shown: set[str] = field(default_factory=set)

    # --- the parts, once started ------------------------------------------------------------

    @property
    def api(self) -> FakeKube:
        assert self.kube is not None
        return self.kube

    @property
    def appliance(self) -> Simulator:
        assert self.sim is not None
        return self.sim

    @property
    def ctl(self) -> InCluster:
        assert self.controller is not None
        return self.controller

    @property
    def k8s(self) -> OneDriver:
        assert self.sidecars is not None
        return self.sidecars

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.node_service, self.why_no_nodes = node_support()
        self.sockets = self.root / "sockets"
        names = ("controller", "appliance", *NODES)
        longest = max(len(f"{self.sockets / n}.sock".encode()) for n in names)
        if longest > UNIX_PATH_MAX:
            # a deep directory: sockets go where their paths fit (removed at the end)
            self.sockets = Path(tempfile.mkdtemp(prefix="rdscsi-demo-"))
            self._temp_sockets = True
        self.sockets.mkdir(exist_ok=True)
        n = self.narrator
        self.kube = FakeKube()
        await self.kube.start()
        for name in NODES:
            # each node's NVMe host identity, made once as `rdscsi node-init` makes it
            identity = ensure_identity(self.root / "nodes" / name / "host")
            self.host_nqns[name] = identity.hostnqn
            self.kube.put(
                k8s.node(name, ready=True, since=self.clock.wall(), annotations=self._noted(name))
            )
        n.ok(f"a Kubernetes API (built in, {self.kube.url}): Nodes {' and '.join(NODES)}, Ready")
        n.note(
            "each Node carries its NVMe host NQN (annotation "
            f"{host_nqn_annotation(DRIVER)}, as its node plugin reports it): the controller "
            "puts the holder's on the disk's allow-list (rds.fence: allow-host)"
        )
        kubeconfig = self.kube.kubeconfig(self.root / "kubeconfig")
        sim_dir = self.root / "sim"
        sim_dir.mkdir(parents=True)
        key_file, authorized = ensure_client_key(sim_dir)
        self.sim = Simulator(SimConfig(data_dir=sim_dir, authorized_keys_file=authorized))
        await self.sim.start()
        self.control = ControlServer(self.sim, self.control_socket)
        await self.control.start()
        n.ok(f"the appliance: the RDS simulator on {self.sim.host}:{self.sim.port}, over SSH")
        config = DriverConfig(
            name=DRIVER,
            controller=True,
            kubernetes=True,
            kubeconfig=str(kubeconfig),
            endpoint=f"unix://{self.sockets / 'controller.sock'}",
            rds=ApplianceConfig(
                address=self.sim.host,
                port=self.sim.port,
                key_file=str(key_file),
                host_keys=[self.sim.host_key],
                name="sim",
            ),
            transport="loop",
            grace_period=self.grace,
            lease_namespace=SYSTEM,
            state_dir=str(self.root / "controller"),
            metrics_address="127.0.0.1:0",  # /metrics and /debug/explain (`rdscsi explain`)
        ).validate()
        config = config.prepare()
        n.ok(
            "the controller, as `rdscsi serve --controller --kubernetes` runs it; grace period "
            f"{self.grace:g} s for this demo ({DriverConfig().grace_period:g} s by default)"
        )
        self.controller = in_cluster(
            config,
            self.clock,
            await api_client(config.kubeconfig),
            CollectorRegistry(),
            identity=CONTROLLER_POD,
            appliance_ref=KubeRef("Pod", CONTROLLER_POD, SYSTEM),
            listeners=(n.listener("controller"),),
        )
        await self.controller.start()
        self.sidecars = OneDriver(self.kube, DRIVER, self.clock, config.endpoint, namespace=APPS)
        app, binding = self.controller.app, self.controller.binding
        await n.until(binding.synced.is_set, "the controller's view of the cluster synced")
        await n.until(lambda: app.rds.connected, "the controller reached the appliance")
        await n.until(lambda: app.leadership.leading, "the controller took the Lease")
        await app.reconciler.wait_idle()
        n.ok(
            "it synced its view of the cluster, reached the appliance and leads the "
            f"reconciler (Lease {binding.namespace}/{binding.elector.name})"
        )
        if not self.node_service:
            n.note(f"no node plugins: {self.why_no_nodes}.")
            n.note(
                "The controller's side runs in full; staging, mounting and the data are not "
                "shown (run the demo with sudo to see them)."
            )
            return
        for name in NODES:
            node = NodePlugin(
                name,
                self.root / "nodes" / name,
                self.sim.store.files_root,
                self.sockets / f"{name}.sock",
                n,
                self.control_socket,
            )
            self.nodes[name] = node
            await node.start()
        n.ok(
            f"node plugins {' and '.join(NODES)}, as `rdscsi serve --node` runs them: each with "
            "its own state, kubelet directory and loop devices"
        )

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()
            await node.unmount_view()
        if self.sidecars is not None:
            await self.sidecars.close()
        if self.controller is not None:
            await self.controller.stop()
        if self.control is not None:
            await self.control.stop()
        if self.sim is not None:
            await self.sim.stop()
        if self.kube is not None:
            await self.kube.stop()
        if self._temp_sockets:
            shutil.rmtree(self.sockets, ignore_errors=True)

    # --- the cluster's objects -------------------------------------------------------------

    def set_node(
        self, name: str, ready: bool, since: float, taints: list[dict[str, str]] | None = None
    ) -> None:
        """The Node as the kubelet / node lifecycle controller writes it (its node plugin's
        host NQN annotation kept)."""
        self.api.put(
            k8s.node(
                name, ready=ready, taints=taints or [], since=since, annotations=self._noted(name)
            )
        )

    @property
    def control_socket(self) -> Path:
        """The simulator's control socket (beside the CSI sockets: a path that fits)."""
        return self.sockets / "appliance.sock"

    def _noted(self, name: str) -> dict[str, str]:
        nqn = self.host_nqns.get(name)
        return {host_nqn_annotation(DRIVER): nqn} if nqn else {}

    def allow_list(self, vid: str) -> list[str]:
        """The host NQNs on the volume's disk's allow-list, as the appliance holds it."""
        disk = self.appliance.store.disks.get(vid)
        text = disk.nvme_tcp_server_allow_host_name if disk is not None else ""
        return sorted(parse_allow_list(text).hosts)  # NO_HOST (nobody) left out

    async def admitted(self, node: str, vid: str) -> str | None:
        """Ask the appliance, as `node`'s host would at `nvme connect`, to connect to the
        volume's export: None if admitted (then it leaves again), else why it was refused."""
        disk = self.appliance.store.disks.get(vid)
        if disk is None:
            return "no such export"
        admission = SimAdmission(self.control_socket, self.host_nqns[node])
        target = Target(vid, disk.nvme_tcp_server_nqn)
        try:
            await admission.admit(target)
        except TransportError as exc:
            return str(exc).rpartition("refused the connection: ")[2]  # the appliance's words
        await admission.leave(target)
        return None

    def host_of(self, nqn: str) -> str:
        """The node whose host NQN `nqn` is (or the NQN itself)."""
        return next((n for n, q in self.host_nqns.items() if q == nqn), nqn)

    async def explain(self, *what: str) -> str:
        """What `rdscsi explain WHAT` prints about the controller now (the command itself)."""
        metrics = self.ctl.metrics
        assert metrics is not None
        words = ["explain", *what, "--url", metrics.url]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rdscsi",
            *words,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise self.narrator.fail(f"rdscsi {' '.join(words)}: {text.strip()}")
        return text

    def attachment(self, handle: str, node: str) -> dict[str, Any] | None:
        return self.api.get(
            "storage.k8s.io/v1", "VolumeAttachment", self.k8s.attachment_name(handle, node)
        )

    def attachment_state(self, vid: str) -> str:
        """The reconciler leader's Attachment machine for the volume (detached: none kept)."""
        model = self.ctl.app.passes.models.get(vid)
        return model.state or "" if model is not None else "detached"

    async def events(self) -> None:
        """Print the Events the driver posted since the last call (once its queue is empty)."""
        try:
            await asyncio.wait_for(self.ctl.sink.written(), 10)
        except TimeoutError:
            raise self.narrator.fail("the driver's Events were not posted in 10 s") from None
        items = self.api.list("events.k8s.io/v1", "Event")
        fresh = [e for e in items if e["metadata"]["name"] not in self._events_shown]
        fresh.sort(key=lambda e: e.get("eventTime") or "")
        for e in fresh:
            self._events_shown.add(e["metadata"]["name"])
            regarding = e.get("regarding") or {}
            ns = regarding.get("namespace")
            what = f"{regarding.get('kind')} {ns + '/' if ns else ''}{regarding.get('name')}"
            when = parse_time(e.get("eventTime"))
            self.narrator.event(
                self.narrator.since(when) if when is not None else self.narrator.elapsed(),
                f"{e.get('type')} {e.get('reason')} on {what}: {e.get('note')}",
            )
