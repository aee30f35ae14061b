"""The resources FakeKube serves and what the real apiserver does to each of them on a write.

Every rule here mirrors a specific piece of kube-apiserver (registry strategy, validation,
or JSON decoding); the comment on each says which, so a mismatch can be checked against
upstream rather than guessed at.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

# Field errors, as the apiserver lists them in Status.details.causes.
REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
FORBIDDEN = "FieldValueForbidden"


@dataclass(frozen=True)
class Cause:
    reason: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def required(path: str) -> Cause:
    return Cause(REQUIRED, path, "Required value")


def invalid(path: str, value: Any, detail: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return Cause(INVALID, path, f"Invalid value: {shown}: {detail}")


def forbidden(path: str, detail: str) -> Cause:
    return Cause(FORBIDDEN, path, f"Forbidden: {detail}")


class DecodeError(ValueError):
    """The body could not be decoded into the Go type: the apiserver answers 400, not 422."""


@dataclass(frozen=True, eq=False)
class Kind:
    """One REST view of a resource (`/apis/<group>/<version>/.../<plural>`)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    # Storage bucket: core/v1 and events.k8s.io/v1 Events are one resource in etcd.
    bucket: str
    # Has a /status subresource: writes to the main resource keep the stored status and
    # /status writes keep everything but status (the registries' StatusStrategy).
    status: bool = False
    # PrepareForCreate wipes status (PV, PVC, VolumeAttachment); Node keeps the kubelet's.
    clear_status_on_create: bool = False
    # Store.ReturnDeletedObject: DELETE answers with the object instead of a Status.
    return_deleted: bool = False
    # UpdateStrategy.AllowCreateOnUpdate: PUT of a missing name creates it.
    create_on_update: bool = False
    # UpdateStrategy.AllowUnconditionalUpdate: PUT without metadata.resourceVersion allowed.
    unconditional_update: bool = True
    times: tuple[str, ...] = ()
    micro_times: tuple[str, ...] = ()
    # Strategic-merge-patch list strategies (Go struct tags): path -> merge key, "" for a
    # merged list of scalars. Lists not named here are atomic (replaced whole).
    merge_keys: Mapping[str, str] = field(default_factory=dict)
    # Field selector labels beyond metadata.name/metadata.namespace -> path in this view.
    fields: Mapping[str, str] = field(default_factory=dict)
    to_storage: Callable[[Obj], Obj] = copy.deepcopy
    from_storage: Callable[[Obj], Obj] = copy.deepcopy
    validate: Callable[[Kind, Obj, Obj | None], list[Cause]] = lambda kind, obj, old: []
    defaults: Callable[[Obj], None] = lambda obj: None
    # Generic ObjectMeta validation (name syntax, labels, finalizers). Event strategies do
    # not run it for core/v1 and run it themselves on events.k8s.io/v1 create.
    meta_checks: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """Qualified resource, as apiserver messages name it: `leases.coordination.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


# --- time fields -------------------------------------------------------------------------
#
# metav1.Time decodes with time.RFC3339 (any fraction, offset required) and encodes whole
# seconds in UTC. metav1.MicroTime decodes with "2006-01-02T15:04:05.000000Z07:00", which
# needs exactly six fractional digits: Python's isoformat() drops the fraction when
# microsecond == 0 and the offset for naive datetimes, and a real apiserver rejects both
# with 400. Doing the same here is what lets these tests catch that bug.

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_RFC3339_MICRO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})")
MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
TIME_LAYOUT = "2006-01-02T15:04:05Z07:00"


def now_time(at: float | None = None) -> str:
    """metav1.Time for `at` (seconds since the epoch; None: now), whole seconds, UTC."""
    stamp = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro(at: float | None = None) -> str:
    stamp = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str, micro: bool) -> str:
    pattern, layout = (_RFC3339_MICRO, MICRO_LAYOUT) if micro else (_RFC3339, TIME_LAYOUT)
    if not pattern.fullmatch(value):
        raise DecodeError(f'parsing time "{value}" as "{layout}": cannot parse')
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    if micro:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _slots(obj: Any, path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """(parent, key) for every value at a dotted path; `[]` steps into each list element."""
    head, _, rest = path.partition(".")
    each = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(obj, dict) or key not in obj:
        return
    if not rest:
        yield obj, key
        return
    children = obj[key] if each and isinstance(obj[key], list) else [obj[key]]
    for child in children:
        yield from _slots(child, rest)


def normalize_times(kind: Kind, obj: Obj) -> None:
    """Decode and re-encode the time fields as the apiserver's JSON codec would."""
    paths = [(p, False) for p in ("metadata.creationTimestamp", "metadata.deletionTimestamp")]
    paths += [(p, False) for p in kind.times] + [(p, True) for p in kind.micro_times]
    for path, micro in paths:
        for parent, key in _slots(obj, path):
            value = parent[key]
            if value is None:
                continue
            try:
                if not isinstance(value, str):
                    raise DecodeError(f"{path}: expected a time string, got {value!r}")
                parent[key] = _parse_time(value, micro)
            except DecodeError as err:
                raise DecodeError(
                    f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                    f"{kind.kind}: {err}"
                ) from None


def lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


# --- metadata validation (apimachinery ValidateObjectMeta, as used by built-in types) ------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# metav1 FinalizerOrphanDependents / FinalizerDeleteDependents and core FinalizerKubernetes.
_STANDARD_FINALIZERS = frozenset({"orphan", "foregroundDeletion", "kubernetes"})


def dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


def qualified_name(path: str, value: Any) -> list[Cause]:
    if not isinstance(value, str) or not value:
        return [required(path)] if not value else [invalid(path, value, "must be a string")]
    prefix, slash, name = value.rpartition("/")
    if slash and (not prefix or not dns_subdomain(prefix)):
        return [invalid(path, value, "prefix part must be a DNS subdomain")]
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return [
            invalid(
                path,
                value,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character (at most 63 characters)",
            )
        ]
    return []


def validate_meta(kind: Kind, obj: Obj, *, check_name: bool = True) -> list[Cause]:
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    name = meta.get("name")
    if not name:
        causes.append(
            Cause(REQUIRED, "metadata.name", "Required value: name or generateName is required")
        )
    elif check_name and not dns_subdomain(name):
        causes.append(
            invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        )
    for key, value in (meta.get("labels") or {}).items():
        causes += qualified_name("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            causes.append(
                invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character (at most 63 characters)",
                )
            )
    for index, finalizer in enumerate(meta.get("finalizers") or []):
        path = f"metadata.finalizers[{index}]"
        found = qualified_name(path, finalizer)
        # pkg/apis/core/validation validateKubeFinalizerName applies to every built-in type.
        if not found and "/" not in finalizer and finalizer not in _STANDARD_FINALIZERS:
            found = [
                invalid(
                    path,
                    finalizer,
                    "name is neither a standard finalizer name nor is it fully qualified",
                )
            ]
        causes += found
    return causes


# --- per-kind validation -----------------------------------------------------------------


def _immutable(path: str, value: Any) -> Cause:
    return invalid(path, value, "field is immutable")


def _validate_volume_attachment(kind: Kind, obj: Obj, old: Obj | None) -> list[Cause]:
    # pkg/apis/storage/validation ValidateVolumeAttachment(+V1) / ValidateVolumeAttachmentUpdate.
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    if not spec.get("attacher"):
        causes.append(required("spec.attacher"))
    if not spec.get("nodeName"):
        causes.append(required("spec.nodeName"))
    source = spec.get("source") or {}
    given = [k for k in ("persistentVolumeName", "inlineVolumeSpec") if source.get(k)]
    if len(given) != 1:
        causes.append(
            Cause(
                REQUIRED,
                "spec.source",
                "Required value: must specify exactly one of inlineVolumeSpec and "
                "persistentVolumeName",
            )
        )
    if old is not None and spec != (old.get("spec") or {}):
        causes.append(_immutable("spec", "<spec>"))
    return causes


_PV_SOURCES = (
    "csi",
    "hostPath",
    "local",
    "nfs",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
)


