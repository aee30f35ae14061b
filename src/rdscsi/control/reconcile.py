"""One reconcile pass over every attachment that depends on a node or a clock.

- attached to a lost node → `node_lost` (stale; the grace period starts)
- stale, node ready again → `node_ready` (nothing was cleared)
- stale otherwise → `reconcile` with the evidence; the machine clears it only with evidence
  and after the grace period
- migrating with a lost end → `node_lost`; otherwise `reconcile` (the deadline)
The pass only sends events; the Attachment machine decides. It runs in the leader only.
"""

from __future__ import annotations

from collections import Counter

from ..csi.attachments import AttachmentBook
from .nodes import NodeBook


def reconcile_attachments(book: AttachmentBook, nodes: NodeBook) -> Counter[str]:
    """Returns how many attachments took each event (for logs and tests)."""
    done: Counter[str] = Counter()
    for vid, model in list(book.models.items()):
        holder = model.node or ""
        if model.state == "attached":
            if nodes.lost(holder):
                book.send(vid, "node_lost", holder)
                done["node_lost"] += 1
        elif model.state == "stale":
            if nodes.ready(holder):
                book.send(vid, "node_ready", holder)
                done["node_ready"] += 1
            else:
                step = book.send(vid, "reconcile", holder, nodes.evidence(holder))
                done["cleared" if step.target == "detached" else "waiting"] += 1
        elif model.state == "migrating":
            lost = next((n for n in (model.peer, model.node) if n and nodes.lost(n)), None)
            if lost is not None:
                book.send(vid, "node_lost", lost)
                done["node_lost"] += 1
            else:
                step = book.send(vid, "reconcile", holder)
                if step.target != "migrating":
                    done["migration_expired"] += 1
    return done
