"""The CSI wire contract (spec v1.12.0) and its generated Python modules.

The expectations below are written out by hand from the spec, not derived from
the generated code, so a wrong edit of csi.proto shows up here as well as in
`--check`.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from rdscsi.csi import csi_pb2, csi_pb2_grpc
from rdscsi.csi.generate import OUTPUTS, PROTO, SOURCE_ROOT, main

REPO = Path(__file__).resolve().parents[2]

# service -> [(method, request, response, server-streaming)], in declaration order.
SERVICES: dict[str, list[tuple[str, str, str, bool]]] = {
    "Identity": [
        ("GetPluginInfo", "GetPluginInfoRequest", "GetPluginInfoResponse", False),
        (
            "GetPluginCapabilities",
            "GetPluginCapabilitiesRequest",
            "GetPluginCapabilitiesResponse",
            False,
        ),
        ("Probe", "ProbeRequest", "ProbeResponse", False),
    ],
    "Controller": [
        ("CreateVolume", "CreateVolumeRequest", "CreateVolumeResponse", False),
        ("DeleteVolume", "DeleteVolumeRequest", "DeleteVolumeResponse", False),
        (
            "ControllerPublishVolume",
            "ControllerPublishVolumeRequest",
            "ControllerPublishVolumeResponse",
            False,
        ),
        (
            "ControllerUnpublishVolume",
            "ControllerUnpublishVolumeRequest",
            "ControllerUnpublishVolumeResponse",
            False,
        ),
        (
            "ValidateVolumeCapabilities",
            "ValidateVolumeCapabilitiesRequest",
            "ValidateVolumeCapabilitiesResponse",
            False,
        ),
        ("ListVolumes", "ListVolumesRequest", "ListVolumesResponse", False),
        ("GetCapacity", "GetCapacityRequest", "GetCapacityResponse", False),
        (
            "ControllerGetCapabilities",
            "ControllerGetCapabilitiesRequest",
            "ControllerGetCapabilitiesResponse",
            False,
        ),
        ("CreateSnapshot", "CreateSnapshotRequest", "CreateSnapshotResponse", False),
        ("DeleteSnapshot", "DeleteSnapshotRequest", "DeleteSnapshotResponse", False),
        ("ListSnapshots", "ListSnapshotsRequest", "ListSnapshotsResponse", False),
        ("GetSnapshot", "GetSnapshotRequest", "GetSnapshotResponse", False),
        (
            "ControllerExpandVolume",
            "ControllerExpandVolumeRequest",
            "ControllerExpandVolumeResponse",
            False,
        ),
        (
            "ControllerGetVolume",
            "ControllerGetVolumeRequest",
            "ControllerGetVolumeResponse",
            False,
        ),
        (
            "ControllerModifyVolume",
            "ControllerModifyVolumeRequest",
            "ControllerModifyVolumeResponse",
            False,
        ),
    ],
    "GroupController": [
        (
            "GroupControllerGetCapabilities",
            "GroupControllerGetCapabilitiesRequest",
            "GroupControllerGetCapabilitiesResponse",
            False,
        ),
        (
            "CreateVolumeGroupSnapshot",
            "CreateVolumeGroupSnapshotRequest",
            "CreateVolumeGroupSnapshotResponse",
            False,
        ),
        (
            "DeleteVolumeGroupSnapshot",
            "DeleteVolumeGroupSnapshotRequest",
            "DeleteVolumeGroupSnapshotResponse",
            False,
        ),
        (
            "GetVolumeGroupSnapshot",
            "GetVolumeGroupSnapshotRequest",
            "GetVolumeGroupSnapshotResponse",
            False,
        ),
    ],
    "SnapshotMetadata": [
        (
            "GetMetadataAllocated",
            "GetMetadataAllocatedRequest",
            "GetMetadataAllocatedResponse",
            True,
        ),
        ("GetMetadataDelta", "GetMetadataDeltaRequest", "GetMetadataDeltaResponse", True),
    ],
    "Node": [
        ("NodeStageVolume", "NodeStageVolumeRequest", "NodeStageVolumeResponse", False),
        ("NodeUnstageVolume", "NodeUnstageVolumeRequest", "NodeUnstageVolumeResponse", False),
        ("NodePublishVolume", "NodePublishVolumeRequest", "NodePublishVolumeResponse", False),
        (
            "NodeUnpublishVolume",
            "NodeUnpublishVolumeRequest",
            "NodeUnpublishVolumeResponse",
            False,
        ),
        (
            "NodeGetVolumeStats",
            "NodeGetVolumeStatsRequest",
            "NodeGetVolumeStatsResponse",
            False,
        ),
        ("NodeExpandVolume", "NodeExpandVolumeRequest", "NodeExpandVolumeResponse", False),
        (
            "NodeGetCapabilities",
            "NodeGetCapabilitiesRequest",
            "NodeGetCapabilitiesResponse",
            False,
        ),
        ("NodeGetInfo", "NodeGetInfoRequest", "NodeGetInfoResponse", False),
    ],
}

# message -> {field: number}: the whole message, as in the spec.
FIELD_NUMBERS: dict[str, dict[str, int]] = {
    "CreateVolumeRequest": {
        "name": 1,
        "capacity_range": 2,
        "volume_capabilities": 3,
        "parameters": 4,
        "secrets": 5,
        "volume_content_source": 6,
        "accessibility_requirements": 7,
        "mutable_parameters": 8,
    },
    "Volume": {
        "capacity_bytes": 1,
        "volume_id": 2,
        "volume_context": 3,
        "content_source": 4,
        "accessible_topology": 5,
    },
    "ControllerPublishVolumeRequest": {
        "volume_id": 1,
        "node_id": 2,
        "volume_capability": 3,
        "readonly": 4,
        "secrets": 5,
        "volume_context": 6,
    },
    "NodeStageVolumeRequest": {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "volume_capability": 4,
        "secrets": 5,
        "volume_context": 6,
    },
    "NodePublishVolumeRequest": {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "target_path": 4,
        "volume_capability": 5,
        "readonly": 6,
        "secrets": 7,
        "volume_context": 8,
    },
    "NodeExpandVolumeRequest": {
        "volume_id": 1,
        "volume_path": 2,
        "capacity_range": 3,
        "staging_target_path": 4,
        "volume_capability": 5,
        "secrets": 6,
    },
    "NodeGetInfoResponse": {"node_id": 1, "max_volumes_per_node": 2, "accessible_topology": 3},
    "ControllerExpandVolumeResponse": {"capacity_bytes": 1, "node_expansion_required": 2},
    "ControllerModifyVolumeRequest": {"volume_id": 1, "secrets": 2, "mutable_parameters": 3},
    "Snapshot": {
        "size_bytes": 1,
        "snapshot_id": 2,
        "source_volume_id": 3,
        "creation_time": 4,
        "ready_to_use": 5,
        "group_snapshot_id": 6,
    },
}

# Every message of v1.12 with a `secrets` map; each must carry (csi_secret).
SECRET_CARRIERS = {
    "CreateVolumeRequest",
    "DeleteVolumeRequest",
    "ControllerPublishVolumeRequest",
    "ControllerUnpublishVolumeRequest",
    "ValidateVolumeCapabilitiesRequest",
    "ControllerModifyVolumeRequest",
    "CreateSnapshotRequest",
    "DeleteSnapshotRequest",
    "ListSnapshotsRequest",
    "GetSnapshotRequest",
    "ControllerExpandVolumeRequest",
    "NodeStageVolumeRequest",
    "NodePublishVolumeRequest",
    "NodeExpandVolumeRequest",
    "CreateVolumeGroupSnapshotRequest",
    "DeleteVolumeGroupSnapshotRequest",
    "GetVolumeGroupSnapshotRequest",
    "GetMetadataAllocatedRequest",
    "GetMetadataDeltaRequest",
}


def _all_messages() -> list[Descriptor]:
    found: list[Descriptor] = []
    pending = list(csi_pb2.DESCRIPTOR.message_types_by_name.values())
    while pending:
        message = pending.pop()
        found.append(message)
        pending.extend(message.nested_types)
    return found


def _has(options_owner: object, extension: FieldDescriptor) -> bool:
    options = options_owner.GetOptions()  # type: ignore[attr-defined]
    return bool(options.HasExtension(extension) and options.Extensions[extension])


# ------------------------------------------------------------------ descriptor


def test_package_and_file() -> None:
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    assert csi_pb2.DESCRIPTOR.name == PROTO
    file = descriptor_pb2.FileDescriptorProto()
    csi_pb2.DESCRIPTOR.CopyToProto(file)
    assert file.syntax == "proto3"
    assert list(file.dependency) == [
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
    ]


def test_every_service_and_method_of_v1_12() -> None:
    services = csi_pb2.DESCRIPTOR.services_by_name
    assert set(services) == set(SERVICES)
    for name, methods in SERVICES.items():
        actual = [
            (m.name, m.input_type.name, m.output_type.name, m.server_streaming)
            for m in services[name].methods
        ]
        assert actual == methods, name
        assert not any(m.client_streaming for m in services[name].methods)


def test_full_method_names_are_the_wire_paths() -> None:
    method = csi_pb2.DESCRIPTOR.services_by_name["Identity"].methods_by_name["GetPluginInfo"]
    assert method.full_name == "csi.v1.Identity.GetPluginInfo"  # /csi.v1.Identity/GetPluginInfo


def test_field_numbers_match_the_spec() -> None:
    for message, fields in FIELD_NUMBERS.items():
        descriptor = csi_pb2.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in descriptor.fields} == fields, message


def test_create_volume_request_field_shapes() -> None:
    fields = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name
    for name in ("parameters", "secrets", "mutable_parameters"):
        assert fields[name].message_type.GetOptions().map_entry, name
    assert fields["volume_capabilities"].is_repeated
    assert not fields["name"].is_repeated
    assert fields["capacity_range"].message_type.name == "CapacityRange"
    assert fields["accessibility_requirements"].message_type.name == "TopologyRequirement"


def test_oneofs() -> None:
    capability = csi_pb2.VolumeCapability.DESCRIPTOR
    assert [f.name for f in capability.oneofs_by_name["access_type"].fields] == ["block", "mount"]
    source = csi_pb2.VolumeContentSource.DESCRIPTOR
    assert [f.name for f in source.oneofs_by_name["type"].fields] == ["snapshot", "volume"]


def test_custom_option_extension_numbers() -> None:
    extensions = csi_pb2.DESCRIPTOR.extensions_by_name
    numbers = {name: ext.number for name, ext in extensions.items()}
    assert numbers == {
        "csi_secret": 1059,
        "alpha_field": 1060,
        "alpha_enum": 1060,
        "alpha_enum_value": 1060,
        "alpha_message": 1060,
        "alpha_method": 1060,
        "alpha_service": 1060,
    }
    assert extensions["csi_secret"].containing_type.full_name == "google.protobuf.FieldOptions"
    assert extensions["alpha_service"].containing_type.full_name == (
        "google.protobuf.ServiceOptions"
    )


def test_csi_secret_marks_exactly_the_secrets_fields() -> None:
    marked = {
        (message.full_name, field.name)
        for message in _all_messages()
        for field in message.fields
        if _has(field, csi_pb2.csi_secret)
    }
    assert marked == {(f"csi.v1.{name}", "secrets") for name in SECRET_CARRIERS}


def test_alpha_markers() -> None:
    services = csi_pb2.DESCRIPTOR.services_by_name
    assert _has(services["SnapshotMetadata"], csi_pb2.alpha_service)
    assert not _has(services["GroupController"], csi_pb2.alpha_service)
    controller = services["Controller"].methods_by_name
    assert _has(controller["GetSnapshot"], csi_pb2.alpha_method)
    assert _has(controller["ControllerGetVolume"], csi_pb2.alpha_method)
    # Volume modification is GA as of v1.12.0.
    assert not _has(controller["ControllerModifyVolume"], csi_pb2.alpha_method)
    assert not _has(
        csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name["mutable_parameters"],
        csi_pb2.alpha_field,
    )
    rpc_type = csi_pb2.ControllerServiceCapability.RPC.Type.DESCRIPTOR.values_by_name
    assert not _has(rpc_type["MODIFY_VOLUME"], csi_pb2.alpha_enum_value)
    assert _has(rpc_type["GET_SNAPSHOT"], csi_pb2.alpha_enum_value)
    assert _has(csi_pb2.VolumeCondition.DESCRIPTOR, csi_pb2.alpha_message)
    expand_secrets = csi_pb2.NodeExpandVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert _has(expand_secrets, csi_pb2.alpha_field)


def test_enum_values() -> None:
    rpc = csi_pb2.ControllerServiceCapability.RPC
    assert rpc.MODIFY_VOLUME == 14
    assert rpc.GET_SNAPSHOT == 15
    assert csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP == 6
    assert csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER == 7
    assert csi_pb2.PluginCapability.Service.SNAPSHOT_METADATA_SERVICE == 4
    assert csi_pb2.BlockMetadataType.Value("VARIABLE_LENGTH") == 2


def test_messages_round_trip_on_the_wire() -> None:
    request = csi_pb2.CreateVolumeRequest(
        name="pvc-1",
        capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30),
        secrets={"password": "x"},
        mutable_parameters={"iops": "100"},
    )
    data = request.SerializeToString()
    assert csi_pb2.CreateVolumeRequest.FromString(data) == request


# ------------------------------------------------------------ generated files


def test_generated_stub_imports_messages_from_the_package() -> None:
    assert csi_pb2_grpc.rdscsi_dot_csi_dot_csi__pb2 is csi_pb2


def test_dependency_pins_match_the_generated_code() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dependencies = project["dependencies"]
    tools = csi_pb2_grpc.GRPC_GENERATED_VERSION
    assert f"grpcio>={tools},<2" in dependencies
    assert f"grpcio-tools=={tools}" in project["optional-dependencies"]["test"]
    source = (SOURCE_ROOT / "rdscsi/csi/csi_pb2.py").read_text()
    found = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
        r"\s*(\d+),\s*(\d+),\s*(\d+),",
        source,
    )
    assert found is not None
    major = found.group(1)
    assert f"protobuf>={'.'.join(found.groups())},<{int(major) + 1}" in dependencies


def test_check_passes_on_the_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0
    assert capsys.readouterr().err == ""


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for name in (PROTO, *OUTPUTS):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE_ROOT / name, target)
    return root


def test_check_names_each_stale_or_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_tree(tmp_path)
    assert main(["--check", "--root", str(root)]) == 0

    stub = root / "rdscsi/csi/csi_pb2_grpc.py"
    stub.write_text(stub.read_text() + "\n# hand edit\n")
    (root / "rdscsi/csi/csi_pb2.pyi").unlink()
    capsys.readouterr()

    assert main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'rdscsi/csi/csi_pb2_grpc.py'}: differs from protoc output" in err
    assert f"{root / 'rdscsi/csi/csi_pb2.pyi'}: missing" in err
    assert "csi_pb2.py:" not in err


def test_check_fails_when_the_proto_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_tree(tmp_path)
    proto = root / PROTO
    proto.write_text(proto.read_text().replace("string vendor_version = 2;", "string vendor = 2;"))
    assert main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'rdscsi/csi/csi_pb2.py'}: differs from protoc output" in err
    assert f"{root / 'rdscsi/csi/csi_pb2.pyi'}: differs from protoc output" in err
    # A field rename leaves the service stubs as they were.
    assert "csi_pb2_grpc.py" not in err


def test_generate_writes_what_check_accepts(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    for name in OUTPUTS:
        (root / name).unlink()
    assert main(["--root", str(root)]) == 0
    for name in OUTPUTS:
        assert (root / name).read_bytes() == (SOURCE_ROOT / name).read_bytes()


# ------------------------------------------------------------------- grpc.aio


class _Identity(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.aio.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(
            name="rds.csi.example.org", vendor_version="0.1.0", manifest={"test": "yes"}
        )


async def test_identity_round_trip_over_a_unix_socket(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'csi.sock'}"
    server = grpc.aio.server()
    csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(), server)
    assert server.add_insecure_port(address) != 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = csi_pb2_grpc.IdentityStub(channel)
            reply = await stub.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
            assert reply.name == "rds.csi.example.org"
            assert reply.vendor_version == "0.1.0"
            assert dict(reply.manifest) == {"test": "yes"}

            # Methods the servicer does not override answer UNIMPLEMENTED.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Probe(csi_pb2.ProbeRequest(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
