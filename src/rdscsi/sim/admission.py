"""The node side's question to the simulator: may this host connect to this export?

A real node runs `nvme connect` with its host NQN and the appliance admits or refuses it by
the export's allow-list. The loop transport (`io.host.loop`) attaches the simulator's files
directly, so it asks the simulator the same question first, over the simulator's control
socket (`admit-host`): the answer follows the disk's allow-list as the device would, and an
admitted host appears in the appliance's session listing until it disconnects
(`leave-host`). A refusal is a `TransportError`: NodeStage fails, as it would on a node the
appliance fences.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rdscsi.io.host.transport import Target, TargetMissing, TransportError
from rdscsi.sim import control
from rdscsi.sim.errors import NO_SUCH_ITEM


class SimAdmission:
    """`socket`: one simulator's control socket, or several (`rdscsi run --appliances N`):
    each is asked in turn, and the one that holds the export answers."""

    def __init__(self, socket: Path | Sequence[Path], host_nqn: str) -> None:
        self.sockets = [socket] if isinstance(socket, Path) else list(socket)
        self.socket = self.sockets[0]
        self.host_nqn = host_nqn
        self._holder: dict[str, Path] = {}  # export NQN -> the socket that admitted it

    async def _ask(self, op: str, target: Target, socket: Path) -> dict[str, object]:
        try:
            return await control.request(
                socket, {"op": op, "nqn": target.nqn, "host_nqn": self.host_nqn}
            )
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"the simulator's control socket {socket} did not answer: {exc}", target
            ) from exc

    async def admit(self, target: Target) -> None:
        error = ""
        for socket in self.sockets:
            answer = await self._ask("admit-host", target, socket)
            if answer.get("ok"):
                self._holder[target.nqn] = socket
                return
            error = str(answer.get("error"))
            if NO_SUCH_ITEM not in error:
                raise TransportError(f"the appliance refused the connection: {error}", target)
        raise TargetMissing(f"the appliance has no export {target.nqn}", target)

    async def leave(self, target: Target) -> None:
        await self._ask("leave-host", target, self._holder.pop(target.nqn, self.socket))
