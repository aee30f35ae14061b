"""FakeKube's authentication, RBAC authorization, injected faults (latency, 429 with
Retry-After, half-open watches) and clock-driven behaviour (periodic bookmarks, compaction
by time, timestamps): each as strict as kube-apiserver, each checked on the wire."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from rdscsi.clock import ManualClock
from rdscsi.testing.kubeapi import Access, Authorizer, FakeKube, User
from rdscsi.testing.kubeapi.objects import lease, node, volume_attachment

NS = "rdscsi-system"
SA = User.service_account(NS, "driver")
OTHER = User.service_account("elsewhere", "driver")
SUBJECT = [{"kind": "ServiceAccount", "name": "driver", "namespace": NS}]

POLICY: list[dict[str, Any]] = [
    {
        "kind": "ClusterRole",
        "metadata": {"name": "watch-nodes"},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": ["storage.k8s.io"], "resources": ["*/status"], "verbs": ["patch"]},
        ],
    },
    {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "watch-nodes"},
        "subjects": SUBJECT,
        "roleRef": {"kind": "ClusterRole", "name": "watch-nodes"},
    },
    {
        "kind": "Role",
        "metadata": {"name": "lease", "namespace": NS},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["mine"],
                "verbs": ["get", "update", "list"],
            },
        ],
    },
    {
        "kind": "RoleBinding",
        "metadata": {"name": "lease", "namespace": NS},
        "subjects": SUBJECT,
        "roleRef": {"kind": "Role", "name": "lease"},
    },
    {
        "kind": "ClusterRole",
        "metadata": {"name": "read-pvcs"},
        "rules": [
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
        ],
    },
    {  # a ClusterRole through a RoleBinding: only in the binding's namespace
        "kind": "RoleBinding",
        "metadata": {"name": "read-pvcs", "namespace": "apps"},
        "subjects": [{"kind": "Group", "name": f"system:serviceaccounts:{NS}"}],
        "roleRef": {"kind": "ClusterRole", "name": "read-pvcs"},
    },
]


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube(authorizer=Authorizer(POLICY)) as fake:
        fake.grant("good", SA)
        fake.grant("other", OTHER)
        yield fake


async def call(
    kube: FakeKube, method: str, path: str, token: str | None = "good", body: Any = None
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            kube.url + path,
            headers=headers,
            data=json.dumps(body) if body is not None else None,
        ) as reply,
    ):
        return reply.status, dict(reply.headers), await reply.json()


# --- authentication and authorization ---------------------------------------------------------


async def test_requests_without_a_known_token_are_401(kube: FakeKube) -> None:
    for token in (None, "forged"):
        code, _, body = await call(kube, "GET", "/api/v1/nodes", token)
        assert code == 401 and body["reason"] == "Unauthorized" and body["kind"] == "Status"


async def test_outside_the_rules_is_403_with_the_apiservers_message(kube: FakeKube) -> None:
    code, _, _ = await call(kube, "GET", "/api/v1/nodes")
    assert code == 200
    code, _, body = await call(kube, "GET", "/apis/storage.k8s.io/v1/volumeattachments")
    assert code == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'volumeattachments.storage.k8s.io is forbidden: User "system:serviceaccount:'
        f'{NS}:driver" cannot list resource "volumeattachments" in API group '
        '"storage.k8s.io" at the cluster scope'
    )
    assert body["details"] == {"group": "storage.k8s.io", "kind": "volumeattachments"}
    code, _, body = await call(kube, "GET", "/api/v1/nodes/n1")  # list, watch: not get
    assert code == 403
    assert body["message"].startswith('nodes "n1" is forbidden: User')
    assert body["details"] == {"name": "n1", "kind": "nodes"}
    assert kube.denied == [
        (SA.name, Access("list", "storage.k8s.io", "volumeattachments", "", "")),
        (SA.name, Access("get", "", "nodes", "", "n1")),
    ]


async def test_resource_names_limit_what_they_can(kube: FakeKube) -> None:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    # create cannot be limited by name: its own rule allows it, whatever the name
    code, _, _ = await call(kube, "POST", base, body=lease(NS, "mine", "me"))
    assert code == 201
    code, _, _ = await call(kube, "POST", base, body=lease(NS, "theirs", "me"))
    assert code == 201
    assert (await call(kube, "GET", f"{base}/mine"))[0] == 200
    code, _, body = await call(kube, "GET", f"{base}/theirs")
    assert code == 403
    assert body["message"].endswith(
        f'cannot get resource "leases" in API group "coordination.k8s.io" in the namespace "{NS}"'
    )
    # a list is allowed by a named rule only when it selects that name
    assert (await call(kube, "GET", base))[0] == 403
    assert (await call(kube, "GET", f"{base}?fieldSelector=metadata.name%3Dmine"))[0] == 200
    # a Role grants in its own namespace only
    other = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/mine"
    assert (await call(kube, "GET", other))[0] == 403


async def test_bindings_subjects_and_subresources(kube: FakeKube) -> None:
    kube.put(volume_attachment("va-1", "d", "n1", "pv-1"))
    # a ClusterRole bound by a RoleBinding, to a group: only in that namespace
    assert (await call(kube, "GET", "/api/v1/namespaces/apps/persistentvolumeclaims/c"))[0] == 404
    assert (await call(kube, "GET", "/api/v1/namespaces/other/persistentvolumeclaims/c"))[0] == 403
    # another service account of the same name in another namespace is someone else
    assert (await call(kube, "GET", "/api/v1/nodes", "other"))[0] == 403
    # `*/status` matches any resource's status subresource, not the resource itself
    patch = {"status": {"attached": False}}
    va = "/apis/storage.k8s.io/v1/volumeattachments/va-1"
    async with (
        aiohttp.ClientSession() as http,
        http.patch(
            f"{kube.url}{va}/status",
            data=json.dumps(patch),
            headers={
                "Authorization": "Bearer good",
                "Content-Type": "application/merge-patch+json",
            },
        ) as reply,
    ):
        assert reply.status == 200
    code, _, _ = await call(
        kube, "PUT", va, body=kube.get("storage.k8s.io/v1", "VolumeAttachment", "va-1")
    )
    assert code == 403


def test_rule_matching_unit() -> None:
    auth = Authorizer(POLICY)
    assert auth.allows(SA, Access("watch", "", "nodes", "", ""))
    assert not auth.allows(SA, Access("watch", "", "nodes/status", "", ""))
    assert auth.allows(SA, Access("patch", "storage.k8s.io", "volumeattachments/status", "", "x"))
    assert not auth.allows(SA, Access("patch", "", "nodes/status", "", "x"))  # other group
    assert not auth.allows(User("system:anonymous"), Access("list", "", "nodes", "", ""))


# --- injected faults --------------------------------------------------------------------------


async def test_429_carries_retry_after_and_is_consumed() -> None:
    async with FakeKube() as kube:
        kube.throttle(2, retry_after=3, resource="nodes", verb="list")
        for _ in range(2):
            code, headers, body = await call(kube, "GET", "/api/v1/nodes", None)
            assert code == 429 and headers["Retry-After"] == "3"
            assert body["reason"] == "TooManyRequests"
            assert body["details"] == {"retryAfterSeconds": 3}
        assert (await call(kube, "GET", "/api/v1/nodes", None))[0] == 200
        kube.throttle(1, resource="nodes", verb="watch")
        assert (await call(kube, "GET", "/api/v1/persistentvolumes", None))[0] == 200  # other
        assert (await call(kube, "GET", "/api/v1/nodes", None))[0] == 200  # another verb
        assert kube.throttled == 2


async def test_latency_delays_answers_and_watch_events() -> None:
    async with FakeKube() as kube:
        kube.delay(0.2, "nodes")
        started = time.monotonic()
        assert (await call(kube, "GET", "/api/v1/nodes", None))[0] == 200
        assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        assert (await call(kube, "GET", "/api/v1/persistentvolumes", None))[0] == 200
        assert time.monotonic() - started < 0.2  # another resource: no delay
        kube.delay(0.0, "nodes")
        assert kube.latency == {}


async def test_a_half_open_watch_goes_silent_and_never_ends() -> None:
    clock = ManualClock()
    async with FakeKube(clock=clock, bookmark_interval=60) as kube, aiohttp.ClientSession() as http:
        path = f"{kube.url}/api/v1/nodes?watch=true&allowWatchBookmarks=true&resourceVersion=0"
        async with http.get(path) as frozen:
            kube.put(node("a"))
            first = json.loads(await asyncio.wait_for(frozen.content.readline(), 5))
            assert first["type"] == "ADDED"
            assert kube.half_open("nodes") == 1
            kube.put(node("b"))
            clock.advance(600)  # no bookmark either
            kube.drop_watches()  # not even the end of the stream
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(frozen.content.readline(), 0.3)
            # a new watch is a new connection: it works
            async with http.get(path) as fresh:
                seen = [json.loads(await fresh.content.readline()) for _ in range(2)]
                assert [e["object"]["metadata"]["name"] for e in seen] == ["a", "b"]


# --- the clock: bookmarks, compaction, timestamps ---------------------------------------------


async def test_bookmarks_arrive_periodically_on_the_clock() -> None:
    clock = ManualClock()
    async with FakeKube(clock=clock, bookmark_interval=60) as kube, aiohttp.ClientSession() as http:
        kube.put(node("a"))
        rv = kube.resource_version
        async with (
            http.get(
                f"{kube.url}/api/v1/nodes?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
            ) as marked,
            http.get(f"{kube.url}/api/v1/nodes?watch=1&resourceVersion={rv}") as plain,
        ):
            await kube.wait_watchers(2, "/api/v1/nodes")
            for i in range(3):
                kube.put(lease(NS, f"l{i}", None))  # the global version moves on
                clock.advance(59.9)
                clock.advance(0.1)
                event = json.loads(await asyncio.wait_for(marked.content.readline(), 5))
                assert event["type"] == "BOOKMARK"
                assert event["object"]["metadata"]["resourceVersion"] == str(kube.resource_version)
            with pytest.raises(TimeoutError):  # a watch that did not ask gets none
                await asyncio.wait_for(plain.content.readline(), 0.2)


async def test_compaction_by_time_keeps_one_to_two_intervals() -> None:
    clock = ManualClock()
    async with FakeKube(clock=clock, compaction_interval=300) as kube:
        kube.put(node("a"))
        old = kube.resource_version
        kube.put(node("a", ready=False))
        clock.advance(300)  # first tick: marks the current version, compacts nothing yet
        kube.put(node("b"))
        recent = kube.resource_version
        code, _, _ = await call(
            kube, "GET", f"/api/v1/nodes?resourceVersion={old}&resourceVersionMatch=Exact", None
        )
        assert code == 200
        clock.advance(300)  # second tick: compacts to the first tick's mark
        code, _, body = await call(
            kube, "GET", f"/api/v1/nodes?resourceVersion={old}&resourceVersionMatch=Exact", None
        )
        assert code == 410 and body["reason"] == "Expired"
        code, _, _ = await call(
            kube, "GET", f"/api/v1/nodes?resourceVersion={recent}&resourceVersionMatch=Exact", None
        )
        assert code == 200


async def test_timestamps_come_from_the_clock() -> None:
    clock = ManualClock(wall_start=1_750_000_000.0)
    async with FakeKube(clock=clock) as kube:
        code, _, body = await call(
            kube,
            "POST",
            "/apis/storage.k8s.io/v1/volumeattachments",
            None,
            volume_attachment("va-1", "d", "n1", "pv-1"),
        )
        assert code == 201
        assert body["metadata"]["creationTimestamp"] == "2025-06-15T15:06:40Z"
        kube.put(node("n1"))
        assert (
            kube.get("v1", "Node", "n1")["metadata"]["creationTimestamp"] == "2025-06-15T15:06:40Z"
        )  # type: ignore[index]
