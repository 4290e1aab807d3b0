"""Network file systems across hosts: on a mesh of three hosts, a CephFS backend on host 2
and a GlusterFS backend on host 3 (the session's development clusters, on the
machine's storage addresses), and guests on hosts 1 and 3 of one share network. Each
guest's own host's gateway reaches each share natively (FSAL_CEPH, FSAL_GLUSTER),
whether its backend is on that host or another; bytes written by one guest are read by
the other, over real NFS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hosts_ops import attach_on, client, running_hosts

from sharemesh.client import Client
from sharemesh.launcher import HostsMesh
from sharemesh.v1 import share_network_pb2
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    RW,
    TENANT_KEYS,
    Share,
    all_pools_registered,
    create_share_types,
    grant,
    nfs_in,
    nfs_location,
)
from support import gluster_brick_address, guest_namespaces

pytestmark = pytest.mark.e2e

CONFIG = (
    """
reconcile_interval_seconds = 2
[[backends]]
name = "ceph"
driver = "cephfs"
host = "host-2"
[backends.options]
conf = "{conf}"
keyring = "{keyring}"
subvolume_group = "hosts"
capabilities = {{ backend_kind = "ceph" }}
[[backends]]
name = "gluster"
driver = "glusterfs"
host = "host-3"
[backends.options]
server = "{server}"
volume = "{volume}"
capabilities = {{ backend_kind = "gluster" }}
"""
    + TENANT_KEYS
)
KINDS = ("ceph", "gluster")


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    ceph_cluster: tuple[Path, Path],
    gluster_volume: str,
) -> AsyncIterator[HostsMesh]:
    conf, keyring = ceph_cluster
    config = CONFIG.format(
        conf=conf,
        keyring=keyring,
        server=gluster_brick_address(gluster_volume),
        volume=gluster_volume,
    )
    async with running_hosts(tmp_path_factory.mktemp("hosts-native"), config) as running:
        async with client(running, running.admin_token) as admin:
            await create_share_types(admin, {f"on-{k}": {"backend_kind": k} for k in KINDS})
            await all_pools_registered(
                admin, {"backends/ceph/pools/cephfs", "backends/gluster/pools/default"}
            )
        yield running


@pytest.fixture(scope="module")
def guests() -> Iterator[dict[str, tuple[str, str]]]:
    with guest_namespaces("n1", "n3") as made:
        yield {"host-1": (made["n1"], "10.31.0.21"), "host-3": (made["n3"], "10.31.0.23")}


async def test_guests_reach_cluster_shares_of_other_hosts_natively(
    mesh: HostsMesh, guests: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    async with (
        client(mesh, "alpha-key") as alpha,
        client(mesh, mesh.admin_token) as admin,
    ):
        network = await _network(alpha, admin, guests)
        (g1, _), (g3, _) = guests["host-1"], guests["host-3"]
        for kind in KINDS:
            share = await _share(alpha, network, kind)
            for _, address in guests.values():
                await grant(alpha, share.name, address, RW)
            data = tmp_path / f"{kind}.bin"
            data.write_bytes(os.urandom(128 << 10))
            assert await nfs_in(g1, str(data), nfs_location(share, "from-1.bin", 3)) == 0, kind
            back = tmp_path / f"{kind}-back.bin"
            assert await nfs_in(g3, nfs_location(share, "from-1.bin", 4), str(back)) == 0, kind
            assert back.read_bytes() == data.read_bytes(), kind

    # Host 1 has neither backend, yet its gateway serves both, natively.
    exports = list((mesh.fabric.host("host-1").state_dir / "gateway").glob("*/exports.d/*.conf"))
    fsals = " ".join(e.read_text() for e in exports)
    assert "CEPH" in fsals and "GLUSTER" in fsals, fsals


async def _network(alpha: Client, admin: Client, guests: dict[str, tuple[str, str]]) -> str:
    op = await alpha.call(
        alpha.networks.CreateShareNetwork,
        sns.CreateShareNetworkRequest(
            parent="projects/alpha",
            share_network_id="native",
            share_network=share_network_pb2.ShareNetwork(cidr="10.31.0.0/24"),
        ),
    )
    network = (await alpha.wait(op, share_network_pb2.ShareNetwork)).name
    for host, (netns, address) in guests.items():
        await attach_on(admin, network, netns, address, host)
    return network


async def _share(alpha: Client, network: str, kind: str) -> Share:
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id=f"on-{kind}",
            share=Share(size_gib=1, share_network=network, share_type=f"shareTypes/on-{kind}"),
        ),
        timeout=90,
    )
    share = await alpha.wait(op, Share, timeout=120)
    assert share is not None and share.state == Share.ACTIVE, share
    return share
