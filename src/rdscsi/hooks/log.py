"""Logs every state change: the operator's trail of what each machine did and why."""

from __future__ import annotations

import logging

from ..machines.engine import Step

log = logging.getLogger("rdscsi.fsm")


class TransitionLogger:
    """INFO for state changes, DEBUG for self-transitions (idempotent repeats, waits)."""

    def after_transition(self, step: Step) -> None:
        level = logging.INFO if step.source != step.target else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s: %s --%s--> %s",
                step.machine,
                step.model.key,
                step.source,
                step.event,
                step.target,
            )
