"""Project quotas: a share that would take a project over its limit is refused, racing
creates cannot together overshoot it, and deleted or failed shares give it back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.runtime import quota
from sharemesh.runtime.coordination import Store, connect
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import TENANT_KEYS, Share, create_share, delete_share, live_shares, running_mesh

pytestmark = pytest.mark.e2e
CONFIG = (
    """
reconcile_interval_seconds = 2
[quotas]
projects = { alpha = 3 }
[[backends]]
name = "local"
[backends.options]
capacity_gib = 10
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


async def used(mesh: LocalMesh, project: str) -> int:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        return await quota.used_gib(Store(client), project)


async def test_over_quota_is_refused_and_changes_nothing(
    mesh: LocalMesh, alpha: Client, beta: Client
) -> None:
    share = await create_share(alpha, "alpha", "two", size_gib=2)
    assert await used(mesh, "alpha") == 2
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await create_share(alpha, "alpha", "too-much", size_gib=2)
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota" in over.value.details()
    assert [r.spec.share.name for r in await live_shares(mesh)] == [share.name]
    with pytest.raises(grpc.aio.AioRpcError) as grow:
        await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=4)
        )
    assert grow.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    grown = await alpha.wait(
        await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=3)
        ),
        Share,
    )
    assert grown.size_gib == 3 and await used(mesh, "alpha") == 3
    other = await create_share(beta, "beta", "unlimited", size_gib=4)  # beta has no quota
    await delete_share(alpha, share.name)
    await delete_share(beta, other.name)
    assert await used(mesh, "alpha") == 0 and await used(mesh, "beta") == 0


async def test_racing_creates_never_overshoot_the_quota(mesh: LocalMesh, alpha: Client) -> None:
    async def create(i: int) -> Share | Exception:
        try:
            return await create_share(alpha, "alpha", f"race-{i}")
        except (OperationFailed, grpc.aio.AioRpcError) as refused:
            return refused

    results = await asyncio.gather(*(create(i) for i in range(8)))
    made = [r for r in results if isinstance(r, Share)]
    refused = [r for r in results if not isinstance(r, Share)]
    assert len(made) == 3 and len(refused) == 5
    for error in refused:
        code = error.code if isinstance(error, OperationFailed) else error.code()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await used(mesh, "alpha") == 3
    for record in await live_shares(mesh):
        await delete_share(alpha, record.spec.share.name)
    assert await used(mesh, "alpha") == 0
