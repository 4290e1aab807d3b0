"""The tenant's journey on the local backend, through real NFS: create, grant, write,
read, restrict, revoke, grow, delete."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    RO,
    RW,
    Share,
    allocated_gib,
    create_share,
    delete_share,
    grant,
    read,
    revoke,
    set_level,
    write,
)
from support import loops_under, mounts_under

pytestmark = pytest.mark.e2e
CLIENT = "127.0.0.1"


@pytest.fixture
def mib(tmp_path: Path) -> Path:
    path = tmp_path / "one.bin"
    path.write_bytes(os.urandom(1 << 20))
    return path


async def test_full_journey(mesh: LocalMesh, alpha: Client, mib: Path, tmp_path: Path) -> None:
    share = await create_share(alpha, "alpha", "journey", size_gib=1)
    assert share.state == Share.ACTIVE
    (location,) = share.export_locations
    assert location.path.startswith(f"{CLIENT}:/") and location.nfs_port and location.mount_port
    assert await allocated_gib(mesh) == 1

    # No rule yet: nobody may mount.
    assert (await write(share, mib, "early.bin"))[0] != 0

    rule = await grant(alpha, share.name, CLIENT, RW)
    assert rule.state == rule.ACTIVE
    code, out = await write(share, mib, "one.bin")
    assert code == 0, out
    back = tmp_path / "back.bin"
    for version in (4, 3):
        code, out = await read(share, back, "one.bin", version)
        assert code == 0, out
        assert back.read_bytes() == mib.read_bytes()

    await set_level(alpha, rule.name, RO)
    code, out = await write(share, mib, "refused.bin")
    assert code != 0, "a READ_ONLY client wrote"
    code, out = await read(share, back, "one.bin")
    assert code == 0 and back.read_bytes() == mib.read_bytes(), out

    await revoke(alpha, rule.name)
    assert (await read(share, back, "one.bin"))[0] != 0, "a revoked client still reads"

    rule = await grant(alpha, share.name, CLIENT, RW)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate((1 << 30) + (64 << 20))  # more than the whole share
    code, out = await write(share, big, "big.bin")
    assert code != 0, "a write larger than the share succeeded"

    # Grow while a client keeps reading; every read must succeed.
    reads: list[int] = []
    stop = asyncio.Event()

    async def keep_reading() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            code, out = await read(share, tmp_path / f"r{n % 2}.bin", "one.bin")
            reads.append(code)

    reader = asyncio.create_task(keep_reading())
    await asyncio.sleep(0.3)
    grown = await alpha.wait(
        await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=2)
        ),
        Share,
    )
    await asyncio.sleep(0.3)
    stop.set()
    await reader
    assert grown.size_gib == 2 and grown.state == Share.ACTIVE
    assert reads and all(code == 0 for code in reads), reads
    assert await allocated_gib(mesh) == 2
    code, out = await write(share, mib, "after-grow.bin")
    assert code == 0, out

    with pytest.raises(grpc.aio.AioRpcError) as shrink:
        await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=1)
        )
    assert shrink.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shrink_support" in shrink.value.details()

    await delete_share(alpha, share.name)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    pool = mesh.state_dir / "pools" / "local"
    assert not list((pool / "images").glob(f"{share.uid}*"))
    assert not [m for m in mounts_under(pool) if share.uid in m]
    assert not [lo for lo in loops_under(pool) if share.uid in lo]
    assert not list((pool / "ganesha" / "ganesha" / "exports.d").glob("*.conf"))
    assert (await read(share, back, "one.bin"))[0] != 0
    assert await allocated_gib(mesh) == 0
