"""Steps of a tenant's journey that every backend served by a Ganesha of its own takes
alike (cephfs, glusterfs): the journeys name their backend and what is theirs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import RO, RW, Share, create_share, delete_share, grant, read, set_level, write
from support import pid_alive

CLIENT = "127.0.0.1"
MIB = 1 << 20


async def resize(client: Client, share: Share, size_gib: int) -> Share:
    op = await client.call(
        client.shares.ResizeShare, ss.ResizeShareRequest(name=share.name, size_gib=size_gib)
    )
    return await client.wait(op, Share)


async def killed_driver_host_and_ganesha_serve_again(
    mesh: LocalMesh, alpha: Client, backend: str, home: Path, tmp_path: Path, within: float
) -> None:
    """kill -9 of backend `backend`'s driver-host and of its Ganesha (its state in
    `home/ganesha`): within `within` seconds both shares serve again, with their data
    and their rules (one READ_WRITE, one READ_ONLY)."""
    mib = tmp_path / "one.bin"
    mib.write_bytes(os.urandom(MIB))
    writable = await create_share(alpha, "alpha", "crash")
    readonly = await create_share(alpha, "alpha", "crash-ro")
    await grant(alpha, writable.name, CLIENT, RW)
    rule = await grant(alpha, readonly.name, CLIENT, RW)
    for share in (writable, readonly):
        assert (await write(share, mib, "one.bin"))[0] == 0
    await set_level(alpha, rule.name, RO)

    host = mesh.children[f"driver-host-{backend}"]
    assert host.pid is not None
    ganesha = int((home / "ganesha/ganesha/ganesha.pid").read_text())
    for pid in (host.pid, ganesha):
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    back = tmp_path / "back.bin"
    while (await read(writable, back, "one.bin"))[0] != 0 or pid_alive(ganesha):
        assert time.monotonic() - started < within, "the share did not serve again"
        await asyncio.sleep(0.2)
    print(f"\n{backend} shares served again {time.monotonic() - started:.2f}s after kill -9")
    for share in (writable, readonly):
        assert (await read(share, back, "one.bin"))[0] == 0
        assert back.read_bytes() == mib.read_bytes()
    assert (await write(writable, mib, "two.bin"))[0] == 0, "the RW rule was lost"
    assert (await write(readonly, mib, "two.bin"))[0] != 0, "the RO rule was lost"
    for share in (writable, readonly):
        await delete_share(alpha, share.name)
