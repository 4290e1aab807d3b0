"""The role table covers every public method, and roles order as documented."""

from __future__ import annotations

import pytest
from google.longrunning import operations_proto_pb2

from sharemesh.api._auth import REQUIRED, Caller, Role, hash_secret, new_key
from sharemesh.runtime.errors import PermissionDenied
from sharemesh.v1 import (
    pool_service_pb2,
    project_service_pb2,
    share_network_service_pb2,
    share_service_pb2,
    share_type_service_pb2,
)

PUBLIC = [
    *share_service_pb2.DESCRIPTOR.services_by_name.values(),
    *share_type_service_pb2.DESCRIPTOR.services_by_name.values(),
    *share_network_service_pb2.DESCRIPTOR.services_by_name.values(),
    *pool_service_pb2.DESCRIPTOR.services_by_name.values(),
    *project_service_pb2.DESCRIPTOR.services_by_name.values(),
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
]
METHODS = [f"{s.full_name}.{m.name}" for s in PUBLIC for m in s.methods]


def test_every_public_method_has_a_role_and_nothing_else_does() -> None:
    assert sorted(REQUIRED) == sorted(METHODS)


def test_no_read_needs_less_than_reader_and_no_mutation_is_open_to_readers() -> None:
    for method, role in REQUIRED.items():
        verb = method.rsplit(".", 1)[-1]
        if not verb.startswith(("Get", "List", "Wait")):
            assert role >= Role.MEMBER, method


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        (Role.READER, "sharemesh.v1.ShareService.GetShare", True),
        (Role.READER, "sharemesh.v1.ShareService.CreateShare", False),
        (Role.MEMBER, "sharemesh.v1.ShareService.CreateShare", True),
        (Role.MEMBER, "sharemesh.v1.ProjectService.CreateApiKey", False),
        (Role.ADMIN, "sharemesh.v1.ProjectService.CreateApiKey", True),
        (Role.ADMIN, "sharemesh.v1.Unknown.Method", False),
    ],
)
def test_check_role(role: Role, method: str, allowed: bool) -> None:
    caller = Caller("p", role)
    if allowed:
        caller.check_role(method)
    else:
        with pytest.raises(PermissionDenied):
            caller.check_role(method)


def test_a_new_key_verifies_only_with_its_own_secret() -> None:
    key_id, token, salt, digest = new_key()
    prefix, tid, secret = token.split("_", 2)
    assert (prefix, tid) == ("smk", key_id)
    assert hash_secret(salt, secret) == digest
    assert hash_secret(salt, secret + "x") != digest
    assert secret.encode() not in digest and len(secret) >= 40
