"""Runs the declared machines over light per-object models.

Each lifecycle is declared once as a python-statemachine `StateMachine` subclass; that class
is what the diagrams are drawn from and what the conformance tests run. Building one library
instance per volume costs ~0.3 ms and each library transition ~0.13 ms, too slow for 10k
volumes, so `compile_machine` reads the class once into a dispatch table and `Engine` applies
it to slotted model objects. The semantics are the library's `StateMachine` (strict) ones:
transitions of an event are tried in declaration order, the first whose guards pass is taken,
its `on` actions run, the state changes, then the `after` hooks run; an event with no enabled
transition raises. `tests/machines/test_conformance.py` checks that both engines agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from statemachine import StateMachine


class MachineError(Exception):
    """Base for every error raised by a machine."""


class TransitionNotAllowed(MachineError):
    """An event that the current state does not accept (or whose guards all refuse)."""

    def __init__(self, machine: str, obj: str, state: str, event: str, detail: str = "") -> None:
        self.machine, self.obj, self.state, self.event = machine, obj, state, event
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"{machine} {obj!r}: event {event!r} is not allowed in state {state!r}{extra}"
        )


class UnknownState(MachineError):
    """A stored state value that the machine does not declare."""

    def __init__(self, machine: str, obj: str, state: object) -> None:
        self.machine, self.obj, self.state = machine, obj, state
        super().__init__(f"{machine} {obj!r}: stored state {state!r} is not a state of {machine}")


class ActionFailed(MachineError):
    """An `on` action raised; the model was restored to its state before the event."""

    def __init__(self, machine: str, obj: str, transition: Transition, exc: BaseException) -> None:
        self.machine, self.obj, self.transition = machine, obj, transition
        super().__init__(f"{machine} {obj!r}: action of {transition} failed: {exc!r}")


class HookFailed(MachineError):
    """One or more `after` hooks raised. The transition itself is complete (the model is in
    the target state); every other hook still ran."""

    def __init__(
        self, machine: str, obj: str, transition: Transition, errors: list[BaseException]
    ) -> None:
        self.machine, self.obj, self.transition, self.errors = machine, obj, transition, errors
        super().__init__(
            f"{machine} {obj!r}: {transition} completed but {len(errors)} hook(s) failed: "
            + "; ".join(repr(e) for e in errors)
        )


class FSMModel:
    """Per-object state: what a machine needs to remember about one volume, node or appliance.

    Subclasses add slots. `state` is the declared state's id (the stored form); `entered_at`
    is the monotonic time the state was entered (for time-in-state metrics and guards)."""

    __slots__ = ("entered_at", "state")

    def __init__(self) -> None:
        self.state: str | None = None
        self.entered_at: float = 0.0

    @property
    def key(self) -> str:
        """The object's name in errors, events and logs."""
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        """Every slot and its value (for comparisons and persistence)."""
        out: dict[str, Any] = {}
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                out[name] = getattr(self, name)
        return out


M = TypeVar("M", bound=FSMModel)
Guard = Callable[[Any, Any], Any]
Action = Callable[[Any, Any], None]


@dataclass(frozen=True, slots=True)
class Transition:
    """One declared transition, as read from the machine class."""

    machine: str
    index: int  # position among all transitions of the machine (stable, for coverage)
    source: str
    event: str
    target: str
    conds: tuple[tuple[str, bool], ...]  # (guard name, expected truth)
    actions: tuple[str, ...]
    hooks: tuple[str, ...]

    @property
    def guard_text(self) -> str:
        return " and ".join(n if want else f"not {n}" for n, want in self.conds)

    def __str__(self) -> str:
        guard = f" [{self.guard_text}]" if self.conds else ""
        return f"{self.source} --{self.event}{guard}--> {self.target}"


@dataclass(frozen=True)
class MachineDef:
    """A machine class compiled into a dispatch table."""

    name: str
    cls: type[StateMachine]
    states: tuple[str, ...]
    initial: str
    finals: frozenset[str]
    events: tuple[str, ...]
    transitions: tuple[Transition, ...]
    # (source, event) -> candidate transitions with their resolved guards and actions
    table: dict[
        tuple[str, str],
        tuple[tuple[Transition, tuple[tuple[Guard, bool], ...], tuple[Action, ...]], ...],
    ] = field(repr=False)

    @property
    def hook_names(self) -> frozenset[str]:
        return frozenset(h for t in self.transitions for h in t.hooks)


# Names python-statemachine adds to every transition by convention; they are not ours.
_CONVENTION_PREFIXES = ("before_", "on_", "after_")


