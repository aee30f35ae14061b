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

    # One setting per line, its trailing comment the description (help, docs): keep it so.
    # fmt: off
    address: str = "127.0.0.1"  # SSH address of the appliance
    port: int = attrs.field(default=22, validator=_port)  # SSH port (TCP)
    user: str = "admin"  # SSH user
    key_file: str = ""  # SSH private key
    host_keys: list[str] = attrs.Factory(list)  # pinned public keys; several while rotating
    known_hosts: str = ""  # or an OpenSSH known_hosts file
    insecure_skip_host_key_check: bool = False  # explicit opt-out, warned at every start
    name: str = "rds"  # topology value and metrics label
    nvme_address: str = ""  # data-plane address; empty: same as `address`
    nvme_port: int = attrs.field(default=4420, validator=_port)  # NVMe/TCP port of the exports (TCP)
    nqn_prefix: str = "nqn.2000-02.com.mikrotik:"  # export NQN = prefix + volume id
    pool_root: str = "/storage-pool/"  # the appliance pool holding the files
    volume_dir: str = "k8s"  # directory under the pool for this driver
    max_concurrency: int = attrs.field(default=8, validator=_positive)  # SSH channels open at once (commands in flight)
    command_timeout: float = attrs.field(default=30.0, validator=_positive)  # seconds one appliance command may take
    # fmt: on


@attrs.frozen
class DriverConfig:
    """Everything `rdscsi serve` needs."""

    # fmt: off
    name: str = "rds.csi.mikrotik.com"  # CSI plugin name (DNS-style)
    controller: bool = False  # serve Identity + Controller
    node: bool = False  # serve Identity + Node (a DaemonSet pod on every node)
    endpoint: str = "unix:///csi/csi.sock"  # the CSI socket, unix:///path
    node_id: str = ""  # this node's id (the Kubernetes node name)
    metrics_address: str = ""  # HOST:PORT; empty disables /metrics
    rds: ApplianceConfig = attrs.Factory(ApplianceConfig)
    transport: Literal["nvme-tcp", "loop"] = "nvme-tcp"  # loop: the built-in simulator
    grace_period: float = attrs.field(default=30.0, validator=_positive)  # seconds a stale attachment waits, with evidence, before it is cleared
    migration_timeout: float = attrs.field(default=300.0, validator=_positive)  # seconds a live migration may hold two nodes
    resync_period: float = attrs.field(default=300.0, validator=_positive)  # seconds between full reconcile passes (backs up the triggers)
    kubernetes: bool = False  # feed nodes, attachments, events and leadership from the cluster
    kubeconfig: str = ""  # empty: in-cluster service account, else $KUBECONFIG/~/.kube/config
    lease_namespace: str = ""  # empty: the pod's namespace (POD_NAMESPACE), else kube-system
    lease_duration: float = attrs.field(default=15.0, validator=_positive)  # seconds a Lease is valid without renewal
    renew_deadline: float = attrs.field(default=10.0, validator=_positive)  # seconds without a renewal before the leader steps down
    retry_period: float = attrs.field(default=2.0, validator=_positive)  # seconds between Lease attempts
    known_nodes: list[str] = attrs.Factory(list)  # standalone: nodes that may attach
    state_dir: str = ""  # standalone: where attachments are kept across restarts
    node_state_dir: str = "/var/lib/rdscsi"  # node: per-volume records (how to reach devices)
    loop_root: str = ""  # transport "loop": the simulator's files directory
    max_volumes_per_node: int = 0  # reported by NodeGetInfo; 0: no limit
    # fmt: on

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
    lists = {s.path[-1] for s in settings() if s.is_list}
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
    settings' descriptions, for `reference_markdown` and the command-line help."""
    import inspect

    docs: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


@attrs.frozen
class Setting:
    """One leaf setting, as every source spells it: YAML path, environment variable, flag."""

    path: tuple[str, ...]  # ("rds", "port")
    field: attrs.Attribute[Any]
    doc: str

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return ENV_PREFIX + "__".join(p.upper() for p in self.path)

    @property
    def flag(self) -> str:
        """`--rds-port`; list settings take one value per flag, so the flag is singular
        (`--rds-host-key`, repeated)."""
        *parents, leaf = self.path
        if self.is_list and leaf.endswith("s"):
            leaf = leaf[:-1]
        return "--" + "-".join([*parents, leaf]).replace("_", "-")

    @property
    def is_list(self) -> bool:
        return _origin(self.field.type) is list or str(self.field.type).startswith("list")

    @property
    def default(self) -> Any:
        default: Any = self.field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            return default.factory()
        return default


def _origin(t: object) -> object:
    import typing

    return typing.get_origin(t)


# Nested sections: a field whose type is one of these is a group of settings, not a leaf.
def _sections() -> dict[str, type]:
    return {"rds": ApplianceConfig}


def settings() -> list[Setting]:
    """Every leaf setting of `DriverConfig`, in declaration order (nested ones after)."""
    attrs.resolve_types(DriverConfig)
    attrs.resolve_types(ApplianceConfig)
    out: list[Setting] = []
    nested: list[Setting] = []
    docs = _field_docs(DriverConfig)
    for f in attrs.fields(DriverConfig):
        section = _sections().get(f.name)
        if section is None:
            out.append(Setting((f.name,), f, docs.get(f.name, "")))
            continue
        sub_docs = _field_docs(section)
        for g in attrs.fields(section):
            nested.append(Setting((f.name, g.name), g, sub_docs.get(g.name, "")))
    return out + nested


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
        "is refused at start with its field named. Every setting has all three spellings.",
        "",
    ]
    groups: dict[tuple[str, ...], list[Setting]] = {}
    for setting in settings():
        groups.setdefault(setting.path[:-1], []).append(setting)
    for parent, members in groups.items():
        cls = _sections()[parent[0]] if parent else DriverConfig
        rows += [
            f"## `{cls.__name__}`" + (f" (under `{'.'.join(parent)}:`)" if parent else ""),
            "",
            "| setting | flag | environment | type | default | meaning |",
            "|---|---|---|---|---|---|",
        ]
        for st in members:
            flag = st.flag + (" (repeat)" if st.is_list else "")
            rows.append(
                f"| `{st.key}` | `{flag}` | `{st.env}` | {_type_name(st.field.type)} "
                f"| `{st.default!r}` | {st.doc} |"
            )
        rows.append("")
    return "\n".join(rows)
