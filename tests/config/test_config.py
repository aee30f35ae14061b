"""Configuration layers and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rdscsi.cli import main
from rdscsi.config import ConfigError, load

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ2Wv0z7Zp3l0fY0sM4nY3XrSx0Jm6wP3m9w3H5u9d2f"


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
            "RDSCSI_RDS__INSECURE_SKIP_HOST_KEY_CHECK": "true",
            "RDSCSI_KNOWN_NODES": "a, b,c",
        },
    )
    assert cfg.rds.insecure_skip_host_key_check and cfg.known_nodes == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("data", "env", "needle"),
    [
        ({"controller": True, "rds": {"port": "ssh", "host_keys": [KEY]}}, {}, "rds.port"),
        ({"controller": True, "rds": {"port": 70000, "host_keys": [KEY]}}, {}, "port: 70000"),
        ({"controller": True, "rds": {"host_keys": [KEY], "colour": "red"}}, {}, "colour"),
        ({"controller": True}, {}, "rds.host_keys"),
        ({"rds": {"host_keys": [KEY]}}, {}, "controller"),
        ({"controller": True, "name": "Bad_Name", "rds": {"host_keys": [KEY]}}, {}, "name"),
        ({"controller": True, "endpoint": "tcp://x", "rds": {"host_keys": [KEY]}}, {}, "endpoint"),
        ({"controller": True, "grace_period": -1, "rds": {"host_keys": [KEY]}}, {}, "grace_period"),
        (
            {"controller": True, "transport": "carrier-pigeon", "rds": {"host_keys": [KEY]}},
            {},
            "transport",
        ),
    ],
)
def test_bad_values_name_the_field(
    data: dict[str, object], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(None, data, env)
    assert needle in str(err.value)


def test_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(f, {}, {})


def test_serve_reports_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--controller", "--rds-port", "0", "--rds-host-key", KEY]) == 2
    err = capsys.readouterr().err
    assert "configuration" in err and "port: 0 is not a TCP port" in err


def test_configuration_reference_is_current() -> None:
    # after a structure (cattrs resolves the annotations in place) the reference is the same
    load(None, {"controller": True, "rds": {"host_keys": [KEY]}}, {})
    root = Path(__file__).resolve().parents[2]
    assert main(["config-reference", "--check", "--out", str(root / "docs/configuration.md")]) == 0


def test_every_setting_is_described() -> None:
    from rdscsi.config import reference_markdown

    rows = [r for r in reference_markdown().splitlines() if r.startswith("| `")]
    assert rows and all(not r.rstrip().endswith("|  |") for r in rows), "a setting lacks a comment"


# --- every setting, every source: generated from the settings themselves ---------------------


def _sample(setting: object) -> tuple[object, list[str], str, object]:
    """A non-default value for `setting`: (YAML value, flag argv, env text, expected)."""
    from rdscsi.config import Setting

    assert isinstance(setting, Setting)
    t = setting.field.type
    name = setting.path[-1]
    flag = setting.flag
    if setting.is_list:
        values = [KEY, KEY.replace("d2f", "d2e")] if name == "host_keys" else ["a", "b"]
        return values, [a for v in values for a in (flag, v)], ",".join(values), values
    if t is bool or t == "bool":
        want = not setting.default
        argv = [flag] if want else ["--no-" + flag.removeprefix("--")]
        return want, argv, str(want).lower(), want
    if t is int or t == "int":
        value = int(setting.default) + 7
        return value, [flag, str(value)], str(value), value
    if t is float or t == "float":
        value = float(setting.default) * 3 + 1
        return value, [flag, str(value)], str(value), value
    text = str(t)
    if "Literal" in text:
        import typing

        choices = [c for c in typing.get_args(setting.field.type) if c != setting.default]
        return choices[0], [flag, choices[0]], choices[0], choices[0]
    value = {
        "endpoint": "unix:///tmp/x/csi.sock",
        "name": "other.csi.example.com",
        "metrics_address": "127.0.0.1:9999",
        "address": "10.1.2.3",
    }.get(name, f"/x/{name}")
    return value, [flag, value], value, value


def _base(key: str) -> dict[str, object]:
    """The smallest valid configuration (as YAML) that leaves `key` at its default."""
    base: dict[str, object] = {"controller": True, "rds": {"host_keys": [KEY]}}
    if key in ("controller", "node"):
        base = {"node": True, "controller": True, "node_id": "n1", "rds": {"host_keys": [KEY]}}
        base.pop(key)  # the other service keeps the configuration valid
    if key == "rds.host_keys":
        base["rds"] = {}
    if key in ("retry_period", "renew_deadline", "lease_duration"):
        # keep retry_period < renew_deadline < lease_duration whatever the sample is
        base.update({"retry_period": 1.0, "renew_deadline": 12.0, "lease_duration": 100.0})
        base.pop(key)
    return base


def _get(cfg: object, path: tuple[str, ...]) -> object:
    for part in path:
        cfg = getattr(cfg, part)
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
    yaml_value, argv, env_text, expected = _sample(setting)
    base = _base(key)
    if key != "rds.host_keys":  # without it the base alone is not a valid configuration
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
