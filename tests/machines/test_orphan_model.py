"""Model-based test of the Orphan machine against an independent reference table, and its
invariant: nothing is deleted that was younger than the minimum age, outside the driver's
prefix, or claimed at any time before its deletion."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rdscsi.machines import OrphanInput, OrphanModel, TransitionNotAllowed, compile_machine
from rdscsi.machines.orphan import OrphanMachine

from .support import HookLog, coverage_settings, make_rig, uncovered

# The numbers, written here and not imported: the machine's defaults must be these.
MIN_AGE = 3600.0  # an hour seen unclaimed before anything is done
RETENTION = 604800.0  # a week in quarantine before `delete` deletes
MODES = ("report", "quarantine", "delete")
OBJECTS = {"disk pvc-1": True, "file k8s/vol/pvc-2.img": True, "disk pvc-foreign": False}
NOT_ALLOWED = "not allowed"


@dataclass(frozen=True)
class Ref:
    state: str = "suspected"
    reported: bool = False
    quarantined_at: float | None = None


def _age(m: OrphanModel, now: float) -> float:
    return now - m.first_seen


# (state) -> rows of (condition(ref, model, p), target, changes(ref, p), hooks); first match.
TABLE: dict[str, list[tuple[Any, str, Any, tuple[str, ...]]]] = {
    "suspected": [
        (lambda r, m, p: p.claimed, "restored", None, ()),
        (
            lambda r, m, p: (
                m.ours
                and r.reported
                and p.mode in ("quarantine", "delete")
                and _age(m, p.now) >= MIN_AGE
            ),
            "quarantined",
            lambda r, p: {"quarantined_at": p.wall},
            ("OrphanQuarantined", "orphan_quarantined"),
        ),
        (
            lambda r, m, p: not r.reported,
            "suspected",
            lambda r, p: {"reported": True},
            ("OrphanSuspected", "orphan_suspected"),
        ),
        (lambda r, m, p: True, "suspected", None, ()),
    ],
    "quarantined": [
        (
            lambda r, m, p: p.claimed,
            "restored",
            lambda r, p: {"quarantined_at": None},
            ("OrphanRestored", "orphan_restored"),
        ),
        (
            lambda r, m, p: (
                m.ours
                and p.mode == "delete"
                and p.wall - (r.quarantined_at or 0.0) >= RETENTION
                and _age(m, p.now) >= MIN_AGE
            ),
            "deleted",
            None,
            ("OrphanDeleted", "orphan_deleted"),
        ),
        (lambda r, m, p: True, "quarantined", None, ()),
    ],
}


class OrphanModelTest(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        d = compile_machine(OrphanMachine)
        self.log = HookLog(d.hook_names)
        self.rig = make_rig((self.log,))
        self.engine = self.rig.machines.orphan
        self.wall0 = 1_750_000_000.0
        self.models: dict[str, OrphanModel] = {}
        self.refs: dict[str, Ref] = {}
        self.claimed_ever: dict[str, bool] = {}
        self.deleted: list[tuple[str, float, bool, bool]] = []  # (name, age, ours, claimed)
        for name in OBJECTS:
            self._new(name)

    def _now(self) -> float:
        return self.rig.clock.monotonic()

    def _wall(self) -> float:
        return self.wall0 + self._now()

    def _new(self, name: str) -> None:
        model = self.engine.track(OrphanModel(name, "volume", ours=OBJECTS[name], appliance="sim"))
        model.first_seen = self._now()
        self.models[name], self.refs[name] = model, Ref()
        self.claimed_ever[name] = False

    def _sweep(self, name: str, mode: str, claimed: bool) -> None:
        model, ref = self.models[name], self.refs[name]
        before = model.fields()
        # the machine's own defaults: a changed constant disagrees with MIN_AGE / RETENTION
        p = OrphanInput(now=self._now(), wall=self._wall(), mode=mode, claimed=claimed)
        self.claimed_ever[name] |= claimed
        rows = TABLE.get(ref.state)
        if rows is None:
            with pytest.raises(TransitionNotAllowed):
                self.engine.send(model, "sweep", p)
            assert model.fields() == before
            return
        _, target, change, hooks = next(row for row in rows if row[0](ref, model, p))
        start = len(self.log.fired)
        events = len(self.rig.sink.events)
        self.engine.send(model, "sweep", p)
        fields = change(ref, p) if change else {}
        self.refs[name] = replace(ref, state=target, **fields)
        fired = tuple(h for _, h, _ in self.log.fired[start:])
        assert fired == hooks, f"{name} sweep({mode}, claimed={claimed}): {fired} != {hooks}"
        reasons = [e.reason for e in list(self.rig.sink.events)[events:]]
        assert reasons == [h for h in hooks if h[0].isupper()]
        for event in list(self.rig.sink.events)[events:]:
            assert name in event.note and event.regarding.kind == "Appliance"
        if target == "deleted":
            self.deleted.append(
                (name, self._now() - model.first_seen, model.ours, self.claimed_ever[name])
            )

    @rule(
        name=st.sampled_from(sorted(OBJECTS)),
        mode=st.sampled_from(MODES),
        claimed=st.integers(0, 7),
    )
    def sweep(self, name: str, mode: str, claimed: int) -> None:
        self._sweep(name, mode, claimed == 0)  # a claimant now and then

    @precondition(lambda self: any(m.state == "quarantined" for m in self.models.values()))
    @rule(mode=st.sampled_from(MODES), claimed=st.booleans())
    def quarantined_swept(self, mode: str, claimed: bool) -> None:
        name = next(n for n, m in self.models.items() if m.state == "quarantined")
        self._sweep(name, mode, claimed)

    @rule(
        name=st.sampled_from(sorted(OBJECTS)),
        ago=st.sampled_from([0.0, MIN_AGE, RETENTION, RETENTION + MIN_AGE, 10 * RETENTION]),
    )
    def found_quarantined_by_a_new_leader(self, name: str, ago: float) -> None:
        # a leader that did not quarantine it finds it by its name, quarantined `ago` s before
        # (by another replica's wall clock, or a hand rename): retention from the name, the
        # minimum age from now, as the sweep tracks it
        if self.models[name].state not in ("deleted", "restored"):
            return
        self.engine.forget(self.models[name])
        model = OrphanModel(name, "volume", ours=OBJECTS[name], appliance="sim")
        self.engine.track(model, "quarantined")
        model.quarantined_at = self._wall() - ago
        model.reported = True
        model.first_seen = self._now()
        self.models[name] = model
        self.refs[name] = Ref("quarantined", True, model.quarantined_at)
        self.claimed_ever[name] = False

    @rule(name=st.sampled_from(sorted(OBJECTS)))
    def seen_again_after_its_end(self, name: str) -> None:
        # deleted or restored: forgotten; the object listed again later is a new life
        if self.models[name].state in ("deleted", "restored"):
            self.engine.forget(self.models[name])
            self._new(name)

    @rule(
        dt=st.sampled_from(
            [0.0, 1.0, MIN_AGE - 0.001, MIN_AGE, 600.0, RETENTION - 0.001, RETENTION, 86400.0]
        )
    )
    def time_passes(self, dt: float) -> None:
        self.rig.clock.advance(dt)

    @invariant()
    def matches_reference(self) -> None:
        for name, model in self.models.items():
            ref = self.refs[name]
            got = (model.state, model.reported, model.quarantined_at)
            assert got == (ref.state, ref.reported, ref.quarantined_at), name

    @invariant()
    def nothing_deleted_young_foreign_or_claimed(self) -> None:
        for name, age, ours, claimed in self.deleted:
            assert ours, f"{name}: deleted outside the driver's prefix"
            assert age >= MIN_AGE, f"{name}: deleted {age:.3f}s after it was first seen"
            assert not claimed, f"{name}: deleted though claimed before"

    @invariant()
    def never_acted_on_without_a_report(self) -> None:
        for model in self.models.values():
            if model.state in ("quarantined", "deleted"):
                assert model.reported

    @invariant()
    def gauges_count_models(self) -> None:
        for state in compile_machine(OrphanMachine).states:
            n = sum(1 for m in self.models.values() if m.state == state)
            assert self.rig.gauge("orphan", state) == n


def test_orphan_machine_against_reference() -> None:
    run_state_machine_as_test(OrphanModelTest, settings=coverage_settings())
    missing = uncovered(compile_machine(OrphanMachine))
    assert not missing, f"transitions never exercised: {missing}"


def test_the_machine_defaults_are_the_documented_ones() -> None:
    from rdscsi.config import DriverConfig
    from rdscsi.machines import orphan

    assert (orphan.DEFAULT_MIN_AGE_S, orphan.DEFAULT_RETENTION_S) == (MIN_AGE, RETENTION)
    config = DriverConfig()
    assert (config.orphan_min_age, config.orphan_retention, config.orphans) == (
        MIN_AGE,
        RETENTION,
        "report",
    )
