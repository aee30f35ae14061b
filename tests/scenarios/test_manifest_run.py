"""What ships is what runs: deploy/kubernetes is rendered and the controller and node
containers are started as a kubelet would start them (the image's entrypoint, the
container's exact args and env, `$(VAR)` expanded, fieldRefs filled, the mounted ConfigMap
and Secret as files), pointed at the simulator and the test API server (with the shipped
RBAC). The driver must come up in the mode the manifests intend: cluster mode, informers
watching, the election taken part in, the CSI socket serving, the probes answering as
kubelet expects (an appliance outage makes the pod not ready, never restarts it). The node
container reports its host NQN on its Node with its own service account, and a publish puts
that NQN on the disk's allow-list (the fence)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import grpc
import pytest
import yaml

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.sim import SimConfig, Simulator
from rdscsi.testing.kubeapi import Authorizer, FakeKube, User
from rdscsi.testing.kubeapi import objects as k8s
from tests.deploy.test_manifests import BASE, ROOT, container, pod_spec, render
from tests.observability.test_endpoint import CONTRACT

from .conftest import until

Obj = dict[str, Any]
NAMESPACE = "rdscsi-system"
DRIVER = "rds.csi.mikrotik.com"
TOKEN = "sa-token"
NODE_TOKEN = "node-sa-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT, as the installed console script runs it (behind the image's
    init, tini, which only reaps and forwards signals)."""
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    argv = yaml.safe_load(match.group(1))
    assert argv[-1] == "rdscsi" and argv[:-1] in ([], ["/usr/bin/tini", "--"]), argv
    return [sys.executable, "-m", "rdscsi.cli"]


@dataclass
class Container:
    """One container of a rendered pod, started on this machine."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # container port name -> port on this machine
    spec: Obj
    root: Path  # where the pod's mounts live here
    proc: asyncio.subprocess.Process | None = None
    output: bytearray | None = None

    def path(self, pod_path: str) -> Path:
        return self.root / pod_path.lstrip("/")

    async def start(self) -> None:
        self.output = bytearray()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self.output is not None
        while line := await self.proc.stdout.readline():
            self.output += line

    @property
    def log(self) -> str:
        return (self.output or b"").decode(errors="replace")

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return int(self.proc.returncode or 0)

    async def probe(self, kind: str) -> tuple[int, str]:
        """GET the container's `kind` probe (livenessProbe, readinessProbe) as kubelet does."""
        get = self.spec[kind]["httpGet"]
        port = self.ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}{get['path']}") as reply,
        ):
            return reply.status, await reply.text()


def _field(ref: str, pod: dict[str, str]) -> str:
    return {
        "metadata.name": pod["name"],
        "metadata.namespace": NAMESPACE,
        "metadata.uid": pod["uid"],
        "spec.nodeName": pod["node"],
        "status.podIP": "127.0.0.1",  # (the host's, for a hostNetwork pod)
    }[ref]


