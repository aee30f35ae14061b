"""Where each volume is attached: the Attachment machines of the controller.

ControllerPublish/Unpublish and the reconciler go through `AttachmentBook`; the machine
decides (fencing, migration, conflicts) and its hooks report. In standalone mode the book is
kept in a JSON file so a restarted controller restores it; in a cluster it is rebuilt from
VolumeAttachments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..clock import Clock
from ..machines import AttachInput, AttachmentModel, Engine, Step

FIELDS = ("node", "peer", "rwx_block", "stale_since", "deadline")
TIMES = ("stale_since", "deadline")  # monotonic in memory, wall clock on disk


class NodeDirectory(Protocol):
    """Which node ids exist (NOT_FOUND for others), and which are proven gone."""

    def known(self, node_id: str) -> bool: ...

    def evidence(self, node_id: str) -> bool: ...


class AttachmentBook:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        grace_s: float,
        migration_s: float,
        path: Path | None = None,
        wake: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self._wake = wake  # asks for a reconcile pass when a deadline falls due
        self.clock = clock
        self.grace_s = grace_s
        self.migration_s = migration_s
        self.path = path
        self.models: dict[str, AttachmentModel] = {}
        if path is not None and path.exists():
            self.restore(json.loads(path.read_text()))

    def _input(
        self, node: str = "", rwx_block: bool = False, evidence: bool = False
    ) -> AttachInput:
        return AttachInput(
            now=self.clock.monotonic(),
            node=node,
            rwx_block=rwx_block,
            evidence=evidence,
            grace_s=self.grace_s,
            migration_s=self.migration_s,
        )

    def get(self, volume_id: str) -> AttachmentModel | None:
        return self.models.get(volume_id)

    def nodes(self, volume_id: str) -> tuple[str, ...]:
        model = self.models.get(volume_id)
        return () if model is None else model.nodes

    def publish(self, volume_id: str, node: str, rwx_block: bool) -> Step:
        model = self.models.get(volume_id)
        if model is None:
            model = self.engine.track(AttachmentModel(volume_id))
            self.models[volume_id] = model
        step = self.engine.send(model, "publish", self._input(node, rwx_block))
        self._changed(model)
        if step.target == "migrating" and step.source != "migrating" and self._wake is not None:
            wake = self._wake
            self.clock.call_later(self.migration_s, lambda: wake(f"migration-deadline:{volume_id}"))
        return step

    def unpublish(self, volume_id: str, node: str) -> Step | None:
        model = self.models.get(volume_id)
        if model is None:
            return None
        step = self.engine.send(model, "unpublish", self._input(node))
        self._changed(model)
        return step

    def send(self, volume_id: str, event: str, node: str = "", evidence: bool = False) -> Step:
        """For the reconciler: `node_lost`, `node_ready`, `reconcile`."""
        model = self.models[volume_id]
        step = self.engine.send(model, event, self._input(node, evidence=evidence))
        self._changed(model)
        if step.target == "stale" and step.source != "stale" and self._wake is not None:
            # Clear promptly when the grace period ends (if there is evidence by then).
            wake = self._wake
            self.clock.call_later(self.grace_s, lambda: wake(f"grace:{volume_id}"))
        return step

    def rebuild(self, held: dict[str, list[tuple[str, bool]]]) -> list[str]:
        """Replace every attachment with what the cluster records (VolumeAttachments that are
        attached): volume id -> [(node, rwx_block)]. Two nodes on a read-write-many block
        volume is a migration in flight; anything else on two nodes is reported, and the
        first node kept (the machine then refuses the other until it detaches)."""
        problems: list[str] = []
        for model in self.models.values():
            self.engine.forget(model)
        self.models.clear()
        now = self.clock.monotonic()
        for volume_id, holders in sorted(held.items()):
            holders = sorted(set(holders))
            model = AttachmentModel(volume_id)
            model.node, model.rwx_block = holders[0]
            state = "attached"
            if len(holders) == 2 and all(rwx for _, rwx in holders):
                model.peer, state = holders[1][0], "migrating"
                model.deadline = now + self.migration_s
            elif len(holders) > 1:
                problems.append(
                    f"volume {volume_id} is recorded on nodes "
                    f"{', '.join(n for n, _ in holders)}; keeping {model.node}"
                )
            self.engine.track(model, state)
            self.models[volume_id] = model
        self._save()
        return problems

    def forget(self, volume_id: str) -> None:
        """The volume is deleted: stop tracking it (only when detached)."""
        model = self.models.pop(volume_id, None)
        if model is not None:
            self.engine.forget(model)
            self._save()

    def _changed(self, model: AttachmentModel) -> None:
        if model.state == "detached":
            self.models.pop(model.volume_id, None)
            self.engine.forget(model)
        self._save()

    # --- persistence (standalone mode) -----------------------------------------------------

    def dump(self) -> dict[str, Any]:
        # Monotonic time means nothing to the next process: store wall-clock instants.
        shift = self.clock.wall() - self.clock.monotonic()
        out: dict[str, Any] = {}
        for vid, m in sorted(self.models.items()):
            record: dict[str, Any] = {"state": m.state}
            for name in FIELDS:
                value = getattr(m, name)
                record[name] = value + shift if name in TIMES and value is not None else value
            out[vid] = record
        return out

    def restore(self, records: dict[str, Any]) -> None:
        for volume_id, record in records.items():
            model = AttachmentModel(volume_id)
            shift = self.clock.monotonic() - self.clock.wall()
            for name in FIELDS:
                value = record.get(name)
                if name in TIMES and value is not None:
                    value = float(value) + shift
                setattr(model, name, value)
            model.rwx_block = bool(model.rwx_block)
            self.engine.track(model, record.get("state"))
            self.models[volume_id] = model

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.dump(), indent=1, sort_keys=True))
        os.replace(tmp, self.path)
