"""The Kubernetes API access each part of this package needs, as RBAC rules.

Kept next to the code that makes the calls (and checked against the requests it really
makes, namespace and object name included, in tests/kube/test_rbac.py) so the deployment
manifests can be checked against it (tests/deploy): cluster-wide rules are the
`rdscsi-controller` ClusterRole, namespaced ones (the Lease, by name) its Role in the
driver's namespace. The node plugin's one rule (`NODE`) is the `rdscsi-node` ClusterRole.
"""

from __future__ import annotations

from typing import NamedTuple

from .lease import lease_name


class Rule(NamedTuple):
    group: str  # "" is the core API group
    resource: str
    verbs: frozenset[str]
    why: str
    names: frozenset[str] = frozenset()  # resourceNames; empty: any name
    namespaced: bool = False  # granted by a Role in the driver's namespace only


def _rule(
    group: str, resource: str, verbs: str, why: str, names: str = "", ns: bool = False
) -> Rule:
    return Rule(group, resource, frozenset(verbs.split()), why, frozenset(names.split()), ns)


NODE_INFORMER = (_rule("", "nodes", "list watch", "Node informer"),)
ATTACHMENT_INFORMERS = (
    _rule("storage.k8s.io", "volumeattachments", "list watch", "VolumeAttachment informer"),
    _rule("", "persistentvolumes", "list watch", "PersistentVolume informer (volume handles)"),
)
SNAPSHOT_CLAIMS = (
    _rule(
        "snapshot.storage.k8s.io",
        "volumesnapshotcontents",
        "list",
        "orphan sweep: which snapshots a VolumeSnapshotContent claims",
    ),
)
HOST_NQN_REPORT = (
    _rule("", "nodes", "patch", "node plugin: its host NQN, an annotation on its own Node"),
)
EVENT_SINK = (
    _rule("events.k8s.io", "events", "create patch", "post Events; patch their series"),
    _rule("", "persistentvolumes", "get", "PV -> bound PVC (claimRef) for `regarding`"),
    _rule("", "nodes", "get", "the Node's uid for `regarding`"),
)


def leader_election(lease: str) -> tuple[Rule, ...]:
    """One Lease in the driver's namespace. A create cannot be limited by name (the name is
    not part of a create request's URL), so it is a rule of its own."""
    return (
        _rule("coordination.k8s.io", "leases", "create", "leader election: first Lease", ns=True),
        _rule(
            "coordination.k8s.io",
            "leases",
            "get update",
            "leader election: read and renew our Lease",
            lease,
            ns=True,
        ),
    )


def merged(*parts: tuple[Rule, ...]) -> dict[tuple[str, str], frozenset[str]]:
    """(group, resource) -> verbs, over the cluster-wide rules of the parts."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for part in parts:
        for rule in part:
            if rule.namespaced or rule.names:
                continue
            key = (rule.group, rule.resource)
            out[key] = out.get(key, frozenset()) | rule.verbs
    return out


def namespaced(*parts: tuple[Rule, ...]) -> set[tuple[str, str, frozenset[str], frozenset[str]]]:
    """(group, resource, verbs, names) of the rules a namespaced Role grants."""
    return {(r.group, r.resource, r.verbs, r.names) for part in parts for r in part if r.namespaced}


def controller_rules(driver: str) -> tuple[Rule, ...]:
    """Everything the controller container does, for a driver named `driver`."""
    return (
        *NODE_INFORMER,
        *ATTACHMENT_INFORMERS,
        *SNAPSHOT_CLAIMS,
        *EVENT_SINK,
        *leader_election(lease_name(driver)),
    )


def node_rules() -> tuple[Rule, ...]:
    """Everything the node plugin's container does (`serve --node --kubernetes`)."""
    return HOST_NQN_REPORT


CONTROLLER = merged(NODE_INFORMER, ATTACHMENT_INFORMERS, SNAPSHOT_CLAIMS, EVENT_SINK)
NODE = merged(HOST_NQN_REPORT)