def _expand(arg: str, env: dict[str, str]) -> str:
    # kubelet expands $(VAR) from the container's env; $$ escapes
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def materialize(
    objects: list[Obj],
    kind: str,
    name: str,
    pod: dict[str, str],
    root: Path,
    appliance: tuple[Simulator, asyncssh.SSHKey],
    kubeconfig: Path,
) -> Container:
    """The `rdscsi` container of a rendered workload, as kubelet would run it here."""
    spec = pod_spec(objects, kind, name)
    c = container(spec, "rdscsi")
    volumes = {v["name"]: v for v in spec["volumes"]}
    sim, key = appliance
    mounts = sorted(c["volumeMounts"], key=lambda m: len(m["mountPath"]), reverse=True)

    def here(value: str) -> str:
        """A path inside the pod -> where that mount lives on this machine."""
        for m in mounts:
            mp = m["mountPath"]
            if value == mp or value.startswith(mp.rstrip("/") + "/"):
                return str(root / value.lstrip("/"))
        return value

    for m in mounts:
        target = root / m["mountPath"].lstrip("/")
        source = volumes[m["name"]]
        if "configMap" in source:
            data = next(
                o["data"]
                for o in objects
                if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source["configMap"]["name"]
            )
            # a whole ConfigMap is a directory of its keys; a subPath mount one of them
            files = (
                {target: data[m["subPath"]]}
                if "subPath" in m
                else {target / k: v for k, v in data.items()}
            )
            for path, text in files.items():
                if path.suffix == ".yaml":
                    config = yaml.safe_load(text)
                    # The operator's part: the appliance's address. Paths stay as shipped,
                    # resolved through the pod's mounts.
                    config["rds"]["address"], config["rds"]["port"] = sim.host, sim.port
                    for section in (config, config["rds"]):
                        for k, v in section.items():
                            if isinstance(v, str) and v.startswith("/"):
                                section[k] = here(v)
                    text = yaml.safe_dump(config)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        elif "secret" in source:
            target.mkdir(parents=True, exist_ok=True)
            key.write_private_key(str(target / "id_ed25519"))
            (target / "host_key.pub").write_text(sim.known_hosts_line() + "\n")
        else:
            target.mkdir(parents=True, exist_ok=True)
    ports = {p["name"]: free_port() for p in c.get("ports", [])}
    by_number = {p["containerPort"]: ports[p["name"]] for p in c.get("ports", [])}
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "KUBECONFIG": str(kubeconfig)}
    for e in c.get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = _field(e["valueFrom"]["fieldRef"]["fieldPath"], pod)
        else:
            env[e["name"]] = _expand(e["value"], env)
    args = []
    for arg in c["args"]:
        arg = _expand(arg, env)
        if arg.startswith("unix://"):
            arg = "unix://" + here(arg.removeprefix("unix://"))
        elif re.fullmatch(r"[\d.]*:\d+", arg) and int(arg.rsplit(":", 1)[1]) in by_number:
            # a listening address: the container port, reached here on its mapped port
            arg = f"127.0.0.1:{by_number[int(arg.rsplit(':', 1)[1])]}"
        else:
            arg = here(arg)
        args.append(arg)
    return Container(c["name"], [*entrypoint(), *args], env, ports, c, root)


@pytest.fixture
async def cluster(
    tmp_path: Path, client_key: asyncssh.SSHKey
) -> AsyncIterator[tuple[FakeKube, Simulator, list[Obj]]]:
    objects = render(BASE)
    async with FakeKube(authorizer=Authorizer(objects)) as kube:
        kube.grant(TOKEN, User.service_account(NAMESPACE, "rdscsi-controller"))
        kube.grant(NODE_TOKEN, User.service_account(NAMESPACE, "rdscsi-node"))
        sim = Simulator(
            SimConfig(
                data_dir=tmp_path / "sim", authorized_keys=[client_key.export_public_key().decode()]
            )
        )
        await sim.start()
        try:
            yield kube, sim, objects
        finally:
            await sim.stop()
        assert kube.denied == [], kube.denied


@contextlib.contextmanager
def failing_with(c: Container) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        raise AssertionError(f"{exc}\n--- {c.name} output ---\n{c.log[-6000:]}") from exc


