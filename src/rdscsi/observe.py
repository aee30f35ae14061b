"""Observability endpoints over HTTP, and per-RPC gRPC metrics.

`MetricsServer` runs on the process's event loop (aiohttp, no thread) and is started and
stopped with the app. It serves:
- `/metrics`: Prometheus text. Per-volume and per-node series (`scoped`) are exported only
  while the `exported` predicate holds: in a cluster, by the reconciler leader, so every
  object is counted once however many replicas are scraped.
- `/livez`: liveness, the process itself (the loop answers, no essential task crashed).
  kubelet restarts the container on failure; an appliance outage is not one.
- `/readyz` (and `/healthz`, the same): readiness, the appliance connection is up (and, in a
  cluster, the informers' view is current). An outage shows as a not-ready pod.
- `/debug/explain`: read-only JSON, why an object is where it is (`rdscsi.explain`).

`GrpcMetrics` is a grpc.aio server interceptor recording
`rds_csi_grpc_requests_total{method,code}` and `rds_csi_grpc_request_duration_seconds{method}`
for every RPC of every service, including the ones a service ends with `context.abort`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Metric,
    generate_latest,
)

log = logging.getLogger("rdscsi.observe")

Health = Callable[[], tuple[bool, str]]
Explain = Callable[[Mapping[str, str]], Awaitable[tuple[int, dict[str, Any]]]]

RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# grpc.aio reports a status either as a grpc.StatusCode or as its integer value.
_CODES: dict[Any, grpc.StatusCode] = {}
for _code in grpc.StatusCode:
    _CODES[_code] = _code
    _CODES[_code.value[0]] = _code


def code_name(code: Any, default: grpc.StatusCode) -> str:
    """The status name (`OK`, `NOT_FOUND`...) of what `context.code()` returned."""
    if code is None:
        return str(default.name)
    return str(_CODES.get(code, default).name)


def split_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an empty host listens on every address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Scoped:
    """A registry view that leaves out some metric families unless `exported()` holds."""

    def __init__(
        self, registry: CollectorRegistry, families: frozenset[str], exported: Callable[[], bool]
    ) -> None:
        self.registry = registry
        self.families = families
        self.exported = exported

    def collect(self) -> Iterator[Metric]:
        hide = not self.exported()
        for family in self.registry.collect():
            if hide and family.name in self.families:
                continue
            yield family


class MetricsServer:
    """`/metrics` (Prometheus text format), `/livez`, `/readyz` and `/healthz` (200 "ok",
    else 503 and why)."""

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        health: Health,
        live: Health | None = None,
        scoped: tuple[frozenset[str], Callable[[], bool]] | None = None,
        explain: Explain | None = None,
    ) -> None:
        self.host, self._port = split_address(address)
        self.explain = explain
        self.registry = registry
        self.health = health
        self.live: Health = live or (lambda: (True, "ok"))
        self._source: CollectorRegistry | Scoped = (
            Scoped(registry, *scoped) if scoped is not None else registry
        )
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started on `:0`)."""
        if self._runner is not None:
            for addr in self._runner.addresses:
                if isinstance(addr, tuple) and len(addr) >= 2:
                    return int(addr[1])
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._healthz)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/debug/explain", self._explain)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics on %s/metrics, health on %s/healthz", self.url, self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._source)  # type: ignore[arg-type]
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return _answer(self.health)

    async def _livez(self, request: web.Request) -> web.Response:
        return _answer(self.live)

    async def _explain(self, request: web.Request) -> web.Response:
        if self.explain is None:
            status, body = 404, {"error": "this process has nothing to explain"}
        else:
            try:
                status, body = await self.explain(request.query)
            except Exception as exc:  # a bug in an explanation must not look like a hang
                log.exception("/debug/explain failed")
                status, body = 500, {"error": f"explain failed: {type(exc).__name__}: {exc}"}
        text = json.dumps(body, indent=1, sort_keys=False) + "\n"
        return web.Response(status=status, text=text, content_type="application/json")


def _answer(check: Health) -> web.Response:
    try:
        ok, detail = check()
    except Exception as exc:  # a broken check is itself a failure
        ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"
    if ok:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"{detail}\n")


class GrpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every unary RPC (all of CSI's) by short method name and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rds_csi_grpc_requests_total",
            "CSI RPCs answered, by method and gRPC status code",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "rds_csi_grpc_request_duration_seconds",
            "CSI RPC latency by method, whatever the outcome",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown method (gRPC answers UNIMPLEMENTED) or a stream
        full: str = handler_call_details.method  # type: ignore[attr-defined]
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(full.rsplit("/", 1)[-1], handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, inner: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        requests, duration = self.requests, self.duration.labels(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            default = grpc.StatusCode.OK
            counted: list[bool] = []

            def count(code: grpc.StatusCode) -> None:
                # abort() sends the status at once: count first, so that a client which
                # reads the metrics as soon as it has its answer finds the call there.
                requests.labels(method, code_name(code, grpc.StatusCode.UNKNOWN)).inc()
                counted.append(True)

            try:
                reply = inner(request, _CountingContext(context, count))
                if inspect.isawaitable(reply):
                    reply = await reply
                return reply
            except asyncio.CancelledError:
                default = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                default = grpc.StatusCode.UNKNOWN  # abort always sets the code first
                raise
            except Exception:
                default = grpc.StatusCode.UNKNOWN  # what grpc answers for a stray exception
                raise
            finally:
                duration.observe(time.perf_counter() - start)
                if not counted:
                    code = code_name(_context_code(context), default)
                    requests.labels(method, code).inc()

        return wrapped


class _CountingContext:
    """The servicer context, with `abort` counting the call before it answers it."""

    def __init__(self, context: Any, count: Callable[[grpc.StatusCode], None]) -> None:
        self._context = context
        self._count = count

    async def abort(self, code: grpc.StatusCode, details: str = "", *rest: Any) -> None:
        self._count(code)
        await self._context.abort(code, details, *rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _context_code(context: Any) -> Any:
    try:
        return context.code()
    except Exception:  # pragma: no cover - an implementation without code()
        return None