def _names(grouper: Iterable[Any]) -> tuple[str, ...]:
    out = []
    for spec in grouper:
        name = getattr(spec, "attr_name", None)
        if not isinstance(name, str):
            raise TypeError(f"callbacks must be declared by name, got {spec!r}")
        if getattr(spec, "is_convention", False):
            continue
        out.append(name)
    return tuple(out)


_COMPILED: dict[type[StateMachine], MachineDef] = {}


def compile_machine(cls: type[StateMachine], name: str | None = None) -> MachineDef:
    """Read a `StateMachine` class into a `MachineDef` (cached per class)."""
    cached = _COMPILED.get(cls)
    if cached is not None:
        return cached
    machine_name: str = name or str(getattr(cls, "machine_name", cls.__name__))
    states = tuple(s.id for s in cls.states)
    initial = next(s.id for s in cls.states if s.initial)
    finals = frozenset(s.id for s in cls.states if s.final)
    transitions: list[Transition] = []
    table: dict[
        tuple[str, str], list[tuple[Transition, tuple[tuple[Guard, bool], ...], tuple[Action, ...]]]
    ] = {}
    for state in cls.states:
        for t in state.transitions:
            if t.internal or len(t.targets) != 1:
                raise TypeError(f"{machine_name}: only simple external transitions are supported")
            for event in t.events:
                ev = str(event)
                conds = tuple(
                    (spec.attr_name, bool(spec.expected_value))
                    for spec in t.cond
                    if not getattr(spec, "is_convention", False)
                )
                tr = Transition(
                    machine=machine_name,
                    index=len(transitions),
                    source=state.id,
                    event=ev,
                    target=t.target.id,
                    conds=conds,
                    actions=_names(t.on),
                    hooks=_names(t.after),
                )
                transitions.append(tr)
                guards = tuple((getattr(cls, n), want) for n, want in conds)
                actions = tuple(getattr(cls, n) for n in tr.actions)
                table.setdefault((state.id, ev), []).append((tr, guards, actions))
    events = tuple(str(e) for e in cls._events)
    return _COMPILED.setdefault(
        cls,
        MachineDef(
            name=machine_name,
            cls=cls,
            states=states,
            initial=initial,
            finals=finals,
            events=events,
            transitions=tuple(transitions),
            table={k: tuple(v) for k, v in table.items()},
        ),
    )


@dataclass(frozen=True, slots=True)
class Step:
    """What one dispatched event did: handed to every listener."""

    machine: str
    model: Any
    transition: Transition
    payload: Any
    now: float
    previous_entered_at: float
    # The guard results that decided: each candidate tried before the one taken, as
    # (its transition index, position in its `conds` of the guard that refused it).
    refused: tuple[tuple[int, int], ...] = ()

    @property
    def source(self) -> str:
        return self.transition.source

    @property
    def target(self) -> str:
        return self.transition.target

    @property
    def event(self) -> str:
        return self.transition.event


class Listener(Protocol):
    """Sees every transition (`after_transition`) and may implement any hook by name:
    a method `VolumeAttached(step)` runs after each transition that declares that hook.
    Optional parts: `on_bind(definition)` (told the machine when an engine is built),
    `on_track`/`on_forget` (`ModelLifecycle`), `on_retire(machine, key)` (`Engine.retire`)."""

    def after_transition(self, step: Step) -> None: ...


class ModelLifecycle(Protocol):
    """Optional listener part: told when an object starts or stops being tracked."""

    def on_track(self, machine: str, model: FSMModel) -> None: ...

    def on_forget(self, machine: str, model: FSMModel) -> None: ...


