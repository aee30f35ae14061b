"""`rdscsi explain` against the controller container as the manifests run it (`serve
--controller --kubernetes` on FakeKube with the shipped RBAC, the simulator over SSH), the
command run as a user runs it: a subprocess pointed at the pod's metrics port (as
`kubectl port-forward` would reach it). A node goes NotReady: the answer names the guard
that holds its volume and the evidence it waits for, from the informers' caches alone."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import grpc

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.io.kube.nodes import host_nqn_annotation
from rdscsi.sim import Simulator
from rdscsi.testing.kubeapi import FakeKube
from rdscsi.testing.kubeapi import objects as k8s

from .conftest import until
from .test_manifest_run import (  # noqa: F401 - `cluster` is the fixture
    DRIVER,
    TOKEN,
    Obj,
    cluster,
    failing_with,
    materialize,
    until_probe,
)

PVC = "pvc-00000000-0000-4000-8000-0000000000c1"
HOST = "nqn.2014-08.org.example:host-n1"


async def rdscsi_explain(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rdscsi",
        "explain",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def current(url: str) -> str | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/debug/explain", params={"kind": "volume", "name": PVC}) as reply,
    ):
        body: dict[str, Any] = json.loads(await reply.text())
        return body.get("machine", {}).get("current")


async def test_explain_a_stale_volume_of_the_shipped_controller(
    cluster: tuple[FakeKube, Simulator, list[Obj]],  # noqa: F811
    tmp_path: Path,
    client_key: asyncssh.SSHKey,
) -> None:
    kube, sim, objects = cluster
    # the host NQN n1's node plugin reported (the controller fences with it)
    noted = {host_nqn_annotation(DRIVER): HOST}
    kube.put(k8s.node("n1", annotations=noted))
    pod = {"name": "rdscsi-controller-5d8f7-e9x2q", "uid": str(uuid.uuid4()), "node": "n1"}
    ctl = materialize(
        objects,
        "Deployment",
        "rdscsi-controller",
        pod,
        tmp_path / "ctl",
        (sim, client_key),
        kube.kubeconfig(tmp_path, token=TOKEN),
    )
    await ctl.start()
    try:
        with failing_with(ctl):
            socket_path = ctl.path("/csi/csi.sock")
            await until(socket_path.exists, "the controller's CSI socket", 60)
            await until_probe(ctl, "readinessProbe", 200)
            async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
                controller = csi_pb2_grpc.ControllerStub(channel)
                cap = pb.VolumeCapability(
                    mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
                    access_mode=pb.VolumeCapability.AccessMode(
                        mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                    ),
                )
                vol = (
                    await controller.CreateVolume(
                        pb.CreateVolumeRequest(name=PVC, volume_capabilities=[cap])
                    )
                ).volume
                kube.put(k8s.pv(PVC, DRIVER, vol.volume_id, ("apps", "data")))
                kube.put(k8s.volume_attachment("csi-c1", DRIVER, "n1", PVC, attached=False))
                await controller.ControllerPublishVolume(
                    pb.ControllerPublishVolumeRequest(
                        volume_id=vol.volume_id, node_id="n1", volume_capability=cap
                    )
                )
                kube.put(k8s.volume_attachment("csi-c1", DRIVER, "n1", PVC, attached=True))
            # n1 still holds its session: the appliance gives no evidence either
            sim.register_host_connection(vol.volume_id, HOST)
            kube.put(k8s.node("n1", ready=False, annotations=noted))
            url = f"http://127.0.0.1:{ctl.ports['metrics']}"
            for _ in range(200):
                if await current(url) == "stale":
                    break
                await asyncio.sleep(0.05)

            code, out, err = await rdscsi_explain(
                "pvc", "data", "-n", "apps", "--url", url, "--json"
            )
            assert (code, err) == (0, ""), err
            body = json.loads(out)
            assert body["asked"] == {
                "kind": "pvc",
                "name": "apps/data",
                "pv": PVC,
                "pvc": "apps/data",
            }
            assert body["replica"]["identity"] == pod["name"]
            assert body["replica"]["mode"] == "cluster"
            assert body["replica"]["leader"] is True
            assert body["replica"]["lease_holder"] == pod["name"]
            assert body["machine"]["current"] == "stale"
            nxt = body["next"]
            assert nxt["transition"]["text"] == "stale --reconcile [clearable]--> detached"
            [clearable] = nxt["blocked_by"]
            assert (clearable["guard"], clearable["refuses"]) == ("clearable", True)
            evidence, grace = clearable["waiting_for"]
            assert (evidence["kind"], evidence["met"]) == ("evidence", False)
            assert grace["kind"] == "after" and grace["text"].startswith("the grace period (30 s")
            assert 0 < grace["in_s"] <= 30.0  # the real clock runs
            [n1] = body["cluster"]["nodes"]
            assert (n1["name"], n1["ready"], n1["source"]) == ("n1", False, "informer")
            assert n1["conditions"] == [
                {"type": "Ready", "status": "False", "reason": "KubeletNotReady"}
            ]
            assert n1["taints"] == []
            [va] = body["cluster"]["volume_attachments"]
            assert (va["name"], va["attached"], va["holds"]) == ("csi-c1", True, True)
            history = [h["transition"] for h in body["history"]]
            assert "attached --node_lost [on_node]--> stale" in history
            assert body["appliance"]["read"] is True
            assert body["appliance"]["disk"]["slot"] == vol.volume_id

            code, text, err = await rdscsi_explain("pvc/apps/data", "--url", url)
            assert code == 0, err
            assert (
                "next: stale on node n1; stale --reconcile [clearable]--> detached blocked "
                "by clearable: waiting for evidence that node n1 is gone" in text
            )
            assert "✗ guard clearable (attachment)" in text
            assert "condition Ready=False (KubeletNotReady)" in text
            for answer in (out, text):
                assert TOKEN not in answer and "PRIVATE KEY" not in answer
    finally:
        code = await ctl.stop()
    assert code == 0, ctl.log
