"""The Kubernetes API access each part of this package needs, as RBAC rules.

Kept next to the code that makes the calls (and checked against the requests it really
makes, in tests/kube/test_rbac.py) so deployment manifests can be written from it.
"""

from __future__ import annotations

from typing import NamedTuple


class Rule(NamedTuple):
    group: str  # "" is the core API group
    resource: str
    verbs: frozenset[str]
    why: str


def _rule(group: str, resource: str, verbs: str, why: str) -> Rule:
    return Rule(group, resource, frozenset(verbs.split()), why)


NODE_WATCHER = (_rule("", "nodes", "list watch", "Node informer"),)
EVENT_SINK = (
    _rule("events.k8s.io", "events", "create", "post Events"),
    _rule("", "persistentvolumes", "get", "PV -> bound PVC (claimRef) for `regarding`"),
    _rule("", "nodes", "get", "the Node's uid for `regarding`"),
)
ATTACHMENTS = (
    _rule("storage.k8s.io", "volumeattachments", "list", "the cluster's attachment record"),
    _rule("", "persistentvolumes", "list", "volume handle and mode per VolumeAttachment"),
)
LEADER_ELECTION = (
    _rule("coordination.k8s.io", "leases", "get create update", "leader election (one Lease)"),
)


def merged(*parts: tuple[Rule, ...]) -> dict[tuple[str, str], frozenset[str]]:
    """(group, resource) -> verbs, over the parts a binary uses."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for part in parts:
        for rule in part:
            key = (rule.group, rule.resource)
            out[key] = out.get(key, frozenset()) | rule.verbs
    return out


CONTROLLER = merged(NODE_WATCHER, EVENT_SINK, ATTACHMENTS, LEADER_ELECTION)
