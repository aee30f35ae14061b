"""The CSI Identity service: who the plugin is, what it offers, whether it is ready.

Probe, for a controller: ready while at least one appliance of the fleet is connected (its
volumes are served; a call for a volume on an appliance that is not answers UNAVAILABLE on
its own), not ready while none is, and FAILED_PRECONDITION while every appliance rejects a
setting (`Appliances.ready`). With one appliance that is its connection's state. Which
appliance is down is not Probe's to say (a Probe failure restarts nothing, and one boolean
cannot name it): the per-appliance truth is `rds_csi_rds_connection_state{appliance}`, the
RDS* events and `rdscsi explain appliance <name>`. A node plugin is ready while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.wrappers_pb2 import BoolValue

from .. import __version__
from . import csi_pb2 as pb
from . import csi_pb2_grpc
from .rpc import rpc

Service = pb.PluginCapability.Service.Type
Expansion = pb.PluginCapability.VolumeExpansion.Type


class IdentityService(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    def __init__(self, name: str, controller: bool, ready: Callable[[], bool]) -> None:
        self.name = name
        self.controller = controller
        self._ready = ready  # e.g. "the appliance connection is up"; never blocks

    @rpc
    async def GetPluginInfo(
        self, req: pb.GetPluginInfoRequest, ctx: Any
    ) -> pb.GetPluginInfoResponse:
        return pb.GetPluginInfoResponse(name=self.name, vendor_version=__version__)

    @rpc
    async def GetPluginCapabilities(
        self, req: pb.GetPluginCapabilitiesRequest, ctx: Any
    ) -> pb.GetPluginCapabilitiesResponse:
        caps = [
            pb.PluginCapability(
                service=pb.PluginCapability.Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)
            ),
            pb.PluginCapability(
                volume_expansion=pb.PluginCapability.VolumeExpansion(type=Expansion.ONLINE)
            ),
        ]
        if self.controller:
            caps.insert(
                0,
                pb.PluginCapability(
                    service=pb.PluginCapability.Service(type=Service.CONTROLLER_SERVICE)
                ),
            )
        return pb.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc
    async def Probe(self, req: pb.ProbeRequest, ctx: Any) -> pb.ProbeResponse:
        return pb.ProbeResponse(ready=BoolValue(value=self._ready()))
