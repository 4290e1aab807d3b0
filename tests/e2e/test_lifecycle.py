"""Operations expire after the retention period (with their request ids), and a delete
the backend refuses leaves the share in ERROR until it is deleted again with force."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.longrunning import operations_pb2

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import TENANT_KEYS, Share, allocated_gib, create_share, live_shares, running_mesh

pytestmark = pytest.mark.e2e
RETENTION_SECONDS = 2
CONFIG = (
    f"""
reconcile_interval_seconds = 1
operation_retention_seconds = {RETENTION_SECONDS}
[[backends]]
name = "local"
[backends.options]
capacity_gib = 4
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


async def test_finished_operations_expire_with_their_request_ids(alpha: Client) -> None:
    request = ss.CreateShareRequest(
        parent="projects/alpha",
        share_id="kept",
        request_id="expiring-request",
        share=Share(size_gib=1),
    )
    op = await alpha.call(alpha.shares.CreateShare, request)
    await alpha.wait(op)
    done = time.monotonic()
    while True:
        try:
            await alpha.call(
                alpha.operations.GetOperation, operations_pb2.GetOperationRequest(name=op.name)
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            break
        assert time.monotonic() - done < RETENTION_SECONDS + 10, "the operation never expired"
        await asyncio.sleep(0.2)
    # The request id went with it: the same request is new now, and the share exists.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await alpha.call(alpha.shares.CreateShare, request)
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await alpha.wait(
        await alpha.call(
            alpha.shares.DeleteShare, ss.DeleteShareRequest(name="projects/alpha/shares/kept")
        )
    )


async def test_a_refused_delete_ends_in_error_and_force_removes_the_record(
    mesh: LocalMesh, alpha: Client
) -> None:
    share = await create_share(alpha, "alpha", "busy")
    mountpoint = mesh.state_dir / "pools" / "local" / "mnt" / share.uid
    holder = subprocess.Popen(["sleep", "120"], cwd=mountpoint)  # keeps the mount busy
    try:
        with pytest.raises(OperationFailed):
            await alpha.wait(
                await alpha.call(alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name))
            )
        failed = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
        assert failed.state == Share.ERROR and "delete failed" in failed.state_message
        assert "busy" in failed.state_message
        await alpha.wait(
            await alpha.call(
                alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name, force=True)
            )
        )
        assert not await live_shares(mesh)
        assert await allocated_gib(mesh) == 0
    finally:
        holder.kill()
        holder.wait()

    # The force-deleted share's image is still on the backend (it outlives the record
    # until the mesh stops), so the backend refuses a grow that the pool's books allow:
    # the share stays ACTIVE at its size and gives back what the grow reserved.
    share = await create_share(alpha, "alpha", "grower")
    with pytest.raises(OperationFailed) as refused:
        await alpha.wait(
            await alpha.call(
                alpha.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=4)
            )
        )
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert after.state == Share.ACTIVE and after.size_gib == 1
    assert "resize to 4 GiB failed" in after.state_message
    assert await allocated_gib(mesh) == 1
    await alpha.wait(
        await alpha.call(alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name))
    )