class Engine:
    """Dispatches events for one machine class to any number of models, with listeners
    bound once. Synchronous and cheap: callers in asyncio code call it directly."""

    def __init__(
        self,
        machine: type[StateMachine] | MachineDef,
        listeners: Iterable[object] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.definition = machine if isinstance(machine, MachineDef) else compile_machine(machine)
        self.listeners = tuple(listeners)
        self._now = clock or _zero
        self._states = frozenset(self.definition.states)
        # Resolve each transition's hooks against the listeners once, not per event.
        self._hooks: dict[int, tuple[Callable[[Step], None], ...]] = {}
        for tr in self.definition.transitions:
            bound: list[Callable[[Step], None]] = []
            for listener in self.listeners:
                generic = getattr(listener, "after_transition", None)
                if generic is not None:
                    bound.append(generic)
                for hook in tr.hooks:
                    fn = getattr(listener, hook, None)
                    if fn is not None:
                        bound.append(fn)
            self._hooks[tr.index] = tuple(bound)
        for listener in self.listeners:
            bind = getattr(listener, "on_bind", None)
            if bind is not None:  # told which machine it listens to (the flight recorder)
                bind(self.definition)
        self._track = tuple(getattr(x, "on_track", None) for x in self.listeners)
        self._forget = tuple(getattr(x, "on_forget", None) for x in self.listeners)

    @property
    def name(self) -> str:
        return self.definition.name

    def track(self, model: M, state: str | None = None) -> M:
        """Start tracking a model: new (initial state) or restored from a stored state."""
        if state is None:
            state = model.state if model.state is not None else self.definition.initial
        if state not in self._states:
            raise UnknownState(self.definition.name, model.key, state)
        model.state = state
        model.entered_at = self._now()
        for fn in self._track:
            if fn is not None:
                fn(self.definition.name, model)
        return model

    def forget(self, model: FSMModel) -> None:
        """Stop tracking a model (this instance: the object may be restored again)."""
        for fn in self._forget:
            if fn is not None:
                fn(self.definition.name, model)

    def retire(self, key: str) -> None:
        """The object `key` is gone for good (a volume deleted, a node gone): listeners that
        keep per-object state past `forget` (the flight recorder) let go of it."""
        for listener in self.listeners:
            fn = getattr(listener, "on_retire", None)
            if fn is not None:
                fn(self.definition.name, key)

    def allowed(self, model: FSMModel, event: str, payload: Any = None) -> Transition | None:
        """The transition `event` would take now, or None; runs guards, changes nothing."""
        for tr, guards, _ in self.definition.table.get((model.state or "", event), ()):
            if all(bool(g(model, payload)) is want for g, want in guards):
                return tr
        return None

    def send(self, model: FSMModel, event: str, payload: Any = None) -> Step:
        """Apply `event` to `model`; returns the step taken or raises `TransitionNotAllowed`."""
        state = model.state
        if state not in self._states:
            raise UnknownState(self.definition.name, model.key, state)
        candidates = self.definition.table.get((state, event))
        if candidates is None:
            raise TransitionNotAllowed(self.definition.name, model.key, state, event)
        refused: tuple[tuple[int, int], ...] = ()
        for tr, guards, actions in candidates:
            for pair in guards:
                if bool(pair[0](model, payload)) is not pair[1]:
                    refused = (*refused, (tr.index, guards.index(pair)))
                    break
            else:
                return self._take(model, tr, actions, payload, refused)
        text = ", ".join(t.guard_text for t, _, _ in candidates)
        raise TransitionNotAllowed(
            self.definition.name, model.key, state, event, f"guards refused ({text})"
        )

    def _take(
        self,
        model: FSMModel,
        tr: Transition,
        actions: tuple[Action, ...],
        payload: Any,
        refused: tuple[tuple[int, int], ...] = (),
    ) -> Step:
        now = self._now()
        if actions:
            saved = model.fields()
            try:
                for action in actions:
                    action(model, payload)
            except Exception as exc:
                for k, v in saved.items():
                    setattr(model, k, v)
                raise ActionFailed(self.definition.name, model.key, tr, exc) from exc
        step = Step(self.definition.name, model, tr, payload, now, model.entered_at, refused)
        model.state = tr.target
        if tr.source != tr.target:
            model.entered_at = now
        errors: list[BaseException] = []
        for hook in self._hooks[tr.index]:
            try:
                hook(step)
            except Exception as exc:  # every hook runs; the failure still surfaces below
                errors.append(exc)
        if errors:
            raise HookFailed(self.definition.name, model.key, tr, errors)
        return step


@dataclass(frozen=True, slots=True)
class Candidate:
    """One transition `event` could take from the model's state, with every guard's result
    (all evaluated, none short-circuited): what `evaluate` reports."""

    transition: Transition
    results: tuple[tuple[str, bool, bool], ...]  # (guard, expected, got)

    @property
    def passes(self) -> bool:
        return all(got is want for _, want, got in self.results)

    @property
    def refusing(self) -> tuple[str, ...]:
        """The guards that refuse it."""
        return tuple(name for name, want, got in self.results if got is not want)


def evaluate(definition: MachineDef, model: FSMModel, event: str, payload: Any) -> list[Candidate]:
    """What `event` would do now, changing nothing: the candidates in the order they are
    tried, up to and including the first that passes (the one `send` would take)."""
    out: list[Candidate] = []
    for tr, guards, _ in definition.table.get((model.state or "", event), ()):
        results = tuple(
            (name, want, bool(guard(model, payload)))
            for (name, want), (guard, _w) in zip(tr.conds, guards, strict=True)
        )
        candidate = Candidate(tr, results)
        out.append(candidate)
        if candidate.passes:
            break
    return out


def _zero() -> float:
    return 0.0