def _validate_pv(kind: Kind, obj: Obj, old: Obj | None) -> list[Cause]:
    # pkg/apis/core/validation ValidatePersistentVolume(Update).
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    if not spec.get("accessModes"):
        causes.append(required("spec.accessModes"))
    if not (spec.get("capacity") or {}).get("storage"):
        causes.append(required("spec.capacity"))
    sources = [s for s in _PV_SOURCES if spec.get(s)]
    if len(sources) != 1:
        causes.append(
            Cause(REQUIRED, "spec", "Required value: must specify exactly one volume type")
        )
    csi = spec.get("csi")
    if csi:
        if not csi.get("driver"):
            causes.append(required("spec.csi.driver"))
        if not csi.get("volumeHandle"):
            causes.append(required("spec.csi.volumeHandle"))
    if old is not None:
        old_spec = old.get("spec") or {}
        if any(spec.get(s) != old_spec.get(s) for s in _PV_SOURCES):
            causes.append(
                forbidden(
                    "spec.persistentvolumesource",
                    "spec.persistentvolumesource is immutable after creation",
                )
            )
        if spec.get("volumeMode") != old_spec.get("volumeMode"):
            causes.append(_immutable("spec.volumeMode", spec.get("volumeMode")))
    return causes


def _validate_pvc(kind: Kind, obj: Obj, old: Obj | None) -> list[Cause]:
    # pkg/apis/core/validation ValidatePersistentVolumeClaim(Update): the spec is frozen
    # except storage requests (expansion), volumeAttributesClassName, and binding an unset
    # volumeName.
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    if not spec.get("accessModes"):
        causes.append(required("spec.accessModes"))
    if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
        causes.append(required("spec.resources[storage]"))
    if old is not None:
        old_spec = copy.deepcopy(old.get("spec") or {})
        new_spec = copy.deepcopy(spec)
        for s in (old_spec, new_spec):
            s.pop("volumeAttributesClassName", None)
            (s.get("resources") or {}).pop("requests", None)
        if not old_spec.get("volumeName"):
            old_spec.pop("volumeName", None)
            new_spec.pop("volumeName", None)
        if old_spec != new_spec:
            causes.append(
                forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and "
                    "volumeAttributesClassName for bound claims",
                )
            )
    return causes


