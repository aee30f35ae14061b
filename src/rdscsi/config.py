"""Driver configuration: defaults < YAML file < environment < command-line flags.

Structured with cattrs into frozen attrs classes, so a wrong value anywhere is reported with
its path (`rds.port: invalid value for type, expected int`) before anything starts.
Environment variables are `RDSCSI_<FIELD>`, nested with `__` (`RDSCSI_RDS__ADDRESS`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import yaml
from cattrs.v import format_exception

ENV_PREFIX = "RDSCSI_"
DNS_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{attribute.name}: must be > 0, got {value}")


def _port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 < value < 65536:
        raise ConfigError(f"{attribute.name}: {value} is not a TCP port (1..65535)")


@attrs.frozen
class ApplianceConfig:
    """One RDS appliance: how to reach it over SSH, and where volumes live on it."""

    address: str = "127.0.0.1"  # SSH address of the appliance
    port: int = attrs.field(default=22, validator=_port)  # SSH port
    user: str = "admin"  # SSH user
    key_file: str = ""  # SSH private key
    host_keys: list[str] = attrs.Factory(list)  # pinned public keys; several while rotating
    known_hosts: str = ""  # or an OpenSSH known_hosts file
    insecure_skip_host_key_check: bool = False  # explicit opt-out, warned at every start
    name: str = "rds"  # topology value and metrics label
    nvme_address: str = ""  # data-plane address; empty: same as `address`
    nvme_port: int = attrs.field(default=4420, validator=_port)  # NVMe/TCP port of the exports
    nqn_prefix: str = "nqn.2000-02.com.mikrotik:"  # export NQN = prefix + volume id
    pool_root: str = "/storage-pool/"  # the appliance pool holding the files
    volume_dir: str = "k8s"  # directory under the pool for this driver
    max_concurrency: int = attrs.field(default=8, validator=_positive)  # SSH channels at once
    command_timeout: float = attrs.field(default=30.0, validator=_positive)  # seconds per command


@attrs.frozen
class DriverConfig:
    """Everything `rdscsi serve` needs."""

    name: str = "rds.csi.mikrotik.com"  # CSI plugin name (DNS-style)
    controller: bool = False  # serve Identity + Controller
    node: bool = False  # serve Identity + Node (a DaemonSet pod on every node)
    endpoint: str = "unix:///csi/csi.sock"  # the CSI socket, unix:///path
    node_id: str = ""  # this node's id (the Kubernetes node name)
    metrics_address: str = ""  # HOST:PORT; empty disables /metrics
    rds: ApplianceConfig = attrs.Factory(ApplianceConfig)
    transport: Literal["nvme-tcp", "loop"] = "nvme-tcp"  # loop: the built-in simulator
    grace_period: float = attrs.field(default=30.0, validator=_positive)  # stale wait, seconds
    migration_timeout: float = attrs.field(default=300.0, validator=_positive)  # seconds
    resync_period: float = attrs.field(default=300.0, validator=_positive)  # backs up triggers
    kubernetes: bool = False  # feed nodes, attachments, events and leadership from the cluster
    kubeconfig: str = ""  # empty: in-cluster service account, else $KUBECONFIG/~/.kube/config
    lease_namespace: str = ""  # empty: the pod's namespace (POD_NAMESPACE), else kube-system
    lease_duration: float = attrs.field(default=15.0, validator=_positive)  # seconds
    renew_deadline: float = attrs.field(default=10.0, validator=_positive)  # leader steps down
    retry_period: float = attrs.field(default=2.0, validator=_positive)  # between Lease attempts
    known_nodes: list[str] = attrs.Factory(list)  # standalone: nodes that may attach
    state_dir: str = ""  # standalone: where attachments are kept across restarts
    node_state_dir: str = "/var/lib/rdscsi"  # node: per-volume records (how to reach devices)
    loop_root: str = ""  # transport "loop": the simulator's files directory
    max_volumes_per_node: int = 0  # reported by NodeGetInfo; 0: no limit

    def validate(self) -> DriverConfig:
        if not DNS_NAME.match(self.name):
            raise ConfigError(f"name: {self.name!r} is not a DNS-style plugin name")
        if not (self.controller or self.node):
            raise ConfigError("controller/node: enable at least one service")
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ConfigError(
                "lease_duration/renew_deadline/retry_period: need retry_period < "
                "renew_deadline < lease_duration"
            )
        if self.node and not self.node_id:
            raise ConfigError("node_id: required for the node service")
        if self.node and self.transport == "loop" and not self.loop_root:
            raise ConfigError("loop_root: required for the loop transport")
        if not self.endpoint.startswith("unix://"):
            raise ConfigError(f"endpoint: {self.endpoint!r} must be unix:///path")
        if self.controller and not (
            self.rds.host_keys or self.rds.known_hosts or self.rds.insecure_skip_host_key_check
        ):
            raise ConfigError(
                "rds.host_keys: give the appliance's host key (or rds.known_hosts); skipping "
                "verification needs rds.insecure_skip_host_key_check"
            )
        return self

    @property
    def socket_path(self) -> Path:
        return Path(self.endpoint.removeprefix("unix://"))


_converter = cattrs.Converter(forbid_extra_keys=True)


def _describe(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, ConfigError):
        return str(exc)
    return format_exception(exc, type_)


def structure(data: Mapping[str, Any]) -> DriverConfig:
    """`data` as a validated `DriverConfig`, or `ConfigError` naming every bad field."""
    try:
        config = _converter.structure(dict(data), DriverConfig)
    except cattrs.BaseValidationError as exc:
        messages = cattrs.transform_error(exc, path="config", format_exception=_describe)
        raise ConfigError("; ".join(m.replace("@ config.", "@ ") for m in messages)) from None
    except ConfigError:
        raise
    return config.validate()


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    lists = {"host_keys", "known_nodes"}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        value: Any = raw
        if path[-1] in lists:
            value = [item.strip() for item in raw.split(",") if item.strip()]
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def load(
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DriverConfig:
    """Layers the sources; flags given as `{"rds": {"port": 2222}, "controller": True}`."""
    data: dict[str, Any] = {}
    if file:
        try:
            loaded = yaml.safe_load(Path(file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {file}: expected a mapping at the top level")
        data = _merge(data, loaded)
    data = _merge(data, _env_layer(os.environ if environ is None else environ))
    data = _merge(data, flags or {})
    return structure(data)


def _field_docs(cls: type) -> dict[str, str]:
    """The trailing comment of each field's line in this module: the one source of the
    settings' descriptions, for `reference_markdown`."""
    import inspect

    docs: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


