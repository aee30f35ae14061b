"""FakeKube: an in-process HTTP stand-in for kube-apiserver, for the resources rdscsi uses.

The driver's Kubernetes code runs unmodified against it through the real
`kubernetes.aio` client; see the package docstring for the semantics implemented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import builtins
import contextlib
import copy
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import yaml
from aiohttp import web
from kubernetes.aio import client

from ...clock import Clock, LoopClock, TimerHandle
from .kinds import (
    BY_PATH,
    Cause,
    DecodeError,
    Kind,
    forbidden,
    invalid,
    kind_of,
    lookup,
    normalize_times,
    now_time,
    validate_meta,
)
from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .rbac import Access, Authorizer, User, forbidden_message
from .selection import FieldRequirement, Requirement, labels_match, parse_fields, parse_labels

Obj = dict[str, Any]

log = logging.getLogger(__name__)

OPTIMISTIC_LOCK = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


# --- errors, as metav1.Status ------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if details is not None:
            self.status["details"] = details

    @property
    def code(self) -> int:
        return int(self.status["code"])


def _details(name: str, group: str, kind: str, **more: Any) -> Obj:
    out: Obj = {"name": name}
    if group:
        out["group"] = group
    return out | {"kind": kind} | more


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{kind.resource} "{name}" not found',
        _details(name, kind.group, kind.plural),
    )


def conflict(kind: Kind, name: str, why: str, resource: tuple[str, str] | None = None) -> ApiError:
    # `resource` overrides the (group, resource) pair; DELETE preconditions name the Kind.
    group, plural = resource or (kind.group, kind.plural)
    qualified = f"{plural}.{group}" if group else plural
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        _details(name, group, plural),
    )


def unprocessable(
    qualified: str, group: str, kind: str, name: str, causes: list[Cause]
) -> ApiError:
    text = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(map(str, causes)) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {text}',
        _details(
            name,
            group,
            kind,
            causes=[{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
        ),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str, details: Obj | None = None) -> ApiError:
    return ApiError(410, "Expired", message, details)


def _no_route() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )


# --- routing -----------------------------------------------------------------------------


class Route(NamedTuple):
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


def route(path: str) -> Route | None:
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[:1] == ["namespaces"]:
        if len(rest) < 3:
            return None  # Namespace objects themselves are not served
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or not all(rest):
        return None
    kind = BY_PATH.get((group, version, rest[0]))
    if kind is None or (namespace is not None and not kind.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    if name is not None and kind.namespaced and namespace is None:
        return None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and (sub != "status" or not kind.status):
        return None
    return Route(kind, namespace, name, sub)


def access_of(method: str, path: str, query: Mapping[str, str]) -> Access | None:
    """A request as RBAC sees it (None: not a resource request). For list and watch, a
    `metadata.name=` field selector names the object, as the apiserver's RBAC does."""
    found = route(path)
    if found is None:
        return None
    kind, namespace, name, sub = found
    if method == "GET":
        verb = "get" if name else "watch" if _flag(query.get("watch")) else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    if verb in ("list", "watch") and not name:
        for part in (query.get("fieldSelector") or "").split(","):
            key, sep, value = part.partition("=")
            if sep and key.strip() == "metadata.name" and not key.endswith("!"):
                name = value.lstrip("=").strip()
    resource = f"{kind.plural}/{sub}" if sub else kind.plural
    return Access(verb, kind.group, resource, namespace or "", name or "")


def _flag(value: str | None) -> bool:
    # strconv.ParseBool, which the apiserver uses for boolean query parameters.
    return value in ("1", "t", "T", "true", "TRUE", "True")


# --- storage, history and watches --------------------------------------------------------


def _key(kind: Kind, namespace: str | None, name: str) -> str:
    # etcd keys end in <namespace>/<name>; lists come back sorted by key.
    return f"{namespace or ''}/{name}" if kind.namespaced else name


def _prune_nulls(value: Any) -> Any:
    # JSON null decodes to the Go zero value, which omitempty fields then leave out.
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


@dataclass(frozen=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    bucket: str
    key: str
    obj: Obj  # storage form, stamped with rv (for DELETED: the last state, with rv)
    prev: Obj | None


@dataclass
class Filter:
    kind: Kind
    namespace: str | None
    labels: list[Requirement] = field(default_factory=list)
    fields: list[FieldRequirement] = field(default_factory=list)

    def __call__(self, view: Obj) -> bool:
        meta = view.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if not labels_match(self.labels, meta.get("labels") or {}):
            return False
        return all((self._value(view, f.field) == f.value) == (f.op == "=") for f in self.fields)

    def _value(self, view: Obj, label: str) -> str:
        value = lookup(view, label if label.startswith("metadata.") else self.kind.fields[label])
        if label == "spec.unschedulable" or isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)


