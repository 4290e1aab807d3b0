"""Projects, API keys, roles and quotas through the API, on a real mesh: every public
method answers each kind of caller no more than it should, keys are stored only as
hashes and refused at once when revoked, and quota limits set through the API are
shown and enforced, racing creates included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.longrunning import operations_proto_pb2
from google.protobuf import json_format, message

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import _client, connect
from sharemesh.v1 import (
    access_rule_pb2,
    pool_service_pb2,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    share_network_pb2,
    share_network_service_pb2,
    share_service_pb2,
    share_type_service_pb2,
    snapshot_pb2,
)
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import TENANT_KEYS, Share, create_network, create_share, delete_share, running_mesh

M = TypeVar("M")
pytestmark = pytest.mark.e2e
CONFIG = (
    """
reconcile_interval_seconds = 2
[quotas]
projects = { gamma = 1 }
[[backends]]
name = "local"
[backends.options]
capacity_gib = 12
"""
    + TENANT_KEYS
)
ApiKey = project_pb2.ApiKey
Code = grpc.StatusCode
BAD_ID = "not/a-request-id"  # refused by every recorded mutation after its checks


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


def projects(client: Client) -> project_service_pb2_grpc.ProjectServiceStub:
    return project_service_pb2_grpc.ProjectServiceStub(client._channel)  # noqa: SLF001


async def make_project(admin: Client, project: str) -> None:
    try:
        await admin.call(
            projects(admin).CreateProject,
            project_service_pb2.CreateProjectRequest(project_id=project),
        )
    except grpc.aio.AioRpcError as exists:
        assert exists.code() == Code.ALREADY_EXISTS


async def make_key(admin: Client, project: str, role: int) -> ApiKey:
    await make_project(admin, project)
    return await admin.call(
        projects(admin).CreateApiKey,
        project_service_pb2.CreateApiKeyRequest(
            parent=f"projects/{project}", api_key=ApiKey(role=role, description="test")
        ),
    )


async def code_of(call: asyncio.Future) -> Code:  # type: ignore[type-arg]
    try:
        await call
    except grpc.aio.AioRpcError as refused:
        return refused.code()
    return Code.OK


# ---- the authorization matrix --------------------------------------------------------

PUBLIC = {
    "sharemesh.v1.ShareService": share_service_pb2,
    "sharemesh.v1.ShareTypeService": share_type_service_pb2,
    "sharemesh.v1.ShareNetworkService": share_network_service_pb2,
    "sharemesh.v1.PoolService": pool_service_pb2,
    "sharemesh.v1.ProjectService": project_service_pb2,
    "google.longrunning.Operations": operations_proto_pb2,
}
# What the spec says, written here apart from the server's table.
ADMIN_ONLY = {
    "ResetShareState",
    "CreateShareType",
    "DeleteShareType",
    "CreateAttachment",
    "DeleteAttachment",
    "ListPools",
    "CreateProject",
    "DeleteProject",
    "ListApiKeys",
    "GetApiKey",
    "CreateApiKey",
    "DeleteApiKey",
    "UpdateQuota",
}
# No project's (or, for ListProjects, only the caller's own): every key reads them.
GLOBAL_READS = {"ListShareTypes", "GetShareType", "ListProjects"}


def is_read(method: str) -> bool:
    return method.startswith(("Get", "List", "Wait"))


@dataclass(frozen=True)
class Alpha:
    """Real resources of project alpha that the matrix aims at."""

    share: str
    rule: str
    network: str
    operation: str
    key: str


def requests(alpha: Alpha) -> dict[str, dict[str, object]]:
    """Each public method's request, as JSON: reads name alpha's real resources (an
    allowed reader gets OK); mutations carry a request id that the recorder refuses
    after every check, or name what does not exist, so no cell changes anything."""
    share, ghost = alpha.share, "projects/alpha/shares/ghost"
    return {
        "ListShares": {"parent": "projects/alpha"},
        "GetShare": {"name": share},
        "CreateShare": {
            "parent": "projects/alpha",
            "shareId": "made",
            "share": {"sizeGib": 1},
            "requestId": BAD_ID,
        },
        "UpdateShare": {
            "share": {"name": share, "labels": {"a": "b"}},
            "updateMask": "labels",
            "requestId": BAD_ID,
        },
        "DeleteShare": {"name": share, "requestId": BAD_ID},
        "ResetShareState": {"name": ghost, "state": "ERROR", "requestId": BAD_ID},
        "ResizeShare": {"name": share, "sizeGib": 2, "requestId": BAD_ID},
        "ListAccessRules": {"parent": share},
        "GetAccessRule": {"name": alpha.rule},
        "CreateAccessRule": {
            "parent": share,
            "accessRuleId": "made",
            "accessRule": {"accessTo": "10.9.9.9", "accessLevel": "READ_ONLY"},
            "requestId": BAD_ID,
        },
        "UpdateAccessRule": {
            "accessRule": {"name": alpha.rule, "accessLevel": "READ_ONLY"},
            "updateMask": "accessLevel",
            "requestId": BAD_ID,
        },
        "DeleteAccessRule": {"name": alpha.rule, "requestId": BAD_ID},
        "ListSnapshots": {"parent": share},
        "GetSnapshot": {"name": f"{share}/snapshots/ghost"},
        "CreateSnapshot": {
            "parent": share,
            "snapshotId": "made",
            "snapshot": {},
            "requestId": BAD_ID,
        },
        "DeleteSnapshot": {"name": f"{share}/snapshots/ghost", "requestId": BAD_ID},
        "RevertShare": {
            "name": share,
            "snapshot": f"{share}/snapshots/ghost",
            "requestId": BAD_ID,
        },
        "ListShareTypes": {},
        "GetShareType": {"name": "shareTypes/default"},
        "CreateShareType": {"shareTypeId": "Not-An-Id!", "shareType": {}},
        "DeleteShareType": {"name": "shareTypes/ghost"},
        "ListShareNetworks": {"parent": "projects/alpha"},
        "GetShareNetwork": {"name": alpha.network},
        "CreateShareNetwork": {
            "parent": "projects/alpha",
            "shareNetworkId": "made",
            "shareNetwork": {"cidr": "10.77.0.0/24"},
            "requestId": BAD_ID,
        },
        "DeleteShareNetwork": {"name": f"{alpha.network}-ghost", "requestId": BAD_ID},
        "ListAttachments": {"parent": alpha.network},
        "CreateAttachment": {
            "parent": alpha.network,
            "attachmentId": "made",
            "attachment": {"netns": "nosuchns", "address": "10.31.0.9"},
            "requestId": BAD_ID,
        },
        "DeleteAttachment": {"name": f"{alpha.network}/attachments/ghost", "requestId": BAD_ID},
        "ListPools": {"parent": "backends/local"},
        "ListProjects": {},
        "GetProject": {"name": "projects/alpha"},
        "CreateProject": {"projectId": "Not-An-Id!"},
        "DeleteProject": {"name": "projects/ghost"},
        "ListApiKeys": {"parent": "projects/alpha"},
        "GetApiKey": {"name": alpha.key},
        "CreateApiKey": {"parent": "projects/ghost", "apiKey": {"role": "READER"}},
        "DeleteApiKey": {"name": "projects/alpha/apiKeys/ghost"},
        "GetQuota": {"name": "projects/alpha/quota"},
        "UpdateQuota": {
            "quota": {"name": "projects/alpha/quota", "limits": {"shares": "-1"}},
            "updateMask": "limits.shares",
        },
        "ListOperations": {"name": "projects/alpha"},
        "GetOperation": {"name": alpha.operation},
        "WaitOperation": {"name": alpha.operation, "timeout": "1s"},
        "DeleteOperation": {"name": "projects/alpha/operations/ghost"},
        "CancelOperation": {"name": "projects/alpha/operations/ghost"},
    }


def expected(caller: str, method: str) -> set[Code] | None:
    """The codes a cell may answer; None: anything but a refusal of the caller."""
    if caller in ("revoked", "none"):
        return {Code.UNAUTHENTICATED}
    if caller == "admin":
        return None
    if method in ADMIN_ONLY:
        return {Code.PERMISSION_DENIED}
    if caller == "reader" and not is_read(method):
        return {Code.PERMISSION_DENIED}
    if caller == "other" and method not in GLOBAL_READS:
        return {Code.NOT_FOUND, Code.PERMISSION_DENIED}
    return None


async def test_authorization_matrix_over_every_public_method(
    mesh: LocalMesh, admin: Client, alpha: Client
) -> None:
    member = await make_key(admin, "alpha", ApiKey.MEMBER)
    reader = await make_key(admin, "alpha", ApiKey.READER)
    other = await make_key(admin, "beta", ApiKey.MEMBER)
    revoked = await make_key(admin, "alpha", ApiKey.MEMBER)
    await admin.call(
        projects(admin).DeleteApiKey, project_service_pb2.DeleteApiKeyRequest(name=revoked.name)
    )
    share = await create_share(alpha, "alpha", "matrix")
    op = await alpha.call(
        alpha.shares.CreateAccessRule,
        ss.CreateAccessRuleRequest(
            parent=share.name,
            access_rule_id="r1",
            access_rule={"access_to": "10.8.8.8", "access_level": "READ_WRITE"},
        ),
    )
    rule = (await alpha.wait(op, access_rule_pb2.AccessRule)).name
    network = await create_network(alpha, "matrix-net")
    target = Alpha(share.name, rule, network, op.name, reader.name)
    built = requests(target)
    tokens = {
        "admin": mesh.admin_token,
        "member": member.secret,
        "reader": reader.secret,
        "other": other.secret,
        "revoked": revoked.secret,
        "none": "",
    }
    real_reads = {m for m in built if is_read(m)} - {"GetSnapshot"}
    failures, cells = [], 0
    for service, module in PUBLIC.items():
        descriptor = module.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[-1]]
        for method in descriptor.methods:
            # A method added to a service fails here until the matrix covers it.
            assert method.name in built, f"{service}.{method.name} is not in the matrix"
            request_type = message_type(method.input_type.full_name)
            request = json_format.ParseDict(built[method.name], request_type())
            path = f"/{service}/{method.name}"
            for caller, token in tokens.items():
                async with Client(mesh.api_address, token) as client:
                    call = client._channel.unary_unary(  # noqa: SLF001
                        path,
                        request_serializer=lambda m: m.SerializeToString(),
                        response_deserializer=lambda raw: raw,
                    )
                    code = await code_of(client.call(call, request, timeout=20))
                cells += 1
                allowed = expected(caller, method.name)
                if allowed is None:
                    wrong = code in (Code.PERMISSION_DENIED, Code.UNAUTHENTICATED)
                    if method.name in real_reads and not (caller == "other"):
                        wrong = code != Code.OK
                else:
                    wrong = code not in allowed
                if wrong:
                    failures.append(f"{method.name} as {caller}: {code.name}")
    assert cells == len(built) * len(tokens)
    assert not failures, "\n".join(failures)
    # The config's keys keep working as a bootstrap, and nothing above changed alpha.
    again = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert again.labels == {} and again.size_gib == 1
    await delete_share(alpha, share.name)


def message_type(full_name: str) -> type[message.Message]:
    from google.protobuf import symbol_database

    return symbol_database.Default().GetSymbol(full_name)  # type: ignore[no-any-return]


# ---- keys -----------------------------------------------------------------------------


async def test_keys_are_stored_only_as_hashes_and_revoked_at_once(
    mesh: LocalMesh, admin: Client
) -> None:
    key = await make_key(admin, "delta", ApiKey.MEMBER)
    assert key.secret.startswith("smk_") and key.name.startswith("projects/delta/apiKeys/")
    secret = key.secret.split("_", 2)[2]
    listed = await admin.call(
        projects(admin).ListApiKeys, project_service_pb2.ListApiKeysRequest(parent="projects/delta")
    )
    shown = await admin.call(
        projects(admin).GetApiKey, project_service_pb2.GetApiKeyRequest(name=key.name)
    )
    assert [k.name for k in listed.api_keys] == [key.name] and shown.role == ApiKey.MEMBER
    assert not shown.secret and not any(k.secret for k in listed.api_keys)
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as etcd:
        everything = await _client.range_(etcd, _client.range_request(b"\0", b"\0"))
    stored = [kv for kv in everything.kvs if key.name.rsplit("/", 1)[1].encode() in kv.key]
    assert stored, "the key's record is in etcd"
    for kv in everything.kvs:
        assert secret.encode() not in kv.value and key.secret.encode() not in kv.value

    async with Client(mesh.api_address, key.secret) as holder:
        listed_shares = await holder.call(
            holder.shares.ListShares, ss.ListSharesRequest(parent="projects/delta")
        )
        assert list(listed_shares.shares) == []
        own = await holder.call(
            projects(holder).ListProjects, project_service_pb2.ListProjectsRequest()
        )
        assert [p.name for p in own.projects] == ["projects/delta"]  # its own, no other
        forged = key.secret[:-2] + ("AA" if not key.secret.endswith("AA") else "BB")
        async with Client(mesh.api_address, forged) as forger:
            assert (
                await code_of(
                    forger.call(
                        forger.shares.ListShares, ss.ListSharesRequest(parent="projects/delta")
                    )
                )
                == Code.UNAUTHENTICATED
            )
        await admin.call(
            projects(admin).DeleteApiKey, project_service_pb2.DeleteApiKeyRequest(name=key.name)
        )
        # Refused on the very next call: no cache outlives the revocation.
        assert (
            await code_of(
                holder.call(holder.shares.ListShares, ss.ListSharesRequest(parent="projects/delta"))
            )
            == Code.UNAUTHENTICATED
        )
    assert (
        await code_of(
            admin.call(
                projects(admin).GetApiKey, project_service_pb2.GetApiKeyRequest(name=key.name)
            )
        )
        == Code.NOT_FOUND
    )


# ---- quotas ---------------------------------------------------------------------------


async def get_quota(client: Client, project: str) -> project_pb2.Quota:
    return await client.call(
        projects(client).GetQuota,
        project_service_pb2.GetQuotaRequest(name=f"projects/{project}/quota"),
    )


async def test_quota_limits_set_shown_and_enforced_under_racing_creates(
    mesh: LocalMesh, admin: Client
) -> None:
    key = await make_key(admin, "gamma", ApiKey.MEMBER)
    before = await get_quota(admin, "gamma")
    assert before.limits.share_gib == 1 and before.limits.shares == 0  # the config's
    assert before.usage == project_pb2.QuotaAmounts()

    for limits, mask, field in (
        (project_pb2.QuotaAmounts(shares=-1), ["limits.shares"], "quota.limits.shares"),
        (project_pb2.QuotaAmounts(shares=2), ["limits.bogus"], "update_mask"),
    ):
        request = project_service_pb2.UpdateQuotaRequest(
            quota=project_pb2.Quota(name="projects/gamma/quota", limits=limits),
            update_mask={"paths": mask},
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.call(projects(admin).UpdateQuota, request)
        assert refused.value.code() == Code.INVALID_ARGUMENT and field in refused.value.details()
    assert (await get_quota(admin, "gamma")).limits == before.limits  # nothing changed

    updated = await admin.call(
        projects(admin).UpdateQuota,
        project_service_pb2.UpdateQuotaRequest(
            quota=project_pb2.Quota(
                name="projects/gamma/quota",
                limits=project_pb2.QuotaAmounts(
                    shares=2, share_gib=3, snapshots=4, snapshot_gib=5, share_networks=1
                ),
            ),
            update_mask={"paths": ["limits"]},
        ),
    )
    assert updated.limits == project_pb2.QuotaAmounts(
        shares=2, share_gib=3, snapshots=4, snapshot_gib=5, share_networks=1
    )
    async with Client(mesh.api_address, key.secret) as gamma:
        # The tenant reads its own quota, and only its own.
        assert (await get_quota(gamma, "gamma")).limits.shares == 2
        assert await code_of(get_quota(gamma, "alpha")) == Code.NOT_FOUND

        async def create(i: int) -> Share | Exception:
            try:
                return await create_share(gamma, "gamma", f"race-{i}")
            except (OperationFailed, grpc.aio.AioRpcError) as refused:
                return refused

        results = await asyncio.gather(*(create(i) for i in range(5)))
        made = [r for r in results if isinstance(r, Share)]
        refused = [r for r in results if not isinstance(r, Share)]
        assert len(made) == 2, results  # the share count limit, not the 3 GiB one
        for error in refused:
            code = error.code if isinstance(error, OperationFailed) else error.code()
            assert code == Code.RESOURCE_EXHAUSTED, error
        usage = (await get_quota(gamma, "gamma")).usage
        assert (usage.shares, usage.share_gib) == (2, 2)

        # 2 GiB more would pass the count once a share is gone, but not the GiB limit.
        await delete_share(gamma, made[0].name)
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await create_share(gamma, "gamma", "big", size_gib=3)
        assert over.value.code() == Code.RESOURCE_EXHAUSTED and "share_gib" in over.value.details()
        fits = await create_share(gamma, "gamma", "fits", size_gib=2)
        usage = (await get_quota(gamma, "gamma")).usage
        assert (usage.shares, usage.share_gib) == (2, 3)
        for share in (made[1], fits):
            await delete_share(gamma, share.name)
    assert (await get_quota(admin, "gamma")).usage == project_pb2.QuotaAmounts()


async def set_limit(admin: Client, project: str, **limit: int) -> None:
    """Sets one quota limit of `project` through the API."""
    (field,) = limit
    await admin.call(
        projects(admin).UpdateQuota,
        project_service_pb2.UpdateQuotaRequest(
            quota=project_pb2.Quota(
                name=f"projects/{project}/quota", limits=project_pb2.QuotaAmounts(**limit)
            ),
            update_mask={"paths": [f"limits.{field}"]},
        ),
    )


async def race(
    client: Client, n: int, start: Callable[[int], Awaitable[Any]], kind: type[M]
) -> tuple[list[M], list[grpc.aio.AioRpcError]]:
    """`n` mutations at once, each waited for: (what was made, what was refused)."""

    async def one(i: int) -> object:
        try:
            return await client.wait(await start(i), kind)
        except (OperationFailed, grpc.aio.AioRpcError) as refused:
            return refused

    results = await asyncio.gather(*(one(i) for i in range(n)))
    made = [r for r in results if isinstance(r, kind)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) + len(refused) == n, results
    assert all(r.code() == Code.RESOURCE_EXHAUSTED for r in refused), refused
    return made, refused


async def test_snapshot_limit_set_through_the_api_holds_under_racing_snapshots(
    mesh: LocalMesh, admin: Client
) -> None:
    key = await make_key(admin, "sigma", ApiKey.MEMBER)
    await set_limit(admin, "sigma", snapshots=1)
    async with Client(mesh.api_address, key.secret) as sigma:
        share = await create_share(sigma, "sigma", "snapped")
        taken, refused = await race(
            sigma,
            3,
            lambda i: sigma.call(
                sigma.shares.CreateSnapshot,
                ss.CreateSnapshotRequest(
                    parent=share.name, snapshot_id=f"s{i}", snapshot=snapshot_pb2.Snapshot()
                ),
            ),
            snapshot_pb2.Snapshot,
        )
        assert (len(taken), len(refused)) == (1, 2)
        assert (await get_quota(sigma, "sigma")).usage.snapshots == 1
        await sigma.wait(
            await sigma.call(
                sigma.shares.DeleteShare, ss.DeleteShareRequest(name=share.name, force=True)
            )
        )
    usage = (await get_quota(admin, "sigma")).usage
    assert (usage.shares, usage.snapshots) == (0, 0)


async def test_share_network_limit_set_through_the_api_holds_under_racing_creates(
    mesh: LocalMesh, admin: Client
) -> None:
    key = await make_key(admin, "tau", ApiKey.MEMBER)
    await set_limit(admin, "tau", share_networks=2)
    async with Client(mesh.api_address, key.secret) as tau:
        made, refused = await race(
            tau,
            5,
            lambda i: tau.call(
                tau.networks.CreateShareNetwork,
                sns.CreateShareNetworkRequest(
                    parent="projects/tau",
                    share_network_id=f"net{i}",
                    share_network=share_network_pb2.ShareNetwork(cidr=f"10.40.{i}.0/24"),
                ),
            ),
            share_network_pb2.ShareNetwork,
        )
        assert (len(made), len(refused)) == (2, 3)
        assert (await get_quota(tau, "tau")).usage.share_networks == 2
        for network in made:
            await tau.wait(
                await tau.call(
                    tau.networks.DeleteShareNetwork,
                    sns.DeleteShareNetworkRequest(name=network.name),
                )
            )
    assert (await get_quota(admin, "tau")).usage.share_networks == 0
