"""api_client: where the configuration comes from, and errors that name what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes.aio.client import Configuration

from rdscsi.io.kube.client import KubeConfigError, api_client, default_kubeconfig, in_cluster


def write_kubeconfig(path: Path, server: str = "https://10.0.0.1:6443") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "secret"}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


async def test_explicit_configuration_is_used_as_is() -> None:
    config = Configuration(host="http://127.0.0.1:1")
    client = await api_client(configuration=config)
    try:
        assert client.configuration is config
    finally:
        await client.close()


async def test_explicit_kubeconfig(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc")
    client = await api_client(str(path), environ={})
    try:
        assert client.configuration.host == "https://10.0.0.1:6443"
    finally:
        await client.close()


async def test_missing_kubeconfig_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(KubeConfigError, match="file not found") as err:
        await api_client(str(missing), environ={})
    assert str(missing) in str(err.value)


async def test_unknown_context_is_named(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc")
    with pytest.raises(KubeConfigError, match="context 'other'"):
        await api_client(str(path), context="other", environ={})


async def test_nothing_configured(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError) as err:
        await api_client(environ={"HOME": str(tmp_path)})
    text = str(err.value)
    assert "KUBERNETES_SERVICE_HOST" in text
    assert "KUBECONFIG" in text
    assert "~/.kube/config" in text


async def test_default_kubeconfig_from_home_and_env(tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    path = write_kubeconfig(tmp_path / ".kube" / "config", server="https://home:6443")
    assert default_kubeconfig({"HOME": str(tmp_path)}) == str(path)
    assert default_kubeconfig({"KUBECONFIG": "/a:/b", "HOME": str(tmp_path)}) == "/a:/b"
    client = await api_client(environ={"HOME": str(tmp_path)})
    try:
        assert client.configuration.host == "https://home:6443"
    finally:
        await client.close()


async def test_in_cluster_without_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    # The library reads the process environment itself; give it a consistent one.
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert in_cluster(env)
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.skip("running inside a real pod")
    with pytest.raises(KubeConfigError, match="service account") as err:
        await api_client(environ=env)
    assert "token" in str(err.value)
