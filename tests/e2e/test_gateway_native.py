"""Gateways reach Gluster and CephFS shares natively (FSAL_GLUSTER, FSAL_CEPH) from their
namespace, over the clusters' storage addresses: a share on a share network is readable
and writable over real NFS from a guest on that network only, and it keeps serving while
the backend's own Ganesha is down, since the gateway never goes through it. One mesh per
backend kind, on the session's development clusters."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sharemesh.client import Client
from sharemesh.ganesha import share_pseudo
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.ports import free_port
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
from support import gluster_brick_address, guest_namespaces, nfs_url, pid_alive

pytestmark = pytest.mark.e2e

BACKENDS = {
    "glusterfs": """
[backends.options]
server = "{server}"
volume = "{volume}"
""",
    "cephfs": """
[backends.options]
conf = "{conf}"
keyring = "{keyring}"
subvolume_group = "gateways"
""",
}
CONFIG = """
reconcile_interval_seconds = 2

[[backends]]
name = "cluster"
driver = "{kind}"
{options}state_dir = "{home}/ganesha"
nfs_port = {nfs_port}
mount_port = {mount_port}
"""


@pytest.fixture(scope="module", params=["glusterfs", "cephfs"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class Backend:
    home: Path
    nfs_port: int
    config: str

    @property
    def ganesha_pidfile(self) -> Path:
        return self.home / "ganesha" / "ganesha" / "ganesha.pid"


@pytest.fixture(scope="module")
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str
) -> Backend:
    home = tmp_path_factory.mktemp(f"{kind}-backend")
    if kind == "glusterfs":
        volume = request.getfixturevalue("gluster_volume")
        options = BACKENDS[kind].format(server=gluster_brick_address(volume), volume=volume)
    else:
        conf, keyring = request.getfixturevalue("ceph_cluster")
        options = BACKENDS[kind].format(conf=conf, keyring=keyring)
    nfs_port = free_port()
    config = CONFIG.format(
        kind=kind, options=options, home=home, nfs_port=nfs_port, mount_port=free_port()
    )
    return Backend(home, nfs_port, config + TENANT_KEYS)


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, backend.config) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def guests(kind: str) -> Iterator[dict[str, str]]:
    with guest_namespaces("on", "off") as made:
        yield made


def _pid(pidfile: Path) -> int:
    try:
        return int(pidfile.read_text())
    except (FileNotFoundError, ValueError):  # being rewritten
        return 0


async def _reads_through(guest: str, share: Share, back: Path, data: bytes, within: float) -> float:
    """Seconds until the guest reads the share's data again."""
    started = time.monotonic()
    while await read_in(guest, share, back) != 0 or back.read_bytes() != data:
        assert time.monotonic() - started < within, "the share did not serve again"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def test_a_gateway_serves_a_cluster_share_natively_to_its_network_only(
    mesh: LocalMesh,
    backend: Backend,
    kind: str,
    alpha: Client,
    admin: Client,
    guests: dict[str, str],
    tmp_path: Path,
) -> None:
    net = await create_network(alpha, "native")
    other = await create_network(alpha, "elsewhere")  # the same CIDR
    await attach(admin, net, guests["on"], "10.31.0.20")
    await attach(admin, other, guests["off"], "10.31.0.20")
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha", share_id="native", share=Share(size_gib=1, share_network=net)
        ),
    )
    share = await alpha.wait(op, Share)
    assert share.state == Share.ACTIVE
    await grant(alpha, share.name, "10.31.0.20", RW)

    # The gateway's export reads the cluster itself, as the restricted user.
    (export,) = (mesh.state_dir / "gateway").glob("*/exports.d/*.conf")
    fsal = export.read_text()
    assert {"glusterfs": "Name = GLUSTER", "cephfs": "Name = CEPH"}[kind] in fsal
    assert "PROXY_V4" not in fsal and "admin" not in fsal
    if kind == "cephfs":
        assert 'User_Id = "sharemesh-gateways"' in fsal
        key = fsal.split('Secret_Access_Key = "')[1].split('"')[0]
        seen = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
        assert key not in str(seen) and key not in str(share)

    data = os.urandom(2 << 20)
    (tmp_path / "data.bin").write_bytes(data)
    back = tmp_path / "back.bin"
    written = await nfs_in(
        guests["on"], str(tmp_path / "data.bin"), nfs_location(share, "data.bin", 3)
    )
    assert written == 0
    assert await read_in(guests["on"], share, back) == 0 and back.read_bytes() == data
    # The same address on another network reaches nothing; nor does the host's flat
    # address, where the backend's own export admits nobody for the share.
    assert await read_in(guests["off"], share, back) != 0
    flat = nfs_url("127.0.0.1", share_pseudo(share.uid), "data.bin", 4, backend.nfs_port)
    assert await nfs_in(None, flat, str(back)) != 0

    # The gateway's Ganesha dies: it is back with the share and its rules.
    (pidfile,) = (mesh.state_dir / "gateway").glob("*/ganesha.pid")
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    healed = await _reads_through(guests["on"], share, back, data, within=30)
    print(f"\n{kind}: the gateway serves again {healed:.2f}s after its Ganesha's kill -9")
    assert await read_in(guests["off"], share, back) != 0

    # The backend's Ganesha stops answering: the gateway does not need it.
    backend_pid = int(backend.ganesha_pidfile.read_text())
    os.kill(backend_pid, signal.SIGSTOP)
    try:
        assert await read_in(guests["on"], share, back) == 0 and back.read_bytes() == data
        (tmp_path / "more.bin").write_bytes(data[: 1 << 20])
        more = nfs_location(share, "more.bin", 3)
        assert await nfs_in(guests["on"], str(tmp_path / "more.bin"), more) == 0
    finally:
        os.kill(backend_pid, signal.SIGKILL)  # a stopped process dies of it too
    # Its driver-host brings it back (kill -9); the gateway serves all along.
    started = time.monotonic()
    while not pid_alive(restarted := _pid(backend.ganesha_pidfile)) or restarted == backend_pid:
        assert await read_in(guests["on"], share, back) == 0 and back.read_bytes() == data
        assert time.monotonic() - started < 30, "the backend's Ganesha did not come back"
        await asyncio.sleep(0.2)
    assert await read_in(guests["on"], share, back) == 0 and back.read_bytes() == data

    await delete_share(alpha, share.name)
    for name in (net, other):
        await alpha.wait(
            await alpha.call(
                alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=name)
            )
        )
