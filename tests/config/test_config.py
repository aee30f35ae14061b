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