def _type_name(t: object) -> str:
    # Annotations are strings until cattrs resolves them in place: render both alike.
    text = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
    return text.replace("Literal", "one of ")


def reference_markdown() -> str:
    """docs/configuration.md, generated from the configuration classes."""
    rows = [
        "<!-- Generated by `rdscsi config-reference` from src/rdscsi/config.py; do not edit. -->",
        "# Configuration reference",
        "",
        "`rdscsi serve` reads a YAML file (`--config`), then `RDSCSI_*` environment variables "
        "(nested with `__`, lists comma-separated), then flags; later sources win. A wrong value "
        "is refused at start with its field named.",
        "",
    ]
    for cls, prefix in ((DriverConfig, ""), (ApplianceConfig, "rds.")):
        docs = _field_docs(cls)
        rows += [
            f"## `{cls.__name__}`" + (" (under `rds:`)" if prefix else ""),
            "",
            "| setting | environment | type | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for f in attrs.fields(cls):
            if f.name == "rds":
                continue
            default = f.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            env = (
                ENV_PREFIX + (prefix.rstrip(".").upper() + "__" if prefix else "") + f.name.upper()
            )
            kind = _type_name(f.type)
            rows.append(
                f"| `{prefix}{f.name}` | `{env}` | {kind} | `{default!r}` "
                f"| {docs.get(f.name, '')} |"
            )
        rows.append("")
    return "\n".join(rows)
