"""Controller replicas as deployed in a cluster: FakeKube (real HTTP, the real
`kubernetes.aio` client, RBAC from the shipped manifests), the simulator over real SSH, CSI
over real unix sockets, and one ManualClock for the whole world (API server timestamps,
Leases, grace periods), as NTP-synced machines share one time.

`World` starts and stops driver containers (`Replica`) in controller pods; `sidecars.py`
models the four CSI sidecars of each pod, each kind electing its own leader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest
from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry

from rdscsi.app import ControllerApp
from rdscsi.clock import ManualClock
from rdscsi.cluster import ClusterBinding
from rdscsi.config import ApplianceConfig, DriverConfig
from rdscsi.csi import csi_pb2_grpc
from rdscsi.io.kube.events import KubeEventSink, KubeRef
from rdscsi.io.kube.lease import LeaderElector
from rdscsi.io.kube.nodes import host_nqn_annotation
from rdscsi.serve import in_cluster
from rdscsi.sim import SimConfig, Simulator
from rdscsi.testing.kubeapi import Authorizer, FakeKube, User
from rdscsi.testing.kubeapi import objects as k8s
from rdscsi.testing.sidecars import block_cap as block_cap  # the shared capabilities
from rdscsi.testing.sidecars import mount_cap as mount_cap
from tests.deploy.test_manifests import BASE, render

DRIVER = "rds.csi.mikrotik.com"  # the shipped name: the Lease Role names its Lease


def host_nqn(node: str) -> str:
    """The NVMe host NQN each test node's plugin reports (the fence lets it connect)."""
    return f"nqn.2014-08.org.example:host-{node}"


NAMESPACE = "rdscsi-system"
TOKEN = "controller-sa"
GRACE = 30.0
STEP = 1.0  # advance time in steps no longer than the lease retry period


async def until(
    condition: Callable[[], bool], what: str = "condition", limit: float = 10.0
) -> None:
    """Let the loop run until `condition` holds; `limit` (real seconds) only turns a hang
    into a failure."""
    try:
        async with asyncio.timeout(limit):
            while not condition():
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Replica:
    """One driver container (`serve --controller --kubernetes`) in pod `name`."""

    name: str
    app: ControllerApp
    binding: ClusterBinding
    sink: KubeEventSink
    api: ApiClient
    registry: CollectorRegistry
    channel: grpc.aio.Channel
    controller: csi_pb2_grpc.ControllerStub
    identity: csi_pb2_grpc.IdentityStub
    stopped: bool = False

    @property
    def leads(self) -> bool:
        return not self.stopped and self.app.leadership.leading

    async def reconnect(self) -> None:
        """A new channel (gRPC backs off in real time after a refused connect)."""
        await self.channel.close()
        self.channel = grpc.aio.insecure_channel(self.app.config.endpoint)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return self.registry.get_sample_value(name, dict(labels or {}))

    async def stop(self, release: bool = True) -> None:
        """The container stops: gracefully (`release`: the Lease is handed back) or it
        crashes (the Lease runs out on its own)."""
        if self.stopped:
            return
        self.stopped = True
        if release:
            await self.binding.stop()
        else:
            # A crash: nothing is released, nothing more is sent.
            elector = self.binding.elector
            task, elector._task = elector._task, None
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elector._leader = False
            await self.app.leadership.lost()
            for informer in self.binding.informers:
                await informer.stop()
            watcher = self.binding._task
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        await self.channel.close()
        await self.app.stop()
        await self.sink.stop(drain_s=0 if not release else 2.0)
        await self.api.close()


def controller_rbac() -> Authorizer:
    """Every role the shipped manifests bind to the controller's ServiceAccount."""
    return Authorizer(render(BASE))


