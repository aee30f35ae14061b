"""rdscsi.io.host.transport: targets from volume contexts, validation, shared helpers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rdscsi.io.host.transport import (
    DEFAULT_PORT,
    InvalidTarget,
    KeyedLock,
    Target,
    TransportError,
    device_in_use,
    poll,
    target_from_context,
    validate_address,
    validate_nqn,
    validate_nqn_prefix,
)

from .conftest import NQN, PREFIX, Naps


def test_full_context() -> None:
    target = target_from_context(
        "pvc-1",
        {
            "nqn": NQN,
            "nvmeAddress": "10.0.0.5",
            "nvmePort": "4421",
            "filePath": "/storage-pool/k8s/vol/pvc-1.img",
            "nvmeCtrlLossTmo": "120",
            "nvmeReconnectDelay": "3",
            "nvmeKeepAliveTmo": "20",
            "transport": "nvme-tcp",  # other keys are not ours: ignored
        },
    )
    assert target == Target(
        volume_id="pvc-1",
        nqn=NQN,
        address="10.0.0.5",
        port=4421,
        file_path="/storage-pool/k8s/vol/pvc-1.img",
        ctrl_loss_tmo=120,
        reconnect_delay=3,
        keep_alive_tmo=20,
    )


def test_minimal_context_leaves_options_to_the_transport() -> None:
    target = target_from_context("pvc-1", {"nqn": NQN})
    assert target == Target("pvc-1", NQN)
    assert target.port == DEFAULT_PORT == 4420
    assert target.ctrl_loss_tmo is None and target.keep_alive_tmo is None


@pytest.mark.parametrize(
    ("ctx", "key"),
    [
        ({}, "nqn"),
        ({"nqn": ""}, "nqn"),
        ({"nqn": "NQN.2000-02.COM.MIKROTIK:X"}, "nqn"),
        ({"nqn": NQN + ",hostnqn=evil"}, "nqn"),
        ({"nqn": "iqn.2000-02.com.mikrotik:x"}, "nqn"),
        ({"nqn": "nqn." + "a" * 220}, "nqn"),
        ({"nqn": NQN, "nvmePort": "abc"}, "nvmePort"),
        ({"nqn": NQN, "nvmePort": "0"}, "nvmePort"),
        ({"nqn": NQN, "nvmePort": "65536"}, "nvmePort"),
        ({"nqn": NQN, "nvmePort": "+80"}, "nvmePort"),
        ({"nqn": NQN, "nvmeAddress": "10.0.0.5,trsvcid=1"}, "nvmeAddress"),
        ({"nqn": NQN, "nvmeAddress": "-n"}, "nvmeAddress"),
        ({"nqn": NQN, "nvmeCtrlLossTmo": "-1"}, "nvmeCtrlLossTmo"),
        ({"nqn": NQN, "nvmeCtrlLossTmo": "1e3"}, "nvmeCtrlLossTmo"),
        ({"nqn": NQN, "nvmeReconnectDelay": "0"}, "nvmeReconnectDelay"),
        ({"nqn": NQN, "nvmeKeepAliveTmo": "99999"}, "nvmeKeepAliveTmo"),
    ],
)
def test_bad_context_names_the_key(ctx: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError) as info:
        target_from_context("pvc-1", ctx)
    assert isinstance(info.value, InvalidTarget)
    assert info.value.field == key
    assert key in str(info.value)


def test_volume_id_is_required() -> None:
    with pytest.raises(ValueError, match="volume_id"):
        target_from_context("", {"nqn": NQN})


def test_ctrl_loss_minus_one_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidTarget, match="unmount would hang"):
        target_from_context("pvc-1", {"nqn": NQN, "nvmeCtrlLossTmo": "-1"})


def test_nqn_limit_is_223_bytes() -> None:
    head = "nqn.2000-02.com.mikrotik:"
    assert validate_nqn(head + "a" * (223 - len(head))) == head + "a" * (223 - len(head))
    with pytest.raises(InvalidTarget, match="223"):
        validate_nqn(head + "a" * (224 - len(head)))


def test_nqn_prefix_is_enforced_when_given() -> None:
    assert validate_nqn(NQN, prefix=PREFIX) == NQN
    with pytest.raises(InvalidTarget, match="prefix"):
        validate_nqn("nqn.2014-08.org.nvmexpress:uuid:1234", prefix=PREFIX)
    with pytest.raises(InvalidTarget, match="prefix"):
        validate_nqn(PREFIX, prefix=PREFIX)  # the bare prefix is nobody's volume


@pytest.mark.parametrize("prefix", ["", "nqn.", "nqn.2000-02.com.mikrotik", "iqn.x:", "NQN.a:", 5])
def test_too_broad_or_bad_prefix_is_refused(prefix: object) -> None:
    with pytest.raises(InvalidTarget):
        validate_nqn_prefix(prefix)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("fd00::5", "fd00::5"),
        ("[fd00::5]", "fd00::5"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("rds.example.com", "rds.example.com"),
        ("rds", "rds"),
    ],
)
def test_good_addresses(value: str, expected: str) -> None:
    assert validate_address(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "-a", "10.0.0.5 ", "10.0.0.5,trsvcid=1", "a..b", "300.1.1.1", "fe80::1%eth0,x", "x" * 254],
)
def test_bad_addresses(value: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        validate_address(value)
    assert info.value.field == "address"


def test_error_messages_name_volume_and_key() -> None:
    target = Target("pvc-1", NQN)
    assert str(TransportError("it broke", target)) == f"volume pvc-1 ({NQN}): it broke"
    assert str(TransportError("it broke", target, "/storage-pool/x.img")).startswith(
        "volume pvc-1 (/storage-pool/x.img): "
    )
    assert str(TransportError("it broke")) == "it broke"
    bad = InvalidTarget("port", 0, "must be between 1 and 65535").about(target)
    assert str(bad) == f"volume pvc-1 ({NQN}): invalid port 0: must be between 1 and 65535"
    assert isinstance(bad, ValueError) and isinstance(bad, TransportError)


async def test_poll_is_bounded() -> None:
    naps = Naps()

    def nothing() -> str | None:
        return None

    assert await poll(nothing, 4, 0.5, naps) is None
    assert naps.waits == [0.5, 0.5, 0.5]  # no pointless wait after the last check
    answers = iter([None, None, "dev"])
    assert await poll(lambda: next(answers), 10, 0.1, naps) == "dev"


async def test_keyed_lock_serialises_one_key_only() -> None:
    locks = KeyedLock()
    order: list[str] = []

    async def hold(key: str, name: str, pause: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(pause)
            order.append(f"{name}-")

    await asyncio.gather(hold("a", "a1", 0.05), hold("a", "a2", 0), hold("b", "b1", 0))
    assert order.index("a1-") < order.index("a2+")
    assert order.index("b1+") < order.index("a1-")  # another key did not wait
    assert locks._locks == {}  # nothing left behind


def _disk(sysfs: Path, name: str, dev: str, parts: dict[str, str] | None = None) -> Path:
    block = sysfs / "class" / "block" / name
    (block / "holders").mkdir(parents=True)
    (block / "dev").write_text(dev + "\n")
    for part, number in (parts or {}).items():
        (block / part).mkdir()
        (block / part / "dev").write_text(number + "\n")
        (block / part / "partition").write_text("1\n")
    return block


def test_device_in_use(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        "90 22 259:3 / /var/lib/kubelet/staging/pvc-1 rw - ext4 /dev/nvme0n1 rw\n"
        "91 22 259:8 / /mnt/part rw - xfs /dev/nvme2n1p1 rw\n"
    )
    _disk(sysfs, "nvme0n1", "259:3")
    _disk(sysfs, "nvme1n1", "259:5")
    _disk(sysfs, "nvme2n1", "259:7", {"nvme2n1p1": "259:8"})
    held = _disk(sysfs, "nvme3n1", "259:9")
    (held / "holders" / "dm-0").mkdir()

    assert device_in_use(sysfs, "nvme0n1", mountinfo) == (
        "/dev/nvme0n1 is mounted at /var/lib/kubelet/staging/pvc-1"
    )
    assert device_in_use(sysfs, "nvme1n1", mountinfo) is None
    assert device_in_use(sysfs, "nvme2n1", mountinfo) == "/dev/nvme2n1p1 is mounted at /mnt/part"
    assert device_in_use(sysfs, "nvme3n1", mountinfo) == "/dev/nvme3n1 is held by dm-0"
    assert device_in_use(sysfs, "nvme9n1", mountinfo) is None  # unknown device
