"""Lists from the api's watch cache, through the real API: a client reads its own
writes at once, pages return each share exactly once in name order, tokens stay sealed,
and the in-use checks still refuse deleting what a share uses."""

from __future__ import annotations

import grpc
import pytest
from share_records import share_in

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_pb2, share_type_service_pb2_grpc
from sharemesh.v1 import share_type_service_pb2 as sts

from mesh_ops import Share, create_network, delete_share

pytestmark = pytest.mark.e2e


async def _names(client: Client, parent: str, page_size: int = 50) -> list[str]:
    """Every share of `parent`, page by page."""
    names: list[str] = []
    token = ""
    while True:
        page = await client.call(
            client.shares.ListShares,
            ss.ListSharesRequest(parent=parent, page_size=page_size, page_token=token),
        )
        names += [s.name for s in page.shares]
        token = page.next_page_token
        if not token:
            return names


async def _write_records(mesh: LocalMesh, project: str, ids: list[str], **share: str) -> None:
    """Share records straight into etcd, on a backend that does not exist (nothing is
    realized), as a mesh with many shares holds them."""
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        for share_id in ids:
            name = f"projects/{project}/shares/{share_id}"
            record = share_in(name, Share.ACTIVE, placed_on="backends/ghost/pools/p", **share)
            await store.create(store.key_of(name), record)


async def test_a_create_is_listed_at_once_and_a_delete_is_gone_at_once(
    alpha: Client,
) -> None:
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(parent="projects/alpha", share_id="fresh", share=Share(size_gib=1)),
    )
    # No wait for the operation: its record exists once CreateShare returned.
    assert "projects/alpha/shares/fresh" in await _names(alpha, "projects/alpha")
    await alpha.wait(op, Share)
    await delete_share(alpha, "projects/alpha/shares/fresh")
    assert "projects/alpha/shares/fresh" not in await _names(alpha, "projects/alpha")


async def test_pages_of_fifty_return_each_of_120_shares_once_in_name_order(
    mesh: LocalMesh, beta: Client
) -> None:
    ids = [f"s{i:03d}" for i in range(120)]
    await _write_records(mesh, "beta", ids[::-1])  # written out of order
    listed = await _names(beta, "projects/beta", page_size=50)
    assert listed == [f"projects/beta/shares/{i}" for i in ids]
    first = await beta.call(
        beta.shares.ListShares, ss.ListSharesRequest(parent="projects/beta", page_size=50)
    )
    assert len(first.shares) == 50 and first.next_page_token
    # A record written to etcd a moment ago is on the next read.
    await _write_records(mesh, "beta", ["zzz"])
    assert (await _names(beta, "projects/beta", page_size=1000))[-1] == "projects/beta/shares/zzz"
    # A tampered token, or one taken to another list, is refused and changes nothing.
    token = first.next_page_token
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    for parent, bad in (("projects/beta", tampered), ("projects/alpha", token)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await beta.call(
                beta.shares.ListShares, ss.ListSharesRequest(parent=parent, page_token=bad)
            )
        assert refused.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
        )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await beta.call(
            beta.shares.ListShares,
            ss.ListSharesRequest(parent="projects/beta", page_token=tampered),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (refused.value.details() or "")


async def test_a_share_type_in_use_is_not_deleted(mesh: LocalMesh, admin: Client) -> None:
    types = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
    await types.CreateShareType(
        sts.CreateShareTypeRequest(share_type_id="used", share_type=share_type_pb2.ShareType()),
        metadata=admin.metadata,
    )
    await _write_records(mesh, "gamma", ["typed"], share_type="shareTypes/used")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await types.DeleteShareType(
            sts.DeleteShareTypeRequest(name="shareTypes/used"), metadata=admin.metadata
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "projects/gamma/shares/typed" in (refused.value.details() or "")
    await types.GetShareType(
        sts.GetShareTypeRequest(name="shareTypes/used"), metadata=admin.metadata
    )


async def test_a_share_network_in_use_is_not_deleted(mesh: LocalMesh, alpha: Client) -> None:
    network = await create_network(alpha, "busy")
    await _write_records(mesh, "alpha", ["networked"], share_network=network)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alpha.call(
            alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=network)
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "projects/alpha/shares/networked" in (refused.value.details() or "")
    got = await alpha.call(alpha.networks.GetShareNetwork, sns.GetShareNetworkRequest(name=network))
    assert got.name == network
