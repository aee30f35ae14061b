"""RBAC authorization as kube-apiserver's RBAC authorizer decides it, from Role, ClusterRole,
RoleBinding and ClusterRoleBinding objects (e.g. the rendered deploy/kubernetes manifests).

Rules (plugin/pkg/auth/authorizer/rbac and its rule matching):
- a ClusterRoleBinding grants its ClusterRole's rules everywhere; a RoleBinding grants its
  Role's (or a ClusterRole's) rules only for requests in the binding's namespace;
- a rule matches when the verb, the API group and the resource match (`*` matches any; a
  subresource is requested as `resource/sub`, matched exactly or by `*/sub`), and, if the
  rule lists resourceNames, the request names one of them. A request without a name (list,
  watch, create, deletecollection) matches no rule with resourceNames, except a list or
  watch whose fieldSelector is `metadata.name=<one of them>`;
- service accounts are the users `system:serviceaccount:<namespace>:<name>`, in the groups
  `system:serviceaccounts`, `system:serviceaccounts:<namespace>` and `system:authenticated`.
Non-resource URLs and aggregated roles are not modelled (nothing here uses them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

Obj = Mapping[str, Any]


class Access(NamedTuple):
    """A request as RBAC sees it."""

    verb: str
    group: str
    resource: str  # "nodes", or "nodes/status" for a subresource
    namespace: str
    name: str


@dataclass(frozen=True)
class User:
    name: str
    groups: frozenset[str] = frozenset()

    @classmethod
    def service_account(cls, namespace: str, name: str) -> User:
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            frozenset(
                {
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                }
            ),
        )


@dataclass(frozen=True)
class PolicyRule:
    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str]

    @classmethod
    def of(cls, rule: Obj) -> PolicyRule:
        return cls(
            frozenset(rule.get("verbs") or ()),
            frozenset(rule.get("apiGroups") or ()),
            frozenset(rule.get("resources") or ()),
            frozenset(rule.get("resourceNames") or ()),
        )

    def matches(self, access: Access) -> bool:
        if "*" not in self.verbs and access.verb not in self.verbs:
            return False
        if "*" not in self.groups and access.group not in self.groups:
            return False
        resource = access.resource
        sub = resource.split("/", 1)[1] if "/" in resource else None
        if not (
            "*" in self.resources
            or resource in self.resources
            or (sub is not None and f"*/{sub}" in self.resources)
        ):
            return False
        if self.names:
            return bool(access.name) and access.name in self.names
        return True


class Authorizer:
    """Decides every request from RBAC objects; `allows(user, access)`."""

    def __init__(self, objects: Iterable[Obj]) -> None:
        self.roles: dict[tuple[str, str], list[PolicyRule]] = {}  # (namespace, name)
        self.cluster_roles: dict[str, list[PolicyRule]] = {}
        self.bindings: list[Obj] = []
        for obj in objects:
            kind = obj.get("kind")
            meta = obj.get("metadata") or {}
            if kind == "Role":
                key = (meta.get("namespace") or "", meta.get("name") or "")
                self.roles[key] = [PolicyRule.of(r) for r in obj.get("rules") or ()]
            elif kind == "ClusterRole":
                self.cluster_roles[meta.get("name") or ""] = [
                    PolicyRule.of(r) for r in obj.get("rules") or ()
                ]
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                self.bindings.append(obj)

    @staticmethod
    def _subject(subject: Obj, user: User, binding_ns: str) -> bool:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or binding_ns
            return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
        if kind == "User":
            return user.name == subject.get("name")
        if kind == "Group":
            return subject.get("name") in user.groups
        return False

    def rules(self, user: User, namespace: str) -> list[PolicyRule]:
        """Every rule that applies to `user` for a request in `namespace` ("" cluster)."""
        out: list[PolicyRule] = []
        for binding in self.bindings:
            meta = binding.get("metadata") or {}
            binding_ns = meta.get("namespace") or ""
            if binding.get("kind") == "RoleBinding" and binding_ns != namespace:
                continue
            if not any(self._subject(s, user, binding_ns) for s in binding.get("subjects") or ()):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                out += self.cluster_roles.get(ref.get("name") or "", [])
            elif ref.get("kind") == "Role" and binding.get("kind") == "RoleBinding":
                out += self.roles.get((binding_ns, ref.get("name") or ""), [])
        return out

    def allows(self, user: User, access: Access) -> bool:
        return any(rule.matches(access) for rule in self.rules(user, access.namespace))


def forbidden_message(user: User, access: Access) -> str:
    """kube-apiserver's text for a 403 (forbiddenMessage in endpoints/handlers)."""
    resource = access.resource.partition("/")[0]  # the GroupResource: no subresource
    qualified = f"{resource}.{access.group}" if access.group else resource
    what = f'{qualified} "{access.name}"' if access.name else qualified
    where = f'in the namespace "{access.namespace}"' if access.namespace else "at the cluster scope"
    return (
        f'{what} is forbidden: User "{user.name}" cannot {access.verb} resource '
        f'"{access.resource}" in API group "{access.group}" {where}'
    )
