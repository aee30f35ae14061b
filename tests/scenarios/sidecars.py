"""A model of the four CSI sidecars of each controller pod.

Each kind (provisioner, attacher, resizer, snapshotter) runs in every pod and elects its own
leader with its own Lease, independently of the others and of the driver's Lease (as
`--leader-election` does); only the leader acts, and it calls the driver in its own pod over
that pod's unix socket. What each does with the API objects around its calls is
`rdscsi.testing.sidecars` (shared with `rdscsi demo --scenario`); here is only who leads.
"""

from __future__ import annotations

from kubernetes.aio.client import ApiClient

from rdscsi.io.kube.lease import LeaderElector
from rdscsi.testing import sidecars as shared
from rdscsi.testing.sidecars import KINDS, SidecarActions, Stub

from .conftest import DRIVER, NAMESPACE, TOKEN, World, until

__all__ = ["KINDS", "Sidecar", "Sidecars", "attachment_name"]


def attachment_name(handle: str, node: str) -> str:
    """The attach/detach controller's name for a CSI VolumeAttachment of this driver."""
    return shared.attachment_name(handle, DRIVER, node)


class Sidecar:
    def __init__(self, kind: str, pod: str, elector: LeaderElector) -> None:
        self.kind = kind
        self.pod = pod
        self.elector = elector

    @property
    def leads(self) -> bool:
        return self.elector.is_leader


class Sidecars(SidecarActions):
    def __init__(self, world: World, pods: tuple[str, ...]) -> None:
        super().__init__(world.kube, DRIVER, world.clock)
        self.world = world
        self.pods = pods
        self.apis: list[ApiClient] = []
        self.sidecars: dict[tuple[str, str], Sidecar] = {}

    async def start(self) -> None:
        self.world.cleanups.append(self.stop)
        for pod in self.pods:
            api = ApiClient(self.world.kube.configuration(TOKEN))
            self.apis.append(api)
            for kind in KINDS:
                elector = LeaderElector(
                    api,
                    NAMESPACE,
                    f"external-{kind}-leader-{DRIVER.replace('.', '-')}",
                    pod,
                    self.world.clock,
                    lease_duration=15,
                    renew_deadline=10,
                    retry_period=1,
                )
                self.sidecars[(kind, pod)] = Sidecar(kind, pod, elector)
                self.world.electors.append(elector)
                elector.start()
        await until(lambda: all(self.leader(k) for k in KINDS), "a leader per sidecar kind")

    async def stop(self) -> None:
        for sidecar in self.sidecars.values():
            await sidecar.elector.stop()
        apis, self.apis = self.apis, []
        for api in apis:
            await api.close()

    def leader(self, kind: str) -> str | None:
        pods = [p for (k, p), s in self.sidecars.items() if k == kind and s.leads]
        assert len(pods) <= 1, f"two {kind} leaders: {pods}"
        return pods[0] if pods else None

    def alignment(self) -> dict[str, str | None]:
        return {kind: self.leader(kind) for kind in KINDS}

    async def move(self, kind: str, pod: str) -> None:
        """Hand the sidecar kind's Lease to `pod` (the current leader releases it)."""
        if self.leader(kind) == pod:
            return
        others = [s for (k, p), s in self.sidecars.items() if k == kind and p != pod]
        for sidecar in others:
            await sidecar.elector.stop(release=True)
        target = self.sidecars[(kind, pod)]
        for _ in range(30):
            if target.leads:
                break
            await self.world.tick(1.0)
        await until(lambda: target.leads, f"{kind} leading in {pod}")
        for sidecar in others:
            sidecar.elector.start()
        await self.world.settle()

    async def align(self, assignment: dict[str, str]) -> None:
        for kind, pod in assignment.items():
            await self.move(kind, pod)
        assert self.alignment() == assignment

    # --- calls, from the leader of a kind to the driver in its own pod ---------------------

    def driver_for(self, kind: str) -> tuple[str, Stub] | str:
        pod = self.leader(kind)
        replica = self.world.replicas.get(pod or "")
        if replica is None or replica.stopped:
            return f"leader {pod!r} has no running driver"
        return replica.name, replica.controller

    async def backoff(self) -> None:
        await self.world.tick(1.0)  # the sidecar's retry backoff

    async def reconnect(self, pod: str) -> None:
        await self.world.replicas[pod].reconnect()
