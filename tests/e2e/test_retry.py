"""A create that fails on a backend is retried on another pool, skipping those tried,
and fails only when every attempt has: a real failure, not a fake one. The "cramped"
backend's pool is a 1 MiB tmpfs, so `mkfs.xfs` runs out of space there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_pb2
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import TENANT_KEYS, create_share, delete_share, live_shares, running_mesh

pytestmark = pytest.mark.e2e

CONFIG = (
    """
reconcile_interval_seconds = 2
[scheduler]
max_attempts = {attempts}

[[backends]]
name = "cramped"          # the most room on paper, so the scheduler tries it first
[backends.options]
capacity_gib = 100
pool_dir = "{cramped}"

[[backends]]
name = "roomy"
[backends.options]
capacity_gib = 5
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, cramped: Path) -> AsyncIterator[LocalMesh]:
    config = CONFIG.format(attempts=2, cramped=cramped)
    async with running_mesh(tmp_path_factory, config) as mesh:
        yield mesh


async def test_a_failed_create_lands_on_another_pool(mesh: LocalMesh, alpha: Client) -> None:
    share = await create_share(alpha, "alpha", "moved")
    assert share.state == share_pb2.Share.ACTIVE
    (record,) = await live_shares(mesh)
    assert record.placement.pool == "backends/roomy/pools/default"
    assert list(record.placement.tried_pools) == ["backends/cramped/pools/default"]
    await delete_share(alpha, share.name)


async def test_when_every_attempt_fails_the_share_ends_in_error(
    mesh: LocalMesh, alpha: Client
) -> None:
    # 6 GiB fits only the cramped pool on paper; with max_attempts = 2 the retry finds
    # no other pool and the capacity filter says why.
    with pytest.raises(OperationFailed) as failed:
        await create_share(alpha, "alpha", "stuck", size_gib=6)
    assert failed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    share = await alpha.call(
        alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/stuck")
    )
    assert share.state == share_pb2.Share.ERROR and share.state_message
    await delete_share(alpha, share.name)
    assert not await live_shares(mesh)
