"""Configuration layers and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.cli import main
from rdscsi.config import ConfigError, load

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ2Wv0z7Zp3l0fY0sM4nY3XrSx0Jm6wP3m9w3H5u9d2f"
RDS = {"address": "rds.example", "host_keys": [KEY]}


def test_layers_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        f"controller: true\nrds:\n  address: 10.0.0.5\n  port: 2222\n  host_keys: ['{KEY}']\n"
    )
    cfg = load(f, {}, {})
    assert (cfg.rds.address, cfg.rds.port, cfg.rds.user) == ("10.0.0.5", 2222, "admin")
    cfg = load(f, {}, {"RDSCSI_RDS__PORT": "2200", "RDSCSI_RDS__USER": "csi"})
    assert (cfg.rds.port, cfg.rds.user) == (2200, "csi")
    cfg = load(f, {"rds": {"port": 22}}, {"RDSCSI_RDS__PORT": "2200"})
    assert cfg.rds.port == 22  # flags win


def test_env_lists_and_booleans() -> None:
    cfg = load(
        None,
        {},
        {
            "RDSCSI_CONTROLLER": "true",
            "RDSCSI_RDS__ADDRESS": "10.0.0.5",
            "RDSCSI_RDS__INSECURE_SKIP_HOST_KEY_CHECK": "true",
            "RDSCSI_KNOWN_NODES": "a, b,c",
        },
    )
    assert cfg.rds.insecure_skip_host_key_check and cfg.known_nodes == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"rds": {**RDS, "port": "ssh"}}, "rds.port: 'ssh' is not valid; expected an integer"),
        ({"rds": {**RDS, "port": 70000}}, "rds.port: 70000 is not a TCP port; expected 1..65535"),
        ({"rds": {**RDS, "port": 7.5}}, "rds.port: 7.5 is not valid; expected an integer"),
        ({"rds": {**RDS, "colour": "red"}}, "rds.colour: unknown setting"),
        ({"rds": {**RDS, "adress": "x"}}, "rds.adress: unknown setting; expected a known "),
        ({"rds": {"address": "rds.example"}}, "rds.host_keys: missing; expected"),
        ({"rds": {"host_keys": [KEY]}}, "rds.address: missing; expected a host name or IP"),
        ({"rds": "rds.example"}, "rds: 'rds.example' is not a mapping"),
        ({"controller": False, "rds": RDS}, "controller, node: both off; expected at least one"),
        ({"controller": "yes", "rds": RDS}, "controller: 'yes' is not valid; expected true or"),
        ({"name": "Bad_Name", "rds": RDS}, "name: 'Bad_Name' is not valid; expected a DNS"),
        ({"endpoint": "tcp://x", "rds": RDS}, "endpoint: 'tcp://x' is not a unix socket"),
        ({"endpoint": "unix://x.sock", "rds": RDS}, "endpoint: 'unix://x.sock' is not an abs"),
        ({"endpoint": "unix:///" + "x" * 120, "rds": RDS}, "at most 105 bytes"),
        ({"endpoint": "unix:///" + "x" * 105, "rds": RDS}, "at most 105 bytes"),  # gRPC's limit
        ({"grace_period": -1, "rds": RDS}, "grace_period: -1.0 is not above 0; expected a num"),
        ({"max_volumes_per_node": -1, "rds": RDS}, "max_volumes_per_node: -1 is negative"),
        ({"transport": "pigeon", "rds": RDS}, "transport: 'pigeon' is not valid; expected one"),
        ({"metrics_address": "9809", "rds": RDS}, "metrics_address: '9809' has no port; expected"),
        ({"metrics_address": "h:x", "rds": RDS}, "metrics_address: 'h:x' has no valid TCP port"),
        ({"metrics_address": "::1:80", "rds": RDS}, "'::1:80' has an unbracketed IPv6 host"),
        ({"metrics_address": "a b:80", "rds": RDS}, "metrics_address: 'a b:80' has no valid host"),
        ({"rds": {**RDS, "address": "10.0.0.5:22"}}, "rds.address: '10.0.0.5:22' has a port in"),
        ({"rds": {**RDS, "address": "admin@rds"}}, "rds.address: 'admin@rds' has a user in it"),
        ({"rds": {**RDS, "nvme_address": "a/b"}}, "rds.nvme_address: 'a/b' is not valid"),
        ({"node": True, "rds": RDS}, "node_id: missing; expected this node's name"),
        ({"rds": {**RDS, "host_keys": KEY[:40]}}, "rds.host_keys[0]: "),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_expected(
    data: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"controller": True, **data}, {})
    assert needle in str(err.value)
    assert all("\n" not in p for p in err.value.problems)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"controller": True, "rds": {"port": "x"}, "grace_period": "y"}, {})
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError) as err:
        load(None, {"controller": True, "endpoint": "x", "metrics_address": "y"}, {})
    fields = [p.split(":")[0] for p in err.value.problems]
    assert fields == ["endpoint", "metrics_address", "rds.address", "rds.host_keys"]


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9809", ":9809", "[::1]:9809", "localhost:0", "node-1.example:65535"]
)
def test_listen_addresses_accepted(address: str) -> None:
    assert load(None, {"controller": True, "metrics_address": address, "rds": RDS}, {})


def test_a_string_where_a_list_is_meant_is_one_item() -> None:
    cfg = load(
        None, {"controller": True, "known_nodes": "n1", "rds": {**RDS, "host_keys": KEY}}, {}
    )
    assert cfg.known_nodes == ["n1"] and cfg.rds.host_keys == [KEY]


def test_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(f, {}, {})


# --- pinned host keys: every form people paste ---------------------------------------------------


def _keys() -> dict[str, str]:
    """One real public key of each common host-key type, `<type> <base64>`."""
    import asyncssh

    out = {}
    for alg in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"):
        key = (
            asyncssh.generate_private_key(alg, key_size=1024)
            if alg == "ssh-rsa"
            else (asyncssh.generate_private_key(alg))
        )
        out[alg] = key.export_public_key().decode().split()[0:2]
        out[alg] = " ".join(out[alg])
    return out


KEYS = _keys()
ED, EC, RSA = KEYS["ssh-ed25519"], KEYS["ecdsa-sha2-nistp256"], KEYS["ssh-rsa"]


@pytest.mark.parametrize(
    ("pasted", "want"),
    [
        (ED, [ED]),
        (f"{ED} root@rds", [ED]),  # authorized_keys / .pub form with a comment
        (f"  {ED}   a comment with spaces  ", [ED]),
        (f"10.0.0.5 {ED}", [ED]),  # ssh-keyscan / known_hosts line
        (f"rds,10.0.0.5 {EC} comment", [EC]),
        (f"[rds.example]:2222 {RSA}", [RSA]),
        (f"|1|c2FsdA==|aGFzaA== {ED}", [ED]),  # hashed host field
        (f'from="10.0.0.0/8",no-pty {ED} x', [ED]),  # authorized_keys options
        (  # the whole output of ssh-keyscan, comments included
            f"# 10.0.0.5:22 SSH-2.0-ROSSSH\n10.0.0.5 {RSA}\n# 10.0.0.5:22 SSH-2.0-ROSSSH\n"
            f"10.0.0.5 {EC}\n10.0.0.5 {ED}\n",
            [RSA, EC, ED],
        ),
    ],
)
def test_pinned_host_keys_are_normalised(pasted: str, want: list[str]) -> None:
    cfg = load(None, {"controller": True, "rds": {**RDS, "host_keys": [pasted]}}, {})
    assert cfg.rds.host_keys == want


@pytest.mark.parametrize(
    ("pasted", "why"),
    [
        (ED[:50], "not base64"),
        (
            ED.replace("ssh-ed25519", "ssh-rsa"),
            "the key says it is 'ssh-ed25519', the line says ssh-rsa",
        ),
        (f"@revoked * {ED}", "a @revoked line is not a host key"),
        (f"@cert-authority * {ED}", "a @cert-authority line is not a host key"),
        ("10.0.0.5 ssh-ed25519", "has the key type ssh-ed25519 but no key after it"),
        ("AAAAC3NzaC1lZDI1NTE5AAAAIJ2Wv0z7Zp3l0fY0sM4nY3XrSx0Jm6wP3m9w3H5u9d2f", "no key type"),
        ("# only a comment", "holds no key"),
        (f"{ED}\nnot a key", "line 2: no key type"),
    ],
)
def test_unusable_host_keys_are_refused_with_the_reason(pasted: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"controller": True, "rds": {**RDS, "host_keys": [pasted, ED]}}, {})
    (problem,) = err.value.problems
    assert problem.startswith("rds.host_keys[0]: ") and why in problem, problem


def test_host_keys_from_the_environment_keep_known_hosts_lines_whole() -> None:
    env = {"RDSCSI_CONTROLLER": "true", "RDSCSI_RDS__ADDRESS": "rds"}
    cfg = load(None, {}, {**env, "RDSCSI_RDS__HOST_KEYS": f"rds,10.0.0.5 {ED} comment"})
    assert cfg.rds.host_keys == [ED]
    cfg = load(None, {}, {**env, "RDSCSI_RDS__HOST_KEYS": f"{ED},{EC}"})
    assert cfg.rds.host_keys == [ED, EC]
    cfg = load(None, {}, {**env, "RDSCSI_RDS__HOST_KEYS": f"# keyscan\nh {ED}\nh {RSA}\n"})
    assert cfg.rds.host_keys == [ED, RSA]


# --- prepare(): what the settings name on this host --------------------------------------------


def _controller(tmp_path: Path, **rds: object) -> dict[str, object]:
    return {
        "controller": True,
        "endpoint": f"unix://{tmp_path}/csi.sock",
        "rds": {"address": "rds.example", **rds},
    }


def test_prepare_accepts_real_files_and_creates_state_dirs(tmp_path: Path) -> None:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id"))
    (tmp_path / "known_hosts").write_text(f"# pinned\nrds.example {ED}\n")
    data = _controller(
        tmp_path, key_file=str(tmp_path / "id"), known_hosts=str(tmp_path / "known_hosts")
    )
    state, node_state = tmp_path / "a" / "state", tmp_path / "b" / "node"
    data.update(
        node=True,
        node_id="n1",
        state_dir=str(state),
        node_state_dir=str(node_state),
        endpoint=f"unix://{state}/sock/csi.sock",  # under the state dir: created
    )
    cfg = load(None, data, {}).prepare()
    assert state.is_dir() and node_state.is_dir() and cfg.socket_path.parent.is_dir()


@pytest.mark.parametrize(
    ("setting", "content", "needle"),
    [
        ("key_file", None, "rds.key_file: '{path}' does not exist; expected a readable, unencr"),
        ("key_file", "not a key\n", "rds.key_file: '{path}' does not parse"),
        ("key_file", "encrypted", "rds.key_file: '{path}' is encrypted"),
        ("known_hosts", None, "rds.known_hosts: '{path}' does not exist"),
        ("known_hosts", f"{ED}\n", "line 1: has no host field (a bare key belongs"),
        ("known_hosts", "# nothing\n\n", "holds no host key"),
        ("known_hosts", "rds ssh-ed25519 AAAAC3Nz\n", "line 1: the ssh-ed25519 key is cut short"),
    ],
)
def test_prepare_refuses_file_settings_that_cannot_work(
    tmp_path: Path, setting: str, content: str | None, needle: str
) -> None:
    path = tmp_path / setting
    if content == "encrypted":
        import asyncssh

        asyncssh.generate_private_key("ssh-rsa", key_size=1024).write_private_key(
            str(path), passphrase="secret", format_name="pkcs8-pem"
        )
    elif content is not None:
        path.write_text(content)
    cfg = load(
        None, _controller(tmp_path, **{setting: str(path)}, insecure_skip_host_key_check=True), {}
    )
    with pytest.raises(ConfigError) as err:
        cfg.prepare()
    (problem,) = err.value.problems
    assert needle.format(path=path) in problem, problem


def test_prepare_never_creates_a_socket_directory_outside_the_state_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    data = _controller(tmp_path, host_keys=[ED])
    data.update(endpoint=f"unix://{missing}/csi.sock", state_dir=str(tmp_path / "state"))
    with pytest.raises(ConfigError) as err:
        load(None, data, {}).prepare()
    assert f"the directory {missing} does not exist" in str(err.value)
    assert not missing.exists()


def test_prepare_names_a_state_dir_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    data = _controller(tmp_path, host_keys=[ED])
    data["state_dir"] = str(blocker / "state")
    with pytest.raises(ConfigError, match=r"state_dir: '.*/file/state' cannot be created"):
        load(None, data, {}).prepare()


def test_serve_reports_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["serve", "--controller", "--rds-address", "r", "--rds-port", "0", "--rds-host-key", KEY]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err == "rdscsi serve: rds.port: 0 is not a TCP port; expected 1..65535\n"


def test_configuration_reference_is_current() -> None:
    # after a structure (cattrs resolves the annotations in place) the reference is the same
    load(None, {"controller": True, "rds": RDS}, {})
    root = Path(__file__).resolve().parents[2]
    assert main(["config-reference", "--check", "--out", str(root / "docs/configuration.md")]) == 0


def test_every_setting_is_described() -> None:
    from rdscsi.config import reference_markdown

    rows = [r for r in reference_markdown().splitlines() if r.startswith("| `")]
    assert rows and all(not r.rstrip().endswith("|  |") for r in rows), "a setting lacks a comment"


# How a description states a number's unit.
UNITS = ("seconds", "TCP port", "count", "bytes")


def test_every_number_setting_states_its_unit() -> None:
    from rdscsi.config import settings

    numbers = [s for s in settings() if s.field.type in (int, float, "int", "float")]
    assert numbers
    for st in numbers:
        assert any(unit in st.doc for unit in UNITS), f"{st.key}: say the unit in {st.doc!r}"


# --- every setting, every source: generated from the settings themselves ---------------------


def _sample(setting: object) -> tuple[object, list[str], str, object]:
    """A non-default value for `setting`: (YAML value, flag argv, env text, expected)."""
    from rdscsi.config import Setting

    assert isinstance(setting, Setting)
    t = setting.field.type
    name = setting.path[-1]
    flag = setting.flag
    if setting.is_list:
        values = {
            "host_keys": [KEY, KEY.replace("d2f", "d2e")],
            "node_appliances": ["rds", OTHER],
        }.get(name, ["a", "b"])
        return values, [a for v in values for a in setting.argv(v)], ",".join(values), values
    if t is bool or t == "bool":
        want = not setting.default
        argv = [flag] if want else ["--no-" + flag.removeprefix("--")]
        if setting.templated or len(setting.path) == 3:
            argv = setting.argv(str(want).lower())
        return want, argv, str(want).lower(), want
    if t is int or t == "int":
        value = int(setting.default) + 7
        return value, setting.argv(str(value)), str(value), value
    if t is float or t == "float":
        value = float(setting.default) * 3 + 1
        return value, setting.argv(str(value)), str(value), value
    text = str(t)
    if "Literal" in text:
        import typing

        choices = [c for c in typing.get_args(setting.field.type) if c != setting.default]
        return choices[0], setting.argv(choices[0]), choices[0], choices[0]
    value = {
        "endpoint": "unix:///tmp/x/csi.sock",
        "name": "rds-x" if setting.path[0] == "rds" else "other.csi.example.com",
        "metrics_address": "127.0.0.1:9999",
        "address": "10.1.2.3",
        "nvme_address": "10.9.8.7",
    }.get(name, f"/x/{name}")
    return value, setting.argv(value), value, value


OTHER = "rds-b"  # the appliance under `appliances:` the templated settings are tried on


def _base(key: str) -> dict[str, object]:
    """The smallest valid configuration (as YAML) that leaves `key` at its default: the
    default appliance and one more."""
    rds = {"address": "rds.example", "host_keys": [KEY]}
    other = {"address": "rds-b.example", "host_keys": [KEY]}
    base: dict[str, object] = {"controller": True, "rds": rds, "appliances": {OTHER: other}}
    if key in ("controller", "node"):
        base = {"node": True, "controller": True, "node_id": "n1", "rds": rds}
        base.pop(key)  # the other service keeps the configuration valid
    if key == "rds.host_keys":
        base["rds"] = {"address": "rds.example"}
    if key == "rds.address":
        base["rds"] = {"host_keys": [KEY]}
    if key == f"appliances.{OTHER}.host_keys":
        base["appliances"] = {OTHER: {"address": "rds-b.example"}}
    if key == f"appliances.{OTHER}.address":
        base["appliances"] = {OTHER: {"host_keys": [KEY]}}
    if key in ("retry_period", "renew_deadline", "lease_duration"):
        # keep retry_period < renew_deadline < lease_duration whatever the sample is
        base.update({"retry_period": 1.0, "renew_deadline": 12.0, "lease_duration": 100.0})
        base.pop(key)
    return base


def _get(cfg: object, path: tuple[str, ...]) -> object:
    for part in path:
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def _settings_ids() -> list[str]:
    from rdscsi.config import settings

    return [s.key for s in settings()]


@pytest.mark.parametrize("key", _settings_ids())
@pytest.mark.parametrize("source", ["yaml", "env", "flag"])
def test_every_setting_reaches_the_config_from_every_source(
    key: str, source: str, tmp_path: Path
) -> None:
    """Generated from the settings: a new setting is covered without touching this test.
    Flags go through the real `serve` parser, as a user (or a manifest) passes them."""
    import yaml

    from rdscsi.cli import build_parser, flags_from_args
    from rdscsi.config import settings

    setting = next(s for s in settings() if s.key == key)
    if setting.templated:
        setting = setting.at(OTHER)
        key = setting.key
    yaml_value, argv, env_text, expected = _sample(setting)
    base = _base(key)
    required = ("rds.host_keys", "rds.address", f"appliances.{OTHER}.host_keys")
    if key not in (*required, f"appliances.{OTHER}.address"):  # the base alone is not valid
        before = _get(load(None, {**base, "loop_root": "/x"}, {}), setting.path)
        assert before != expected, f"{key}: the sample is the base value; nothing is proven"
    env: dict[str, str] = {}
    extra: list[str] = []
    if source == "yaml":
        node: dict[str, object] = base
        for part in setting.path[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[setting.path[-1]] = yaml_value
    elif source == "env":
        env[setting.env] = env_text
    else:
        extra = argv
    if key != "loop_root":
        base.setdefault("loop_root", "/x")  # the loop transport needs it
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(base))
    args = build_parser().parse_args(["serve", "--config", str(f), *extra])
    cfg = load(args.config, flags_from_args(args), env)
    assert _get(cfg, setting.path) == expected


async def test_the_socket_path_limit_is_grpc_s(tmp_path: Path) -> None:
    """A path start-up accepts is one gRPC can bind (the kernel's own limit is 107 bytes)."""
    import grpc

    from rdscsi.config import UNIX_PATH_MAX

    base = tmp_path / "s"
    base.mkdir()
    for size, binds in ((UNIX_PATH_MAX, True), (UNIX_PATH_MAX + 1, False)):
        path = f"{base}/" + "x" * (size - len(str(base)) - 1)
        assert len(path.encode()) == size
        server = grpc.aio.server()
        try:
            server.add_insecure_port(f"unix://{path}")
            await server.start()
        except RuntimeError:
            assert not binds, size
        else:
            assert binds, size
        finally:
            await server.stop(None)


# --- a fleet of appliances -----------------------------------------------------------------------

ED2 = KEY.replace("d2f", "d2e")


def test_a_fleet_in_every_source_layered_by_name(tmp_path: Path) -> None:
    """`appliances:` by name in YAML; `RDSCSI_APPLIANCES__<NAME>__<SETTING>` (a `-` in the
    name written `_`); `--appliance NAME.SETTING=VALUE` through the real `serve` parser. The
    sources layer per appliance and per setting, as `rds:` does."""
    from rdscsi.cli import build_parser, flags_from_args

    f = tmp_path / "c.yaml"
    f.write_text(
        f"controller: true\nrds: {{address: 10.0.0.5, host_keys: ['{KEY}']}}\n"
        "appliances:\n  rds-b:\n    address: 10.0.0.6\n    port: 2222\n"
        f"    host_keys: ['{KEY}']\n"
    )
    args = build_parser().parse_args(
        [
            "serve",
            "--config",
            str(f),
            "--appliance",
            "rds-b.port=2200",
            "--appliance",
            f"rds-b.host_keys={KEY}",
            "--appliance",
            f"rds-b.host_keys={ED2}",
            "--appliance",
            "rds-c.address=rds-c.example",
            "--appliance",
            "rds-c.insecure_skip_host_key_check=true",
            "--rds-name",
            "rds-a",
        ]
    )
    env = {"RDSCSI_APPLIANCES__RDS_B__USER": "csi", "RDSCSI_APPLIANCES__RDS_C__PORT": "22"}
    cfg = load(args.config, flags_from_args(args), env)
    assert [a.name for a in cfg.fleet] == ["rds-a", "rds-b", "rds-c"]
    assert cfg.default_appliance == "rds-a" and cfg.section_of("rds-b") == "appliances.rds-b"
    b = cfg.fleet[1]
    assert (b.address, b.port, b.user, b.host_keys) == ("10.0.0.6", 2200, "csi", [KEY, ED2])
    assert cfg.fleet[2].insecure_skip_host_key_check and cfg.fleet[2].port == 22


def test_rds_left_at_its_defaults_is_no_appliance_of_a_fleet() -> None:
    other = {"address": "10.0.0.6", "host_keys": [KEY]}
    cfg = load(None, {"controller": True, "appliances": {"rds-b": other}}, {})
    assert [a.name for a in cfg.fleet] == ["rds-b"] and cfg.default_appliance == ""
    # a node needs no addresses: the names alone give its topology
    cfg = load(None, {"node": True, "node_id": "n1", "appliances": {"rds-b": {}}}, {})
    assert [a.name for a in cfg.fleet] == ["rds-b"]
    # `rds:` with any setting is an appliance, and then it needs its address
    with pytest.raises(ConfigError, match=r"rds\.address: missing"):
        load(None, {"controller": True, "rds": {"user": "x"}, "appliances": {"b": other}}, {})


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"appliances": {"RDS_B": RDS}}, "appliances.RDS_B: 'RDS_B' is not a valid appliance name"),
        ({"appliances": {"b" * 41: RDS}}, "at most 40 characters"),
        ({"rds": {**RDS, "name": "Big"}}, "rds.name: 'Big' is not a valid appliance name"),
        ({"appliances": {"rds": RDS}}, "appliances.rds: 'rds' is the name of rds (rds.name)"),
        ({"appliances": {"b": {**RDS, "name": "c"}}}, "appliances.b.name: 'c': the key is the n"),
        ({"appliances": {"b": {"host_keys": [KEY]}}}, "appliances.b.address: missing"),
        ({"appliances": {"b": {"address": "h"}}}, "appliances.b.host_keys: missing; expected"),
        ({"appliances": {"b": {**RDS, "port": "x"}}}, "appliances.b.port: 'x' is not valid"),
        ({"appliances": {"b": {**RDS, "colour": 1}}}, "appliances.b.colour: unknown setting"),
        ({"appliances": {"b": {**RDS, "address": "h:22"}}}, "(set appliances.b.port)"),
        ({"appliances": {"b": {**RDS, "nvme_address": "u@h"}}}, "(set appliances.b.user)"),
        ({"appliances": {"b": {**RDS, "host_keys": ["x"]}}}, "appliances.b.host_keys[0]: 'x'"),
        ({"appliances": ["b"]}, "appliances: ['b'] is not valid; expected a mapping of applia"),
        ({"appliances": {"b": "h"}}, "appliances.b: 'h' is not a mapping"),
        ({"node_appliances": ["rds-z"]}, "node_appliances[0]: 'rds-z' is not an appliance of"),
    ],
)
def test_fleet_mistakes_name_the_appliance_and_the_setting(
    data: dict[str, object], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"controller": True, "rds": RDS, **data}, {})
    assert any(needle in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("word", "needle"),
    [
        ("rds-b.address", "--appliance 'rds-b.address': not NAME.SETTING=VALUE"),
        ("address=10.0.0.6", "not NAME.SETTING=VALUE"),
        ("rds-b.adress=10.0.0.6", "(did you mean 'address'?)"),
        ("rds-b.name=x", "with a known setting"),
    ],
)
def test_a_malformed_appliance_flag_is_refused_in_one_line(
    word: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--controller", "--rds-address", "r", "--rds-host-key", KEY,
                 "--appliance", word])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_the_key_files_of_every_appliance_are_checked(tmp_path: Path) -> None:
    data = _controller(tmp_path, host_keys=[ED])
    data["appliances"] = {
        "rds-b": {"address": "h", "host_keys": [ED], "key_file": str(tmp_path / "nope")}
    }
    with pytest.raises(ConfigError) as err:
        load(None, data, {}).prepare()
    (problem,) = err.value.problems
    assert problem.startswith(f"appliances.rds-b.key_file: '{tmp_path / 'nope'}' does not exist")
