"""Every node RPC with hostile ids and paths: nothing outside a volume's own paths is ever
created, removed or unmounted, and each call answers with the spec's code.

Hypothesis generates the requests: ids (empty, traversal, control characters, 100 kB, ids
the driver never issued, and the ids of two live volumes) crossed with paths (relative,
``..``, outside the kubelet directory, symlinks out of it and into a foreign mount,
existing files and directories, foreign mounts, and the other volume's own paths). Around
every call the test snapshots the mounts, the directory trees (kubelet, an outside
directory, the node's records) with file contents, the loop devices and their read-only
flags: any difference fails. The property runs in a thread with a blocking gRPC client while
the node serves on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.io.host import fs
from rdscsi.io.host.mounts import read_mounts

from .calls import provision, publish, stage
from .conftest import Node, block_cap, loops_for, mount_cap

Mode = pb.VolumeCapability.AccessMode
MIB = 1 << 20
C = "pvc-00000000-0000-4000-8000-0000000000cc"  # an id the driver could issue, never made
NEVER = {  # the codes a validated node never answers a bad request with
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNIMPLEMENTED,
}


def _tree(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file() and st.st_size < MIB:
                out[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = f"other:{st.st_mode:o}:{st.st_size}"
    return out


class World:
    """What the node may not change, read afresh."""

    def __init__(self, tmp: Path, files_root: Path) -> None:
        self.tmp = Path(os.path.realpath(tmp))
        self.files_root = files_root

    def snapshot(self) -> dict[str, Any]:
        mounts = sorted(
            (str(m.mount_point), m.major_minor, m.root, ",".join(m.options))
            for m in read_mounts()
            if m.mount_point == self.tmp or self.tmp in m.mount_point.parents
        )
        loops = sorted(loops_for(self.files_root))
        return {
            "mounts": mounts,
            "loops": loops,
            "read_only": [fs.is_read_only(dev) for dev in loops],
            "kubelet": _tree(self.tmp / "kubelet"),
            "outside": _tree(self.tmp / "outside"),
            "records": _tree(self.tmp / "node-state"),
            "root_mounted": any(str(m.mount_point) == "/" for m in read_mounts()),
        }


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    (path / "sentinel").write_text("not the driver's")


async def test_hostile_requests_change_nothing_and_get_the_spec_codes(node: Node) -> None:
    kubelet, outside = node.tmp / "kubelet", node.tmp / "outside"
    a_cap, b_cap = mount_cap("ext4"), block_cap(Mode.SINGLE_NODE_WRITER)
    a = await provision(node, a_cap, size=16 * MIB, name="hostile-a")
    b = await provision(node, b_cap, size=16 * MIB, name="hostile-b")
    for vol, cap in ((a, a_cap), (b, b_cap)):
        await stage(node, vol, cap)
        await publish(node, vol, cap)
    _mount_tmpfs(kubelet / "pods" / "foreign")
    _mount_tmpfs(outside / "tmpfs")
    (outside / "victim.json").write_text('{"keep": true}')
    (kubelet / "file.txt").write_text("kubelet's own")
    (kubelet / "empty-dir").mkdir()
    os.symlink(outside, kubelet / "link-out")
    os.symlink(kubelet / "pods" / "foreign", kubelet / "link-in")
    c_ctx = {
        k: v.replace(a.volume_id, C) if k in ("nqn", "filePath") else v
        for k, v in a.volume_context.items()
    }

    own = {
        a.volume_id: [node.staging(a.volume_id), node.target(a.volume_id)],
        b.volume_id: [node.staging(b.volume_id), node.target(b.volume_id)],
    }
    bad_paths = [
        "",
        "relative/path",
        "some/path",
        str(kubelet / ".." / "outside" / "victim"),
        str(kubelet) + "/pods/../../outside/x",
        str(outside / "victim"),
        str(outside / "tmpfs"),
        "/",
        "/etc",
        "/tmp",
        str(kubelet),
        str(kubelet / "line\nbreak"),
        str(kubelet / "link-out" / "victim"),
        str(kubelet / "link-out"),
        str(kubelet / ("a" * 5000)),  # longer than PATH_MAX
        str(kubelet / "pods" / ("b" * 300)),  # a name longer than NAME_MAX
        str(node.tmp / "node-state" / f"{a.volume_id}.json"),
    ]
    inside = [
        str(kubelet / "file.txt"),
        str(kubelet / "empty-dir"),
        str(kubelet / "pods" / "foreign"),
        str(kubelet / "link-in"),
        str(kubelet / "pods" / "foreign" / "sentinel"),
    ]
    fresh = [str(kubelet / "pods" / "fresh" / "mount"), str(kubelet / "staging" / "fresh")]
    hostile_ids = st.one_of(
        st.sampled_from(
            [
                "",
                "../../../tmp/victim",
                "../" + a.volume_id,
                a.volume_id + "/..",
                "pvc-x\nforged log line",
                "x" * 100_000,
                a.volume_id.upper(),
                "vol-" + "0" * 31,
            ]
        ),
        st.text(max_size=40),
    )
    live = st.sampled_from([a.volume_id, b.volume_id, C])
    ids = st.one_of(hostile_ids, live, live)  # mostly ids that get past the first check
    own_ctx = {a.volume_id: dict(a.volume_context), b.volume_id: dict(b.volume_context), C: c_ctx}
    own_cap = {a.volume_id: a_cap, b.volume_id: b_cap, C: a_cap}
    bad_contexts = st.sampled_from(
        [
            dict(b.volume_context),  # another volume's export for this id
            {},
            {**a.volume_context, "filePath": "/storage-pool/k8s/vol/../../../etc/passwd"},
            {**a.volume_context, "nqn": "nqn.2000-02.com.mikrotik:pvc-other"},
            {**a.volume_context, "transport": "carrier-pigeon"},
            {**c_ctx, "accessType": "block"},
        ]
    )
    other_caps = st.sampled_from(
        [
            a_cap,
            b_cap,
            mount_cap("xfs"),
            block_cap(Mode.MULTI_NODE_MULTI_WRITER),
            pb.VolumeCapability(
                mount=pb.VolumeCapability.MountVolume(),
                access_mode=pb.VolumeCapability.AccessMode(mode=99),
            ),
        ]
    )
    rpcs = st.sampled_from(["stage", "unstage", "publish", "unpublish", "stats", "expand"])

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str, str, str, Any, dict[str, str], bool]:
        vid = draw(ids)
        rpc = draw(rpcs)
        # What a request may name besides hopeless paths: things inside the kubelet
        # directory that are not this volume's (weighted up: they pass the first checks).
        near = list(inside)
        if vid in own:
            other = next(v for v in own if v != vid)
            near += [str(p) for p in own[other]]
            if rpc == "publish":  # an empty directory is a legitimate new target
                near.remove(str(kubelet / "empty-dir"))
        else:
            near += fresh + [str(p) for paths in own.values() for p in paths]
        path = draw(
            st.one_of(st.sampled_from(bad_paths), st.sampled_from(near), st.sampled_from(near))
        )
        staging = draw(st.sampled_from([*near, *([str(own[vid][0])] * 3 if vid in own else [])]))
        usual = own_ctx.get(vid, dict(a.volume_context))
        ctx = draw(st.one_of(st.just(usual), st.just(usual), st.just(usual), bad_contexts))
        cap = draw(st.one_of(st.just(own_cap.get(vid, a_cap)), st.just(b_cap), other_caps))
        return rpc, vid, path, staging, cap, ctx, draw(st.booleans())

    world = World(node.tmp, node.sim.store.files_root)
    endpoint = node.app.config.endpoint
    seen: list[tuple[str, grpc.StatusCode]] = []

    def call(stub: csi_pb2_grpc.NodeStub, request: tuple[Any, ...]) -> tuple[grpc.StatusCode, str]:
        rpc, vid, path, staging, cap, ctx, flag = request
        invoke: dict[str, Callable[[], object]] = {
            "stage": lambda: stub.NodeStageVolume(
                pb.NodeStageVolumeRequest(
                    volume_id=vid,
                    staging_target_path=path,
                    volume_capability=cap,
                    volume_context=ctx,
                    publish_context={"readonly": "true" if flag else "false"},
                )
            ),
            "unstage": lambda: stub.NodeUnstageVolume(
                pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=path)
            ),
            "publish": lambda: stub.NodePublishVolume(
                pb.NodePublishVolumeRequest(
                    volume_id=vid,
                    target_path=path,
                    staging_target_path=staging,
                    volume_capability=cap,
                    volume_context=ctx,
                    readonly=flag,
                )
            ),
            "unpublish": lambda: stub.NodeUnpublishVolume(
                pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=path)
            ),
            "stats": lambda: stub.NodeGetVolumeStats(
                pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=path)
            ),
            "expand": lambda: stub.NodeExpandVolume(
                pb.NodeExpandVolumeRequest(
                    volume_id=vid, volume_path=path, staging_target_path=staging if flag else ""
                )
            ),
        }
        try:
            invoke[rpc]()
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    def expected(request: tuple[Any, ...], code: grpc.StatusCode, message: str) -> None:
        rpc, vid, path, _staging, cap, _ctx, _flag = request
        assert code not in NEVER, (request[:4], code, message)
        assert len(message) <= 2048 and "\n" not in message, message
        if vid == "":
            assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        elif vid not in own and vid != C:
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
            if path and (rpc not in ("stage", "publish") or cap.access_mode.mode != 99):
                assert code == grpc.StatusCode.NOT_FOUND, (request[:3], message)
        undecodable = rpc in ("stage", "publish") and cap.access_mode.mode == 99
        if path in bad_paths and path and vid in own and rpc != "stats" and not undecodable:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (request[:3], message)
        if rpc == "stats" and vid and path:  # "not at that path", whatever the path
            assert code == grpc.StatusCode.NOT_FOUND, (request[:3], message)
        if not path:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (request[:3], message)

    def run() -> None:
        with grpc.insecure_channel(endpoint) as channel:
            stub = csi_pb2_grpc.NodeStub(channel)

            @settings(
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(requests())
            def prop(request: tuple[Any, ...]) -> None:
                before = world.snapshot()
                code, message = call(stub, request)
                after = world.snapshot()
                assert after == before, (request[:4], code, message)
                expected(request, code, message)
                seen.append((request[0], code))

            prop()

    await asyncio.to_thread(run)
    rpcs_seen = {rpc for rpc, _ in seen}
    assert rpcs_seen == {"stage", "unstage", "publish", "unpublish", "stats", "expand"}
    codes = {code for _, code in seen}
    assert {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} <= codes
    assert grpc.StatusCode.FAILED_PRECONDITION in codes


async def test_request_text_never_forges_a_log_line_nor_overflows_a_status(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    forged = "pvc-x\n2026-01-01 00:00:00 WARNING rdscsi.node: forged"
    await node.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=forged,
            volume_capabilities=[block_cap(Mode.SINGLE_NODE_WRITER)],
            capacity_range=pb.CapacityRange(required_bytes=MIB),
        )
    )
    created = [r.getMessage() for r in caplog.records if "created volume" in r.getMessage()]
    assert created and all("\n" not in line and "\\n" in line for line in created)
    huge = "pvc-" + "x" * 100_000
    for call in (
        lambda: node.node.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=huge,
                staging_target_path=str(node.tmp / "kubelet" / "s"),
                volume_capability=mount_cap("ext4"),
            )
        ),
        lambda: node.controller.ControllerPublishVolume(
            pb.ControllerPublishVolumeRequest(
                volume_id=huge, node_id="node-a", volume_capability=mount_cap("ext4")
            )
        ),
        lambda: node.controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=huge)),
    ):
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
            assert len(err.details() or "") < 400
        # DeleteSnapshot of an id never issued: already gone, OK


async def test_wrong_codes_of_the_first_wave(node: Node) -> None:
    odd = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(), access_mode=pb.VolumeCapability.AccessMode(mode=99)
    )
    try:
        await node.controller.CreateVolume(
            pb.CreateVolumeRequest(name="mode-99", volume_capabilities=[odd])
        )
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "99" in (err.details() or "")
    else:
        raise AssertionError("access mode 99 was accepted")
    vol = await provision(node, mount_cap("ext4"), size=16 * MIB)
    escaped = {
        **vol.volume_context,
        "filePath": "/storage-pool/k8s/vol/../../x/" + vol.volume_id + ".img",
    }
    try:
        await node.node.NodeStageVolume(
            pb.NodeStageVolumeRequest(
                volume_id=vol.volume_id,
                staging_target_path=str(node.staging(vol.volume_id)),
                volume_capability=mount_cap("ext4"),
                volume_context=escaped,
            )
        )
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'..'" in (err.details() or "")
    else:
        raise AssertionError("a '..' in filePath was accepted")
    listed = await node.controller.ListSnapshots(
        pb.ListSnapshotsRequest(source_volume_id="never-issued-by-this-driver")
    )
    assert list(listed.entries) == []
