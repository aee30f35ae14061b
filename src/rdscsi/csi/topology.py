"""Which nodes reach which appliance, and which appliance a new volume goes to.

**Topology.** A node may reach several appliances, and a Kubernetes node carries one value
per label key, so every appliance has a key of its own, its name the value:

- the default appliance (`rds:`): `<driver>/appliance`, as every node and every volume had
  it before there were several (PVs keep their node affinity: it cannot change, and kubelet
  refuses to change a topology label's value);
- each appliance under `appliances:`: `<driver>/appliance.<name>`.

A node reports the segment of each appliance it reaches (`node_appliances`, by default all;
never a "not reachable" value, which could not be taken back); a volume reports the segment
of its appliance. So a volume is accessible from exactly the nodes that reach its appliance,
and a topology (a node's, or a term of a requirement) allows an appliance when it carries
that appliance's segment.

**Placement** of a new volume, in this order (`Layout.place`):

1. a copy (a restore or a clone) goes where its source is: the appliance makes it as a
   copy-on-write copy of a file on its own pool; a class naming another appliance is refused;
2. the StorageClass parameter `appliance: <name>` (a name the fleet lacks is refused,
   naming those it has);
3. otherwise the default appliance (`rds:`), so the classes made before the fleet keep
   working; where the requirements exclude it, the request is refused (RESOURCE_EXHAUSTED),
   never sent to another box;
4. with no default appliance configured, a class must name one (INVALID_ARGUMENT), unless
   the fleet has only one.

Why never "the only appliance the node reaches", nor the one with most free space: where a
volume lives is its failure domain, an operator's choice, and a choice by free space could
land a retried create on another box than its first attempt. And capacity tracking could not
be right: the scheduler takes a CSIStorageCapacity object for a node when the object's
segment is a subset of the node's labels, so a node reaching A and B also matches the object
of a node reaching only B. A class's volumes must therefore go to the same appliance from
every node whose segment holds another's: a fixed appliance per class gives exactly that.

**Capacity** (`Layout.capacity_appliance`): GetCapacity answers for the appliance a
CreateVolume with the same parameters would use in the given topology segment, and 0 where
it would be refused (no volume of that class can be made there). The external-provisioner
asks once per StorageClass and per segment, a segment being every topology key of a node
with its value; with the keys above that is the set of appliances the node reaches. Any
object whose segment a node's labels hold reports either the class's appliance, the one a
volume made for that node goes to, or 0 (`tests/fleet/test_capacity_tracking.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from . import csi_pb2 as pb
from .status import RPCError, invalid

Segments = Mapping[str, str]


@dataclass(frozen=True)
class Placed:
    """Where a new volume goes, and why (for the log)."""

    appliance: str
    why: str


@dataclass(frozen=True)
class Layout:
    """The fleet's names and their topology keys (no connections: the node uses it too)."""

    plugin: str  # the CSI plugin name, the keys' prefix
    names: tuple[str, ...]  # configuration order, the default appliance first
    default: str = ""  # the default appliance's name; '' when there is none

    @property
    def base_key(self) -> str:
        return f"{self.plugin}/appliance"

    def key(self, name: str) -> str:
        return self.base_key if name == self.default else f"{self.base_key}.{name}"

    def segment(self, name: str) -> dict[str, str]:
        """The topology of a volume on `name`."""
        return {self.key(name): name}

    def node_segments(self, reach: Sequence[str] = ()) -> dict[str, str]:
        """A node's topology: the segment of each appliance it reaches (empty: every one)."""
        out: dict[str, str] = {}
        for name in reach or self.names:
            out.update(self.segment(name))
        return out

    def carries(self, name: str, segments: Segments) -> bool:
        """Whether a node (or requirement term) with `segments` reaches appliance `name`."""
        return segments.get(self.key(name)) == name

    def allowed(self, name: str, requirement: pb.TopologyRequirement | None) -> bool:
        """Whether a volume on `name` meets the requirement: accessible from one of its
        requisite topologies (from a preferred one when only those are given)."""
        if requirement is None:
            return True
        terms = list(requirement.requisite) or list(requirement.preferred)
        return not terms or any(self.carries(name, t.segments) for t in terms)

    # --- placement ---------------------------------------------------------------------------

    def place(
        self,
        asked: str,
        requirement: pb.TopologyRequirement | None,
        source: str | None = None,
        what: str = "volume",
    ) -> Placed:
        """The appliance a new volume goes to (see the module's documentation), or the
        RPCError that refuses it: INVALID_ARGUMENT for a choice the request must make
        differently, RESOURCE_EXHAUSTED when the requirements exclude it."""
        if source is not None:
            if asked and asked != source:
                raise invalid(
                    f"{what}: parameter appliance is {asked}, but its source is on appliance "
                    f"{source}: a copy is made on the appliance that holds its source"
                )
            chosen = Placed(source, "where its source is")
        elif asked:
            if asked not in self.names:
                raise invalid(
                    f"{what}: parameter appliance: {asked!r} is not an appliance of this "
                    f"driver (it has: {', '.join(self.names)})"
                )
            chosen = Placed(asked, "named by its StorageClass")
        elif self.default:
            chosen = Placed(self.default, "the default appliance")
        elif len(self.names) == 1:
            chosen = Placed(self.names[0], "the only appliance")
        else:
            raise invalid(
                f"{what}: no default appliance (rds:) is configured: name one of "
                f"{', '.join(self.names)} with the StorageClass parameter appliance"
            )
        if not self.allowed(chosen.appliance, requirement):
            raise self._excluded(what, f"appliance {chosen.appliance} ({chosen.why})")
        return chosen

    def _excluded(self, what: str, whom: str) -> RPCError:
        return RPCError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what}: the accessibility requirements exclude {whom} (no requisite topology "
            f"carries its {self.base_key} segment)",
        )

    def capacity_appliance(self, asked: str, segments: Segments | None) -> str | None:
        """The appliance whose free space GetCapacity reports for a class (`asked`: its
        `appliance` parameter) in a topology segment; None: no volume of it can be made
        there (capacity 0)."""
        requirement = None
        if segments is not None:
            requirement = pb.TopologyRequirement(requisite=[pb.Topology(segments=segments)])
        try:
            return self.place(asked, requirement).appliance
        except RPCError:
            if asked and asked not in self.names:
                raise
            return None
