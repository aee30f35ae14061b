"""Driver configuration: defaults < YAML file < environment < command-line flags.

Structured with cattrs into frozen attrs classes and checked twice before anything starts,
each refusal one line naming the field, the value and what is expected
(`rds.port: 'ssh' is not valid; expected an integer`):
- `DriverConfig.validate` checks values alone (types, ranges, addresses, endpoint form) and
  normalises pinned host keys from every form people paste;
- `DriverConfig.prepare` checks what the values name on this host (key files exist and
  parse, directories exist or are created), when a command is about to start.
Environment variables are `RDSCSI_<FIELD>`, nested with `__` (`RDSCSI_RDS__ADDRESS`).

The appliances: `rds:` is one appliance, the fleet's default; `appliances:` adds more, keyed
by name (`appliances: {rds-b: {address: …}}`), spelled `RDSCSI_APPLIANCES__RDS_B__ADDRESS`
(`_` in the name is `-`) and `--appliance rds-b.address=…` (`DriverConfig.fleet`).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import yaml

from .csi.naming import APPLIANCE_NAME, APPLIANCE_NAME_MAX
from .machines.orphan import DEFAULT_MIN_AGE_S, DEFAULT_RETENTION_S
from .sshkeys import KeyLineError, known_hosts_keys, pinned_keys

ENV_PREFIX = "RDSCSI_"
DNS_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
HOST_NAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# sun_path holds 107 bytes and a NUL, but gRPC binds unix paths of at most 105 bytes (106 and
# 107 fail at bind, after start-up checks would have passed them)
UNIX_PATH_MAX = 105


class ConfigError(ValueError):
    """Configuration values are wrong: one line per problem, each naming the field, the value
    and what is expected."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


def refuse(field: str, value: object, problem: str, expected: str) -> ConfigError:
    """`rds.port: 'ssh' is not valid; expected an integer`."""
    shown = "missing" if value in ("", None) else f"{value!r} {problem}"
    return ConfigError(f"{field}: {shown}; expected {expected}")


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise refuse(attribute.name, value, "is not above 0", "a number above 0")


def _port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 < value < 65536:
        raise refuse(attribute.name, value, "is not a TCP port", "1..65535")


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise refuse(attribute.name, value, "is negative", "0 or more")


@attrs.frozen
class ApplianceConfig:
    """One RDS appliance: how to reach it over SSH, and where volumes live on it."""

    # One setting per line, its trailing comment the description (help, docs): keep it so.
    # fmt: off
    address: str = ""  # SSH (management) address of the appliance: host name or IP; required for the controller
    port: int = attrs.field(default=22, validator=_port)  # SSH port (TCP port number)
    user: str = "admin"  # SSH user on the appliance
    key_file: str = ""  # SSH private key file (OpenSSH or PEM, unencrypted); empty: ~/.ssh keys
    host_keys: list[str] = attrs.Factory(list)  # pinned host keys, `ssh-ed25519 AAAA…` (known_hosts, ssh-keyscan and authorized_keys lines accepted); several while rotating
    known_hosts: str = ""  # or an OpenSSH known_hosts file (`<host> <type> <key>` lines)
    insecure_skip_host_key_check: bool = False  # explicit opt-out, warned at every start
    name: str = "rds"  # the appliance's name: topology value, metrics label, part of its volume ids (never rename it); under `appliances:` the key is the name
    nvme_address: str = ""  # data-plane address (host name or IP); empty: same as `address`
    nvme_port: int = attrs.field(default=4420, validator=_port)  # NVMe/TCP port of the exports (TCP port number)
    nqn_prefix: str = "nqn.2000-02.com.mikrotik:"  # export NQN = prefix + the volume's slot on the appliance (its id without an appliance name)
    pool_root: str = "/storage-pool/"  # the appliance pool holding the files (path on the appliance)
    volume_dir: str = "k8s"  # directory under the pool for this driver
    max_concurrency: int = attrs.field(default=5, validator=_positive)  # SSH command channels open at once (count); the health check has one more: OpenSSH allows 10 sessions per connection
    command_timeout: float = attrs.field(default=30.0, validator=_positive)  # seconds one appliance command may take, from waiting for a channel to the end of its reply
    health_interval: float = attrs.field(default=5.0, validator=_positive)  # seconds between health commands (on their own channel, never behind commands)
    health_timeout: float = attrs.field(default=5.0, validator=_positive)  # seconds one health command may take
    keepalive_interval: float = attrs.field(default=3.0, validator=_positive)  # seconds without a byte from the appliance before an SSH keepalive is sent
    keepalive_count: int = attrs.field(default=2, validator=_positive)  # unanswered SSH keepalives (count) before the link counts as lost: silence is found within (count + 1) x interval seconds
    fence: Literal["allow-host", "none"] = "allow-host"  # who may connect to a volume's export: allow-host (the host NQNs of the nodes holding it, on the disk's allow-list) or none (any host); docs/fencing.md
    # fmt: on


