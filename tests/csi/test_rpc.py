"""Every failed RPC: one status, one log line at the level its code deserves, the object named
once. (`tests/cli` checks the same line from a running `rdscsi run`.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from rdscsi.csi import csi_pb2 as pb
from rdscsi.csi.locks import Busy
from rdscsi.csi.rpc import LEVELS, name_once, rpc
from rdscsi.csi.status import RPCError
from rdscsi.io.rds.errors import (
    CommandTimeoutError,
    InUseError,
    NotEnoughSpaceError,
    TransportLostError,
)

PVC = "pvc-11111111-2222-3333-4444-555555555555"
Code = grpc.StatusCode


class Aborted(Exception):
    pass


class Context:
    """The part of grpc.aio.ServicerContext the wrapper uses."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise Aborted


class Service:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    @rpc
    async def CreateVolume(self, req: Any, ctx: Any) -> Any:
        raise self.exc


async def _call(exc: BaseException, req: Any) -> tuple[grpc.StatusCode, str]:
    ctx = Context()
    with pytest.raises(Aborted):
        await Service(exc).CreateVolume(req, ctx)
    assert ctx.status is not None
    return ctx.status


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rdscsi.rpc"]


@pytest.mark.parametrize("code", sorted(LEVELS, key=lambda c: c.name))
async def test_each_code_is_logged_once_at_its_level(
    code: grpc.StatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "rdscsi.rpc")
    req = pb.CreateVolumeRequest(name=PVC)
    assert await _call(RPCError(code, f"volume {PVC}: it went wrong"), req) == (
        code,
        f"volume {PVC}: it went wrong",
    )
    (record,) = _records(caplog)
    assert record.levelno == LEVELS[code]
    assert record.getMessage() == f"CreateVolume: {code.name}: volume {PVC}: it went wrong"


def test_levels_match_who_must_act() -> None:
    assert LEVELS[Code.INTERNAL] == logging.ERROR  # the driver's fault
    for code in (Code.RESOURCE_EXHAUSTED, Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE):
        assert LEVELS[code] == logging.WARNING  # the appliance or the cluster needs a look
    for code in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ABORTED):
        assert LEVELS[code] == logging.INFO  # the answer to the request as asked
    assert set(LEVELS) == set(Code) - {Code.OK}


@pytest.mark.parametrize(
    ("exc", "code", "level"),
    [
        (
            NotEnoughSpaceError("failure: not enough space"),
            Code.RESOURCE_EXHAUSTED,
            logging.WARNING,
        ),
        (CommandTimeoutError(30.0), Code.DEADLINE_EXCEEDED, logging.WARNING),
        (TransportLostError("channel closed"), Code.UNAVAILABLE, logging.WARNING),
        (InUseError("disk is in use"), Code.FAILED_PRECONDITION, logging.WARNING),
        (Busy(PVC), Code.ABORTED, logging.INFO),
    ],
)
async def test_adapter_failures_reach_the_log(
    exc: BaseException, code: grpc.StatusCode, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "rdscsi.rpc")
    got, _ = await _call(exc, pb.CreateVolumeRequest(name=PVC))
    assert got == code
    (record,) = _records(caplog)
    assert record.levelno == level and code.name in record.getMessage()
    assert record.getMessage().count(PVC) == 1, record.getMessage()


async def test_the_request_names_the_object_when_the_message_does_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "rdscsi.rpc")
    req = pb.ControllerPublishVolumeRequest(volume_id=PVC, node_id="n9")
    await _call(RPCError(Code.NOT_FOUND, "node n9 does not exist"), req)
    (record,) = _records(caplog)
    assert record.getMessage() == f"CreateVolume {PVC}: NOT_FOUND: node n9 does not exist"


async def test_a_bug_is_internal_logged_once_with_its_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "rdscsi.rpc")
    code, message = await _call(KeyError("boom"), pb.CreateVolumeRequest(name=PVC))
    assert (code, message) == (Code.INTERNAL, "KeyError: 'boom'")
    (record,) = _records(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_a_cancelled_call_is_logged_once_and_still_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "rdscsi.rpc")
    with pytest.raises(asyncio.CancelledError):
        await Service(asyncio.CancelledError()).CreateVolume(
            pb.CreateVolumeRequest(name=PVC), Context()
        )
    (record,) = _records(caplog)
    assert record.levelno == logging.INFO and "CANCELLED" in record.getMessage()


@pytest.mark.parametrize(
    ("message", "want"),
    [
        (  # what CreateVolume answered for a full pool: the volume four times
            f"volume {PVC} ({PVC}): volume {PVC}: disk-add slot={PVC}: failure: not enough space",
            f"volume {PVC}: disk-add: failure: not enough space",
        ),
        (
            "volume big (vol-0123456789abcdef0123456789abcdef): "
            "volume vol-0123456789abcdef0123456789abcdef: "
            "disk-add slot=vol-0123456789abcdef0123456789abcdef: failure: x",
            "volume big (vol-0123456789abcdef0123456789abcdef): disk-add: failure: x",
        ),
        # words that are not ids are never touched
        ("volume is still published to node(s) a", "volume is still published to node(s) a"),
        (
            "volume_capability: volume mount (ext4) (ext4)",
            "volume_capability: volume mount (ext4) (ext4)",
        ),
        (
            f"source snapshot snap-{PVC[4:]} does not exist",
            f"source snapshot snap-{PVC[4:]} does not exist",
        ),
    ],
)
def test_name_once(message: str, want: str) -> None:
    assert name_once(message) == want
