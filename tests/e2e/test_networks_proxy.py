"""A gateway that proxies its backend's NFS export (PROXY_V4) instead of reading the
filesystem: forced by the backend's `gateway_fsal` option, since on one host the
gateway would always choose VFS. The backend grants only the gateways' storage links."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    RW,
    TENANT_KEYS,
    Share,
    attach,
    create_network,
    delete_share,
    grant,
    nfs_in,
    nfs_location,
    read_in,
    running_mesh,
)
from support import guest_namespaces

pytestmark = pytest.mark.e2e
CONFIG = (
    """
reconcile_interval_seconds = 2
[[backends]]
name = "local"
[backends.options]
capacity_gib = 4
gateway_fsal = "PROXY_V4"
"""
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def tenant() -> Iterator[str]:
    with guest_namespaces("proxy") as made:
        yield made["proxy"]


async def test_a_proxying_gateway_serves_the_tenant(
    mesh: LocalMesh, alpha: Client, admin: Client, tenant: str, tmp_path: Path
) -> None:
    net = await create_network(alpha, "proxied")
    await attach(admin, net, tenant, "10.31.0.20")
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha", share_id="proxied", share=Share(size_gib=1, share_network=net)
        ),
    )
    share = await alpha.wait(op, Share)
    assert share.state == Share.ACTIVE
    await grant(alpha, share.name, "10.31.0.20", RW)
    (export,) = (mesh.state_dir / "gateway").glob("*/exports.d/*.conf")
    assert "PROXY_V4" in export.read_text()

    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(512 << 10))
    back = tmp_path / "back.bin"
    assert await nfs_in(tenant, str(data), nfs_location(share, "data.bin", 3)) == 0
    assert await read_in(tenant, share, back) == 0
    assert back.read_bytes() == data.read_bytes()

    # The backend's Ganesha dies: its driver-host restarts it, and the gateway, whose
    # proxy would otherwise stay broken, restarts its own.
    backend_pid = int((mesh.state_dir / "pools/local/ganesha/ganesha/ganesha.pid").read_text())
    os.kill(backend_pid, signal.SIGKILL)
    killed = time.monotonic()
    while (await read_in(tenant, share, back)) != 0:
        assert time.monotonic() - killed < 30, "the proxying gateway did not recover"
        await asyncio.sleep(0.2)
    print(f"\nproxied share readable {time.monotonic() - killed:.2f}s after the backend's kill -9")
    assert back.read_bytes() == data.read_bytes()

    await delete_share(alpha, share.name)
    await alpha.wait(
        await alpha.call(alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=net))
    )
