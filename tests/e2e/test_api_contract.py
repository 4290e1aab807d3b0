"""What the public API promises callers: clear errors that change nothing, request ids
that make retries safe, and projects that cannot see each other."""

from __future__ import annotations

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import access_rule_pb2, share_type_pb2, share_type_service_pb2_grpc
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_service_pb2 as sts

from mesh_ops import Share, create_share, delete_share, live_shares

pytestmark = pytest.mark.e2e


def _violations(error: grpc.aio.AioRpcError) -> list[str]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return [v.field for v in bad.field_violations]
    return []


async def _refused(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return error.value


@pytest.mark.parametrize(
    "share_id, size, field",
    [
        ("ok-id", 0, "share.size_gib"),
        ("ok-id", -1, "share.size_gib"),
        ("ok-id", 100_000, "share.size_gib"),
        ("Bad_Id", 1, "share_id"),
        ("", 1, "share_id"),
        ("9starts-with-digit", 1, "share_id"),
    ],
)
async def test_bad_create_names_the_field_and_changes_nothing(
    mesh: LocalMesh, alpha: Client, share_id: str, size: int, field: str
) -> None:
    before = await live_shares(mesh)
    error = await _refused(
        alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha", share_id=share_id, share=Share(size_gib=size)
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in _violations(error)
    assert await live_shares(mesh) == before


async def test_unknown_protocol_is_refused(alpha: Client) -> None:
    request = ss.CreateShareRequest(
        parent="projects/alpha", share_id="proto", share=Share(size_gib=1)
    )
    request.share.protocol = 7  # not a Protocol this API knows
    error = await _refused(
        alpha.call(alpha.shares.CreateShare, request), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "share.protocol" in _violations(error)


async def test_missing_or_unknown_key_is_unauthenticated(mesh: LocalMesh) -> None:
    for token in ("", "not-a-key"):
        async with Client(mesh.api_address, token) as anonymous:
            await _refused(
                anonymous.call(
                    anonymous.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha")
                ),
                grpc.StatusCode.UNAUTHENTICATED,
            )


async def test_bad_cidr_and_level(alpha: Client) -> None:
    share = await create_share(alpha, "alpha", "rules")
    for access_to, level, field in [
        ("10.0.0.300", access_rule_pb2.AccessRule.READ_WRITE, "access_rule.access_to"),
        ("host.example", access_rule_pb2.AccessRule.READ_WRITE, "access_rule.access_to"),
        ("10.0.0.0/33", access_rule_pb2.AccessRule.READ_WRITE, "access_rule.access_to"),
        (
            "10.0.0.1",
            access_rule_pb2.AccessRule.ACCESS_LEVEL_UNSPECIFIED,
            "access_rule.access_level",
        ),
    ]:
        error = await _refused(
            alpha.call(
                alpha.shares.CreateAccessRule,
                ss.CreateAccessRuleRequest(
                    parent=share.name,
                    access_rule=access_rule_pb2.AccessRule(access_to=access_to, access_level=level),
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field in _violations(error), (access_to, _violations(error))
    for good in ("10.1.2.0/24", "fd00::/64", "2001:db8::7"):
        op = await alpha.call(
            alpha.shares.CreateAccessRule,
            ss.CreateAccessRuleRequest(
                parent=share.name,
                access_rule=access_rule_pb2.AccessRule(
                    access_to=good, access_level=access_rule_pb2.AccessRule.READ_ONLY
                ),
            ),
        )
        await alpha.wait(op)
    listed = await alpha.call(
        alpha.shares.ListAccessRules, ss.ListAccessRulesRequest(parent=share.name)
    )
    assert len(listed.access_rules) == 3
    await delete_share(alpha, share.name)


async def test_request_id_retry_returns_the_same_operation_and_acts_once(
    mesh: LocalMesh, alpha: Client
) -> None:
    request = ss.CreateShareRequest(
        parent="projects/alpha",
        share_id="once",
        request_id="6f1c0a52-2c1e-4e0e-9a55-4a1b9f3f7d10",
        share=Share(size_gib=1),
    )
    first = await alpha.call(alpha.shares.CreateShare, request)
    second = await alpha.call(alpha.shares.CreateShare, request)
    assert first.name == second.name
    await alpha.wait(first)
    third = await alpha.call(alpha.shares.CreateShare, request)
    assert third.name == first.name and third.done
    assert (
        sum(s.spec.share.name == "projects/alpha/shares/once" for s in await live_shares(mesh)) == 1
    )
    fetched = await alpha.call(
        alpha.operations.GetOperation, operations_pb2.GetOperationRequest(name=first.name)
    )
    assert fetched.done and fetched.response.Is(Share.DESCRIPTOR)
    listed = await alpha.call(
        alpha.operations.ListOperations,
        operations_pb2.ListOperationsRequest(
            name="projects/alpha", filter="done=true", page_size=1000
        ),
    )
    assert first.name in [op.name for op in listed.operations]

    request.share.size_gib = 2  # same id, other body
    error = await _refused(
        alpha.call(alpha.shares.CreateShare, request), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "request_id" in _violations(error)
    await _refused(
        alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha", share_id="once", share=Share(size_gib=1)
            ),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # A change the api finishes at once (labels) is stored finished, so a retry and a
    # Get see it done too, not only the first answer.
    update = ss.UpdateShareRequest(
        share=Share(name="projects/alpha/shares/once", labels={"team": "storage"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        request_id="0b9a7c3e-8d1f-4c62-b1e5-5d4c3b2a1f00",
    )
    labelled = await alpha.call(alpha.shares.UpdateShare, update)
    assert labelled.done
    again = await alpha.call(alpha.shares.UpdateShare, update)
    assert again.name == labelled.name and again.done
    stored = await alpha.call(
        alpha.operations.GetOperation, operations_pb2.GetOperationRequest(name=labelled.name)
    )
    assert stored.done and stored.response.Is(Share.DESCRIPTOR)
    await delete_share(alpha, "projects/alpha/shares/once")


async def test_another_projects_share_is_not_found(alpha: Client, beta: Client) -> None:
    share = await create_share(alpha, "alpha", "private")
    await _refused(
        beta.call(beta.shares.GetShare, ss.GetShareRequest(name=share.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    await _refused(
        beta.call(beta.shares.DeleteShare, ss.DeleteShareRequest(name=share.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    await _refused(
        beta.call(beta.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await _refused(
        beta.call(
            beta.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha", share_id="sneaky", share=Share(size_gib=1)
            ),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    mine = await beta.call(beta.shares.ListShares, ss.ListSharesRequest(parent="projects/beta"))
    assert not mine.shares
    await delete_share(alpha, share.name)


async def test_list_pages_and_filters(alpha: Client) -> None:
    names = [(await create_share(alpha, "alpha", f"page-{i}")).name for i in range(5)]
    seen, token = [], ""
    while True:
        page = await alpha.call(
            alpha.shares.ListShares,
            ss.ListSharesRequest(
                parent="projects/alpha", page_size=2, page_token=token, filter="state=ACTIVE"
            ),
        )
        assert len(page.shares) <= 2
        seen += [s.name for s in page.shares]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)
    await _refused(
        alpha.call(
            alpha.shares.ListShares,
            ss.ListSharesRequest(parent="projects/alpha", page_token="garbage!"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _refused(
        alpha.call(
            alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha", filter="size>3")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await _refused(
        alpha.call(
            alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha", order_by="size")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    for name in names:
        await delete_share(alpha, name)


async def test_the_default_share_type_cannot_be_overwritten(admin: Client) -> None:
    # It exists without a record: one written over it could never be deleted again.
    types = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
    await _refused(
        types.CreateShareType(
            sts.CreateShareTypeRequest(
                share_type_id="default",
                share_type=share_type_pb2.ShareType(extra_specs={"snapshot_support": "true"}),
            ),
            metadata=admin.metadata,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    seen = await types.GetShareType(
        sts.GetShareTypeRequest(name="shareTypes/default"), metadata=admin.metadata
    )
    assert dict(seen.extra_specs) == {}
