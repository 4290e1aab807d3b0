"""Operations expire after the retention period (with their request ids), a deleted
share's export id comes back only after its quarantine, a delete the backend refuses
leaves the share in ERROR until it is deleted again with force, and an admin can reset
a failed or stuck share's state."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    TENANT_KEYS,
    Share,
    allocated_gib,
    create_share,
    delete_share,
    grant,
    live_shares,
    read,
    running_mesh,
    write,
)

pytestmark = pytest.mark.e2e
RETENTION_SECONDS = 2
QUARANTINE_SECONDS = 4
CONFIG = (
    f"""
reconcile_interval_seconds = 1
operation_retention_seconds = {RETENTION_SECONDS}
export_id_quarantine_seconds = {QUARANTINE_SECONDS}
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


async def test_an_export_id_comes_back_only_after_its_quarantine(
    mesh: LocalMesh, alpha: Client, tmp_path: Path
) -> None:
    async def export_id(share: Share) -> int:
        (record,) = [r for r in await live_shares(mesh) if r.spec.share.name == share.name]
        return record.export_id

    first = await create_share(alpha, "alpha", "ids-first")
    first_id = await export_id(first)
    await delete_share(alpha, first.name)
    released = time.monotonic()
    second = await create_share(alpha, "alpha", "ids-second")
    assert time.monotonic() - released < QUARANTINE_SECONDS  # else the check means nothing
    assert await export_id(second) != first_id
    await asyncio.sleep(QUARANTINE_SECONDS - (time.monotonic() - released) + 0.2)
    third = await create_share(alpha, "alpha", "ids-third")
    assert await export_id(third) == first_id
    # The id's new share is served for real, with its own data.
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(64 << 10))
    await grant(alpha, third.name, "127.0.0.1")
    assert (await write(third, src, "data.bin"))[0] == 0
    assert (await read(third, dst, "data.bin"))[0] == 0
    assert dst.read_bytes() == src.read_bytes()
    for share in (second, third):
        await delete_share(alpha, share.name)


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


async def _reset(client: Client, name: str, state: int) -> Share:
    op = await client.call(
        client.shares.ResetShareState, ss.ResetShareStateRequest(name=name, state=state)
    )
    return await client.wait(op, Share)


async def test_an_admin_brings_a_failed_share_back_to_active(
    mesh: LocalMesh, alpha: Client, admin: Client, tmp_path: Path
) -> None:
    share = await create_share(alpha, "alpha", "fixable")
    await grant(alpha, share.name, "127.0.0.1")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(64 << 10))
    assert (await write(share, src, "data.bin"))[0] == 0
    mountpoint = mesh.state_dir / "pools" / "local" / "mnt" / share.uid
    holder = subprocess.Popen(["sleep", "120"], cwd=mountpoint)  # keeps the mount busy
    try:
        with pytest.raises(OperationFailed):
            await delete_share(alpha, share.name)
    finally:
        holder.kill()
        holder.wait()
    failed = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert failed.state == Share.ERROR  # and its export is gone: the delete got that far
    assert (await read(share, dst, "data.bin"))[0] != 0

    with pytest.raises(grpc.aio.AioRpcError) as tenant:
        await _reset(alpha, share.name, Share.ACTIVE)
    assert tenant.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _reset(admin, share.name, Share.DELETING)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The cause is gone (the holder): the admin asks for the share back, rules and all.
    back = await _reset(admin, share.name, Share.ACTIVE)
    assert back.state == Share.ACTIVE and not back.state_message
    assert (await read(share, dst, "data.bin"))[0] == 0
    assert dst.read_bytes() == src.read_bytes()

    # A share that never reached a backend cannot be made ACTIVE; it can only go.
    with pytest.raises(OperationFailed):
        await create_share(alpha, "alpha", "too-big", size_gib=100)
    with pytest.raises(grpc.aio.AioRpcError) as never:
        await _reset(admin, "projects/alpha/shares/too-big", Share.ACTIVE)
    assert never.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for name in (share.name, "projects/alpha/shares/too-big"):
        await delete_share(alpha, name)
    assert not await live_shares(mesh) and await allocated_gib(mesh) == 0


async def test_an_admin_ends_a_stuck_create_in_error(
    mesh: LocalMesh, alpha: Client, admin: Client
) -> None:
    pid = mesh.children["driver-host-local"].pid
    assert pid
    os.kill(pid, signal.SIGSTOP)  # the backend hangs mid-create
    try:
        op = await alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha", share_id="stuck", share=Share(size_gib=1)
            ),
        )
        name = "projects/alpha/shares/stuck"
        while not (await admin.call(admin.shares.GetShare, ss.GetShareRequest(name=name))).pool:
            await asyncio.sleep(0.05)  # placed, waiting for its backend
        reset = await _reset(admin, name, Share.ERROR)
        assert reset.state == Share.ERROR and "administrator" in reset.state_message
        with pytest.raises(OperationFailed) as create:
            await alpha.wait(op)
        assert create.value.code == grpc.StatusCode.ABORTED
    finally:
        os.kill(pid, signal.SIGCONT)
    # The backend, back, leaves the ERROR share alone until it is deleted.
    await delete_share(alpha, name)
    assert not await live_shares(mesh) and await allocated_gib(mesh) == 0