@dataclass
class World:
    kube: FakeKube
    sim: Simulator
    tmp: Path
    key_file: Path
    clock: ManualClock
    replicas: dict[str, Replica] = field(default_factory=dict)
    electors: list[LeaderElector] = field(default_factory=list)  # sidecars' too
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def socket(self, pod: str) -> Path:
        return self.tmp / f"{pod}.sock"

    def config(self, pod: str) -> DriverConfig:
        return DriverConfig(
            name=DRIVER,
            controller=True,
            kubernetes=True,
            endpoint=f"unix://{self.socket(pod)}",
            rds=ApplianceConfig(
                address=self.sim.host,
                port=self.sim.port,
                key_file=str(self.key_file),
                host_keys=[self.sim.host_key],
                name="sim",
            ),
            grace_period=GRACE,
            lease_namespace=NAMESPACE,
            **self.config_overrides,
        ).validate()

    async def replica(self, pod: str, wait: bool = True) -> Replica:
        """Start the driver container of `pod` (a restart when one ran before)."""
        old = self.replicas.get(pod)
        if old is not None and not old.stopped:
            raise RuntimeError(f"{pod}: the driver is running")
        config = self.config(pod)
        registry = CollectorRegistry()
        # what `serve --controller --kubernetes` assembles and starts
        replica = in_cluster(
            config,
            self.clock,
            ApiClient(self.kube.configuration(TOKEN)),
            registry,
            identity=pod,
            appliance_ref=KubeRef("Pod", pod, NAMESPACE),
        )
        await replica.start()
        app, binding = replica.app, replica.binding
        channel = grpc.aio.insecure_channel(config.endpoint)
        r = Replica(
            pod,
            app,
            binding,
            replica.sink,
            replica.api,
            registry,
            channel,
            csi_pb2_grpc.ControllerStub(channel),
            csi_pb2_grpc.IdentityStub(channel),
        )
        self.replicas[pod] = r
        self.electors.append(binding.elector)
        if wait:
            await until(lambda: binding.synced.is_set(), f"{pod} synced")
            await until(lambda: app.rds.connected, f"{pod} connected")
        return r

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.stopped]

    def leader(self) -> Replica | None:
        leaders = [r for r in self.live() if r.leads]
        assert len(leaders) <= 1, f"two reconciler leaders: {[r.name for r in leaders]}"
        return leaders[0] if leaders else None

    async def settle(self) -> None:
        """Let every due Lease attempt land and every reconciler go idle."""
        await until(lambda: all(e.settled for e in self.electors), "due Lease attempts", limit=20.0)
        for r in self.live():
            await r.app.reconciler.wait_idle()
            # the Events that pass posted are in the API before anyone looks for them
            await asyncio.wait_for(r.sink.written(), 10.0)

    async def tick(self, seconds: float, step: float = STEP) -> None:
        """Advance the world's clock in steps no longer than the retry period."""
        steps = max(1, round(seconds / step))
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            # a moment of real time for the HTTP streams (bookmarks, watch events) to move,
            # as they would while a second passes
            await asyncio.sleep(0.001)
            await self.settle()

    async def elect(self, pod: str) -> Replica:
        """Move the reconciler's Lease to `pod` (the others release theirs)."""
        target = self.replicas[pod]
        stopped = []
        for r in self.live():
            if r is not target and r.binding.elector.campaigning:
                await r.binding.elector.stop(release=True)
                stopped.append(r)
        for _ in range(20):
            if target.leads:
                break
            await self.tick(target.app.config.retry_period)
        await until(lambda: target.leads, f"{pod} leading")
        for r in stopped:
            r.binding.elector.start()
        await self.settle()
        return target

    # --- the rest of the cluster ----------------------------------------------------------

    def node(
        self, name: str, ready: bool = True, taints: list[dict[str, str]] | None = None
    ) -> None:
        """A kubelet (or the node lifecycle controller) reporting a Node, dated now, with the
        host NQN its node plugin reported (`host_nqn`)."""
        self.kube.put(
            k8s.node(
                name,
                ready=ready,
                taints=taints or [],
                since=self.clock.wall(),
                annotations={host_nqn_annotation(DRIVER): host_nqn(name)},
            )
        )

    def delete_node(self, name: str) -> None:
        self.kube.remove("v1", "Node", name)

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.kube.list("events.k8s.io/v1", "Event") if e.get("reason") == reason]


@pytest.fixture
async def world(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[World]:
    key_file = tmp_path / "id"
    client_key.write_private_key(str(key_file))
    clock = ManualClock(wall_start=1_750_000_000.0)
    # The watch cache sends every watch a bookmark about once a minute.
    async with FakeKube(clock=clock, authorizer=controller_rbac(), bookmark_interval=60.0) as kube:
        kube.grant(TOKEN, User.service_account(NAMESPACE, "rdscsi-controller"))
        sim = Simulator(
            SimConfig(
                data_dir=tmp_path / "sim", authorized_keys=[client_key.export_public_key().decode()]
            )
        )
        await sim.start()
        w = World(kube, sim, tmp_path, key_file, clock)
        try:
            yield w
        finally:
            for r in list(w.replicas.values()):
                await r.stop()
            for cleanup in w.cleanups:
                await cleanup()
            for e in w.electors:
                await e.stop()
            await sim.stop()
        assert kube.denied == [], f"requests outside the shipped RBAC: {kube.denied}"
