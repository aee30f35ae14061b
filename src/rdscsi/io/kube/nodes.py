"""Nodes as the controller sees them: the `Resource` for the informer and the view of one Node.

A `NodeView` says whether the node is Ready (only an explicit "True" is), whether it carries
the `node.kubernetes.io/out-of-service` taint, and since when its Ready condition has had its
current value (`lastTransitionTime`): the moment a NotReady node was lost, taken from the
object so that every replica (and the next leader) dates it alike; and the NVMe host NQN the
driver's node plugin wrote into the `<driver>/host-nqn` annotation (`io.kube.hostnqn`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.aio.client import ApiClient, CoreV1Api

from ...control.nodes import NodeView
from ...machines.node import OUT_OF_SERVICE_TAINT
from .informer import Resource
from .wire import ListCall, get_path, parse_time

__all__ = ["NODES", "NodeView", "host_nqn_annotation", "node_view", "nodes_resource"]


def host_nqn_annotation(driver: str) -> str:
    """The annotation on its Node where the node plugin reports its NVMe host NQN."""
    return f"{driver}/host-nqn"


def node_view(
    obj: Mapping[str, Any], deleted: bool = False, annotation: str | None = None
) -> NodeView | None:
    """The view of one Node object (API JSON); None when it has no name. `annotation`: where
    to read the host NQN (none: not read)."""
    name = get_path(obj, "metadata", "name")
    if not isinstance(name, str) or not name:
        return None
    conditions = get_path(obj, "status", "conditions") or []
    ready_condition = next(
        (c for c in conditions if isinstance(c, Mapping) and c.get("type") == "Ready"), None
    )
    # Only an explicit "True" is ready: "False" and "Unknown" (kubelet silent) are not.
    ready = ready_condition is not None and ready_condition.get("status") == "True"
    since = parse_time(ready_condition.get("lastTransitionTime")) if ready_condition else None
    taints = get_path(obj, "spec", "taints") or []
    # Any effect counts: NoExecute is the documented one, NoSchedule is seen in the wild.
    out_of_service = any(
        isinstance(t, Mapping) and t.get("key") == OUT_OF_SERVICE_TAINT for t in taints
    )
    # Shown by `rdscsi explain`; heartbeat times are left out so that only real changes
    # change the view.
    shown_conditions = tuple(
        (str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""))
        for c in conditions
        if isinstance(c, Mapping) and c.get("type")
    )
    shown_taints = tuple(
        f"{t.get('key')}" + (f"={t['value']}" if t.get("value") else "") + f":{t.get('effect')}"
        for t in taints
        if isinstance(t, Mapping) and t.get("key")
    )
    nqn = None
    if annotation is not None:
        value = (get_path(obj, "metadata", "annotations") or {}).get(annotation)
        nqn = value.strip() if isinstance(value, str) and value.strip() else None
    return NodeView(
        name, ready, out_of_service, deleted, since, shown_conditions, shown_taints, host_nqn=nqn
    )


def _list_nodes(api: ApiClient) -> ListCall:
    return CoreV1Api(api).list_node_without_preload_content  # type: ignore[no-any-return]


def nodes_resource(driver: str) -> Resource[NodeView]:
    """Nodes, with the host NQN the node plugin of `driver` reported on each."""
    key = host_nqn_annotation(driver)
    return Resource(
        "nodes", _list_nodes, lambda obj: node_view(obj, annotation=key), lambda v: v.name
    )


NODES: Resource[NodeView] = Resource("nodes", _list_nodes, node_view, lambda v: v.name)
