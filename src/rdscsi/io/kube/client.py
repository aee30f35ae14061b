"""One `ApiClient` for the whole process, from the pod's service account or a kubeconfig.

Order: an explicit `Configuration` (tests), an explicit kubeconfig path (the operator chose
it), the in-cluster service account when running in a pod, then `$KUBECONFIG` or
`~/.kube/config`. Each failure names what is missing instead of the library's terse error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import ConfigException, load_incluster_config, load_kube_config

SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(RuntimeError):
    """No usable Kubernetes configuration; the message says what is missing."""


def in_cluster(environ: Mapping[str, str] = os.environ) -> bool:
    """Running in a pod: the kubelet sets the service host for every container."""
    return bool(environ.get(SERVICE_HOST_ENV))


def default_kubeconfig(environ: Mapping[str, str] = os.environ) -> str | None:
    """$KUBECONFIG (may list several files) or ~/.kube/config, if present."""
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"]
    home = Path(environ.get("HOME") or Path.home())
    path = home / ".kube" / "config"
    return str(path) if path.is_file() else None


async def api_client(
    kubeconfig: str | None = None,
    *,
    configuration: Configuration | None = None,
    context: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> ApiClient:
    """An `ApiClient`; the caller closes it (`await client.close()`)."""
    if configuration is not None:
        return ApiClient(configuration)
    config = Configuration()
    if kubeconfig:
        await _from_kubeconfig(kubeconfig, context, config, explicit=True)
    elif in_cluster(environ):
        try:
            # Also installs a hook that re-reads the projected token as it rotates.
            load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise KubeConfigError(
                f"running in a pod ({SERVICE_HOST_ENV} is set) but the service account is "
                f"unusable: {exc} (expected token and ca.crt under {SERVICE_ACCOUNT_DIR}; "
                "is automountServiceAccountToken disabled?)"
            ) from exc
    else:
        found = default_kubeconfig(environ)
        if found is None:
            raise KubeConfigError(
                f"no Kubernetes configuration: not in a pod ({SERVICE_HOST_ENV} unset), "
                "no --kubeconfig given, $KUBECONFIG unset and ~/.kube/config absent"
            )
        await _from_kubeconfig(found, context, config, explicit=False)
    return ApiClient(config)


async def _from_kubeconfig(
    path: str, context: str | None, config: Configuration, *, explicit: bool
) -> None:
    where = "kubeconfig" if explicit else "kubeconfig (from $KUBECONFIG or ~/.kube/config)"
    missing = [p for p in path.split(os.pathsep) if p and not Path(p).expanduser().is_file()]
    if missing and len(missing) == len([p for p in path.split(os.pathsep) if p]):
        raise KubeConfigError(f"{where} {path!r}: file not found")
    try:
        # persist_config=False: never rewrite the operator's file (token refreshes).
        await load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=config, persist_config=False
        )
    except ConfigException as exc:
        ctx = f" (context {context!r})" if context else ""
        raise KubeConfigError(f"{where} {path!r}{ctx} is unusable: {exc}") from exc