@attrs.frozen
class DriverConfig:
    """Everything `rdscsi serve` needs."""

    # fmt: off
    name: str = "rds.csi.mikrotik.com"  # CSI plugin name (DNS-style)
    controller: bool = False  # serve Identity + Controller
    node: bool = False  # serve Identity + Node (a DaemonSet pod on every node)
    endpoint: str = "unix:///csi/csi.sock"  # the CSI socket, unix:///ABSOLUTE/PATH; its directory must exist (or be under state_dir)
    node_id: str = ""  # this node's id (the Kubernetes node name)
    metrics_address: str = ""  # HOST:PORT (TCP) for /metrics and /healthz, `:9809` for every address; empty disables them
    rds: ApplianceConfig = attrs.Factory(ApplianceConfig)
    appliances: dict[str, ApplianceConfig] = attrs.Factory(dict)
    node_appliances: list[str] = attrs.Factory(list)  # node: the names of the appliances this node reaches over NVMe/TCP (its topology); empty: every appliance
    transport: Literal["nvme-tcp", "loop"] = "nvme-tcp"  # loop: the built-in simulator
    grace_period: float = attrs.field(default=30.0, validator=_positive)  # seconds a stale attachment waits, with evidence, before it is cleared
    migration_timeout: float = attrs.field(default=300.0, validator=_positive)  # seconds a live migration may hold two nodes
    resync_period: float = attrs.field(default=300.0, validator=_positive)  # seconds between full reconcile passes (backs up the triggers)
    kubernetes: bool = False  # controller: feed nodes, attachments, events and leadership from the cluster; node: report its host NQN on its Node
    kubeconfig: str = ""  # kubeconfig file; empty: in-cluster service account, else $KUBECONFIG/~/.kube/config
    lease_namespace: str = ""  # empty: the pod's namespace (POD_NAMESPACE), else kube-system
    lease_duration: float = attrs.field(default=15.0, validator=_positive)  # seconds a Lease is valid without renewal
    renew_deadline: float = attrs.field(default=10.0, validator=_positive)  # seconds without a renewal before the leader steps down
    retry_period: float = attrs.field(default=2.0, validator=_positive)  # seconds between Lease attempts
    known_nodes: list[str] = attrs.Factory(list)  # standalone: nodes that may attach, `name` or `name=host-nqn` (the host NQN is what fence: allow-host lets connect)
    state_dir: str = ""  # standalone: directory where attachments are kept across restarts (created at start)
    node_state_dir: str = "/var/lib/rdscsi"  # node: directory of per-volume records, how to reach devices (created at start)
    kubelet_dir: str = "/var/lib/kubelet"  # node: kubelet's root directory; every staging and target path must lie inside it
    loop_root: str = ""  # transport "loop": the simulator's files directory
    max_volumes_per_node: int = attrs.field(default=0, validator=_not_negative)  # volumes per node reported by NodeGetInfo (count); 0: no limit
    host_nqn_file: str = "/etc/nvme/hostnqn"  # node: the file holding this host's NVMe host NQN (node-init writes it), reported on its Node for the fence
    loop_control: str = ""  # transport "loop": the simulators' control sockets (comma-separated), asked in turn to admit each connect by the disk's allow-list; empty: nobody is asked
    orphans: Literal["report", "quarantine", "delete"] = "report"  # the driver's unclaimed objects on each appliance (one policy for the fleet): report them, quarantine them (renamed, export off), or delete them after the quarantine; docs/fencing.md
    orphan_min_age: float = attrs.field(default=DEFAULT_MIN_AGE_S, validator=_positive)  # seconds an object must be seen unclaimed before it is quarantined
    orphan_retention: float = attrs.field(default=DEFAULT_RETENTION_S, validator=_positive)  # seconds a quarantined object is kept before `orphans: delete` deletes it
    sweep_interval: float = attrs.field(default=900.0, validator=_positive)  # seconds between sweeps of each appliance (orphans, fences), besides one when it first connects, after each reconnect to it and when a new leader starts
    # fmt: on

    def validate(self) -> DriverConfig:
        """The values alone, every problem at once; returns the configuration with the pinned
        host keys normalised to `<type> <base64>`."""
        problems: list[str] = []

        def check(ok: bool, error: ConfigError | str) -> None:
            if not ok:
                problems.extend(error.problems if isinstance(error, ConfigError) else [error])

        check(
            bool(DNS_NAME.match(self.name)),
            refuse("name", self.name, "is not valid", "a DNS-style name (rds.csi.example.com)"),
        )
        check(
            self.controller or self.node,
            "controller, node: both off; expected at least one service (--controller, --node)",
        )
        check(
            self.retry_period < self.renew_deadline < self.lease_duration,
            f"lease_duration, renew_deadline, retry_period: {self.lease_duration:g}, "
            f"{self.renew_deadline:g}, {self.retry_period:g}; expected retry_period < "
            "renew_deadline < lease_duration",
        )
        if self.node:
            check(bool(self.node_id), refuse("node_id", "", "", "this node's name"))
        if self.node and self.transport == "loop":
            check(bool(self.loop_root), refuse("loop_root", "", "", "the simulator's files"))
        problems.extend(_known_node_problems(self.known_nodes))
        problems.extend(endpoint_problems(self.endpoint))
        problems.extend(_listen_problems("metrics_address", self.metrics_address))
        for key, given in self.appliances.items():
            if given.name not in (key, ApplianceConfig().name):
                problems.append(
                    f"appliances.{key}.name: {given.name!r}: the key is the name; expected no "
                    "name setting under appliances:"
                )
        fleet: dict[str, ApplianceConfig] = {}
        for section, appliance in self._sections_of_fleet():
            problems.extend(_name_problems(section, appliance.name))
            if appliance.name in fleet:
                problems.append(
                    f"{section}: {appliance.name!r} is the name of rds (rds.name); expected "
                    "another name (every appliance's name is its own)"
                )
            normalised, found = _appliance_problems(section, appliance, self.controller)
            problems.extend(found)
            fleet[appliance.name] = normalised
        for index, name in enumerate(self.node_appliances):
            if name not in fleet:
                known = ", ".join(fleet) or "none"
                problems.append(
                    str(
                        refuse(
                            f"node_appliances[{index}]",
                            name,
                            "is not an appliance of this configuration",
                            f"one of {known}",
                        )
                    )
                )
        if problems:
            raise ConfigError(*problems)
        rds = fleet.get(self.rds.name, self.rds) if self._rds_in_fleet() else self.rds
        others = {key: fleet[key] for key in self.appliances}
        if rds == self.rds and others == self.appliances:
            return self
        return attrs.evolve(self, rds=rds, appliances=others)

    # --- the fleet ------------------------------------------------------------------------

    def _rds_in_fleet(self) -> bool:
        """`rds:` is an appliance of the fleet unless only `appliances:` is configured."""
        return not self.appliances or self.rds != ApplianceConfig()

    def _sections_of_fleet(self) -> list[tuple[str, ApplianceConfig]]:
        """(the section its settings are under, the appliance with its name), `rds` first."""
        out = [("rds", self.rds)] if self._rds_in_fleet() else []
        for key, appliance in self.appliances.items():
            out.append((f"appliances.{key}", attrs.evolve(appliance, name=key)))
        return out

    @property
    def fleet(self) -> tuple[ApplianceConfig, ...]:
        """Every appliance, each with its name: the `rds:` one first (the default: ids of
        the single-appliance form are its, and StorageClasses that name no appliance use
        it), then `appliances:` in order."""
        return tuple(a for _, a in self._sections_of_fleet())

    @property
    def default_appliance(self) -> str:
        """The name of the default appliance; '' when only `appliances:` is configured."""
        return self.rds.name if self._rds_in_fleet() else ""

    def section_of(self, name: str) -> str:
        """Where appliance `name`'s settings are: `rds`, or `appliances.<name>`."""
        return "rds" if name == self.default_appliance else f"appliances.{name}"

    def prepare(self) -> DriverConfig:
        """What the settings name on this host, before a command starts: files exist and
        parse, directories exist (state directories, and the socket's under them, are
        created). Every problem at once, as `ConfigError`."""
        problems: list[str] = []
        for section, appliance in self._sections_of_fleet():
            if self.controller and appliance.key_file:
                problems.extend(_key_file_problems(f"{section}.key_file", appliance.key_file))
            if self.controller and appliance.known_hosts:
                problems.extend(
                    _known_hosts_problems(f"{section}.known_hosts", appliance.known_hosts)
                )
        if self.kubeconfig:
            problems.extend(_file_problems("kubeconfig", self.kubeconfig, "a kubeconfig file"))
        made: list[Path] = []
        for field, value, wanted in (
            ("state_dir", self.state_dir, bool(self.state_dir)),
            ("node_state_dir", self.node_state_dir, self.node),
        ):
            if wanted:
                problems.extend(_make_dir(field, value))
                made.append(Path(value).resolve())
        if self.node and self.transport == "loop" and not Path(self.loop_root).is_dir():
            problems.append(
                str(
                    refuse(
                        "loop_root", self.loop_root, "is not a directory", "the simulator's files"
                    )
                )
            )
        socket_dir = self.socket_path.parent
        if not socket_dir.is_dir():
            if any(socket_dir.resolve().is_relative_to(d) for d in made):
                if not problems:
                    problems.extend(_make_dir("endpoint", str(socket_dir)))
            else:
                problems.append(
                    f"endpoint: {self.endpoint!r}: the directory {socket_dir} does not exist; "
                    "expected an existing directory (or one under state_dir)"
                )
        if problems:
            raise ConfigError(*problems)
        return self

    @property
    def socket_path(self) -> Path:
        return Path(self.endpoint.removeprefix("unix://"))

    def known_host_nqns(self) -> dict[str, str | None]:
        """Standalone nodes and their host NQNs (None: not given)."""
        out: dict[str, str | None] = {}
        for entry in self.known_nodes:
            name, sep, nqn = entry.partition("=")
            out[name.strip()] = nqn.strip() if sep else None
        return out


