"""FakeKube, exercised through the real `kubernetes.aio` client and its typed models.

How `kubernetes.aio.watch.Watch` surfaces a 410 (the apiserver sends it as an ERROR event
on a 200 stream, never as an HTTP status): `Watch.unmarshal_event` turns the ERROR event
into `ApiException(status=410, reason="Expired: too old resource version: ...")`. With
`timeout_seconds` the exception is raised at once; without it the Watch reconnects once
from the same resourceVersion, gets the 410 again, and then raises. Either way the caller
must relist. Without `timeout_seconds` the Watch also reconnects, from the last
resourceVersion it saw, whenever the server ends the stream (`drop_watches`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client, config, watch
from kubernetes.aio.client import ApiException

from rdscsi.testing.kubeapi import Access, FakeKube
from rdscsi.testing.kubeapi.objects import lease, node, pv, pvc, volume_attachment

DRIVER = "rds.csi.mikrotik.com"
# Six fractional digits survive Python's isoformat(), which a MicroTime field needs.
STAMP = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as fake:
        yield fake


@pytest.fixture
async def api(kube: FakeKube) -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient(kube.configuration()) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def storage(api: client.ApiClient) -> client.StorageV1Api:
    return client.StorageV1Api(api)


def status_of(err: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.body)
    assert body["kind"] == "Status" and body["code"] == err.status
    return body


async def take(stream: Any, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The first n events of a Watch stream (events carry typed objects)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == n:
                break
    return events


def names(items: Any) -> list[str]:
    return [item.metadata.name for item in items]


# --- connection --------------------------------------------------------------------------


async def test_kubeconfig_points_the_client_at_the_server(kube: FakeKube, tmp_path: Path) -> None:
    kube.put(node("n1"))
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube.kubeconfig(tmp_path)), client_configuration=configuration
    )
    async with client.ApiClient(configuration) as api_client:
        nodes = await client.CoreV1Api(api_client).list_node()
    assert names(nodes.items) == ["n1"]


async def test_unknown_paths_are_404_status_and_every_request_is_recorded(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{kube.url}/api/v1/pods?limit=1") as response,
    ):
        assert response.status == 404
        body = await response.json()
    assert body["reason"] == "NotFound" and body["kind"] == "Status"
    await core.list_node(label_selector="a=b")
    with pytest.raises(ApiException):
        await core.read_namespaced_persistent_volume_claim("c", "ns")
    assert kube.requests == [
        ("GET", "/api/v1/pods", {"limit": "1"}),
        ("GET", "/api/v1/nodes", {"labelSelector": "a=b"}),
        ("GET", "/api/v1/namespaces/ns/persistentvolumeclaims/c", {}),
    ]
    assert kube.accesses() == [
        Access("list", "", "nodes", "", ""),
        Access("get", "", "persistentvolumeclaims", "ns", "c"),
    ]


# --- nodes -------------------------------------------------------------------------------


async def test_node_list_get_create_and_delete(kube: FakeKube, core: client.CoreV1Api) -> None:
    kube.put(node("n1"))
    nodes = await core.list_node()
    assert isinstance(nodes, client.V1NodeList)
    assert nodes.metadata.resource_version == str(kube.resource_version)
    assert nodes.items[0].status.conditions[0].type == "Ready"
    assert nodes.items[0].kind is None  # as upstream: list items carry no TypeMeta
    assert (await core.read_node("n1")).kind == "Node"

    created = await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n2")))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert int(created.metadata.resource_version) == kube.resource_version
    with pytest.raises(ApiException) as err:
        await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n2")))
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"

    assert names((await core.list_node(field_selector="metadata.name=n2")).items) == ["n2"]
    with pytest.raises(ApiException) as err:
        await core.list_node(field_selector="spec.nodeName=n2")
    assert err.value.status == 400

    # Nodes are not ReturnDeletedObject: DELETE answers with a Success Status.
    gone = await core.delete_node("n2")
    assert gone["kind"] == "Status" and gone["status"] == "Success"
    assert gone["details"] == {"name": "n2", "kind": "nodes", "uid": created.metadata.uid}
    with pytest.raises(ApiException) as err:
        await core.read_node("n2")
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'nodes "n2" not found'


async def test_node_strategic_merge_patch_merges_labels_and_replaces_taints(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("n1", taints=[{"key": "a", "effect": "NoSchedule"}]))
    patched = await core.patch_node(
        "n1",
        {
            "metadata": {"labels": {"rds/ready": "true"}},
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
            # Writes to the main resource never touch status.
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        },
    )
    assert patched.metadata.labels["rds/ready"] == "true"
    assert patched.metadata.labels["kubernetes.io/hostname"] == "n1"
    assert [(t.key, t.effect) for t in patched.spec.taints] == [("b", "NoExecute")]
    assert patched.status.conditions[0].status == "True"

    # status.conditions merge on their `type` key, through the status subresource.
    patched = await core.patch_node_status(
        "n1", {"status": {"conditions": [{"type": "DiskPressure", "status": "False"}]}}
    )
    assert [(c.type, c.status) for c in patched.status.conditions] == [
        ("Ready", "True"),
        ("DiskPressure", "False"),
    ]


async def test_node_merge_and_json_patch(kube: FakeKube, core: client.CoreV1Api) -> None:
    kube.put(node("n1", labels={"drop": "me"}, taints=[{"key": "a", "effect": "NoSchedule"}]))
    patched = await core.patch_node(
        "n1",
        {"metadata": {"labels": {"drop": None, "add": "x"}}, "spec": {"taints": []}},
        _content_type="application/merge-patch+json",
    )
    assert "drop" not in patched.metadata.labels and patched.metadata.labels["add"] == "x"
    assert not patched.spec.taints

    # A list body is sent as application/json-patch+json.
    patched = await core.patch_node(
        "n1",
        [
            {"op": "test", "path": "/metadata/labels/add", "value": "x"},
            {"op": "add", "path": "/spec/taints", "value": [{"key": "c", "effect": "NoSchedule"}]},
        ],
    )
    assert [t.key for t in patched.spec.taints] == ["c"]
    with pytest.raises(ApiException) as err:
        await core.patch_node("n1", [{"op": "test", "path": "/metadata/labels/add", "value": "y"}])
    assert err.value.status == 422


async def test_node_replace_with_a_stale_resource_version_conflicts(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("n1"))
    mine = await core.read_node("n1")
    kube.put(node("n1", labels={"someone": "else"}))
    mine.metadata.labels["me"] = "too"
    with pytest.raises(ApiException) as err:
        await core.replace_node("n1", mine)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"

    # A patch that names a resourceVersion is conditional on it too.
    with pytest.raises(ApiException) as err:
        await core.patch_node(
            "n1", {"metadata": {"resourceVersion": mine.metadata.resource_version}}
        )
    assert err.value.status == 409

    fresh = await core.read_node("n1")
    fresh.metadata.labels["me"] = "too"
    replaced = await core.replace_node("n1", fresh)
    assert replaced.metadata.labels["me"] == "too" and replaced.metadata.labels["someone"] == "else"


async def test_a_patch_that_changes_nothing_is_not_a_write(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("n1", labels={"a": "b"}))
    before = kube.resource_version
    patched = await core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    assert patched.metadata.resource_version == str(before) == str(kube.resource_version)


async def test_invalid_label_values_are_rejected(kube: FakeKube, core: client.CoreV1Api) -> None:
    kube.put(node("n1"))
    with pytest.raises(ApiException) as err:
        await core.patch_node("n1", {"metadata": {"labels": {"volume": "pvc:ns/name"}}})
    body = status_of(err.value)
    assert err.value.status == 422 and body["details"]["causes"][0]["field"] == "metadata.labels"


# --- persistent volumes and claims -------------------------------------------------------


async def test_pv_create_clears_status_and_defaults(kube: FakeKube, core: client.CoreV1Api) -> None:
    body = pv("pv-1", DRIVER, "vol-1")
    body["spec"].pop("persistentVolumeReclaimPolicy")
    created = await core.create_persistent_volume(body)
    assert created.status.phase == "Pending"
    assert created.spec.persistent_volume_reclaim_policy == "Retain"
    assert created.spec.csi.volume_handle == "vol-1"

    bound = await core.patch_persistent_volume_status("pv-1", {"status": {"phase": "Bound"}})
    assert bound.status.phase == "Bound"
    with pytest.raises(ApiException) as err:
        await core.patch_persistent_volume("pv-1", {"spec": {"csi": {"volumeHandle": "other"}}})
    assert err.value.status == 422

    deleted = await core.delete_persistent_volume("pv-1")
    assert isinstance(deleted, client.V1PersistentVolume)  # PVs return the deleted object
    assert int(deleted.metadata.resource_version) == kube.resource_version


async def test_pvc_namespaces_selectors_and_delete(kube: FakeKube, core: client.CoreV1Api) -> None:
    labelled = pvc("a", "data", "pv-1")
    labelled["metadata"]["labels"] = {"app": "db"}
    kube.put(labelled)
    kube.put(pvc("b", "data", None))
    kube.put(pvc("b", "logs", None))
    claims = await core.list_persistent_volume_claim_for_all_namespaces()
    assert [(c.metadata.namespace, c.metadata.name) for c in claims.items] == [
        ("a", "data"),
        ("b", "data"),
        ("b", "logs"),
    ]
    assert names((await core.list_namespaced_persistent_volume_claim("b")).items) == [
        "data",
        "logs",
    ]
    selected = await core.list_persistent_volume_claim_for_all_namespaces(
        label_selector="app in (db, web)"
    )
    assert [c.metadata.namespace for c in selected.items] == ["a"]
    unlabelled = await core.list_persistent_volume_claim_for_all_namespaces(
        label_selector="app!=db,!app"
    )
    assert len(unlabelled.items) == 2

    created = await core.create_namespaced_persistent_volume_claim(
        "c",
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="new"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    assert created.metadata.namespace == "c" and created.status.phase == "Pending"
    deleted = await core.delete_namespaced_persistent_volume_claim("data", "b")
    assert isinstance(deleted, client.V1PersistentVolumeClaim)
    await core.delete_collection_namespaced_persistent_volume_claim("a", label_selector="app=db")
    assert [c["metadata"]["name"] for c in kube.list("v1", "PersistentVolumeClaim")] == [
        "logs",
        "new",
    ]


async def test_list_pages_are_a_consistent_snapshot(kube: FakeKube, core: client.CoreV1Api) -> None:
    for i in range(5):
        kube.put(pv(f"pv-{i}", DRIVER, f"vol-{i}"))
    first = await core.list_persistent_volume(limit=2)
    assert names(first.items) == ["pv-0", "pv-1"] and first.metadata.remaining_item_count == 3
    kube.remove("v1", "PersistentVolume", "pv-3")
    kube.put(pv("pv-5", DRIVER, "vol-5"))
    second = await core.list_persistent_volume(limit=2, _continue=first.metadata.var_continue)
    assert names(second.items) == ["pv-2", "pv-3"]
    assert second.metadata.resource_version == first.metadata.resource_version
    third = await core.list_persistent_volume(limit=2, _continue=second.metadata.var_continue)
    assert names(third.items) == ["pv-4"] and third.metadata.var_continue is None

    kube.compact()
    with pytest.raises(ApiException) as err:
        await core.list_persistent_volume(limit=2, _continue=first.metadata.var_continue)
    assert err.value.status == 410 and status_of(err.value)["metadata"]["continue"]


# --- volume attachments ------------------------------------------------------------------


async def test_volume_attachment_status_subresource_and_immutable_spec(
    kube: FakeKube, storage: client.StorageV1Api
) -> None:
    created = await storage.create_volume_attachment(
        volume_attachment("va-1", DRIVER, "n1", "pv-1")
    )
    assert created.status is None  # create wipes status; only the attacher sets it
    assert created.spec.source.persistent_volume_name == "pv-1"

    attached = await storage.patch_volume_attachment_status(
        "va-1",
        {"status": {"attached": True, "attachmentMetadata": {"nqn": "nqn.x"}}},
        _content_type="application/merge-patch+json",
    )
    assert attached.status.attached and attached.status.attachment_metadata == {"nqn": "nqn.x"}

    with pytest.raises(ApiException) as err:
        await storage.patch_volume_attachment("va-1", {"spec": {"nodeName": "n2"}})
    assert err.value.status == 422
    # VolumeAttachment updates must carry a resourceVersion.
    unconditional = await storage.read_volume_attachment("va-1")
    unconditional.metadata.resource_version = None
    with pytest.raises(ApiException) as err:
        await storage.replace_volume_attachment("va-1", unconditional)
    assert err.value.status == 422
    assert "must be specified for an update" in status_of(err.value)["message"]
    with pytest.raises(ApiException) as err:
        await storage.create_volume_attachment(
            {
                "metadata": {"name": "va-2"},
                "spec": {"attacher": DRIVER, "nodeName": "", "source": {}},
            }
        )
    fields = {c["field"] for c in status_of(err.value)["details"]["causes"]}
    assert fields == {"spec.nodeName", "spec.source"}


async def test_finalizers_hold_a_delete_until_they_are_removed(
    kube: FakeKube, storage: client.StorageV1Api
) -> None:
    held = volume_attachment("va-1", DRIVER, "n1", "pv-1")
    held["metadata"]["finalizers"] = ["external-attacher/rds-csi"]
    kube.put(held)
    # finalizers is a merged list for strategic merge patch: adding one keeps the others.
    both = await storage.patch_volume_attachment(
        "va-1", {"metadata": {"finalizers": [f"{DRIVER}/attached"]}}
    )
    assert both.metadata.finalizers == ["external-attacher/rds-csi", f"{DRIVER}/attached"]
    start = str(kube.resource_version)
    async with watch.Watch() as events:
        stream = events.stream(
            storage.list_volume_attachment, resource_version=start, timeout_seconds=5
        )
        deleting = await storage.delete_volume_attachment("va-1")
        assert deleting.metadata.deletion_timestamp is not None
        assert (await storage.read_volume_attachment("va-1")).metadata.finalizers
        with pytest.raises(ApiException) as err:
            await storage.patch_volume_attachment(
                "va-1", {"metadata": {"finalizers": ["external-attacher/rds-csi", "another.io/x"]}}
            )
        assert err.value.status == 422
        last = await storage.patch_volume_attachment(
            "va-1", [{"op": "remove", "path": "/metadata/finalizers"}]
        )
        assert not last.metadata.finalizers
        with pytest.raises(ApiException):
            await storage.read_volume_attachment("va-1")
        seen = await take(stream, 2)
    assert [e["type"] for e in seen] == ["MODIFIED", "DELETED"]
    assert seen[0]["object"].metadata.deletion_timestamp is not None


# --- watches -----------------------------------------------------------------------------


async def test_watch_from_a_list_sees_added_modified_deleted_in_order(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("n0"))
    listed = await core.list_node()
    async with watch.Watch() as events:
        stream = events.stream(
            core.list_node, resource_version=listed.metadata.resource_version, timeout_seconds=5
        )

        async def cluster() -> None:
            await kube.wait_watchers(1, "/api/v1/nodes")
            kube.put(node("n1"))
            kube.put(node("n1", ready=False))
            kube.remove("v1", "Node", "n1")

        change = asyncio.create_task(cluster())
        seen = await take(stream, 3)
        await change
    assert [(e["type"], e["object"].metadata.name) for e in seen] == [
        ("ADDED", "n1"),
        ("MODIFIED", "n1"),
        ("DELETED", "n1"),
    ]
    assert isinstance(seen[1]["object"], client.V1Node)
    assert seen[1]["object"].status.conditions[0].status == "False"
    versions = [int(e["object"].metadata.resource_version) for e in seen]
    assert versions == sorted(versions) and versions[-1] == kube.resource_version


async def test_watch_replays_history_and_starts_unset_with_synthetic_adds(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("a"))
    since = str(kube.resource_version)
    kube.put(node("b"))
    kube.put(node("a", ready=False))
    async with watch.Watch() as events:
        replayed = await take(
            events.stream(core.list_node, resource_version=since, timeout_seconds=5), 2
        )
    assert [(e["type"], e["object"].metadata.name) for e in replayed] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
    ]
    async with watch.Watch() as events:
        current = await take(events.stream(core.list_node, timeout_seconds=5), 2)
    assert [(e["type"], e["object"].metadata.name) for e in current] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]


async def test_watch_from_a_compacted_version_raises_410(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("a"))
    old = str(kube.resource_version)
    kube.put(node("b"))
    kube.compact()

    # On the wire: a 200 stream holding one ERROR event with an Expired Status.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{kube.url}/api/v1/nodes?watch=true&resourceVersion={old}") as response,
    ):
        assert response.status == 200
        lines = (await response.read()).splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["ERROR"]
    assert json.loads(lines[0])["object"]["code"] == 410
    assert json.loads(lines[0])["object"]["reason"] == "Expired"

    # With timeout_seconds the Watch raises on the first ERROR event.
    async with watch.Watch() as events:
        with pytest.raises(ApiException) as err:
            await take(events.stream(core.list_node, resource_version=old, timeout_seconds=5), 1)
    assert err.value.status == 410 and err.value.reason.startswith(
        "Expired: too old resource version"
    )

    # Without it, it retries once from the same version and then raises.
    kube.requests.clear()
    async with watch.Watch() as events:
        with pytest.raises(ApiException) as err:
            await take(events.stream(core.list_node, resource_version=old), 1)
    assert err.value.status == 410
    assert [a.verb for a in kube.accesses()] == ["watch", "watch"]


async def test_drop_watches_ends_the_stream(kube: FakeKube, core: client.CoreV1Api) -> None:
    kube.put(node("a"))
    async with watch.Watch() as events:
        stream = events.stream(
            core.list_node, resource_version=str(kube.resource_version), timeout_seconds=60
        )

        async def drop() -> None:
            await kube.wait_watchers(1)
            kube.drop_watches()

        dropping = asyncio.create_task(drop())
        assert await take(stream, 1) == []  # the stream ended without an event
        await dropping


async def test_a_dropped_watch_without_timeout_resumes_without_losing_events(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("a"))
    async with watch.Watch() as events:
        stream = events.stream(core.list_node, resource_version=str(kube.resource_version))

        async def cluster() -> None:
            await kube.wait_watchers(1)
            kube.put(node("b"))
            kube.drop_watches()  # queued behind "b", so the stream sends it before ending
            kube.put(node("c"))  # arrives by replay or live, whichever the client makes first

        change = asyncio.create_task(cluster())
        seen = await take(stream, 2)
        await change
    assert [e["object"].metadata.name for e in seen] == ["b", "c"]
    watches = [q for m, p, q in kube.requests if q.get("watch") == "true"]
    assert len(watches) == 2
    assert watches[1]["resourceVersion"] == seen[0]["object"].metadata.resource_version


async def test_watch_selector_turns_leaving_into_deleted(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    async with watch.Watch() as events:
        stream = events.stream(core.list_node, label_selector="role=storage", timeout_seconds=5)

        async def cluster() -> None:
            await kube.wait_watchers(1, "labelSelector=role=storage")
            kube.put(node("n1", labels={"role": "storage"}))
            kube.put(node("other"))
            kube.put(node("n1"))
            kube.put(node("n1", labels={"role": "storage"}))

        change = asyncio.create_task(cluster())
        seen = await take(stream, 3)
        await change
    assert [(e["type"], e["object"].metadata.name) for e in seen] == [
        ("ADDED", "n1"),
        ("DELETED", "n1"),
        ("ADDED", "n1"),
    ]


async def test_bookmarks_carry_the_resource_version(kube: FakeKube, core: client.CoreV1Api) -> None:
    async with watch.Watch() as events:
        stream = events.stream(core.list_node, allow_watch_bookmarks=True, timeout_seconds=5)

        async def cluster() -> None:
            await kube.wait_watchers(1)
            kube.put(node("n1"))
            kube.bookmark()

        change = asyncio.create_task(cluster())
        seen = await take(stream, 2)
        await change
        assert [e["type"] for e in seen] == ["ADDED", "BOOKMARK"]
        assert events.resource_version == str(kube.resource_version)


async def test_send_initial_events_ends_with_a_marked_bookmark(
    kube: FakeKube, core: client.CoreV1Api
) -> None:
    kube.put(node("a"))
    async with watch.Watch() as events:
        seen = await take(
            events.stream(
                core.list_node,
                send_initial_events=True,
                resource_version_match="NotOlderThan",
                allow_watch_bookmarks=True,
                timeout_seconds=5,
            ),
            2,
        )
    assert [e["type"] for e in seen] == ["ADDED", "BOOKMARK"]
    marker = seen[1]["raw_object"]["metadata"]
    assert marker["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert marker["resourceVersion"] == str(kube.resource_version)
    with pytest.raises(ApiException) as err:
        await core.list_node(watch=True, send_initial_events=True, timeout_seconds=1)
    assert err.value.status == 422


# --- leases ------------------------------------------------------------------------------


async def test_lease_create_replace_and_stale_conflict(
    kube: FakeKube, api: client.ApiClient
) -> None:
    leases = client.CoordinationV1Api(api)
    spec = client.V1LeaseSpec(
        holder_identity="controller-0",
        lease_duration_seconds=15,
        acquire_time=STAMP,
        renew_time=STAMP,
    )
    created = await leases.create_namespaced_lease(
        "kube-system", client.V1Lease(metadata=client.V1ObjectMeta(name="rdscsi"), spec=spec)
    )
    assert created.spec.renew_time == STAMP
    assert (
        kube.get("coordination.k8s.io/v1", "Lease", "rdscsi", "kube-system")["spec"]["renewTime"]
        == "2025-03-04T05:06:07.890123Z"
    )

    renewed = created.model_copy(deep=True)
    renewed.spec.holder_identity = "controller-1"
    renewed = await leases.replace_namespaced_lease("rdscsi", "kube-system", renewed)
    assert renewed.spec.holder_identity == "controller-1"
    with pytest.raises(ApiException) as err:
        await leases.replace_namespaced_lease("rdscsi", "kube-system", created)  # stale
    assert err.value.status == 409
    assert status_of(err.value)["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "rdscsi"'
    )
    renewed.metadata.resource_version = None
    with pytest.raises(ApiException) as err:
        await leases.replace_namespaced_lease("rdscsi", "kube-system", renewed)
    assert err.value.status == 422  # leases do not allow unconditional updates

    # PUT of a missing Lease creates it (AllowCreateOnUpdate).
    made = await leases.replace_namespaced_lease(
        "other",
        "kube-system",
        client.V1Lease(metadata=client.V1ObjectMeta(name="other"), spec=spec),
    )
    assert made.metadata.uid

    with pytest.raises(ApiException) as err:
        await leases.delete_namespaced_lease(
            "rdscsi",
            "kube-system",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1")),
        )
    assert err.value.status == 409
    gone = await leases.delete_namespaced_lease("rdscsi", "kube-system")
    assert gone["status"] == "Success"


async def test_lease_times_must_be_micro_times(kube: FakeKube, api: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api)
    kube.put(lease("kube-system", "rdscsi", "controller-0"))
    current = await leases.read_namespaced_lease("rdscsi", "kube-system")
    # isoformat() of a whole second has no fraction, and of a naive datetime no offset; a real
    # apiserver rejects both for a MicroTime.
    for stamp in (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, 0, 0, 0, 5)):
        current.spec.renew_time = stamp
        with pytest.raises(ApiException) as err:
            await leases.replace_namespaced_lease("rdscsi", "kube-system", current)
        assert err.value.status == 400
        assert "cannot be handled as a Lease" in status_of(err.value)["message"]


# --- events ------------------------------------------------------------------------------


def pv_event(name: str = "pv-1") -> client.EventsV1Event:
    return client.EventsV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{name}."),
        event_time=STAMP,
        regarding=client.V1ObjectReference(api_version="v1", kind="PersistentVolume", name=name),
        reporting_controller=f"{DRIVER}/controller",
        reporting_instance="controller-0",
        action="Provision",
        reason="Provisioned",
        type="Normal",
        note="volume created",
    )


async def test_events_v1_create_and_read_through_both_apis(
    kube: FakeKube, api: client.ApiClient, core: client.CoreV1Api
) -> None:
    events = client.EventsV1Api(api)
    created = await events.create_namespaced_event("default", pv_event())
    assert isinstance(created, client.EventsV1Event)
    assert created.metadata.name.startswith("pv-1.") and created.event_time == STAMP
    assert created.regarding.name == "pv-1"

    listed = await events.list_event_for_all_namespaces()
    assert names(listed.items) == [created.metadata.name]
    legacy = (await core.list_namespaced_event("default")).items[0]
    assert legacy.involved_object.kind == "PersistentVolume" and legacy.message == "volume created"
    assert legacy.reporting_component == f"{DRIVER}/controller"
    picked = await events.list_namespaced_event("default", field_selector="regarding.name=pv-1")
    assert len(picked.items) == 1

    # An event about a cluster-scoped object may only live in default or kube-system.
    with pytest.raises(ApiException) as err:
        await events.create_namespaced_event("rdscsi", pv_event())
    assert err.value.status == 422
    assert status_of(err.value)["details"]["causes"][0]["field"] == "regarding.namespace"

    no_reason = pv_event()
    no_reason.reason = None
    no_reason.type = "Info"
    with pytest.raises(ApiException) as err:
        await events.create_namespaced_event("default", no_reason)
    assert {c["field"] for c in status_of(err.value)["details"]["causes"]} == {"reason", "type"}
