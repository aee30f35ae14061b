"""FakeKube: a local kube-apiserver stand-in that the real `kubernetes.aio` client talks to.

Served (JSON only): core/v1 nodes, persistentvolumes, namespaced persistentvolumeclaims and
events; storage.k8s.io/v1 volumeattachments; coordination.k8s.io/v1 leases;
events.k8s.io/v1 events (the same stored objects as core/v1 events, converted). Namespaced
kinds also list and watch across namespaces. nodes, persistentvolumes,
persistentvolumeclaims and volumeattachments have a /status subresource.

Semantics, each as kube-apiserver has them:

* One global resourceVersion, bumped by every write and stamped on the object written;
  create sets uid and creationTimestamp and honours generateName. A write that changes
  nothing is not a write (no new resourceVersion, no watch event).
* Errors are metav1.Status bodies with upstream's reasons and messages: NotFound,
  AlreadyExists, Conflict (stale resourceVersion, UID precondition), Invalid (422 with
  causes), BadRequest, MethodNotAllowed, Expired (410), UnsupportedMediaType.
* Decoding: time fields are parsed like metav1.Time (RFC 3339) and metav1.MicroTime
  (exactly six fractional digits, e.g. Lease renewTime and Event eventTime) and re-encoded
  in UTC; anything else is a 400, as it is upstream. JSON nulls are dropped.
* Strategies: status is cleared on create for PV, PVC and VolumeAttachment; PUT/PATCH of
  the main resource keeps the stored status and /status writes change only status. PUT of
  a missing Lease or Event creates it; Lease and VolumeAttachment updates need
  metadata.resourceVersion (422 without). PV and PVC get their API defaults.
* Validation: ObjectMeta names, label keys and values and finalizer names for every kind;
  VolumeAttachment spec (required fields, immutable), PV (source, immutable source),
  PVC (spec frozen except storage requests and binding), Lease, and both Event APIs' rules
  (e.g. an event about a cluster-scoped object must live in default or kube-system).
* DELETE answers with the object for PV, PVC and VolumeAttachment and with a Success
  Status for the rest; preconditions are honoured. With finalizers the object only gets
  deletionTimestamp; the update that removes the last finalizer deletes it. No new
  finalizers may be added while deleting. Deletecollection is served.
* LIST: labelSelector (=, ==, !=, in, notin, exists, !), fieldSelector (metadata.name,
  metadata.namespace and the kind's own labels), limit/continue over a consistent snapshot
  (rebuilt from history; 410 once compacted), resourceVersion with Exact/NotOlderThan,
  504 for a version from the future. Items carry no kind/apiVersion (kubernetes#63676).
* WATCH: newline-delimited events in a chunked response. resourceVersion unset or "0"
  starts with synthetic ADDED events for the current objects; an exact version replays
  the retained history after it and then streams live; a version older than the retained
  window gets one ERROR event (Status 410 Expired) and the stream ends. Objects leaving a
  selector arrive as DELETED, entering as ADDED. timeoutSeconds ends the stream cleanly.
  sendInitialEvents ends the initial batch with the k8s.io/initial-events-end BOOKMARK;
  with `bookmark_interval` every watch that allows bookmarks gets one that often (the watch
  cache does so about once a minute), besides `FakeKube.bookmark()`. A version from the
  future starts the watch there at once (upstream may first wait up to 3 s for it).
* Authentication and authorization (with `authorizer=`): a request needs a bearer token
  granted to a user (`grant`; 401 otherwise) and RBAC must allow it (403 with the
  apiserver's message otherwise, recorded in `denied`): Roles, ClusterRoles and their
  bindings, resourceNames (never matching a create; a list or watch only through a
  metadata.name field selector), `*/subresource`, group subjects (`rbac.py`). Build the
  authorizer from the rendered deploy/kubernetes manifests to test what ships.
* Time from an injected clock (`clock=`): creation and deletion timestamps, periodic
  bookmarks, and compaction by time (`compaction_interval`: each tick compacts to the
  revision of the previous one, as the apiserver's compactor does).
* Injected faults: `delay(seconds, resource)` (answers and watch events late),
  `throttle(n, retry_after, resource, verb)` (429 TooManyRequests with Retry-After, as API
  Priority and Fairness answers), `half_open(resource)` (open watches go silent and never
  end, not even with a bookmark: only a client read timeout notices).
* PATCH: application/json-patch+json, merge-patch+json and strategic-merge-patch+json
  (see patch.py for the strategic subset and the merge keys per kind).

Error responses are logged at INFO on `rdscsi.testing.kubeapi.server` (pytest --log-level=INFO).

Every request is also recorded in `requests`, and as RBAC attributes in `accesses()`.

Not implemented: authentication other than bearer tokens, server-side apply, dryRun
(rejected with 400), managedFields, pruning of unknown fields, namespaces as objects (any
namespace exists), garbage collection, graceful deletion of pods, watch-cache delays,
discovery endpoints, protobuf and Table output.
"""

from .rbac import Access, Authorizer, User
from .server import FakeKube

__all__ = ["Access", "Authorizer", "FakeKube", "User"]
