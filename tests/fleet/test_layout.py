"""The fleet's rules on their own: ids that name their appliance, topology keys, placement,
capacity, resolving ids, and what Probe and readiness say with several appliances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from rdscsi.appliances import Appliance, Appliances, Unresolved
from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi.naming import (
    APPLIANCE_NAME_MAX,
    is_snapshot_id,
    is_volume_id,
    snapshot_id,
    split_id,
    volume_id,
)
from rdscsi.csi.status import RPCError
from rdscsi.csi.topology import Layout
from rdscsi.io.rds.errors import MisconfiguredError

PVC = "pvc-0a1b2c3d-0000-4000-8000-000000000001"
LAYOUT = Layout("rds.csi.test", ("rds", "rds-b", "rds-c"), "rds")
NO_DEFAULT = Layout("rds.csi.test", ("rds-b", "rds-c"), "")
K = "rds.csi.test/appliance"


def req(*terms: dict[str, str], preferred: bool = False) -> pb.TopologyRequirement:
    topologies = [pb.Topology(segments=t) for t in terms]
    if preferred:
        return pb.TopologyRequirement(preferred=topologies)
    return pb.TopologyRequirement(requisite=topologies, preferred=topologies)


# --- ids ------------------------------------------------------------------------------------


def test_ids_name_their_appliance_and_the_default_ones_keep_the_old_form() -> None:
    assert volume_id(PVC) == PVC and volume_id(PVC, "rds-b") == f"rds-b:{PVC}"
    assert volume_id("my volume", "rds-b").startswith("rds-b:vol-")
    assert snapshot_id("snapshot-" + PVC[4:], "rds-b") == f"rds-b:snap-{PVC[4:]}"
    assert split_id(PVC) == ("", PVC)
    assert split_id(f"rds-b:{PVC}") == ("rds-b", PVC)
    assert split_id(f"rds-b:snap-{'0' * 32}") == ("rds-b", f"snap-{'0' * 32}")
    for bad in (f"RDS:{PVC}", f":{PVC}", f"rds-:{PVC}", f"a:b:{PVC}", f"rds b:{PVC}", "rds-b:"):
        assert split_id(bad) is None and not is_volume_id(bad), bad
    longest = volume_id("x" * 200, "a" * APPLIANCE_NAME_MAX)
    assert is_volume_id(longest) and len(longest.encode()) <= 128  # CSI's id limit
    assert not is_snapshot_id(f"rds-b:{PVC}") and not is_volume_id(f"rds-b:snap-{'0' * 32}")


# --- topology --------------------------------------------------------------------------------


def test_every_appliance_has_a_key_of_its_own_and_the_default_keeps_the_old_one() -> None:
    assert LAYOUT.segment("rds") == {K: "rds"}
    assert LAYOUT.segment("rds-b") == {f"{K}.rds-b": "rds-b"}
    assert LAYOUT.node_segments() == {K: "rds", f"{K}.rds-b": "rds-b", f"{K}.rds-c": "rds-c"}
    assert LAYOUT.node_segments(["rds-c"]) == {f"{K}.rds-c": "rds-c"}
    # a label key's name part is at most 63 characters
    longest = Layout("x", ("a" * APPLIANCE_NAME_MAX,), "")
    assert len(next(iter(longest.node_segments())).split("/")[1]) <= 63


def test_placement_order() -> None:
    both = {K: "rds", f"{K}.rds-b": "rds-b"}
    only_b = {f"{K}.rds-b": "rds-b"}
    # 1. a copy goes where its source is, whatever the default
    assert LAYOUT.place("", None, source="rds-c").appliance == "rds-c"
    # 2. the class's parameter
    assert LAYOUT.place("rds-b", None).appliance == "rds-b"
    # 3. the default appliance, and only it: never another box because the node reaches
    # only that one (capacity tracking could not be right: tests/fleet/test_capacity_tracking)
    assert LAYOUT.place("", None).appliance == "rds"
    assert LAYOUT.place("", req(both)).appliance == "rds"
    assert LAYOUT.place("", req(only_b, both)).appliance == "rds"
    assert LAYOUT.place("", req(both, preferred=True)).appliance == "rds"
    # a term with another key as well (a zone) still carries the appliance's segment
    assert LAYOUT.place("rds-b", req({**only_b, "zone": "z1"})).appliance == "rds-b"
    # 4. no default appliance: a fleet of one needs no name, a larger one does
    assert Layout("x", ("rds-b",), "").place("", None).appliance == "rds-b"
    assert NO_DEFAULT.place("rds-c", req(only_b, {f"{K}.rds-c": "rds-c"})).appliance == "rds-c"


@pytest.mark.parametrize(
    ("layout", "asked", "requirement", "source", "code", "needle"),
    [
        (NO_DEFAULT, "", None, None, "INVALID_ARGUMENT", "name one of rds-b, rds-c with the"),
        (NO_DEFAULT, "", req({f"{K}.rds-b": "rds-b"}), None, "INVALID_ARGUMENT", "no default"),
        (LAYOUT, "", req({f"{K}.rds-b": "rds-b"}), None, "RESOURCE_EXHAUSTED", "rds (the def"),
        (LAYOUT, "rds-x", None, None, "INVALID_ARGUMENT", "rds, rds-b, rds-c"),
        (LAYOUT, "rds-b", None, "rds-c", "INVALID_ARGUMENT", "its source is on appliance rds-c"),
        (LAYOUT, "rds", req({f"{K}.rds-b": "rds-b"}), None, "RESOURCE_EXHAUSTED", "rds (named"),
        (LAYOUT, "", req({"zone": "z1"}), None, "RESOURCE_EXHAUSTED", "appliance rds (the"),
        (LAYOUT, "", req({K: "other"}), "rds", "RESOURCE_EXHAUSTED", "where its source is"),
    ],
)
def test_placement_refusals(
    layout: Layout,
    asked: str,
    requirement: pb.TopologyRequirement | None,
    source: str | None,
    code: str,
    needle: str,
) -> None:
    with pytest.raises(RPCError) as err:
        layout.place(asked, requirement, source)
    assert err.value.code == getattr(grpc.StatusCode, code) and needle in err.value.message


def test_capacity_is_the_appliance_a_create_would_use_or_none() -> None:
    both = {K: "rds", f"{K}.rds-b": "rds-b"}
    assert LAYOUT.capacity_appliance("", None) == "rds"
    assert LAYOUT.capacity_appliance("", both) == "rds"
    assert LAYOUT.capacity_appliance("rds-b", both) == "rds-b"
    assert LAYOUT.capacity_appliance("rds-c", both) is None  # not reached from there
    assert LAYOUT.capacity_appliance("", {f"{K}.rds-c": "rds-c"}) is None  # no default there
    assert NO_DEFAULT.capacity_appliance("", {f"{K}.rds-b": "rds-b"}) is None
    assert NO_DEFAULT.capacity_appliance("", {f"{K}.rds-b": "rds-b", f"{K}.rds-c": "rds-c"}) is None
    with pytest.raises(RPCError):  # a class naming an appliance the driver lacks is wrong
        LAYOUT.capacity_appliance("rds-x", both)


# --- resolving ids, and readiness --------------------------------------------------------------


@dataclass
class FakeConnection:
    state: str

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def ready(self) -> bool:
        if self.state == "misconfigured":
            raise MisconfiguredError("rds.key_file", "refused", "SHA256:x", appliance="rds")
        return self.connected


def fleet(*states: str, default: bool = True) -> Appliances:
    names = ["rds", "rds-b", "rds-c"][: len(states)]
    members = [
        Appliance(n, FakeConnection(s), None, "", default and i == 0)  # type: ignore[arg-type]
        for i, (n, s) in enumerate(zip(names, states, strict=True))
    ]
    return Appliances(Layout("rds.csi.test", tuple(names), names[0] if default else ""), members)


def test_ids_resolve_to_their_appliance_with_one_spelling_each() -> None:
    f = fleet("connected", "connected")
    assert (f.locate(PVC).appliance.name, f.locate(PVC).slot) == ("rds", PVC)
    assert f.locate(f"rds-b:{PVC}").appliance.name == "rds-b"
    assert f["rds-b"].id_of(PVC) == f"rds-b:{PVC}" and f["rds"].id_of(PVC) == PVC
    cases: list[tuple[Any, str, bool]] = [
        (f, f"rds:{PVC}", False),  # the default's ids carry no name: not one we issue
        (f, f"rds-z:{PVC}", True),  # an appliance the configuration lacks: maybe ours
        (f, "not-an-id", False),
        (fleet("connected", "connected", default=False), PVC, True),  # no default appliance
    ]
    for where, ident, maybe in cases:
        with pytest.raises(Unresolved) as err:
            where.locate(ident)
        assert err.value.maybe_ours is maybe, ident
        assert where.appliance_of(ident) == ""


@pytest.mark.parametrize(
    ("states", "ready", "body"),
    [
        (("connected",), True, "ok"),
        (("backoff",), False, "appliance connection rds: backoff"),
        (("connected", "backoff"), True, "ok; not connected: appliance connection rds-b: backoff"),
        (("backoff", "misconfigured"), False, "rds: backoff, appliance connection rds-b: misc"),
        (("misconfigured", "connected"), True, "ok; not connected: appliance connection rds: mi"),
    ],
)
def test_probe_and_readiness_with_several_appliances(
    states: tuple[str, ...], ready: bool, body: str
) -> None:
    f = fleet(*states)
    assert f.ready() is ready
    ok, why = f.readiness()
    assert ok is ready and body in why, why


def test_probe_fails_with_the_setting_when_every_appliance_rejects_one() -> None:
    with pytest.raises(MisconfiguredError):
        fleet("misconfigured").ready()
    with pytest.raises(MisconfiguredError):
        fleet("misconfigured", "misconfigured").ready()