@dataclass(eq=False)
class Watch:
    kind: Kind
    match: Filter
    bookmarks: bool
    path: str
    after: int = 0  # changes at or below the requested resourceVersion are not news
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    frozen: bool = False  # half-open: nothing more is written, the stream never ends
    released: asyncio.Event = field(default_factory=asyncio.Event)  # server stop: hang up
    ticker: TimerHandle | None = None  # the periodic bookmark

    def send(self, type_: str, obj: Obj) -> None:
        if self.frozen:
            return
        self.queue.put_nowait(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

    def offer(self, change: Change) -> None:
        """Deliver a change as the watch cache does: an object leaving the selector is DELETED."""
        if change.bucket != self.kind.bucket or change.rv <= self.after:
            return
        now = self.kind.from_storage(change.obj)
        if change.type != "MODIFIED":
            if self.match(now):
                self.send(change.type, now)
            return
        assert change.prev is not None
        before = self.kind.from_storage(change.prev)
        was, is_ = self.match(before), self.match(now)
        if was and is_:
            self.send("MODIFIED", now)
        elif is_:
            self.send("ADDED", now)
        elif was:
            before["metadata"]["resourceVersion"] = str(change.rv)
            self.send("DELETED", before)

    def bookmark(self, rv: int, annotations: Obj | None = None) -> None:
        meta: Obj = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = annotations
        self.send(
            "BOOKMARK",
            {"kind": self.kind.kind, "apiVersion": self.kind.api_version, "metadata": meta},
        )

    def end(self) -> None:
        if not self.frozen:
            self.queue.put_nowait(None)


def _token(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _untoken(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(data["rv"]), str(data["start"]).removesuffix("\x00")
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_request(f"continue key is not valid: {token!r}") from None


class FakeKube:
    """An apiserver for tests: `async with FakeKube() as kube:` then point a client at `kube.url`.

    The Python methods (`put`, `remove`, `get`, `list`, `compact`, `drop_watches`,
    `bookmark`) act on the same store and notify open watches, so a test can play the rest
    of the cluster (kubelet, external-attacher, a second controller) around the code under
    test. `put` and `remove` are raw storage writes: no validation, no strategies.
    """

    def __init__(
        self,
        history_limit: int = 1000,
        *,
        clock: Clock | None = None,
        authorizer: Authorizer | None = None,
        tokens: Mapping[str, User] | None = None,
        bookmark_interval: float | None = None,
        compaction_interval: float | None = None,
    ) -> None:
        self.history_limit = history_limit
        # Timestamps (creation, deletion), periodic bookmarks and compaction run on it.
        self.clock: Clock = clock or LoopClock()
        # With an authorizer every request must carry a bearer token from `tokens` (401
        # otherwise) and be allowed by RBAC (403 otherwise, recorded in `denied`).
        self.authorizer = authorizer
        self.tokens: dict[str, User] = dict(tokens or {})
        self.denied: list[tuple[str, Access]] = []
        self.bookmark_interval = bookmark_interval
        self.compaction_interval = compaction_interval
        self._compaction: TimerHandle | None = None
        self._compact_mark = 0  # the resourceVersion at the previous compaction tick
        # Injected faults: latency per resource ("" any), 429s to answer, half-open watches.
        self.latency: dict[str, float] = {}
        self._throttle: list[tuple[str, str, float]] = []  # (resource, verb, retry-after)
        self.throttled = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # Resources (plural names) this cluster does not have: a CRD not installed (404).
        self.absent: set[str] = set()
        self._objects: dict[str, dict[str, Obj]] = {}
        self._history: deque[Change] = deque()
        self._rv = 0
        # A watch from resourceVersion N needs every change after N: N >= _compacted.
        self._compacted = 0
        self._watches: set[Watch] = set()
        self._watches_changed = asyncio.Event()
        self._key_cache: dict[str, tuple[int, int, builtins.list[str]]] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeKube is not started")
        return self._url

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client closing its watch ends the handler, so the watch
        # stops counting as open; shutdown_timeout: keep-alive connections must not
        # hold teardown.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{host}:{port}"
        if self.compaction_interval:
            self._compaction = self.clock.call_later(self.compaction_interval, self._compact_tick)

    async def stop(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
            self._compaction = None
        for watch in self._watches:
            watch.released.set()
            if watch.ticker is not None:
                watch.ticker.cancel()
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """Write a kubeconfig (plain http; a bearer token when given); given a directory, to
        `kubeconfig` in it."""
        if path.is_dir():
            path = path / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token} if token else {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def configuration(self, token: str | None = None) -> client.Configuration:
        config = client.Configuration(host=self.url)
        if token:
            config.api_key = {"BearerToken": token}
            config.api_key_prefix = {"BearerToken": "Bearer"}
        return config

    def grant(self, token: str, user: User) -> None:
        """Let requests bearing `token` act as `user` (RBAC decides what it may do)."""
        self.tokens[token] = user

    # --- injected faults -----------------------------------------------------------------

    def delay(self, seconds: float, resource: str = "") -> None:
        """Answer requests for `resource` (plural, "" for all) `seconds` late, and hold each
        watch event for as long: informers lag, and the windows a real cluster has open."""
        if seconds > 0:
            self.latency[resource] = seconds
        else:
            self.latency.pop(resource, None)

    def throttle(
        self, count: int = 1, retry_after: float = 1.0, resource: str = "", verb: str = ""
    ) -> None:
        """The next `count` matching requests get 429 Too Many Requests with Retry-After, as
        API Priority and Fairness answers when a priority level is saturated."""
        self._throttle += [(resource, verb, retry_after)] * count

    def half_open(self, resource: str = "") -> int:
        """Freeze the open watches (of `resource`): the connection stays up but nothing more
        arrives, not even a bookmark, and the stream never ends: what a dead peer behind a
        NAT or a silently dropped connection looks like. New watches are unaffected."""
        frozen = 0
        for watch in self._watches:
            if not resource or watch.kind.plural == resource:
                watch.frozen = True
                frozen += 1
        return frozen

    def _compact_tick(self) -> None:
        # kube-apiserver's compactor: every interval, compact to the revision it saw at the
        # previous interval, so history lives between one and two intervals.
        self._compact_to(self._compact_mark)
        self._compact_mark = self._rv
        if self.compaction_interval:
            self._compaction = self.clock.call_later(self.compaction_interval, self._compact_tick)

    def _compact_to(self, rv: int) -> None:
        while self._history and self._history[0].rv <= rv:
            self._history.popleft()
        self._compacted = max(self._compacted, rv)

    def _stamp(self) -> str:
        return now_time(self.clock.wall())

    # --- the Python API for tests ----------------------------------------------------------

    def put(self, obj: Obj) -> Obj:
        """Create or replace `obj` as given (any served apiVersion); emits ADDED or MODIFIED."""
        kind = kind_of(obj["apiVersion"], obj["kind"])
        stored = kind.to_storage(obj)
        meta = stored.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("put() needs metadata.name")
        if kind.namespaced and not meta.get("namespace"):
            raise ValueError(f"put() needs metadata.namespace for a {kind.kind}")
        if not kind.namespaced:
            meta.pop("namespace", None)
        key = _key(kind, meta.get("namespace"), meta["name"])
        old = self._objects.get(kind.bucket, {}).get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault(
            "creationTimestamp", old["metadata"]["creationTimestamp"] if old else self._stamp()
        )
        return kind.from_storage(self._commit(kind, key, stored))

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete now, finalizers or not; emits DELETED. KeyError if absent."""
        k = kind_of(api_version, kind)
        key = _key(k, namespace, name)
        if key not in self._objects.get(k.bucket, {}):
            raise KeyError(f"{k.resource} {key} not found")
        self._commit(k, key, None)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        k = kind_of(api_version, kind)
        obj = self._objects.get(k.bucket, {}).get(_key(k, namespace, name))
        return None if obj is None else k.from_storage(obj)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        """Objects in key order; `namespace=None` means every namespace."""
        k = kind_of(api_version, kind)
        match = Filter(k, namespace if k.namespaced else None)
        views = (k.from_storage(o) for _, o in sorted(self._objects.get(k.bucket, {}).items()))
        return [v for v in views if match(v)]

    @property
    def resource_version(self) -> int:
        return self._rv

    def compact(self) -> None:
        """Forget all history: watches and continue tokens from older versions get 410."""
        self._compact_to(self._rv)

    def drop_watches(self) -> None:
        """End every open watch stream cleanly, as an apiserver restart or timeout would."""
        for watch in self._watches:
            watch.end()

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to watches that allow bookmarks."""
        for watch in self._watches:
            if watch.bookmarks:
                watch.bookmark(self._rv)

    def _tick_bookmarks(self, watch: Watch) -> None:
        """`bookmark_interval` set: each watch that allows bookmarks gets one that often (the
        watch cache does so about once a minute), on the clock."""
        assert self.bookmark_interval is not None

        def tick() -> None:
            if watch in self._watches:
                watch.bookmark(self._rv)
                watch.ticker = self.clock.call_later(self.bookmark_interval or 0.0, tick)

        watch.ticker = self.clock.call_later(self.bookmark_interval, tick)

    def open_watches(self) -> builtins.list[str]:
        return sorted(w.path for w in self._watches)

    async def wait_watchers(self, n: int, path_contains: str = "", timeout: float = 5.0) -> None:
        """Wait until at least `n` open watches have `path_contains` in `path?query`."""
        try:
            async with asyncio.timeout(timeout):
                while sum(path_contains in w.path for w in self._watches) < n:
                    self._watches_changed.clear()
                    await self._watches_changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{n} watches on {path_contains!r} never opened; open: {self.open_watches()}"
            ) from None

    def accesses(self) -> builtins.list[Access]:
        """The recorded requests as (verb, group, resource, namespace, name), for RBAC checks."""
        out = []
        for method, path, query in self.requests:
            access = access_of(method, path, query)
            if access is not None:
                out.append(access)
        return out

    # --- storage ---------------------------------------------------------------------------

    def _commit(self, kind: Kind, key: str, obj: Obj | None) -> Obj:
        """The one write path: bump the global resourceVersion, record history, notify."""
        bucket = self._objects.setdefault(kind.bucket, {})
        prev = bucket.get(key)
        self._rv += 1
        if obj is None:
            assert prev is not None
            stored, type_ = copy.deepcopy(prev), "DELETED"
            del bucket[key]
        else:
            stored, type_ = copy.deepcopy(obj), "MODIFIED" if prev is not None else "ADDED"
            bucket[key] = stored
        stored["metadata"]["resourceVersion"] = str(self._rv)
        change = Change(self._rv, type_, kind.bucket, key, stored, prev)
        self._history.append(change)
        while len(self._history) > self.history_limit:
            self._compacted = self._history.popleft().rv
        for watch in list(self._watches):
            watch.offer(change)
        return copy.deepcopy(stored)

    def _state(self, bucket: str, at: int) -> dict[str, Obj]:
        """The bucket as it was at resourceVersion `at` (>= _compacted): undo later history."""
        state = dict(self._objects.get(bucket, {}))
        for change in reversed(self._history):
            if change.rv <= at:
                break
            if change.bucket != bucket:
                continue
            if change.type == "ADDED":
                state.pop(change.key, None)
            else:
                assert change.prev is not None
                state[change.key] = change.prev
        return state

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.method, request.path, query))
        try:
            found = route(request.path)
            access = access_of(request.method, request.path, query)
            if self.authorizer is not None:
                self._authorize(request, access)
            if found is None or found.kind.plural in self.absent:
                raise _no_route()
            kind, namespace, name, sub = found
            await self._faults(kind, access)
            if "dryRun" in query:
                raise bad_request("FakeKube does not implement dryRun")
            method = request.method
            if method == "GET":
                if name is not None:
                    return _json(200, self._get(kind, namespace, name))
                if _flag(query.get("watch")):
                    return await self._watch(request, kind, namespace, query)
                return _json(200, self._list(kind, namespace, query))
            body = await _body(request)
            if method == "POST" and name is None and (namespace is not None or not kind.namespaced):
                return _json(201, self._create(kind, namespace, body))
            if method == "PUT" and name is not None:
                return _json(*self._update(kind, namespace, name, body, sub))
            if method == "PATCH" and name is not None:
                content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
                return _json(*self._patch(kind, namespace, name, sub, content_type, body))
            if method == "DELETE" and sub is None:
                if name is not None:
                    return _json(200, self._delete(kind, namespace, name, body))
                return _json(200, self._delete_collection(kind, namespace, query, body))
            raise _not_allowed()
        except ApiError as err:
            # Shown with --log-level=INFO: the quickest way to see why client code got an error.
            log.info("%s %s -> %d %s", request.method, request.path_qs, err.code, err)
            response = _json(err.code, err.status)
            retry = (err.status.get("details") or {}).get("retryAfterSeconds")
            if err.code == 429 and retry is not None:
                response.headers["Retry-After"] = str(retry)
            return response

    def _authorize(self, request: web.Request, access: Access | None) -> None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        user = self.tokens.get(token) if token else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        assert self.authorizer is not None
        if access is None or self.authorizer.allows(user, access):
            return
        self.denied.append((user.name, access))
        resource = access.resource.partition("/")[0]
        raise ApiError(
            403,
            "Forbidden",
            forbidden_message(user, access),
            _details(access.name, access.group, resource)
            if access.name
            else {"group": access.group, "kind": resource}
            if access.group
            else {"kind": resource},
        )

    async def _faults(self, kind: Kind, access: Access | None) -> None:
        lag = self.latency.get(kind.plural, self.latency.get("", 0.0))
        if lag:
            await asyncio.sleep(lag)
        for i, (resource, verb, retry) in enumerate(self._throttle):
            if resource and resource != kind.plural:
                continue
            if verb and (access is None or access.verb != verb):
                continue
            del self._throttle[i]
            self.throttled += 1
            raise ApiError(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                {"retryAfterSeconds": int(retry) if float(retry).is_integer() else retry},
            )

    def _get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(kind.bucket, {}).get(_key(kind, namespace, name))
        if obj is None:
            raise not_found(kind, name)
        return kind.from_storage(obj)

    def _filter(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> Filter:
        supported = {"metadata.name", *kind.fields} | (
            {"metadata.namespace"} if kind.namespaced else set()
        )
        try:
            return Filter(
                kind,
                namespace,
                parse_labels(query.get("labelSelector", "")),
                parse_fields(query.get("fieldSelector", ""), supported),
            )
        except ValueError as err:
            raise bad_request(str(err)) from None

    def _list(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> Obj:
        match = self._filter(kind, namespace, query)
        rv, rv_match, token = (
            query.get("resourceVersion", ""),
            query.get("resourceVersionMatch", ""),
            query.get("continue", ""),
        )
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit {query['limit']!r}") from None
        if rv_match and not rv:
            raise _invalid_options(
                [
                    forbidden(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    )
                ]
            )
        if rv_match not in ("", "Exact", "NotOlderThan"):
            raise _invalid_options(
                [invalid("resourceVersionMatch", rv_match, "supported values: Exact, NotOlderThan")]
            )
        if rv == "0" and rv_match == "Exact":
            raise _invalid_options(
                [
                    forbidden(
                        "resourceVersionMatch",
                        'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                    )
                ]
            )
        if token and rv not in ("", "0"):
            raise bad_request("specifying resource version is not allowed when using continue")
        start = ""
        if token:
            at, start = _untoken(token)
            if at < self._compacted:
                # Upstream hands back a token (rv -1) that continues from the latest state.
                gone = expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use the "
                    "continue token in this response to retrieve the remainder of the results."
                )
                gone.status["metadata"] = {"continue": _token(-1, start)}
                raise gone
            at = self._rv if at < 0 else at
        elif rv not in ("", "0"):
            try:
                at = int(rv)
            except ValueError:
                raise bad_request(f"invalid resource version {rv!r}") from None
            if at > self._rv:
                raise ApiError(
                    504,
                    "Timeout",
                    f"Too large resource version: {at}, current: {self._rv}",
                    {
                        "causes": [
                            {
                                "reason": "ResourceVersionTooLarge",
                                "message": "Too large resource version",
                            }
                        ],
                        "retryAfterSeconds": 1,
                    },
                )
            if rv_match != "Exact":
                at = self._rv  # NotOlderThan: the latest state is at least that new
            elif at < self._compacted:
                raise expired(f"too old resource version: {at} ({self._compacted})")
        else:
            at = self._rv
        state = (
            self._state(kind.bucket, at) if at != self._rv else self._objects.get(kind.bucket, {})
        )
        ordered = self._sorted_keys(kind.bucket, at, state)
        keys = ordered[bisect.bisect_right(ordered, start) :] if start else ordered
        items: list[Obj] = []
        meta: Obj = {"resourceVersion": str(at)}
        # The page is serialised at once and never kept: a shallow view of the stored object
        # is enough where the kind stores what it serves (the default, a deep copy, is for
        # the objects a caller keeps).
        shallow = kind.from_storage is copy.deepcopy
        for index, key in enumerate(keys):
            view = dict(state[key]) if shallow else kind.from_storage(state[key])
            if not match(view):
                continue
            # Typed list encoding leaves TypeMeta off the items (kubernetes#63676): the
            # client's item.kind is None for a LIST, set for a GET or a watch event.
            view.pop("apiVersion", None)
            view.pop("kind", None)
            items.append(view)
            if limit and len(items) == limit and index + 1 < len(keys):
                meta["continue"] = _token(at, key)
                if not (match.labels or match.fields):
                    meta["remainingItemCount"] = len(keys) - index - 1
                break
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": meta,
            "items": items,
        }

    def _sorted_keys(self, bucket: str, at: int, state: dict[str, Obj]) -> builtins.list[str]:
        """The bucket's keys in order, cached per (bucket, resourceVersion): the pages of one
        big list do not sort it again each."""
        cached = self._key_cache.get(bucket)
        if cached is not None and cached[0] == at and cached[1] == len(state):
            return cached[2]
        ordered = sorted(state)
        self._key_cache[bucket] = (at, len(state), ordered)
        return ordered

    async def _watch(
        self, request: web.Request, kind: Kind, namespace: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        match = self._filter(kind, namespace, query)
        rv, rv_match = query.get("resourceVersion", ""), query.get("resourceVersionMatch", "")
        bookmarks = _flag(query.get("allowWatchBookmarks"))
        initial_param = query.get("sendInitialEvents")
        causes = []
        if initial_param is not None:
            if rv_match != "NotOlderThan":
                causes.append(
                    forbidden(
                        "resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )
                )
            if _flag(initial_param) and not bookmarks:
                causes.append(
                    forbidden(
                        "allowWatchBookmarks",
                        "sendInitialEvents requires setting allowWatchBookmarks to true",
                    )
                )
        elif rv_match:
            causes.append(
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
                    "provided",
                )
            )
        if causes:
            raise _invalid_options(causes)
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
            start = int(rv) if rv not in ("", "0") else None
        except ValueError:
            raise bad_request("invalid timeoutSeconds or resourceVersion") from None
        # Unset and "0" begin with the current state as synthetic ADDED events (sendInitialEvents
        # defaults to true for them); an exact version replays the history after it.
        initial = _flag(initial_param) if initial_param is not None else start is None

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
        except ConnectionError:
            return response  # the client hung up before the stream began
        # Decoded, so tests can look for e.g. "labelSelector=role=storage".
        label = request.path + ("?" + unquote(request.query_string) if request.query_string else "")
        watch = Watch(kind, match, bookmarks, label, after=0 if initial else start or 0)
        # No awaits from here to registration: the initial events and the live ones meet
        # exactly at the current resourceVersion.
        if initial:
            for _, obj in sorted(self._objects.get(kind.bucket, {}).items()):
                view = kind.from_storage(obj)
                if match(view):
                    watch.send("ADDED", view)
            if initial_param is not None:
                watch.bookmark(self._rv, {"k8s.io/initial-events-end": "true"})
        elif start is not None and start < self._compacted:
            # What the watch cache sends for a version it no longer holds; then it hangs up.
            watch.send(
                "ERROR", expired(f"too old resource version: {start} ({self._compacted})").status
            )
            watch.end()
        elif start is not None:
            for change in self._history:
                if change.rv > start:
                    watch.offer(change)
        self._watches.add(watch)
        self._watches_changed.set()
        if bookmarks and self.bookmark_interval:
            self._tick_bookmarks(watch)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        lag = self.latency.get(kind.plural, self.latency.get("", 0.0))
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if watch.frozen:
                    # Half-open: the client hears nothing more, ever; only it can hang up
                    # (or the server stopping).
                    await watch.released.wait()
                    return response
                if remaining is not None and remaining <= 0:
                    break
                try:
                    line = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if line is None:
                    break
                if lag:
                    await asyncio.sleep(lag)
                if watch.frozen:
                    continue
                await response.write(line)
        except ConnectionError:
            return response
        finally:
            if watch.ticker is not None:
                watch.ticker.cancel()
            self._watches.discard(watch)
            self._watches_changed.set()
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    # --- writes ----------------------------------------------------------------------------

    def _decode(self, kind: Kind, body: Any) -> Obj:
        """What the apiserver's JSON decoding does before any strategy runs."""
        if not isinstance(body, dict):
            raise bad_request(f"the body of a {kind.kind} must be a JSON object")
        obj: Obj = _prune_nulls(body)
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if obj["apiVersion"] != kind.api_version:
            raise bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the expected "
                f"API version ({kind.api_version})"
            )
        if obj["kind"] != kind.kind:
            raise bad_request(
                f"the kind in the data ({obj['kind']}) does not match the expected kind "
                f"({kind.kind})"
            )
        if not isinstance(obj.setdefault("metadata", {}), dict):
            raise bad_request("metadata must be a JSON object")
        try:
            normalize_times(kind, obj)
        except DecodeError as err:
            raise bad_request(str(err)) from None
        return obj

    @staticmethod
    def _place(kind: Kind, namespace: str | None, meta: Obj) -> None:
        # rest.EnsureObjectNamespaceMatchesRequestNamespace
        if not kind.namespaced:
            meta.pop("namespace", None)
        elif not meta.get("namespace"):
            meta["namespace"] = namespace
        elif meta["namespace"] != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )

    def _check(self, kind: Kind, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name") or meta.get("generateName") or ""
        causes: list[Cause] = []
        if kind.meta_checks or not meta.get("name"):
            causes += validate_meta(kind, obj)
        if old is not None:
            before = old["metadata"]
            if before.get("deletionTimestamp"):
                added = [
                    f
                    for f in meta.get("finalizers") or []
                    if f not in (before.get("finalizers") or [])
                ]
                if added:
                    causes.append(
                        forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {added}",
                        )
                    )
            elif meta.get("deletionTimestamp"):
                causes.append(
                    invalid(
                        "metadata.deletionTimestamp",
                        meta["deletionTimestamp"],
                        "field is immutable",
                    )
                )
            if meta.get("uid") != before.get("uid"):
                causes.append(invalid("metadata.uid", meta.get("uid"), "field is immutable"))
        causes += kind.validate(kind, obj, old)
        if causes:
            raise unprocessable(kind.qualified_kind, kind.group, kind.kind, name, causes)

    def _create(
        self, kind: Kind, namespace: str | None, body: Any, *, via_update: bool = False
    ) -> Obj:
        obj = self._decode(kind, body)
        meta = obj["metadata"]
        self._place(kind, namespace, meta)
        if not meta.get("name") and meta.get("generateName"):
            # names.SimpleNameGenerator
            suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
            meta["name"] = meta["generateName"][:58] + suffix
        if kind.clear_status_on_create:
            obj.pop("status", None)
        kind.defaults(obj)
        self._check(kind, obj, None)
        if meta.get("resourceVersion") and not via_update:
            # etcd3 store.Create: storage.ErrResourceVersionSetOnCreate, surfaced as a 500.
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        stored = kind.to_storage(obj)
        meta = stored["metadata"]
        key = _key(kind, meta.get("namespace"), meta["name"])
        existing = self._objects.get(kind.bucket, {}).get(key)
        if existing is not None:
            message = f'{kind.resource} "{meta["name"]}" already exists'
            if existing["metadata"].get("deletionTimestamp"):
                message = f"object is being deleted: {message}"
            raise ApiError(
                409, "AlreadyExists", message, _details(meta["name"], kind.group, kind.plural)
            )
        for system in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(system, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self._stamp()
        return kind.from_storage(self._commit(kind, key, stored))

    def _update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Any,
        sub: str | None,
        *,
        patch: bool = False,
    ) -> tuple[int, Obj]:
        obj = self._decode(kind, body)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        self._place(kind, namespace, meta)
        key = _key(kind, namespace, name)
        old = self._objects.get(kind.bucket, {}).get(key)
        if old is None:
            if kind.create_on_update and sub is None and not patch:
                return 201, self._create(kind, namespace, obj, via_update=True)
            raise not_found(kind, name)
        old_view = kind.from_storage(old)
        before = old_view["metadata"]
        if not patch and meta.get("uid") and meta["uid"] != before["uid"]:
            raise conflict(
                kind,
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, "
                f"UID in object meta: {before['uid']}",
            )
        if not meta.get("resourceVersion"):
            if not kind.unconditional_update:
                raise unprocessable(
                    kind.resource,
                    kind.group,
                    kind.plural,
                    name,
                    [invalid("metadata.resourceVersion", 0, "must be specified for an update")],
                )
        elif meta["resourceVersion"] != before["resourceVersion"]:
            raise conflict(kind, name, OPTIMISTIC_LOCK)

        # The registries' PrepareForUpdate and rest.BeforeUpdate.
        if sub == "status":
            new = copy.deepcopy(old_view)
            new.pop("status", None)
            if "status" in obj:
                new["status"] = obj["status"]
        else:
            new = obj
            if kind.status:
                new.pop("status", None)
                if "status" in old_view:
                    new["status"] = old_view["status"]
            meta.setdefault("uid", before["uid"])
            meta["creationTimestamp"] = before["creationTimestamp"]
            for system in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                if system in before:
                    meta[system] = before[system]
        new["metadata"]["resourceVersion"] = before["resourceVersion"]
        self._check(kind, new, old_view)
        stored = kind.to_storage(new)
        if before.get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            # Store.Update deletes instead of writing, and answers with the request's object.
            self._commit(kind, key, None)
            return 200, new
        if stored == old:
            return 200, old_view  # etcd3 GuaranteedUpdate skips a write that changes nothing
        return 200, kind.from_storage(self._commit(kind, key, stored))

    def _patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        sub: str | None,
        content_type: str,
        body: Any,
    ) -> tuple[int, Obj]:
        old = self._objects.get(kind.bucket, {}).get(_key(kind, namespace, name))
        if old is None:
            raise not_found(kind, name)
        current = kind.from_storage(old)
        try:
            if content_type == "application/json-patch+json":
                patched = json_patch(current, body)
            elif content_type == "application/merge-patch+json":
                if not isinstance(body, dict):
                    raise bad_request("a merge patch must be a JSON object")
                patched = merge_patch(current, body)
            elif content_type == "application/strategic-merge-patch+json":
                patched = strategic_merge_patch(current, body, kind.merge_keys)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/strategic-merge-patch+json (FakeKube has no server-side "
                    f"apply); got {content_type!r}",
                )
        except PatchError as err:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {err}",
            ) from None
        return self._update(kind, namespace, name, patched, sub, patch=True)

    def _delete(self, kind: Kind, namespace: str | None, name: str, options: Any) -> Obj:
        key = _key(kind, namespace, name)
        old = self._objects.get(kind.bucket, {}).get(key)
        if old is None:
            raise not_found(kind, name)
        meta = old["metadata"]
        preconditions = options.get("preconditions") or {} if isinstance(options, dict) else {}
        # rest.BeforeDelete names the Kind, not the resource, in these conflicts.
        by_kind = (kind.group, kind.kind)
        if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
            raise conflict(
                kind,
                name,
                f"the UID in the precondition ({preconditions['uid']}) does not match the UID "
                f"in record ({meta['uid']}). The object might have been deleted and then "
                "recreated",
                by_kind,
            )
        if (
            preconditions.get("resourceVersion")
            and preconditions["resourceVersion"] != meta["resourceVersion"]
        ):
            raise conflict(
                kind,
                name,
                "the ResourceVersion in the precondition "
                f"({preconditions['resourceVersion']}) does not match the ResourceVersion in "
                f"record ({meta['resourceVersion']}). The object might have been modified",
                by_kind,
            )
        if meta.get("finalizers"):
            # Only marked: whoever owns a finalizer removes it, and that update deletes.
            if not meta.get("deletionTimestamp"):
                marked = copy.deepcopy(old)
                marked["metadata"] |= {
                    "deletionTimestamp": self._stamp(),
                    "deletionGracePeriodSeconds": 0,
                }
                old = self._commit(kind, key, marked)
            return kind.from_storage(old)
        gone = self._commit(kind, key, None)
        if kind.return_deleted:
            return kind.from_storage(gone)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": _details(name, kind.group, kind.plural, uid=meta["uid"]),
        }

    def _delete_collection(
        self, kind: Kind, namespace: str | None, query: dict[str, str], options: Any
    ) -> Obj:
        if kind.namespaced and namespace is None:
            raise _not_allowed()
        listed = self._list(
            kind,
            namespace,
            {k: v for k, v in query.items() if k in ("labelSelector", "fieldSelector")},
        )
        for item in listed["items"]:
            self._delete(kind, namespace, item["metadata"]["name"], options)
        return listed


def _invalid_options(causes: list[Cause]) -> ApiError:
    return unprocessable("ListOptions.meta.k8s.io", "meta.k8s.io", "ListOptions", "", causes)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as err:
        raise bad_request(f"couldn't decode the request body: {err}") from None


def _json(code: int, body: Obj) -> web.Response:
    return web.json_response(body, status=code)