def _validate_lease(kind: Kind, obj: Obj, old: Obj | None) -> list[Cause]:
    # pkg/apis/coordination/validation ValidateLeaseSpec.
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        causes.append(invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        causes.append(
            invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
        )
    return causes


def _validate_event(kind: Kind, obj: Obj, old: Obj | None) -> list[Cause]:
    """pkg/apis/core/validation/events.go, on the storage (core/v1) form.

    Legacy rules apply to both API versions; events.k8s.io/v1 adds the strict ones.
    Error paths use the names of the API version the request came in on.
    """
    strict = kind.group == "events.k8s.io"
    event = obj if not strict else _events_to_core(obj)
    meta = event.get("metadata") or {}
    namespace = meta.get("namespace", "")
    involved_ns = (event.get("involvedObject") or {}).get("namespace", "")
    controller = "reportingController" if strict else "reportingComponent"
    regarding = "regarding" if strict else "involvedObject"
    causes: list[Cause] = []
    if not event.get("eventTime"):
        if involved_ns:
            if namespace != involved_ns:
                causes.append(
                    invalid(f"{regarding}.namespace", involved_ns, "does not match event.namespace")
                )
        elif namespace not in ("", "default"):
            causes.append(
                invalid(f"{regarding}.namespace", involved_ns, "does not match event.namespace")
            )
    else:
        # An event about a cluster-scoped object (a Node, a PV) may only live in
        # default or kube-system.
        if not involved_ns and namespace not in ("default", "kube-system"):
            causes.append(
                invalid(f"{regarding}.namespace", involved_ns, "does not match event.namespace")
            )
        if not event.get("reportingComponent"):
            causes.append(required(controller))
        else:
            causes += qualified_name(controller, event["reportingComponent"])
        if not event.get("reportingInstance"):
            causes.append(required("reportingInstance"))
        elif len(event["reportingInstance"]) > 128:
            causes.append(invalid("reportingInstance", "", "can have at most 128 characters"))
        if not event.get("action"):
            causes.append(required("action"))
        elif len(event["action"]) > 128:
            causes.append(invalid("action", "", "can have at most 128 characters"))
        if not event.get("reason"):
            causes.append(required("reason"))
        elif len(event["reason"]) > 128:
            causes.append(invalid("reason", "", "can have at most 128 characters"))
        if len(event.get("message") or "") > 1024:
            causes.append(
                invalid("note" if strict else "message", "", "can have at most 1024 characters")
            )
    if not strict:
        return causes
    if old is None:
        causes += validate_meta(kind, obj)
        series = event.get("series")
        if series is not None:
            if (series.get("count") or 0) < 2:
                causes.append(invalid("series.count", "", "should be at least 2"))
            if not series.get("lastObservedTime"):
                causes.append(required("series.lastObservedTime"))
        if not event.get("eventTime"):
            causes.append(required("eventTime"))
        if event.get("type") not in ("Normal", "Warning"):
            causes.append(invalid("type", "", f"has invalid value: {event.get('type')}"))
        for core_name, name in (
            ("firstTimestamp", "deprecatedFirstTimestamp"),
            ("lastTimestamp", "deprecatedLastTimestamp"),
            ("count", "deprecatedCount"),
        ):
            if event.get(core_name):
                causes.append(invalid(name, "", "needs to be unset"))
        source = event.get("source") or {}
        if source.get("component") or source.get("host"):
            causes.append(invalid("deprecatedSource", "", "needs to be unset"))
    else:
        before = _events_to_core(old)
        for core_name, name in (
            ("involvedObject", "regarding"),
            ("reason", "reason"),
            ("message", "note"),
            ("type", "type"),
            ("action", "action"),
            ("related", "related"),
            ("reportingComponent", "reportingController"),
            ("reportingInstance", "reportingInstance"),
            ("eventTime", "eventTime"),
        ):
            if event.get(core_name) != before.get(core_name):
                causes.append(_immutable(name, event.get(core_name)))
    return causes


# --- events.k8s.io/v1 <-> core/v1 (pkg/apis/events/v1 conversion) --------------------------

_EVENT_RENAMES = {
    "regarding": "involvedObject",
    "note": "message",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
    "reportingController": "reportingComponent",
}
_EVENT_RENAMES_BACK = {v: k for k, v in _EVENT_RENAMES.items()}


def _events_to_core(obj: Obj) -> Obj:
    out = {_EVENT_RENAMES.get(k, k): copy.deepcopy(v) for k, v in obj.items()}
    out["apiVersion"] = "v1"
    return out


def _core_to_events(obj: Obj) -> Obj:
    out = {_EVENT_RENAMES_BACK.get(k, k): copy.deepcopy(v) for k, v in obj.items()}
    out["apiVersion"] = "events.k8s.io/v1"
    # events/v1 eventTime has no omitempty: an event made through core/v1 without one comes
    # back as null (which EventsV1Event, with a required event_time, cannot deserialize).
    out.setdefault("eventTime", None)
    return out


def _core_event_out(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out.setdefault("eventTime", None)  # a struct: Go always encodes it
    return out


# --- defaults (pkg/apis/core/v1 defaults.go, and PrepareForCreate) --------------------------


def _pv_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("lastPhaseTransitionTime", now_time())


def _pvc_defaults(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    obj.setdefault("status", {}).setdefault("phase", "Pending")


# --- the table ---------------------------------------------------------------------------

_META_MERGE = {"metadata.finalizers": "", "metadata.ownerReferences": "uid"}

_CORE_EVENT_FIELDS = {
    "involvedObject.kind": "involvedObject.kind",
    "involvedObject.namespace": "involvedObject.namespace",
    "involvedObject.name": "involvedObject.name",
    "involvedObject.uid": "involvedObject.uid",
    "involvedObject.apiVersion": "involvedObject.apiVersion",
    "involvedObject.resourceVersion": "involvedObject.resourceVersion",
    "involvedObject.fieldPath": "involvedObject.fieldPath",
    "reason": "reason",
    "reportingComponent": "reportingComponent",
    "source": "source.component",
    "type": "type",
}
_EVENTS_V1_FIELDS = {
    **{
        f"regarding.{k}": f"regarding.{k}"
        for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    },
    "reason": "reason",
    "reportingController": "reportingController",
    "type": "type",
}

KINDS: tuple[Kind, ...] = (
    Kind(
        "",
        "v1",
        "nodes",
        "Node",
        namespaced=False,
        bucket="nodes",
        status=True,
        create_on_update=False,
        times=(
            "spec.taints[].timeAdded",
            "status.conditions[].lastHeartbeatTime",
            "status.conditions[].lastTransitionTime",
        ),
        merge_keys={
            **_META_MERGE,
            "spec.podCIDRs": "",
            "status.conditions": "type",
            "status.addresses": "type",
        },
        fields={"spec.unschedulable": "spec.unschedulable"},
    ),
    Kind(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        namespaced=False,
        bucket="persistentvolumes",
        status=True,
        clear_status_on_create=True,
        return_deleted=True,
        times=("status.lastPhaseTransitionTime",),
        merge_keys=_META_MERGE,
        validate=_validate_pv,
        defaults=_pv_defaults,
    ),
    Kind(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        namespaced=True,
        bucket="persistentvolumeclaims",
        status=True,
        clear_status_on_create=True,
        return_deleted=True,
        times=("status.conditions[].lastProbeTime", "status.conditions[].lastTransitionTime"),
        merge_keys={**_META_MERGE, "status.conditions": "type"},
        validate=_validate_pvc,
        defaults=_pvc_defaults,
    ),
    Kind(
        "storage.k8s.io",
        "v1",
        "volumeattachments",
        "VolumeAttachment",
        namespaced=False,
        bucket="volumeattachments",
        status=True,
        clear_status_on_create=True,
        return_deleted=True,
        unconditional_update=False,
        times=("status.attachError.time", "status.detachError.time"),
        merge_keys=_META_MERGE,
        validate=_validate_volume_attachment,
    ),
    Kind(
        # A CRD (the external snapshotter's): served unless a test hides it
        # (`FakeKube.absent`), as a cluster without the snapshot CRDs answers 404.
        "snapshot.storage.k8s.io",
        "v1",
        "volumesnapshotcontents",
        "VolumeSnapshotContent",
        namespaced=False,
        bucket="volumesnapshotcontents",
        status=True,
        merge_keys=_META_MERGE,
    ),
    Kind(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        namespaced=True,
        bucket="leases",
        create_on_update=True,
        unconditional_update=False,
        micro_times=("spec.acquireTime", "spec.renewTime"),
        merge_keys=_META_MERGE,
        validate=_validate_lease,
    ),
    Kind(
        "",
        "v1",
        "events",
        "Event",
        namespaced=True,
        bucket="events",
        create_on_update=True,
        times=("firstTimestamp", "lastTimestamp"),
        micro_times=("eventTime", "series.lastObservedTime"),
        merge_keys=_META_MERGE,
        fields=_CORE_EVENT_FIELDS,
        from_storage=_core_event_out,
        validate=_validate_event,
        meta_checks=False,
    ),
    Kind(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        namespaced=True,
        bucket="events",
        create_on_update=True,
        times=("deprecatedFirstTimestamp", "deprecatedLastTimestamp"),
        micro_times=("eventTime", "series.lastObservedTime"),
        merge_keys=_META_MERGE,
        fields=_EVENTS_V1_FIELDS,
        to_storage=_events_to_core,
        from_storage=_core_to_events,
        validate=_validate_event,
        meta_checks=False,
    ),
)

BY_PATH: dict[tuple[str, str, str], Kind] = {(k.group, k.version, k.plural): k for k in KINDS}
BY_KIND: dict[tuple[str, str], Kind] = {(k.api_version, k.kind): k for k in KINDS}


def kind_of(api_version: str, kind: str) -> Kind:
    try:
        return BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"FakeKube does not serve {api_version} {kind}") from None
