"""Kubernetes I/O: API client set-up, the Node informer, the Event sink, the cluster's
attachment record and leader election. Every period runs on the injected `Clock`."""

from .attachments import AttachmentView, held_by_volume, list_attachments
from .client import KubeConfigError, api_client
from .events import EventStats, KubeEventSink, KubeRef, pod_ref_from_env
from .lease import LeaderElector
from .nodes import NodeView, NodeWatcher, node_view

__all__ = [
    "AttachmentView",
    "EventStats",
    "KubeConfigError",
    "KubeEventSink",
    "KubeRef",
    "LeaderElector",
    "NodeView",
    "NodeWatcher",
    "api_client",
    "held_by_volume",
    "list_attachments",
    "node_view",
    "pod_ref_from_env",
]
