"""Placement never over-allocates a pool, and a share that fits nowhere fails cleanly."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.lifecycle.share import public
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import Share, allocated_gib, create_share, delete_share, live_shares

pytestmark = pytest.mark.e2e
POOL_GIB = 10


@pytest.fixture(scope="module")
def capacity_gib() -> int:
    return POOL_GIB


async def test_a_share_no_pool_can_take_ends_in_error_and_can_be_deleted(
    mesh: LocalMesh, alpha: Client
) -> None:
    with pytest.raises(OperationFailed) as failed:
        await create_share(alpha, "alpha", "too-big", size_gib=POOL_GIB + 1)
    assert failed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    share = await alpha.call(
        alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/too-big")
    )
    assert share.state == Share.ERROR
    assert "capacity filter" in share.state_message and f"{POOL_GIB + 1} GiB" in share.state_message
    assert await allocated_gib(mesh) == 0
    await delete_share(alpha, share.name)
    assert not await live_shares(mesh)


async def test_concurrent_creates_never_over_allocate(mesh: LocalMesh, alpha: Client) -> None:
    async def create(i: int) -> Share | OperationFailed:
        try:
            return await create_share(alpha, "alpha", f"race-{i}", size_gib=1 + i % 2)
        except OperationFailed as failed:
            return failed

    results = await asyncio.gather(*(create(i) for i in range(50)))
    made = [r for r in results if isinstance(r, Share)]
    failed = [r for r in results if isinstance(r, OperationFailed)]
    assert made and failed
    assert all(f.code == grpc.StatusCode.RESOURCE_EXHAUSTED for f in failed)
    assert all(s.state == Share.ACTIVE for s in made)
    records = await live_shares(mesh)
    holding = sum(r.allocated_gib for r in records)
    assert holding == sum(s.size_gib for s in made)
    assert await allocated_gib(mesh) == holding <= POOL_GIB
    # The pool is full to within the smallest share: what failed could not have fitted.
    assert POOL_GIB - holding < 2
    assert sum(public(r).state == Share.ERROR for r in records) == len(failed)

    await asyncio.gather(*(delete_share(alpha, r.spec.share.name) for r in records))
    assert await allocated_gib(mesh) == 0
    assert not await live_shares(mesh)