async def test_the_shipped_controller_and_node_containers_run_as_intended(
    cluster: tuple[FakeKube, Simulator, list[Obj]], tmp_path: Path, client_key: asyncssh.SSHKey
) -> None:
    kube, sim, objects = cluster
    kube.put(k8s.node("n1"))
    kubeconfig = kube.kubeconfig(tmp_path, token=TOKEN)
    pod = {"name": "rdscsi-controller-5d8f7-x2x9q", "uid": str(uuid.uuid4()), "node": "n1"}
    ctl = materialize(
        objects,
        "Deployment",
        "rdscsi-controller",
        pod,
        tmp_path / "ctl",
        (sim, client_key),
        kubeconfig,
    )
    assert ctl.argv[3:6] == ["serve", "--controller", "--kubernetes"]
    nodes_started: list[Container] = []
    await ctl.start()
    try:
        with failing_with(ctl):
            socket_path = ctl.path("/csi/csi.sock")
            await until(socket_path.exists, "the controller's CSI socket", 60)
            # Cluster mode: the three informers watch, the election is taken part in.
            for resource in ("/api/v1/nodes", "volumeattachments", "/api/v1/persistentvolumes"):
                await kube.wait_watchers(1, resource, timeout=30)
            lease_name = f"{DRIVER}-controller"

            def holder() -> str:
                lease = kube.get("coordination.k8s.io/v1", "Lease", lease_name, NAMESPACE)
                return str((lease or {}).get("spec", {}).get("holderIdentity") or "")

            await until(lambda: holder() == pod["name"], "the Lease held by the pod", 30)
            await until(
                lambda: any(
                    e.get("reason") == "StartupReconciliation"
                    and e["regarding"]
                    == {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod["name"],
                        "namespace": NAMESPACE,
                        "uid": pod["uid"],
                    }
                    for e in kube.list("events.k8s.io/v1", "Event")
                ),
                "StartupReconciliation on the pod",
                30,
            )
            metrics = await _scrape(ctl)
            assert "rds_csi_leader 1.0" in metrics
            for resource in ("nodes", "volumeattachments", "persistentvolumes"):
                assert f'rds_csi_kube_informer_synced{{resource="{resource}"}} 1.0' in metrics
            for name in CONTRACT:  # the leadership, events and cluster-view series
                assert re.search(rf"^{name}[{{ ]", metrics, re.M), name
            # the leader exports the per-node and per-volume gauges
            assert re.search(r'^rds_csi_node_state\{state="ready"\} 1.0', metrics, re.M)
            assert await ctl.probe("livenessProbe") == (200, "ok\n")
            await until_probe(ctl, "readinessProbe", 200)

            # The node plugin of n1, with its own service account: node-init made its host
            # NQN, it reports it on its Node (what the controller fences with).
            node_kubeconfig = kube.kubeconfig(tmp_path / "node-kubeconfig", token=NODE_TOKEN)
            node = materialize(
                objects,
                "DaemonSet",
                "rdscsi-node",
                pod,
                tmp_path / "node",
                (sim, client_key),
                node_kubeconfig,
            )
            assert node.argv[3:8] == ["serve", "--node", "--kubernetes", "--node-id", "n1"]
            nqn = "nqn.2014-08.org.nvmexpress:uuid:6f1e2d3c-0000-4000-8000-0000000000a1"
            node.path("/etc/nvme/hostnqn").write_text(nqn + "\n")
            await node.start()
            nodes_started.append(node)

            def reported() -> str | None:
                annotations = (kube.get("v1", "Node", "n1") or {})["metadata"].get("annotations")
                return (annotations or {}).get(f"{DRIVER}/host-nqn")

            with failing_with(node):
                await until(lambda: reported() == nqn, "n1's host NQN on its Node", 60)

            # CSI through the shipped socket: a publish derived from the objects.
            async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
                identity = csi_pb2_grpc.IdentityStub(channel)
                controller = csi_pb2_grpc.ControllerStub(channel)
                assert (await identity.Probe(pb.ProbeRequest())).ready.value
                cap = pb.VolumeCapability(
                    mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
                    access_mode=pb.VolumeCapability.AccessMode(
                        mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                    ),
                )
                pvc = "pvc-00000000-0000-4000-8000-000000000001"
                vol = (
                    await controller.CreateVolume(
                        pb.CreateVolumeRequest(name=pvc, volume_capabilities=[cap])
                    )
                ).volume
                kube.put(k8s.pv(pvc, DRIVER, vol.volume_id, ("apps", "data")))
                kube.put(k8s.volume_attachment("csi-1", DRIVER, "n1", pvc, attached=False))
                await controller.ControllerPublishVolume(
                    pb.ControllerPublishVolumeRequest(
                        volume_id=vol.volume_id, node_id="n1", volume_capability=cap
                    )
                )
                listed = await controller.ListVolumes(pb.ListVolumesRequest())
                assert [list(e.status.published_node_ids) for e in listed.entries] == [["n1"]]
                # fenced: only n1's host may connect to the export
                allowed = sim.store.disks[vol.volume_id].nvme_tcp_server_allow_host_name
                assert allowed == nqn
                # the attacher records the outcome
                kube.put(k8s.volume_attachment("csi-1", DRIVER, "n1", pvc, attached=True))

            # The second replica of the Deployment: it follows, and serves all the same.
            second = {
                "name": "rdscsi-controller-5d8f7-k7v4p",
                "uid": str(uuid.uuid4()),
                "node": "n1",
            }
            ctl2 = materialize(
                objects,
                "Deployment",
                "rdscsi-controller",
                second,
                tmp_path / "ctl2",
                (sim, client_key),
                kubeconfig,
            )
            await ctl2.start()
            try:
                with failing_with(ctl2):
                    await until(ctl2.path("/csi/csi.sock").exists, "the second socket", 60)
                    await until_probe(ctl2, "readinessProbe", 200)
                    follower = await _scrape(ctl2)
                    assert "rds_csi_leader 0.0" in follower
                    # per-volume and per-node gauges: the leader's alone
                    assert not re.search(r"^rds_csi_(attachment|node)_state\{", follower, re.M)
                    async with grpc.aio.insecure_channel(
                        f"unix://{ctl2.path('/csi/csi.sock')}"
                    ) as channel2:
                        listed = await csi_pb2_grpc.ControllerStub(channel2).ListVolumes(
                            pb.ListVolumesRequest()
                        )
                        assert [list(e.status.published_node_ids) for e in listed.entries] == [
                            ["n1"]
                        ]
            finally:
                assert await ctl2.stop() == 0, ctl2.log
            assert holder() == pod["name"]  # the follower never took the Lease

            async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
                identity = csi_pb2_grpc.IdentityStub(channel)

                # The appliance goes away: not ready, still alive (no restart), Probe false.
                await sim.stop()
                await until_probe(ctl, "readinessProbe", 503)
                assert await ctl.probe("livenessProbe") == (200, "ok\n")
                assert not (await identity.Probe(pb.ProbeRequest())).ready.value
                await sim.start()
                await until_probe(ctl, "readinessProbe", 200)

            try:
                with failing_with(node):
                    node_socket = node.path("/csi/csi.sock")
                    await until(node_socket.exists, "the node's CSI socket", 60)
                    async with grpc.aio.insecure_channel(f"unix://{node_socket}") as channel:
                        info = await csi_pb2_grpc.NodeStub(channel).NodeGetInfo(
                            pb.NodeGetInfoRequest()
                        )
                        assert info.node_id == "n1"
                        probe = await csi_pb2_grpc.IdentityStub(channel).Probe(pb.ProbeRequest())
                        assert probe.ready.value
            finally:
                assert await node.stop() == 0, node.log
    finally:
        for started in nodes_started:
            await started.stop()
        code = await ctl.stop()
    assert code == 0, ctl.log
    lease = kube.get("coordination.k8s.io/v1", "Lease", f"{DRIVER}-controller", NAMESPACE)
    assert lease is not None and not lease["spec"].get("holderIdentity")  # released on SIGTERM


async def _scrape(c: Container) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{c.ports['metrics']}/metrics") as reply,
    ):
        assert reply.status == 200
        return await reply.text()


async def until_probe(c: Container, kind: str, status: int, limit: float = 30.0) -> None:
    try:
        async with asyncio.timeout(limit):
            while (await c.probe(kind))[0] != status:
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{kind} never answered {status}: {await c.probe(kind)}") from None