def _name_problems(section: str, name: str) -> list[str]:
    field = "rds.name" if section == "rds" else section
    if APPLIANCE_NAME.fullmatch(name) is None:
        return [
            str(
                refuse(
                    field,
                    name,
                    "is not a valid appliance name",
                    f"lower-case letters, digits and '-', at most {APPLIANCE_NAME_MAX} "
                    "characters (rds-b)",
                )
            )
        ]
    return []


def _appliance_problems(
    section: str, appliance: ApplianceConfig, controller: bool
) -> tuple[ApplianceConfig, list[str]]:
    """One appliance's values alone; returns it with its pinned host keys normalised."""
    problems: list[str] = []
    if controller:
        problems.extend(_host_problems(f"{section}.address", appliance.address, True, section))
        if not (
            appliance.host_keys or appliance.known_hosts or appliance.insecure_skip_host_key_check
        ):
            problems.append(
                f"{section}.host_keys: missing; expected the appliance's host key (or "
                f"{section}.known_hosts; skipping verification needs "
                f"{section}.insecure_skip_host_key_check)"
            )
    if appliance.nvme_address:
        problems.extend(
            _host_problems(f"{section}.nvme_address", appliance.nvme_address, False, section)
        )
    keys: list[str] = []
    for index, entry in enumerate(appliance.host_keys):
        try:
            keys.extend(k for k in pinned_keys(entry) if k not in keys)
        except KeyLineError as exc:
            problems.append(
                f"{section}.host_keys[{index}]: {_excerpt(entry)!r}: {exc}; expected "
                "`ssh-ed25519 AAAA…` (a known_hosts or ssh-keyscan line is fine too)"
            )
    if keys != list(appliance.host_keys):
        appliance = attrs.evolve(appliance, host_keys=keys)
    return appliance, problems


