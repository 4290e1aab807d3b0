"""A tenant's journey on a GlusterFS backend through a whole mesh, over real NFS (Ganesha
with FSAL_GLUSTER on a real volume): create, grant, write, read, read-only, the size
limit to the MiB, grow, a shrink that fits done and one below the data refused, delete
leaving no directory, quota or export;
a kill -9 of the driver-host and of its Ganesha; the time of a delete and of a stop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.driver_host.drivers._gluster_cli import GlusterCli
from sharemesh.driver_host.drivers.glusterfs import ANCHOR_EXPORT_ID, _client
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.ports import free_port
from sharemesh.v1 import share_service_pb2 as ss

from backend_journey import killed_driver_host_and_ganesha_serve_again, resize
from mesh_ops import (
    RO,
    RW,
    TENANT_KEYS,
    Share,
    allocated_gib,
    create_share,
    delete_share,
    grant,
    read,
    running_mesh,
    set_level,
    write,
)

pytestmark = pytest.mark.e2e
CLIENT = "127.0.0.1"
MIB = 1 << 20

CONFIG = (
    """
reconcile_interval_seconds = 2

[[backends]]
name = "gluster"
driver = "glusterfs"
state_dir = "{home}/servers"
[backends.options]
server = "127.0.0.1"
volume = "{volume}"
state_dir = "{home}/ganesha"
nfs_port = {nfs_port}
mount_port = {mount_port}
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gluster backend's state: its Ganesha's under `ganesha/ganesha/`."""
    return tmp_path_factory.mktemp("gluster-backend")


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, gluster_volume: str, home: Path
) -> AsyncIterator[LocalMesh]:
    config = CONFIG.format(
        home=home, volume=gluster_volume, nfs_port=free_port(), mount_port=free_port()
    )
    async with running_mesh(tmp_path_factory, config) as mesh:
        yield mesh
        stopping = time.monotonic()
    # The whole mesh, the gluster backend's Ganesha with it (its volume client's end,
    # ~10 s, is not waited for).
    took = time.monotonic() - stopping
    print(f"\nmesh with a gluster backend stopped in {took:.2f}s")
    assert took < 10, f"the mesh took {took:.1f}s to stop"


@pytest.fixture
def cli(gluster_volume: str) -> GlusterCli:
    return GlusterCli(gluster_volume)


def zeros(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


async def test_the_journey_on_gluster(
    mesh: LocalMesh, alpha: Client, cli: GlusterCli, home: Path, tmp_path: Path
) -> None:
    mib = tmp_path / "one.bin"
    mib.write_bytes(os.urandom(MIB))
    share = await create_share(alpha, "alpha", "journey", size_gib=1)
    assert share.state == Share.ACTIVE
    quota = f"/shares/{share.uid}"
    assert (await cli.limit(quota)).hard_bytes == 1 << 30  # type: ignore[union-attr]
    assert await allocated_gib(mesh, "gluster") == 1
    assert (await write(share, mib, "early.bin"))[0] != 0, "nobody may mount before a rule"

    rule = await grant(alpha, share.name, CLIENT, RW)
    code, out = await write(share, mib, "one.bin")
    assert code == 0, out
    back = tmp_path / "back.bin"
    for version in (4, 3):
        code, out = await read(share, back, "one.bin", version)
        assert code == 0 and back.read_bytes() == mib.read_bytes(), out

    await set_level(alpha, rule.name, RO)
    assert (await write(share, mib, "refused.bin"))[0] != 0, "a READ_ONLY client wrote"
    assert (await read(share, back, "one.bin"))[0] == 0
    await set_level(alpha, rule.name, RW)

    # A grow, then a shrink that fits what is stored (1 MiB), are done.
    assert (await resize(alpha, share, 2)).size_gib == 2
    assert (await cli.limit(quota)).hard_bytes == 2 << 30  # type: ignore[union-attr]
    shrunk = await resize(alpha, share, 1)
    assert shrunk.size_gib == 1 and shrunk.state == Share.ACTIVE
    assert (await cli.limit(quota)).hard_bytes == 1 << 30  # type: ignore[union-attr]
    assert await allocated_gib(mesh, "gluster") == 1

    # The limit, to the MiB: 1023 MiB stored, then 2 MiB more do not fit.
    code, out = await write(share, zeros(tmp_path / "most.bin", 1022 * MIB), "most.bin")
    assert code == 0, out
    code, out = await write(share, zeros(tmp_path / "two.bin", 2 * MIB), "two.bin")
    assert code != 0, f"a write past the share's size succeeded: {await cli.limit(quota)}"
    assert (await cli.limit(quota)).used_bytes <= 1 << 30  # type: ignore[union-attr]

    # A grow lifts it, online.
    grown = await resize(alpha, share, 2)
    assert grown.size_gib == 2 and grown.state == Share.ACTIVE
    assert (await cli.limit(quota)).hard_bytes == 2 << 30  # type: ignore[union-attr]
    assert await allocated_gib(mesh, "gluster") == 2
    code, out = await write(share, zeros(tmp_path / "more.bin", 64 * MIB), "more.bin")
    assert code == 0, out
    assert (await read(share, back, "one.bin"))[0] == 0

    # ~1.06 GiB stored: a shrink to 1 GiB is refused and changes nothing.
    with pytest.raises(OperationFailed) as refused:
        await resize(alpha, share, 1)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.error.reason == "SHRINK_WOULD_LOSE_DATA"
    kept = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert kept.size_gib == 2 and kept.state == Share.ACTIVE
    assert (await cli.limit(quota)).hard_bytes == 2 << 30  # type: ignore[union-attr]
    assert await allocated_gib(mesh, "gluster") == 2
    code, out = await write(share, mib, "after-refusal.bin")
    assert code == 0, out

    started = time.monotonic()
    await delete_share(alpha, share.name)
    took = time.monotonic() - started
    assert took < 5, f"a delete took {took:.1f}s"
    print(f"\ngluster share delete through the mesh: {took:.2f}s")
    assert await cli.limit(quota) is None
    volume = _client("127.0.0.1", cli.volume, tmp_path / "gfapi.log")
    assert not await asyncio.to_thread(volume.is_dir, quota), "its directory is left"
    # Only the anchor export is left (it keeps Ganesha's volume client).
    exports = home / "ganesha/ganesha/exports.d"
    assert sorted(f.name for f in exports.glob("*.conf")) == [f"{ANCHOR_EXPORT_ID}.conf"]
    assert (await read(share, back, "one.bin"))[0] != 0
    assert await allocated_gib(mesh, "gluster") == 0


async def test_a_killed_driver_host_and_ganesha_serve_again(
    mesh: LocalMesh, alpha: Client, home: Path, tmp_path: Path
) -> None:
    await killed_driver_host_and_ganesha_serve_again(
        mesh, alpha, "gluster", home, tmp_path, within=45
    )
