"""The gRPC server on the CSI unix socket."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from ..observe import GrpcMetrics
from . import csi_pb2_grpc
from .controller import ControllerService
from .identity import IdentityService
from .node import NodeService


class CSIServer:
    def __init__(
        self,
        socket_path: Path,
        identity: IdentityService,
        controller: ControllerService | None = None,
        node: NodeService | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.identity = identity
        self.controller = controller
        self.node = node
        self._server: grpc.aio.Server | None = None
        # Per-RPC series (`rds_csi_grpc_*`) when given a registry; registered once here.
        self.metrics = GrpcMetrics(registry) if registry is not None else None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> None:
        # A socket left by a crashed process would make the bind fail.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server = grpc.aio.server(interceptors=[self.metrics] if self.metrics else None)
        csi_pb2_grpc.add_IdentityServicer_to_server(self.identity, server)
        if self.controller is not None:
            csi_pb2_grpc.add_ControllerServicer_to_server(self.controller, server)
        if self.node is not None:
            csi_pb2_grpc.add_NodeServicer_to_server(self.node, server)
        server.add_insecure_port(self.endpoint)
        await server.start()
        self._server = server

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