def _excerpt(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _known_node_problems(entries: list[str]) -> list[str]:
    from .io.rds.commands import validate_host_nqn
    from .io.rds.errors import InvalidValueError

    expected = "`name` or `name=nqn.YYYY-MM.domain:suffix`"
    problems = []
    for index, entry in enumerate(entries):
        name, sep, nqn = entry.partition("=")
        if not name.strip():
            problems.append(str(refuse(f"known_nodes[{index}]", entry, "names no node", expected)))
        elif sep:
            try:
                validate_host_nqn(nqn.strip())
            except InvalidValueError as exc:
                problems.append(
                    str(
                        refuse(
                            f"known_nodes[{index}]", entry, f"has a bad host NQN ({exc})", expected
                        )
                    )
                )
    return problems


def endpoint_problems(endpoint: str) -> list[str]:
    expected = "unix:///ABSOLUTE/PATH (e.g. unix:///csi/csi.sock)"
    if not endpoint.startswith("unix://"):
        return [str(refuse("endpoint", endpoint, "is not a unix socket", expected))]
    path = endpoint.removeprefix("unix://")
    if not path.startswith("/"):
        # gRPC reads `unix://x.sock` as host `x.sock` and binds `/`: never a relative path
        return [str(refuse("endpoint", endpoint, "is not an absolute path", expected))]
    if path.endswith("/") or len(path.encode()) > UNIX_PATH_MAX:
        return [
            str(
                refuse(
                    "endpoint",
                    endpoint,
                    f"is not a socket path of at most {UNIX_PATH_MAX} bytes",
                    expected,
                )
            )
        ]
    return []


def _host_problems(field: str, value: str, required: bool = False, section: str = "") -> list[str]:
    """`section`: the appliance's (`rds`), whose `user` and port settings a misplaced part
    belongs in."""
    expected = "a host name or IP address"
    if not value:
        return [str(refuse(field, "", "", expected))] if required else []
    if "@" in value:
        return [str(refuse(field, value, f"has a user in it (set {section}.user)", expected))]
    try:
        ipaddress.ip_address(value.strip("[]"))
        return []
    except ValueError:
        pass
    if ":" in value:
        port = f"{section}.nvme_port" if field.endswith("nvme_address") else f"{section}.port"
        return [str(refuse(field, value, f"has a port in it (set {port})", expected))]
    if not HOST_NAME.match(value):
        return [str(refuse(field, value, "is not valid", expected))]
    return []


def _listen_problems(field: str, value: str) -> list[str]:
    """`HOST:PORT` (empty host: every address; IPv6 in brackets); empty disables."""
    expected = "HOST:PORT (e.g. 127.0.0.1:9809, or :9809 for every address)"
    if not value:
        return []
    host, sep, port = value.rpartition(":")
    if not sep:
        return [str(refuse(field, value, "has no port", expected))]
    if not port.isdigit() or not 0 <= int(port) < 65536:
        return [str(refuse(field, value, "has no valid TCP port", expected))]
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return [str(refuse(field, value, "has an unbracketed IPv6 host", expected))]
    if host and _host_problems(field, host.strip("[]")):
        return [str(refuse(field, value, "has no valid host", expected))]
    return []


def _file_problems(field: str, path: str, expected: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        return [str(refuse(field, path, "does not exist", expected))]
    if not p.is_file():
        return [str(refuse(field, path, "is not a file", expected))]
    if not os.access(p, os.R_OK):
        return [str(refuse(field, path, "is not readable by this user", expected))]
    return []


def _key_file_problems(field: str, path: str) -> list[str]:
    import asyncssh

    expected = "a readable, unencrypted SSH private key file"
    problems = _file_problems(field, path, expected)
    if problems:
        return problems
    try:
        asyncssh.read_private_key(path)
    except (asyncssh.KeyImportError, ValueError, OSError) as exc:
        why = "is encrypted" if "assphrase" in str(exc) else f"does not parse ({exc})"
        return [str(refuse(field, path, why, expected))]
    return []


def _known_hosts_problems(field: str, path: str) -> list[str]:
    expected = "an OpenSSH known_hosts file (`<host> ssh-ed25519 AAAA…` lines)"
    problems = _file_problems(field, path, expected)
    if problems:
        return problems
    try:
        count = known_hosts_keys(Path(path).read_text(errors="replace"))
    except KeyLineError as exc:
        return [str(refuse(field, path, str(exc), expected))]
    if not count:
        return [str(refuse(field, path, "holds no host key", expected))]
    return []


def _make_dir(field: str, path: str) -> list[str]:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [str(refuse(field, path, f"cannot be created ({exc.strerror})", "a directory"))]
    if not os.access(path, os.W_OK | os.X_OK):
        return [str(refuse(field, path, "is not writable by this user", "a writable directory"))]
    return []


# --- structuring: strict scalars, and errors that name the field and the value -------------------


def _strict_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def as_str(value: object, _: type) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError("text")
        return str(value)

    def as_bool(value: object, _: type) -> bool:
        if not isinstance(value, bool):
            raise TypeError("true or false")
        return value

    def as_int(value: object, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError("an integer")
        return int(value)

    def as_float(value: object, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("a number")
        return float(value)

    def as_str_list(value: object, _: type) -> list[str]:
        # One string is one item (a YAML scalar where a list was meant), never its characters.
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise TypeError("a list of text")
        return [as_str(v, str) for v in items]

    conv.register_structure_hook(str, as_str)
    conv.register_structure_hook(bool, as_bool)
    conv.register_structure_hook(int, as_int)
    conv.register_structure_hook(float, as_float)
    conv.register_structure_hook_func(lambda t: t == list[str], as_str_list)
    return conv


_converter = _strict_converter()


def _expected(type_: object) -> str:
    if typing.get_origin(type_) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(type_))
    names: dict[object, str] = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "text",
        list[str]: "a list of text",
    }
    if isinstance(type_, type) and attrs.has(type_):
        return "a mapping of settings"
    if typing.get_origin(type_) is dict:
        return "a mapping of appliances by name (rds-b: {address: …})"
    return names.get(type_, str(type_).replace("typing.", ""))


def _lookup(data: object, path: tuple[str, ...]) -> object:
    for part in path:
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and part.startswith("["):
            data = data[int(part[1:-1])]
    return data


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[", "[")


def _problems(exc: BaseException, path: tuple[str, ...], type_: object, data: object) -> list[str]:
    """One line per leaf failure of a cattrs validation tree."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(exc.cl)]
        out = []
        for key in sorted(exc.extra_fields):
            close = difflib.get_close_matches(key, known, n=1)
            hint = (
                f"a known setting (did you mean {close[0]!r}?)"
                if close
                else f"one of {', '.join(known)}"
            )
            out.append(f"{_dotted((*path, key))}: unknown setting; expected {hint}")
        return out
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        with_notes, without = exc.group_exceptions()
        out = []
        for inner, note in with_notes:
            if hasattr(note, "name"):
                step = note.name
            elif isinstance(note.index, str):
                step = note.index  # a mapping's key: `appliances.rds-b`
            else:
                step = f"[{note.index}]"
            out += _problems(inner, (*path, step), note.type, data)
        for inner in without:
            out += _problems(inner, path, type_, data)
        return out
    if isinstance(exc, ConfigError):
        # attrs validators name the attribute only: add the section in front
        prefix = _dotted(path) + "." if path else ""
        return [prefix + p for p in exc.problems]
    value = _lookup(data, path)
    if isinstance(type_, type) and attrs.has(type_) and not isinstance(value, Mapping):
        return [str(refuse(_dotted(path), value, "is not a mapping", "a mapping of settings"))]
    return [str(refuse(_dotted(path), value, "is not valid", _expected(type_)))]


def structure(data: Mapping[str, Any]) -> DriverConfig:
    """`data` as a validated `DriverConfig`, or `ConfigError` naming every bad field."""
    try:
        config = _converter.structure(dict(data), DriverConfig)
    except cattrs.BaseValidationError as exc:
        raise ConfigError(*_problems(exc, (), DriverConfig, data)) from None
    return config.validate()


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _env_host_keys(raw: str) -> list[str]:
    """Keys are comma-separated like every list, unless that would cut a known_hosts line
    whose host field holds commas (`host,10.0.0.5 ssh-ed25519 AAAA…`); newlines separate too."""
    entries: list[str] = []
    for line in raw.splitlines():
        if line.strip().startswith("#"):
            continue  # pasted ssh-keyscan output
        pieces = [p.strip() for p in line.split(",") if p.strip()]
        if all(_KEY_TYPE_WORD.search(p) for p in pieces):
            entries.extend(pieces)
        elif line.strip():
            entries.append(line.strip())
    return entries


_KEY_TYPE_WORD = re.compile(r"(?:^|\s)(?:ssh-|ecdsa-|sk-)\S+\s+\S")


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    lists = {s.path[-1] for s in settings() if s.is_list}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 3 and path[0] == "appliances":
            path[1] = path[1].replace("_", "-")  # `RDS_B`: shells take no `-` in a name
        value: Any = raw
        if path[-1] == "host_keys":
            value = _env_host_keys(raw)
        elif path[-1] in lists:
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


NAME_SLOT = "<name>"  # in a setting's path: any appliance's name under `appliances:`


@attrs.frozen
class Setting:
    """One leaf setting, as every source spells it: YAML path, environment variable, flag.

    The settings of the appliances under `appliances:` are templates, their path holding
    `<name>` (`appliances.<name>.port`): `at("rds-b")` is the setting of one appliance."""

    path: tuple[str, ...]  # ("rds", "port"), ("appliances", "<name>", "port")
    field: attrs.Attribute[Any]
    doc: str

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def templated(self) -> bool:
        return NAME_SLOT in self.path

    def at(self, name: str) -> Setting:
        """This setting of appliance `name` under `appliances:`."""
        return attrs.evolve(self, path=tuple(name if p == NAME_SLOT else p for p in self.path))

    @property
    def env(self) -> str:
        """`RDSCSI_RDS__PORT`; an appliance's name with `-` as `_` (`RDSCSI_APPLIANCES__RDS_B__PORT`):
        shells take no `-` in a variable's name."""
        return ENV_PREFIX + "__".join(p.upper().replace("-", "_") for p in self.path)

    @property
    def flag(self) -> str:
        """`--rds-port`; list settings take one value per flag, so the flag is singular
        (`--rds-host-key`, repeated). An appliance under `appliances:` has one flag for all
        its settings, `--appliance NAME.SETTING=VALUE` (repeated)."""
        if len(self.path) == 3:
            return APPLIANCE_FLAG
        *parents, leaf = self.path
        if self.is_list and leaf.endswith("s"):
            leaf = leaf[:-1]
        return "--" + "-".join([*parents, leaf]).replace("_", "-")

    def argv(self, value: str) -> list[str]:
        """The command-line words that give this setting `value` (one of a list's items)."""
        if len(self.path) == 3:
            return [APPLIANCE_FLAG, f"{self.path[1]}.{self.path[2]}={value}"]
        return [self.flag, value]

    @property
    def is_list(self) -> bool:
        return _origin(self.field.type) is list or str(self.field.type).startswith("list")

    @property
    def default(self) -> Any:
        default: Any = self.field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            return default.factory()
        return default


APPLIANCE_FLAG = "--appliance"


def _origin(t: object) -> object:
    import typing

    return typing.get_origin(t)


# Nested sections: a field whose type is one of these is a group of settings, not a leaf;
# under `appliances:` each appliance is one, keyed by its name.
def _sections() -> dict[str, type]:
    return {"rds": ApplianceConfig, "appliances": ApplianceConfig}


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
        keyed = f.name == "appliances"
        for g in attrs.fields(section):
            if keyed and g.name == "name":
                continue  # the key is the name
            path = (f.name, NAME_SLOT, g.name) if keyed else (f.name, g.name)
            nested.append(Setting(path, g, sub_docs.get(g.name, "")))
    return out + nested


def appliance_flags(values: list[str]) -> dict[str, dict[str, Any]]:
    """`--appliance NAME.SETTING=VALUE` words as `{name: {setting: value}}`; a list setting
    repeated is its items, `true`/`false` are booleans. ConfigError names a malformed one."""
    leaves = {s.path[-1]: s for s in settings() if s.templated}
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for word in values:
        target, eq, value = word.partition("=")
        name, dot, leaf = target.partition(".")
        setting = leaves.get(leaf)
        if not eq or not dot or not name or setting is None:
            close = difflib.get_close_matches(leaf, list(leaves), n=1) if dot else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{APPLIANCE_FLAG} {_excerpt(word)!r}: not NAME.SETTING=VALUE with a known "
                f"setting{hint}; expected e.g. {APPLIANCE_FLAG} rds-b.address=10.0.0.6"
            )
            continue
        entry = out.setdefault(name.lower().replace("_", "-"), {})
        if setting.is_list:
            entry.setdefault(leaf, []).append(value)
        elif setting.field.type in (bool, "bool") and value.lower() in ("true", "false"):
            entry[leaf] = value.lower() == "true"
        else:
            entry[leaf] = value
    if problems:
        raise ConfigError(*problems)
    return out


def _type_name(t: object) -> str:
    # Annotations are strings until cattrs resolves them in place: render both alike.
    text = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
    return text.replace("Literal", "one of ")


_SECTION_NOTES: dict[tuple[str, ...], list[str]] = {
    ("rds",): [
        "The default appliance: with `appliances:` empty, the only one. Volumes of "
        "StorageClasses that name no appliance go to it, and volume ids without an appliance "
        "name (`pvc-…`, every id issued before a fleet) are its. Left at its defaults while "
        "`appliances:` lists appliances, it is not one (then there is no default appliance).",
        "",
    ],
    ("appliances", NAME_SLOT): [
        "More appliances, keyed by name (a lower-case DNS label of at most "
        f"{APPLIANCE_NAME_MAX} characters, e.g. `rds-b`): each has every setting of `rds:` "
        "but `name`. Their volume ids carry the name (`rds-b:pvc-…`). In an environment "
        "variable the name's `-` is written `_` (`RDSCSI_APPLIANCES__RDS_B__ADDRESS`); on the "
        "command line `--appliance rds-b.address=10.0.0.6`, repeated (a list setting's items "
        "one per flag). See docs/install.md for a two-appliance example.",
        "",
    ],
}


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
            *_SECTION_NOTES.get(parent, []),
            "| setting | flag | environment | type | default | meaning |",
            "|---|---|---|---|---|---|",
        ]
        for st in members:
            flag = st.flag + (" (repeat)" if st.is_list else "")
            if st.templated:
                flag = f"{st.flag} <name>.{st.path[-1]}=…" + (" (repeat)" if st.is_list else "")
            rows.append(
                f"| `{st.key}` | `{flag}` | `{st.env}` | {_type_name(st.field.type)} "
                f"| `{st.default!r}` | {st.doc} |"
            )
        rows.append("")
    return "\n".join(rows)
