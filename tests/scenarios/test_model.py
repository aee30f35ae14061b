"""A hypothesis stateful test of the whole controller: two replicas, the sidecars of both
pods, the simulator and the API server, driven by rules that create and delete PVCs, attach
and detach them on nodes, make nodes NotReady, Ready, deleted or tainted out-of-service,
drop and restart the appliance, restart or crash a replica, and move the reconciler's Lease
and the sidecar leaders, with time moving in between.

Every node a volume is published to connects to it (its session appears in the appliance's
listing) until the volume is detached from it, so a NotReady node is never told from a live
one by a missing session.

Invariants:
- a single-node volume is never published to two nodes, unless every other is fenced
  (deleted, or tainted out-of-service: the evidence the driver may act on);
- the appliance's allow-list of a single-node volume never holds two hosts;
- at most one replica leads the reconciler; one StartupReconciliation per leadership term;
- once the faults stop (teardown: appliance back, replicas back, time past every grace
  period), every replica reports each volume published exactly where an attached
  VolumeAttachment on a live node says, and after every PVC is deleted the appliance holds
  no disk: nothing leaked.
The `ci` profile runs a few derandomised examples; HYPOTHESIS_PROFILE=heavy many more.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import asyncssh
import grpc
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rdscsi.clock import ManualClock
from rdscsi.csi import csi_pb2 as pb
from rdscsi.machines.node import OUT_OF_SERVICE_TAINT
from rdscsi.sim import SimConfig, Simulator
from rdscsi.testing.kubeapi import FakeKube, User
from rdscsi.testing.kubeapi import objects as k8s

from .conftest import (
    DRIVER,
    GRACE,
    NAMESPACE,
    TOKEN,
    World,
    controller_rbac,
    host_nqn,
    mount_cap,
)
from .sidecars import KINDS, Sidecars, attachment_name

PODS = ("ctl-a", "ctl-b")
NODES = ("n1", "n2", "n3")
PROFILES = {  # (examples, steps) per profile
    "ci": (6, 25),
    "dev": (2, 10),
    "heavy": (60, 50),
}
KEY = asyncssh.generate_private_key("ssh-ed25519")


def profile() -> settings:
    examples, steps = PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), PROFILES["dev"])
    return settings(settings(), max_examples=examples, stateful_step_count=steps, deadline=None)


class ControllerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="rdscsi-model-"))
        self.pvcs: dict[str, tuple[str | None, bool]] = {}  # pvc -> (volume id, rwx block)
        self.published: dict[str, set[str]] = {}  # volume id -> nodes published, not unpublished
        self.node_state = dict.fromkeys(NODES, "ready")  # ready, not_ready, deleted
        self.tainted: set[str] = set()
        self.appliance_up = True
        self.serial = 0
        self.terms_seen = 0
        self.run(self._setup())

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> None:
        key_file = self.tmp / "id"
        KEY.write_private_key(str(key_file))
        self.clock = ManualClock(wall_start=1_750_000_000.0)
        self.kube = FakeKube(clock=self.clock, authorizer=controller_rbac(), bookmark_interval=60.0)
        await self.kube.start()
        self.kube.grant(TOKEN, User.service_account(NAMESPACE, "rdscsi-controller"))
        self.sim = Simulator(
            SimConfig(data_dir=self.tmp / "sim", authorized_keys=[KEY.export_public_key().decode()])
        )
        await self.sim.start()
        self.world = World(self.kube, self.sim, self.tmp, key_file, self.clock)
        for n in NODES:
            self.world.node(n)
        for pod in PODS:
            await self.world.replica(pod)
        await self.world.elect("ctl-a")
        self.sidecars = Sidecars(self.world, PODS)
        await self.sidecars.start()

    # --- helpers --------------------------------------------------------------------------

    def connect(self, vid: str, node: str) -> None:
        """The node stages the volume: its session appears on the appliance (once)."""
        self.sim.unregister_host_connection(slot=vid, host_nqn=host_nqn(node))
        self.sim.register_host_connection(vid, host_nqn(node))

    def disconnect(self, vid: str, node: str) -> None:
        self.sim.unregister_host_connection(slot=vid, host_nqn=host_nqn(node))

    def fenced(self, node: str) -> bool:
        """Proven gone: deleted, or tainted out-of-service."""
        return self.node_state[node] == "deleted" or node in self.tainted

    def released(self, node: str) -> bool:
        """What the driver lets go of after the grace period: a lost node (NotReady or
        deleted) with evidence (deleted, or the taint). A Ready node keeps its volumes."""
        state = self.node_state[node]
        return state == "deleted" or (state == "not_ready" and node in self.tainted)

    async def _attempt(self, coro):  # type: ignore[no-untyped-def]
        """A sidecar call that may be refused (FAILED_PRECONDITION, NOT_FOUND) or may not get
        through while faults last (the sidecar would go on retrying)."""
        try:
            return True, await coro
        except grpc.aio.AioRpcError as err:
            return False, err.code()
        except AssertionError as err:
            if "never got through" in str(err):
                return False, None
            raise

    # --- rules: volumes -------------------------------------------------------------------

    @precondition(lambda self: self.appliance_up and len(self.pvcs) < 4)
    @rule(rwx=st.booleans())
    def create_pvc(self, rwx: bool) -> None:
        self.serial += 1
        pvc = f"pvc-00000000-0000-4000-8000-{self.serial:012d}"
        ok, vid = self.run(self._attempt(self.sidecars.provision(pvc, rwx_block=rwx)))
        self.pvcs[pvc] = (vid if ok else None, rwx)

    @precondition(lambda self: self.appliance_up and self.pvcs)
    @rule(data=st.data())
    def delete_pvc(self, data: st.DataObject) -> None:
        pvc = data.draw(st.sampled_from(sorted(self.pvcs)))
        vid, _ = self.pvcs[pvc]
        if vid is None or any(
            self.kube.get("storage.k8s.io/v1", "VolumeAttachment", attachment_name(vid, n))
            for n in NODES
        ):
            return  # pv-protection: a PV in use is not deleted
        ok, _ = self.run(self._attempt(self.sidecars.delete(vid, pvc)))
        if ok:
            del self.pvcs[pvc]
            self.published.pop(vid, None)

    @precondition(lambda self: self.appliance_up and any(v for v, _ in self.pvcs.values()))
    @rule(data=st.data(), node=st.sampled_from(NODES), keep_pending=st.booleans())
    def attach(self, data: st.DataObject, node: str, keep_pending: bool) -> None:
        if self.node_state[node] == "deleted":
            return
        pvc = data.draw(st.sampled_from(sorted(p for p, (v, _) in self.pvcs.items() if v)))
        vid, rwx = self.pvcs[pvc]
        assert vid is not None
        ok, _ = self.run(self._attempt(self.sidecars.attach(vid, pvc, node, rwx_block=rwx)))
        if ok:
            others = [n for n in self.published.get(vid, set()) if n != node and not self.fenced(n)]
            limit = 1 if rwx else 0
            assert len(others) <= limit, (
                f"volume {vid} ({'rwx block' if rwx else 'single-node'}) published to {node} "
                f"while on {others}"
            )
            self.published.setdefault(vid, set()).add(node)
            self.connect(vid, node)
        elif not keep_pending:
            # The attach/detach controller gives up on this one (the pod went elsewhere).
            name = attachment_name(vid, node)
            va = self.kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
            if va is not None and not (va.get("status") or {}).get("attached"):
                self.kube.remove("storage.k8s.io/v1", "VolumeAttachment", name)

    @precondition(
        lambda self: (
            self.appliance_up
            and any(v and not rwx for v, rwx in self.pvcs.values())
            and not any(r.stopped for r in self.world.replicas.values())
        )
    )
    @rule(data=st.data(), pair=st.permutations(NODES))
    def race(self, data: st.DataObject, pair: list[str]) -> None:
        """Two attacher instances (a leader hand-over) publish one single-node volume to two
        nodes at the same moment, each through the driver in its own pod."""
        a, b = pair[0], pair[1]
        if self.node_state[a] == "deleted" or self.node_state[b] == "deleted":
            return
        pvc = data.draw(
            st.sampled_from(sorted(p for p, (v, w) in self.pvcs.items() if v and not w))
        )
        vid, _ = self.pvcs[pvc]
        assert vid is not None
        for node in (a, b):
            name = attachment_name(vid, node)
            if self.kube.get("storage.k8s.io/v1", "VolumeAttachment", name) is None:
                self.kube.put(k8s.volume_attachment(name, DRIVER, node, pvc, attached=False))

        async def publish(pod: str, node: str) -> bool:
            request = pb.ControllerPublishVolumeRequest(
                volume_id=vid, node_id=node, volume_capability=mount_cap()
            )
            try:
                await self.world.replicas[pod].controller.ControllerPublishVolume(request)
            except grpc.aio.AioRpcError:
                return False
            return True

        async def both() -> list[bool]:
            return list(await asyncio.gather(publish("ctl-a", a), publish("ctl-b", b)))

        won = [n for n, ok in zip((a, b), self.run(both()), strict=True) if ok]
        for node in won:
            name = attachment_name(vid, node)
            va = self.kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
            assert va is not None
            va["status"] = {"attached": True}
            self.kube.put(va)
        held = {n for n in self.published.get(vid, set()) | set(won) if not self.fenced(n)}
        assert len(held) <= 1, f"single-node volume {vid} published to {sorted(held)}"
        self.published.setdefault(vid, set()).update(won)
        for node in won:
            self.connect(vid, node)
        for node in (a, b):  # the losers' pods went elsewhere
            name = attachment_name(vid, node)
            va = self.kube.get("storage.k8s.io/v1", "VolumeAttachment", name)
            if va is not None and not (va.get("status") or {}).get("attached"):
                self.kube.remove("storage.k8s.io/v1", "VolumeAttachment", name)

    @precondition(lambda self: self.appliance_up and any(v for v, _ in self.pvcs.values()))
    @rule(data=st.data(), node=st.sampled_from(NODES))
    def detach(self, data: st.DataObject, node: str) -> None:
        pvc = data.draw(st.sampled_from(sorted(p for p, (v, _) in self.pvcs.items() if v)))
        vid, _ = self.pvcs[pvc]
        assert vid is not None
        if self.kube.get("storage.k8s.io/v1", "VolumeAttachment", attachment_name(vid, node)):
            ok, _ = self.run(self._attempt(self.sidecars.detach(vid, node)))
            if ok:
                self.published.get(vid, set()).discard(node)
                self.disconnect(vid, node)

    # --- rules: nodes ---------------------------------------------------------------------

    @rule(node=st.sampled_from(NODES), state=st.sampled_from(["ready", "not_ready", "deleted"]))
    def node_changes(self, node: str, state: str) -> None:
        if state == "deleted":
            if self.node_state[node] != "deleted":
                self.world.delete_node(node)
        else:
            taints = (
                [{"key": OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}]
                if node in self.tainted
                else []
            )
            self.world.node(node, ready=state == "ready", taints=taints)
        self.node_state[node] = state

    @rule(node=st.sampled_from(NODES), on=st.booleans())
    def out_of_service(self, node: str, on: bool) -> None:
        if self.node_state[node] == "deleted":
            return
        (self.tainted.add if on else self.tainted.discard)(node)
        taints = [{"key": OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}] if on else []
        self.world.node(node, ready=self.node_state[node] == "ready", taints=taints)

    # --- rules: faults and leadership -----------------------------------------------------

    # Faults and moves are drawn with a "go" die so they stay rarer than the traffic.
    @rule(go=st.integers(0, 3))
    def appliance_toggles(self, go: int) -> None:
        if self.appliance_up and go == 0:
            self.run(self.sim.stop())
            self.appliance_up = False
        elif not self.appliance_up and go < 3:
            self.run(self.sim.start())
            self.appliance_up = True

    @rule(pod=st.sampled_from(PODS), crash=st.booleans(), go=st.integers(0, 2))
    def restart_replica(self, pod: str, crash: bool, go: int) -> None:
        if go:
            return

        async def restart() -> None:
            self.terms_seen += self.world.replicas[pod].app.leadership.terms
            await self.world.replicas[pod].stop(release=not crash)
            await self.world.replica(pod, wait=False)
            await self.world.tick(2.0)

        self.run(restart())

    @rule(pod=st.sampled_from(PODS), go=st.integers(0, 1))
    def move_lease(self, pod: str, go: int) -> None:
        if not go and not self.world.replicas[pod].stopped:
            self.run(self.world.elect(pod))

    @rule(kind=st.sampled_from(KINDS), pod=st.sampled_from(PODS), go=st.integers(0, 1))
    def move_sidecar(self, kind: str, pod: str, go: int) -> None:
        if not go:
            self.run(self.sidecars.move(kind, pod))

    @rule(seconds=st.sampled_from([1.0, 10.0, GRACE + 1.0]))
    def time_passes(self, seconds: float) -> None:
        self.run(self.world.tick(seconds))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def a_single_node_volume_admits_one_host_at_most(self) -> None:
        for vid, rwx in self.pvcs.values():
            disk = self.sim.store.disks.get(vid or "")
            if disk is not None and not rwx:
                hosts = [h for h in disk.nvme_tcp_server_allow_host_name.split(",") if h]
                assert len(hosts) <= 1, f"{vid}: allow-list {hosts}"

    @invariant()
    def one_reconciler_and_one_startup_event_per_term(self) -> None:
        self.world.leader()  # asserts at most one
        for r in self.world.replicas.values():
            assert r.app.leadership.startup_events == r.app.leadership.terms

    # --- once the faults stop ---------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self.run(self._converge())
        finally:
            self.run(self._close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def _converge(self) -> None:
        world = self.world
        if not self.appliance_up:
            await self.sim.start()
            self.appliance_up = True
        for pod in PODS:
            if world.replicas[pod].stopped:
                await world.replica(pod, wait=False)
        for _ in range(120):  # reconnect backoff runs on the world's clock
            if all(r.app.rds.connected and r.binding.synced.is_set() for r in world.live()):
                break
            await world.tick(1.0)
        await world.tick(GRACE + 25.0)  # leases settle, stale attachments clear
        leader = world.leader()
        assert leader is not None, "no reconciler leader once the faults stopped"
        await world.settle()
        # Each replica reports each volume where an attached VolumeAttachment says, except on
        # nodes lost with evidence: those are released after the grace period.
        for pvc, (vid, _) in sorted(self.pvcs.items()):
            if vid is None:
                continue
            expected = set()
            for n in NODES:
                va = self.kube.get("storage.k8s.io/v1", "VolumeAttachment", attachment_name(vid, n))
                if va and (va.get("status") or {}).get("attached") and not self.released(n):
                    expected.add(n)
            for r in world.live():
                got = await r.controller.ControllerGetVolume(
                    pb.ControllerGetVolumeRequest(volume_id=vid)
                )
                assert set(got.status.published_node_ids) == expected, (r.name, pvc, expected)
        # The sidecars clean up: every attachment detached, every PVC deleted (a PVC whose
        # provisioning never got through is retried first, as the provisioner would).
        for pvc, (vid, rwx) in sorted(self.pvcs.items()):
            if vid is None:
                vid = await self.sidecars.provision(pvc, rwx_block=rwx)
            for n in NODES:
                if self.kube.get("storage.k8s.io/v1", "VolumeAttachment", attachment_name(vid, n)):
                    await self.sidecars.detach(vid, n)
            await self.sidecars.delete(vid, pvc)
        assert sorted(self.sim.store.disks) == [], "a disk leaked"
        terms = self.terms_seen + sum(r.app.leadership.terms for r in world.replicas.values())
        startups = sum(
            e.get("series", {}).get("count", 1) for e in world.events("StartupReconciliation")
        )
        assert startups <= terms

    async def _close(self) -> None:
        for r in list(self.world.replicas.values()):
            await r.stop()
        await self.sidecars.stop()
        for e in self.world.electors:
            await e.stop()
        await self.sim.stop()
        await self.kube.stop()


def test_the_whole_controller() -> None:
    run_state_machine_as_test(ControllerModel, settings=profile())
