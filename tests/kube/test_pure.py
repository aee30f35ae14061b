"""Pure parts of the Kubernetes I/O: node, attachment and volume views, pacing, MicroTime,
Retry-After."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from kubernetes.aio.client.exceptions import ApiException

from rdscsi.io.kube.attachments import (
    AttachmentView,
    VolumeView,
    attachment_view,
    is_rwx_block,
    volume_view,
)
from rdscsi.io.kube.events import KubeRef, is_qualified_name, pod_ref_from_env
from rdscsi.io.kube.nodes import NodeView, node_view
from rdscsi.io.kube.ratelimit import Backoff, TokenBucket
from rdscsi.io.kube.wire import (
    format_micro_time,
    micro_time,
    parse_time,
    retry_after,
    truncate_utf8,
)
from rdscsi.machines.node import OUT_OF_SERVICE_TAINT


def node(
    name: str = "n1", ready: str | None = "True", taints: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready})
    return {
        "metadata": {"name": name},
        "spec": {"taints": taints or []},
        "status": {"conditions": conditions},
    }


# --- node views -------------------------------------------------------------------------


def decided(obj: dict[str, Any], deleted: bool = False) -> NodeView | None:
    """The view without what only `rdscsi explain` shows (conditions, taints)."""
    view = node_view(obj, deleted)
    return None if view is None else dataclasses.replace(view, conditions=(), taints=())


def test_conditions_and_taints_are_kept_for_explain_without_heartbeats() -> None:
    obj = node(
        ready="False", taints=[{"key": OUT_OF_SERVICE_TAINT, "value": "x", "effect": "NoExecute"}]
    )
    obj["status"]["conditions"][1].update(reason="NodeStatusUnknown", lastHeartbeatTime="t")
    obj["spec"]["taints"].append({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"})
    view = node_view(obj)
    assert view is not None
    assert view.conditions == (
        ("MemoryPressure", "False", ""),
        ("Ready", "False", "NodeStatusUnknown"),
    )
    assert view.taints == (
        f"{OUT_OF_SERVICE_TAINT}=x:NoExecute",
        "node.kubernetes.io/unreachable:NoSchedule",
    )
    obj["status"]["conditions"][1]["lastHeartbeatTime"] = "later"
    assert node_view(obj) == view  # a heartbeat alone is no change


def test_ready_only_when_condition_is_true() -> None:
    assert decided(node(ready="True")) == NodeView("n1", True, False, False)
    assert decided(node(ready="False")) == NodeView("n1", False, False, False)
    assert decided(node(ready="Unknown")) == NodeView("n1", False, False, False)
    assert decided(node(ready=None)) == NodeView("n1", False, False, False)


def test_out_of_service_taint_with_any_effect() -> None:
    for effect in ("NoExecute", "NoSchedule", "PreferNoSchedule"):
        taints = [{"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": effect}]
        view = decided(node(ready="False", taints=taints))
        assert view == NodeView("n1", False, True, False)
    other = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    assert decided(node(taints=other)) == NodeView("n1", True, False, False)


def test_deleted_flag_and_malformed_objects() -> None:
    assert decided(node(), deleted=True) == NodeView("n1", True, False, True)
    assert decided({"metadata": {}}) is None
    assert decided({}) is None
    # Missing spec/status: not ready, not tainted, no crash.
    assert decided({"metadata": {"name": "bare"}}) == NodeView("bare", False, False, False)
    assert decided({"metadata": {"name": "x"}, "status": {"conditions": ["junk", None]}}) == (
        NodeView("x", False, False, False)
    )


# --- token bucket and backoff -------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    b = TokenBucket(burst=3, per_second=0.5, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_time(0.0) == pytest.approx(2.0)
    assert not b.take(1.9)
    assert b.take(2.0)
    assert not b.take(2.0)
    # Refill never exceeds the burst.
    assert b.tokens(1000.0) == 3
    assert b.full(1000.0)


def test_token_bucket_ignores_time_going_back() -> None:
    b = TokenBucket(burst=1, per_second=1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)  # earlier time mints nothing
    assert not b.take(10.5)
    assert b.take(11.0)


def test_token_bucket_validates() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.0, 0.0)


def test_backoff_doubles_to_cap_and_resets() -> None:
    b = Backoff(initial=0.5, cap=4.0, jitter=0.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_backoff_jitter_only_stretches() -> None:
    b = Backoff(initial=1.0, cap=1.0, jitter=0.2, rand=lambda: 0.999)
    assert 1.0 <= b.next() < 1.2
    b = Backoff(initial=1.0, cap=1.0, jitter=0.2, rand=lambda: 0.0)
    assert b.next() == 1.0


# --- wire formats -------------------------------------------------------------------------


def test_micro_time_always_has_six_digits_and_z() -> None:
    # A whole second: isoformat() would drop the fraction, which the apiserver rejects.
    assert format_micro_time(1_700_000_000.0) == "2023-11-14T22:13:20.000000Z"
    assert format_micro_time(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"
    assert micro_time(0.000001).isoformat() == "1970-01-01T00:00:00.000001Z"


def test_micro_time_survives_the_generated_models() -> None:
    from kubernetes.aio.client import ApiClient, Configuration, V1LeaseSpec

    spec = V1LeaseSpec(holder_identity="a", renew_time=micro_time(1_700_000_000.0))
    client = ApiClient(Configuration())  # no session until a request is made
    assert client.sanitize_for_serialization(spec)["renewTime"] == "2023-11-14T22:13:20.000000Z"


def test_truncate_counts_bytes_and_keeps_characters_whole() -> None:
    assert truncate_utf8("short", 10) == "short"
    cut = truncate_utf8("é" * 600, 1024)  # 1200 bytes
    assert len(cut.encode()) <= 1024
    assert cut.endswith("...")
    assert cut[:-3] == "é" * len(cut[:-3])


# --- events helpers -----------------------------------------------------------------------


def test_qualified_names() -> None:
    assert is_qualified_name("rds.csi.mikrotik.com/controller")
    assert is_qualified_name("rdscsi")
    assert not is_qualified_name("Bad Name")
    assert not is_qualified_name("UPPER.example/x")
    assert not is_qualified_name("")


def test_pod_ref_from_env() -> None:
    assert pod_ref_from_env({}) is None
    assert pod_ref_from_env({"POD_NAME": "p"}) is None
    env = {"POD_NAME": "ctl-0", "POD_NAMESPACE": "rds", "POD_UID": "u-1"}
    assert pod_ref_from_env(env) == KubeRef("Pod", "ctl-0", "rds", "u-1")


# --- attachments join ---------------------------------------------------------------------

DRIVER = "rds.csi.mikrotik.com"


def va(
    name: str,
    pv: str | None,
    node_name: str = "n1",
    attacher: str = DRIVER,
    attached: bool | None = True,
) -> dict[str, Any]:
    source: dict[str, Any] = (
        {"persistentVolumeName": pv} if pv else {"inlineVolumeSpec": {"csi": {}}}
    )
    obj: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"attacher": attacher, "nodeName": node_name, "source": source},
    }
    if attached is not None:
        obj["status"] = {"attached": attached}
    return obj


def pv(
    name: str,
    handle: str,
    mode: str | None = None,
    modes: tuple[str, ...] = ("ReadWriteOnce",),
    driver: str = DRIVER,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "csi": {"driver": driver, "volumeHandle": handle},
        "accessModes": list(modes),
    }
    if mode:
        spec["volumeMode"] = mode
    return {"metadata": {"name": name}, "spec": spec}


def test_attachment_views_keep_only_this_drivers_with_a_pv() -> None:
    stamp = {"creationTimestamp": "2024-05-01T10:00:00Z"}
    one = va("va-1", "pv-1", "n1")
    one["metadata"] |= stamp
    assert attachment_view(one, DRIVER) == AttachmentView(
        "va-1", "n1", "pv-1", True, parse_time("2024-05-01T10:00:00Z") or 0.0
    )
    pending = va("pending", "pv-1", "n8", attached=None)
    assert attachment_view(pending, DRIVER) == AttachmentView("pending", "n8", "pv-1", False, 0.0)
    deleting = va("gone", "pv-1", "n2")
    deleting["metadata"]["deletionTimestamp"] = "2024-05-01T10:00:01Z"
    view = attachment_view(deleting, DRIVER)
    assert view is not None and view.deleting and view.attached
    assert attachment_view(va("other", "pv-x", attacher="ebs.csi.aws.com"), DRIVER) is None
    assert attachment_view(va("inline", None), DRIVER) is None
    assert attachment_view({"metadata": {"name": "x"}}, DRIVER) is None


def test_volume_views() -> None:
    assert volume_view(pv("pv-1", "vol-1"), DRIVER) == VolumeView("pv-1", "vol-1", False)
    rwx = pv("pv-2", "vol-2", mode="Block", modes=("ReadWriteMany",))
    assert volume_view(rwx, DRIVER) == VolumeView("pv-2", "vol-2", True)
    bound = pv("pv-3", "vol-3")
    bound["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": "apps", "name": "db"}
    assert volume_view(bound, DRIVER) == VolumeView("pv-3", "vol-3", False, "apps/db")
    assert volume_view(pv("pv-x", "x", driver="ebs.csi.aws.com"), DRIVER) is None
    assert volume_view({"metadata": {"name": "nfs"}, "spec": {"nfs": {}}}, DRIVER) is None


def test_rwx_block_needs_both() -> None:
    assert is_rwx_block(pv("a", "h", mode="Block", modes=("ReadWriteMany",)))
    assert not is_rwx_block(pv("a", "h", mode="Block", modes=("ReadWriteOnce",)))
    assert not is_rwx_block(pv("a", "h", mode="Filesystem", modes=("ReadWriteMany",)))
    assert not is_rwx_block(pv("a", "h", modes=("ReadWriteMany",)))  # mode defaults to Filesystem


def test_node_view_dates_the_ready_condition() -> None:
    obj = node(ready="False")
    obj["status"]["conditions"][1]["lastTransitionTime"] = "2024-05-01T10:00:00Z"
    view = node_view(obj)
    assert view is not None and view.since == parse_time("2024-05-01T10:00:00Z")
    assert (
        parse_time("2024-05-01T10:00:00.250000Z")
        == (parse_time("2024-05-01T10:00:00Z") or 0) + 0.25
    )
    assert parse_time("garbage") is None and parse_time(None) is None


def test_retry_after_is_read_from_429_and_503_only() -> None:
    def err(status: int, value: str | None) -> ApiException:
        exc = ApiException(status=status, reason="x")
        exc.headers = {"Retry-After": value} if value is not None else {}
        return exc

    assert retry_after(err(429, "3")) == 3.0
    assert retry_after(err(503, "1")) == 1.0
    assert retry_after(err(500, "3")) is None
    assert retry_after(err(429, None)) is None
    assert retry_after(err(429, "Wed, 21 Oct 2015 07:28:00 GMT")) is None
    assert retry_after(err(429, "-1")) is None
    assert retry_after(err(429, "99999")) == 600.0  # bounded
    assert retry_after(RuntimeError("no status")) is None
