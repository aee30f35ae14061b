"""parse_list_subsys on recorded `nvme list-subsys -o json` shapes of nvme-cli 1.x and 2.x."""

from __future__ import annotations

import json

import pytest

from rdscsi.io.host.nvme import NvmePath, NvmeSubsystem, parse_list_subsys

from .conftest import FIXTURES, NQN, OTHER_NQN, ROOT_DISK_NQN

HOST = "nqn.2014-08.org.nvmexpress:uuid:5c8e1d3a-2b47-4f69-8a0e-d1c3b5a7e902"
SAMSUNG = ROOT_DISK_NQN.replace("Samsung SSD 970", "Samsung SSD 970 EVO Plus 500GB")


def load(name: str) -> list[NvmeSubsystem]:
    return parse_list_subsys((FIXTURES / name).read_text())


def test_v1() -> None:
    assert load("list-subsys-v1.json") == [
        NvmeSubsystem(
            "nvme-subsys0", SAMSUNG, (NvmePath("nvme0", "pcie", "0000:01:00.0", "live"),)
        ),
        NvmeSubsystem(
            "nvme-subsys1",
            NQN,
            (NvmePath("nvme1", "tcp", "traddr=10.0.0.5,trsvcid=4420", "live"),),
        ),
        NvmeSubsystem(
            "nvme-subsys2",
            OTHER_NQN,
            (NvmePath("nvme2", "tcp", "traddr=10.0.0.5,trsvcid=4420", "connecting"),),
        ),
    ]


def test_v1_with_paths_split_into_their_own_entries() -> None:
    # nvme-cli releases before mid 2019 emitted {"Paths": [...]} after each subsystem.
    found = load("list-subsys-v1-split.json")
    assert [(s.name, s.nqn) for s in found] == [("nvme-subsys0", SAMSUNG), ("nvme-subsys1", NQN)]
    assert [p.name for p in found[0].paths] == ["nvme0"]
    assert found[1].paths == (NvmePath("nvme1", "tcp", "traddr=10.0.0.5 trsvcid=4420", "live"),)


def test_v2() -> None:
    found = load("list-subsys-v2.json")
    assert [s.nqn for s in found] == [SAMSUNG, NQN, OTHER_NQN]
    assert all(s.host_nqn == HOST for s in found)
    assert found[1] == NvmeSubsystem(
        "nvme-subsys1",
        NQN,
        (NvmePath("nvme1", "tcp", "traddr=10.0.0.5,trsvcid=4420,src_addr=10.0.0.7", "live"),),
        HOST,
    )


def test_v2_multipath_with_ana_state_and_several_hosts() -> None:
    (subsys,) = load("list-subsys-v2-ana.json")  # the second host has no subsystems
    assert subsys.nqn == NQN
    assert [(p.name, p.state, p.ana_state) for p in subsys.paths] == [
        ("nvme2", "live", "optimized"),
        ("nvme4", "connecting", "inaccessible"),
    ]


def test_paths_nested_under_namespaces_are_found() -> None:
    # Not a shape seen in a capture: tolerance in case a release nests paths per namespace.
    (subsys,) = load("list-subsys-v2-namespaces.json")
    assert [p.name for p in subsys.paths] == ["nvme1"]


@pytest.mark.parametrize("text", ["", "\n", "[]", "{}", '{"Subsystems": []}', '[{"HostNQN": "x"}]'])
def test_nothing_connected(text: str) -> None:
    assert parse_list_subsys(text) == []


def test_bare_subsystem_list_and_lowercase_keys() -> None:
    text = json.dumps([{"name": "nvme-subsys4", "nqn": NQN, "paths": []}])
    found = parse_list_subsys(text)
    assert found == [NvmeSubsystem("nvme-subsys4", NQN)]


@pytest.mark.parametrize("text", ["not json", "42", '"text"', "[1, 2"])
def test_garbage_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="nvme list-subsys"):
        parse_list_subsys(text)
