"""The per-RPC interceptor and the HTTP endpoint, in process."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi import csi_pb2_grpc
from rdscsi.csi.identity import IdentityService
from rdscsi.csi.rpc import rpc
from rdscsi.csi.server import CSIServer
from rdscsi.csi.status import not_found
from rdscsi.observe import GrpcMetrics, MetricsServer

# No proxy for loopback, whatever the environment says.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Identity(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    """GetPluginInfo answers; Probe aborts through the services' own `rpc` decorator;
    GetPluginCapabilities aborts directly."""

    async def GetPluginInfo(self, req: Any, ctx: Any) -> pb.GetPluginInfoResponse:
        return pb.GetPluginInfoResponse(name="test", vendor_version="1")

    @rpc
    async def Probe(self, req: Any, ctx: Any) -> pb.ProbeResponse:
        raise not_found("nothing here")

    async def GetPluginCapabilities(self, req: Any, ctx: Any) -> Any:
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


async def test_interceptor_counts_ok_and_aborted_codes(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    sock = tmp_path / "t.sock"
    server = grpc.aio.server(interceptors=[GrpcMetrics(registry)])
    csi_pb2_grpc.add_IdentityServicer_to_server(Identity(), server)
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            stub = csi_pb2_grpc.IdentityStub(channel)
            for _ in range(3):
                await stub.GetPluginInfo(pb.GetPluginInfoRequest())
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Probe(pb.ProbeRequest())
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest())
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await server.stop(None)
    total = "rds_csi_grpc_requests_total"
    assert _value(registry, total, method="GetPluginInfo", code="OK") == 3
    assert _value(registry, total, method="Probe", code="NOT_FOUND") == 2
    assert _value(registry, total, method="Probe", code="OK") == 0
    assert _value(registry, total, method="Probe", code="UNKNOWN") == 0
    assert _value(registry, total, method="GetPluginCapabilities", code="FAILED_PRECONDITION") == 1
    duration = "rds_csi_grpc_request_duration_seconds_count"
    assert _value(registry, duration, method="GetPluginInfo") == 3
    assert _value(registry, duration, method="Probe") == 2


async def test_csi_server_records_with_a_registry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    identity = IdentityService("rds.csi.test", False, lambda: True)
    server = CSIServer(tmp_path / "csi.sock", identity, registry=registry)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            await csi_pb2_grpc.IdentityStub(channel).Probe(pb.ProbeRequest())
    finally:
        await server.stop()
    assert _value(registry, "rds_csi_grpc_requests_total", method="Probe", code="OK") == 1
    # Without a registry nothing is registered (no duplicate series across test servers).
    assert CSIServer(tmp_path / "x.sock", identity).metrics is None


def _get(url: str) -> tuple[int, str, str]:
    try:
        with OPENER.open(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


async def test_metrics_server_serves_metrics_and_health() -> None:
    import asyncio

    registry = CollectorRegistry()
    GrpcMetrics(registry).requests.labels("Probe", "OK").inc()
    state = {"ok": True}
    server = MetricsServer(
        "127.0.0.1:0", registry, lambda: (state["ok"], "appliance connection x: backoff")
    )
    await server.start()
    try:
        assert server.port != 0
        loop = asyncio.get_running_loop()
        status, ctype, body = await loop.run_in_executor(None, _get, f"{server.url}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'rds_csi_grpc_requests_total{code="OK",method="Probe"} 1.0' in body
        status, _, body = await loop.run_in_executor(None, _get, f"{server.url}/healthz")
        assert (status, body.strip()) == (200, "ok")
        state["ok"] = False
        status, _, body = await loop.run_in_executor(None, _get, f"{server.url}/healthz")
        assert status == 503 and "backoff" in body
    finally:
        await server.stop()
    await server.stop()  # idempotent


async def test_liveness_readiness_and_leader_scoped_series() -> None:
    import asyncio

    from prometheus_client import Gauge

    registry = CollectorRegistry()
    per_volume = Gauge("rds_csi_attachment_state", "x", ["state"], registry=registry)
    per_volume.labels("attached").set(3)
    Gauge("rds_csi_leader", "x", registry=registry).set(1)
    state = {"ready": True, "alive": True, "leader": True}
    server = MetricsServer(
        "127.0.0.1:0",
        registry,
        lambda: (state["ready"], "appliance connection x: backoff"),
        lambda: (state["alive"], "reconciler crashed"),
        (frozenset({"rds_csi_attachment_state"}), lambda: state["leader"]),
    )
    await server.start()
    loop = asyncio.get_running_loop()

    async def get(path: str) -> tuple[int, str]:
        status, _, body = await loop.run_in_executor(None, _get, f"{server.url}{path}")
        return status, body

    try:
        assert 'rds_csi_attachment_state{state="attached"} 3.0' in (await get("/metrics"))[1]
        state["leader"] = False  # a follower leaves the per-volume series out
        body = (await get("/metrics"))[1]
        assert "rds_csi_attachment_state" not in body and "rds_csi_leader 1.0" in body
        state["ready"] = False  # appliance down: not ready, alive
        assert (await get("/readyz"))[0] == 503 and (await get("/healthz"))[0] == 503
        assert await get("/livez") == (200, "ok\n")
        state["alive"] = False
        assert await get("/livez") == (503, "reconciler crashed\n")
    finally:
        await server.stop()
