"""The public API keeps its promises, read from the generated descriptors.

These check the rules of DESIGN.md section 4 on what was really generated
(scripts/genproto), not on hand-kept lists: every mutation of a long-running
service returns a google.longrunning.Operation with its operation_info, every
mutation takes a request_id, and every field says its field_behavior.
"""

from __future__ import annotations

import importlib

import pytest
from google.api import field_behavior_pb2, resource_pb2
from google.longrunning import operations_proto_pb2
from google.protobuf import descriptor

from sharemesh.v1 import (
    pool_service_pb2,
    share_network_service_pb2,
    share_service_pb2,
    share_type_service_pb2,
)

OPERATION = "google.longrunning.Operation"
READ_PREFIXES = ("Get", "List")

# Services whose mutations are long-running; ShareTypeService is synchronous (admin, etcd only).
LRO_SERVICES = [
    share_service_pb2.DESCRIPTOR.services_by_name["ShareService"],
    share_network_service_pb2.DESCRIPTOR.services_by_name["ShareNetworkService"],
]
ALL_SERVICES = [
    *LRO_SERVICES,
    share_type_service_pb2.DESCRIPTOR.services_by_name["ShareTypeService"],
    pool_service_pb2.DESCRIPTOR.services_by_name["PoolService"],
]


def _mutations(services):
    return [m for s in services for m in s.methods if not m.name.startswith(READ_PREFIXES)]


def _ids(methods):
    return [m.full_name for m in methods]


def _messages(fd: descriptor.FileDescriptor):
    def walk(msg):
        yield msg
        for nested in msg.nested_types:
            if not nested.GetOptions().map_entry:
                yield from walk(nested)

    for msg in fd.message_types_by_name.values():
        yield from walk(msg)


LRO_MUTATIONS = _mutations(LRO_SERVICES)


@pytest.mark.parametrize("method", LRO_MUTATIONS, ids=_ids(LRO_MUTATIONS))
def test_mutation_returns_operation_with_info(method: descriptor.MethodDescriptor) -> None:
    assert method.output_type.full_name == OPERATION
    info = method.GetOptions().Extensions[operations_proto_pb2.operation_info]
    assert info.metadata_type == "OperationMetadata"
    expected = "google.protobuf.Empty" if method.name.startswith("Delete") else None
    if expected:
        assert info.response_type == expected
    else:
        # The response type names a resource of the package.
        pool = method.containing_service.file.pool
        resource = pool.FindMessageTypeByName(f"sharemesh.v1.{info.response_type}")
        assert resource.GetOptions().HasExtension(resource_pb2.resource)


ALL_MUTATIONS = _mutations(ALL_SERVICES)


@pytest.mark.parametrize("method", ALL_MUTATIONS, ids=_ids(ALL_MUTATIONS))
def test_mutation_takes_request_id(method: descriptor.MethodDescriptor) -> None:
    field = method.input_type.fields_by_name.get("request_id")
    assert field is not None, f"{method.input_type.full_name} has no request_id"
    assert field.type == descriptor.FieldDescriptor.TYPE_STRING


def test_reads_are_not_long_running() -> None:
    reads = [m for s in ALL_SERVICES for m in s.methods if m.name.startswith(READ_PREFIXES)]
    assert reads
    assert all(m.output_type.full_name != OPERATION for m in reads)


PUBLIC_FILES = [
    importlib.import_module(f"sharemesh.v1.{name}_pb2").DESCRIPTOR
    for name in (
        "share",
        "access_rule",
        "snapshot",
        "share_network",
        "share_type",
        "pool",
        "operation_metadata",
        "share_service",
        "share_network_service",
        "share_type_service",
        "pool_service",
    )
]
PUBLIC_FIELDS = [f for fd in PUBLIC_FILES for m in _messages(fd) for f in m.fields]


@pytest.mark.parametrize("field", PUBLIC_FIELDS, ids=[f.full_name for f in PUBLIC_FIELDS])
def test_every_public_field_has_field_behavior(field: descriptor.FieldDescriptor) -> None:
    assert list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


@pytest.mark.parametrize(
    "resource", ["Share", "AccessRule", "Snapshot", "ShareNetwork", "ShareType", "Pool"]
)
def test_resource_has_pattern_and_identifier_name(resource: str) -> None:
    msg = share_service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"sharemesh.v1.{resource}")
    assert msg.GetOptions().Extensions[resource_pb2.resource].pattern
    behaviors = (
        msg.fields_by_name["name"].GetOptions().Extensions[field_behavior_pb2.field_behavior]
    )
    assert field_behavior_pb2.IDENTIFIER in behaviors


@pytest.mark.parametrize("resource", ["Share", "AccessRule", "ShareNetwork"])
def test_state_is_short_and_nested(resource: str) -> None:
    msg = share_service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"sharemesh.v1.{resource}")
    assert [v.name for v in msg.enum_types_by_name["State"].values] == [
        "STATE_UNSPECIFIED",
        "CREATING",
        "ACTIVE",
        "UPDATING",
        "DELETING",
        "ERROR",
    ]


def test_a_snapshot_is_ready_rather_than_active() -> None:
    # A snapshot never changes once taken (issue 10, as Filestore's snapshots): READY,
    # and no UPDATING.
    msg = share_service_pb2.DESCRIPTOR.pool.FindMessageTypeByName("sharemesh.v1.Snapshot")
    assert [v.name for v in msg.enum_types_by_name["State"].values] == [
        "STATE_UNSPECIFIED",
        "CREATING",
        "READY",
        "DELETING",
        "ERROR",
    ]


@pytest.mark.parametrize(
    "module",
    [
        "sharemesh.v1.share_service_pb2_grpc",
        "sharemesh.v1.share_network_service_pb2_grpc",
        "sharemesh.v1.share_type_service_pb2_grpc",
        "sharemesh.v1.pool_service_pb2_grpc",
        "sharemesh.scheduler.v1.scheduler_service_pb2_grpc",
        "sharemesh.driver.v1.driver_service_pb2_grpc",
        "sharemesh.gateway.v1.gateway_service_pb2_grpc",
        "sharemesh.state.v1.records_pb2",
    ],
)
def test_stubs_import(module: str) -> None:
    # sharemesh.scheduler and sharemesh.gateway are also service packages
    # (services/*/sharemesh/...): their __init__ must extend __path__ so that
    # the generated v1 subpackage under gen/ is found beside them.
    importlib.import_module(module)
