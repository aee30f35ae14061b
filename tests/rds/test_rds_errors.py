"""Error types, their gRPC mapping, and classification of device error output."""

from __future__ import annotations

import copy
import pickle

import pytest

from rdscsi.io.rds import (
    GRPC_CODE_NAME,
    AlreadyExistsError,
    ApplianceFailureError,
    CommandBuilder,
    CommandSyntaxError,
    CommandTimeoutError,
    InUseError,
    InvalidValueError,
    NotEnoughSpaceError,
    NotFoundError,
    RDSError,
    TransportLostError,
    UnavailableError,
    UnparseableOutputError,
    classify,
    grpc_code_name,
)
from rdscsi.io.rds import errors as errors_module
from rdscsi.io.rds.errors import IncompleteReplyError, MisconfiguredError

BUILDER = CommandBuilder()
ADD = BUILDER.disk_add(
    slot="pvc-1",
    file_path="/storage-pool/k8s/pvc-1.img",
    file_size=1 << 30,
    nvme_port=4420,
    nvme_nqn="nqn.2000-02.com.mikrotik:pvc-1",
)


@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("failure: no such item", NotFoundError),
        ("failure: not enough space", NotEnoughSpaceError),
        ("failure: file already exists", AlreadyExistsError),
        ("failure: slot already in use by another disk", AlreadyExistsError),
        ("failure: disk with such slot already exists", AlreadyExistsError),
        ("failure: already have such slot", AlreadyExistsError),
        ("failure: invalid parameter", CommandSyntaxError),
        ("failure: disk is in use", InUseError),
        ("failure: could not create file", ApplianceFailureError),
        ("failure: ", ApplianceFailureError),
        ("bad command name frobnicate (line 1 column 7)", CommandSyntaxError),
        ("syntax error (line 1 column 12)", CommandSyntaxError),
        ("expected end of command (line 1 column 30)", CommandSyntaxError),
        ("invalid parameter", CommandSyntaxError),
        ("input does not match any value of nvme-tcp-export", CommandSyntaxError),
        ("value of nvme-tcp-server-port out of range (1..65535)", CommandSyntaxError),
        ("no such item", NotFoundError),
        ("interrupted", ApplianceFailureError),
    ],
)
def test_classify_known_texts(output: str, error: type[RDSError]) -> None:
    for text in (output, output + "\n", f"some line\n  {output}\r\n", f'slot="x"\n{output}\n'):
        found = classify(text, ADD)
        assert type(found) is error, text
        assert found.command is ADD
        assert found.device_text == output.strip()
        # The message names the verb, the slot and what the device said.
        assert str(found).startswith("disk-add slot=pvc-1: ")
        assert output.strip() in str(found)


@pytest.mark.parametrize(
    "output",
    [
        "",
        "\n\n",
        'type=file slot="pvc-1" model="failure: no such item"',
        '               comment="syntax error here"',
        " 0  name=storage-pool/x.img type=.img file",
        "                 read-time: 0ms",
    ],
)
def test_classify_ordinary_output(output: str) -> None:
    assert classify(output, ADD) is None


def test_first_error_wins_and_command_optional() -> None:
    found = classify("failure: no such item\nfailure: not enough space")
    assert isinstance(found, NotFoundError)
    assert found.command is None
    assert str(found) == "failure: no such item"


def test_every_error_type_is_mapped_and_documented() -> None:
    types = [
        obj
        for obj in vars(errors_module).values()
        if isinstance(obj, type) and issubclass(obj, RDSError)
    ]
    assert len(types) == 14
    expected = {
        NotFoundError: "NOT_FOUND",
        AlreadyExistsError: "ALREADY_EXISTS",
        NotEnoughSpaceError: "RESOURCE_EXHAUSTED",
        CommandSyntaxError: "INTERNAL",
        TransportLostError: "UNAVAILABLE",
        IncompleteReplyError: "UNAVAILABLE",
        CommandTimeoutError: "DEADLINE_EXCEEDED",
        UnparseableOutputError: "INTERNAL",
        InUseError: "FAILED_PRECONDITION",
        ApplianceFailureError: "INTERNAL",
        UnavailableError: "UNAVAILABLE",
        MisconfiguredError: "FAILED_PRECONDITION",
        InvalidValueError: "INVALID_ARGUMENT",
    }
    for cls in types:
        code = GRPC_CODE_NAME[cls]
        assert cls is RDSError or expected[cls] == code
        doc = cls.__doc__ or ""
        assert "\n" not in doc.strip() and code in doc, cls


def test_grpc_code_name_follows_subclasses() -> None:
    class Special(NotFoundError):
        pass

    assert grpc_code_name(Special("x")) == "NOT_FOUND"
    assert grpc_code_name(TransportLostError("channel closed")) == "UNAVAILABLE"


def test_constructors_carry_context() -> None:
    timeout = CommandTimeoutError(30.0, command=ADD)
    assert str(timeout) == "disk-add slot=pvc-1: no complete reply within 30s"
    assert timeout.timeout_s == 30.0
    lost = TransportLostError("channel closed by peer", command=ADD)
    assert "disk-add slot=pvc-1" in str(lost) and "channel closed" in str(lost)
    down = UnavailableError("not connected to rds.example:22")
    assert str(down) == "not connected to rds.example:22"
    bad = InvalidValueError("slot", "a;b", "must match [a-z0-9][a-z0-9._-]{0,63}")
    assert str(bad) == "invalid slot 'a;b': must match [a-z0-9][a-z0-9._-]{0,63}"
    assert (bad.field, bad.value) == ("slot", "a;b")
    long_value = InvalidValueError("nqn", "x" * 1000, "too long")
    assert len(str(long_value)) < 200
    unparseable = UnparseableOutputError("no known shape", "y" * 1000, command=ADD)
    assert unparseable.excerpt.startswith("y" * 200) and "+800 chars" in unparseable.excerpt


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("failure: no such item", command=ADD, device_text="failure: no such item"),
        CommandTimeoutError(5.0, command=ADD),
        UnparseableOutputError("no known shape", "garbage", command=ADD),
        InvalidValueError("slot", "a;b", "bad"),
        TransportLostError("closed"),
    ],
)
def test_errors_survive_pickle_and_copy(error: RDSError) -> None:
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert clone.__dict__ == error.__dict__
