"""Tenant networks through gateways (mode 2): a share on network A is served by this
host's gateway into A only, to the addresses its rules allow; a client on network B
(same CIDR, same address) or on the flat network cannot reach it; the gateway heals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from sharemesh import network
from sharemesh.client import Client, OperationFailed
from sharemesh.ganesha import share_pseudo
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import Store, connect, keys
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_pb2, share_type_service_pb2_grpc
from sharemesh.v1 import share_type_service_pb2 as sts

from mesh_ops import (
    NETWORK_BACKENDS,
    NETWORK_TYPES,
    RW,
    TENANT_KEYS,
    Share,
    attach,
    create_network,
    delete_share,
    grant,
    nfs_in,
    nfs_location,
    pool_of,
    read_in,
    running_mesh,
)
from support import (
    guest_namespaces,
    nfs_url,
    pid_alive,
    processes_mentioning,
)

pytestmark = pytest.mark.e2e
CONFIG = "reconcile_interval_seconds = 2\n" + NETWORK_BACKENDS + TENANT_KEYS


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as mesh:
        yield mesh


@pytest.fixture(scope="module")
async def types(mesh: LocalMesh, admin: Client) -> None:
    stub = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
    for type_id, spec in NETWORK_TYPES.items():
        await stub.CreateShareType(
            sts.CreateShareTypeRequest(
                share_type_id=type_id,
                share_type=share_type_pb2.ShareType(
                    extra_specs={"driver_handles_share_servers": spec}
                ),
            ),
            metadata=admin.metadata,
        )


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, str]]:
    with guest_namespaces("a-ok", "a-other", "b") as made:
        yield made


def _host_parts_gone(uids: list[str], server_dirs: Path) -> None:
    """No bridge of these networks, and no namespace of their servers, is left."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for uid in uids:
        assert network.bridge_name(uid) not in links
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for netns in (d.name for d in server_dirs.glob("sm-*")):
        assert netns not in namespaces, netns


async def _uids(client: Client, *names: str) -> list[str]:
    return [
        (await client.call(client.networks.GetShareNetwork, sns.GetShareNetworkRequest(name=n))).uid
        for n in names
    ]


async def _unreachable_from_flat_network(
    mesh: LocalMesh, share: Share, dst: Path, backend: int
) -> None:
    """On the flat network: the backend's own export admits nobody for the share, and the
    host has no route into the tenant network (looked up, no packet sent: the host's
    default route leads off this machine)."""
    options = json.loads((mesh.state_dir / "mesh.json").read_text())["backends"][backend]
    flat = nfs_url(
        "127.0.0.1", share_pseudo(share.uid), "data.bin", 4, options["options"]["nfs_port"]
    )
    dst.unlink(missing_ok=True)
    assert await nfs_in(None, flat, str(dst)) != 0
    address = share.export_locations[0].path.split(":")[0]
    route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
    assert not any(dev in route.stdout for dev in (" smb", " smv")), route.stdout


async def test_gateway_share_reaches_only_its_tenants(
    mesh: LocalMesh,
    alpha: Client,
    admin: Client,
    clients: dict[str, str],
    types: None,
    tmp_path: Path,
) -> None:
    net_a = await create_network(alpha, "net-a")
    net_b = await create_network(alpha, "net-b")  # the same CIDR: tenants choose their ranges
    await attach(admin, net_a, clients["a-ok"], "10.31.0.10")
    await attach(admin, net_a, clients["a-other"], "10.31.0.11")
    await attach(admin, net_b, clients["b"], "10.31.0.10")
    # A namespace that does not exist: that attachment fails alone, the network works on.
    with pytest.raises(OperationFailed) as missing:
        await attach(admin, net_a, f"{clients['b']}-missing", "10.31.0.13")
    assert missing.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await attach(admin, net_a, clients["b"], "10.31.0.10")
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # Plugging namespaces in is the hypervisor's job, and the mesh's own are not for it.
    with pytest.raises(grpc.aio.AioRpcError) as tenant:
        await attach(alpha, net_a, clients["b"], "10.31.0.12")
    assert tenant.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as own:
        await attach(admin, net_a, "sm-gw-0123456789ab", "10.31.0.12")
    assert own.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as storage:
        await create_network(alpha, "clash", cidr="169.254.64.0/24")
    assert storage.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id="tenant",
            share=Share(size_gib=1, share_network=net_a, share_type="shareTypes/via-gateway"),
        ),
    )
    share = await alpha.wait(op, Share)
    assert share.state == Share.ACTIVE and (await pool_of(admin, share)).startswith(
        "backends/local/"
    )
    gateway_ip = share.export_locations[0].path.split(":")[0]
    assert gateway_ip.startswith("10.31.0.") and gateway_ip not in ("10.31.0.10", "10.31.0.11")
    await grant(alpha, share.name, "10.31.0.10", RW)

    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20))
    back = tmp_path / "back.bin"
    assert await nfs_in(clients["a-ok"], str(data), nfs_location(share, "data.bin", 3)) == 0
    assert await read_in(clients["a-ok"], share, back) == 0
    assert back.read_bytes() == data.read_bytes()
    # On A but not allowed; on B with the very same address.
    assert await read_in(clients["a-other"], share, back) != 0
    assert await read_in(clients["b"], share, back) != 0
    await _unreachable_from_flat_network(mesh, share, back, backend=0)

    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await alpha.call(
            alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=net_a)
        )
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The gateway's Ganesha dies during a read loop: it is back, with its rules.
    state = mesh.state_dir / "gateway"
    (pidfile,) = state.glob("*/ganesha.pid")
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while (await read_in(clients["a-ok"], share, back)) != 0:
        assert time.monotonic() - killed < 20, "the gateway did not come back"
        await asyncio.sleep(0.1)
    print(f"\ngateway Ganesha serving again {time.monotonic() - killed:.2f}s after kill -9")
    assert back.read_bytes() == data.read_bytes()
    assert await read_in(clients["a-other"], share, back) != 0, "a rule was lost"
    exports = list(pidfile.parent.glob("exports.d/*.conf"))
    assert len(exports) == 1, f"exports not in etcd appeared: {exports}"

    # The gateway service itself dies: on restart its tenant exports serve again.
    gateway = mesh.children["gateway"]
    assert gateway.pid
    os.kill(gateway.pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    killed = time.monotonic()
    while (await read_in(clients["a-ok"], share, back)) != 0:
        assert time.monotonic() - killed < 30
        await asyncio.sleep(0.2)
    assert back.read_bytes() == data.read_bytes()

    uids = await _uids(alpha, net_a, net_b)
    await delete_share(alpha, share.name)
    for name in (net_a, net_b):
        await alpha.wait(
            await alpha.call(
                alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=name)
            )
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await alpha.call(alpha.networks.GetShareNetwork, sns.GetShareNetworkRequest(name=name))
    assert not processes_mentioning(str(state))
    assert not pid_alive(pid)
    _host_parts_gone(uids, state)


async def _share_servers(mesh: LocalMesh, backend: str) -> list[records_pb2.NetworkServerRecord]:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        prefix = keys.network_servers_prefix(store.root, "shareServers", backend)
        return [found.value for found in await store.scan(prefix, records_pb2.NetworkServerRecord)]


async def test_share_server_share_reaches_only_its_tenants(
    mesh: LocalMesh,
    alpha: Client,
    admin: Client,
    clients: dict[str, str],
    types: None,
    tmp_path: Path,
) -> None:
    """Mode 1: a backend that handles share servers serves the share from its own Ganesha
    on the tenant network, set up with the network's first share and gone with its last."""
    net_c = await create_network(alpha, "net-c")
    net_d = await create_network(alpha, "net-d")
    await attach(admin, net_c, clients["a-ok"], "10.31.0.10")
    await attach(admin, net_c, clients["a-other"], "10.31.0.11")
    await attach(admin, net_d, clients["b"], "10.31.0.10")
    # Two shares on one network at once: the share server exports both.
    ops = [
        await alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha",
                share_id=share_id,
                share=Share(size_gib=1, share_network=net_c, share_type="shareTypes/via-server"),
            ),
        )
        for share_id in ("served", "served-too")
    ]
    share, other = [await alpha.wait(op, Share) for op in ops]
    assert other.state == Share.ACTIVE
    assert share.state == Share.ACTIVE
    assert (await pool_of(admin, share)).startswith("backends/servers/")
    await grant(alpha, share.name, "10.31.0.10", RW)
    servers = mesh.state_dir / "pools" / "servers" / "servers"
    (pidfile,) = servers.glob("*/ganesha.pid")
    assert len(list(pidfile.parent.glob("exports.d/*.conf"))) == 2
    assert not list((mesh.state_dir / "gateway").glob("*/ganesha.pid")), "a gateway served it"

    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20))
    back = tmp_path / "back.bin"
    assert await nfs_in(clients["a-ok"], str(data), nfs_location(share, "data.bin", 3)) == 0
    assert await read_in(clients["a-ok"], share, back) == 0
    assert back.read_bytes() == data.read_bytes()
    assert await read_in(clients["a-other"], share, back) != 0
    assert await read_in(clients["b"], share, back) != 0
    await _unreachable_from_flat_network(mesh, share, back, backend=1)

    # The share server dies: its driver-host brings it back with its exports.
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while (await read_in(clients["a-ok"], share, back)) != 0:
        assert time.monotonic() - killed < 20, "the share server did not come back"
        await asyncio.sleep(0.1)
    print(f"\nshare server serving again {time.monotonic() - killed:.2f}s after kill -9")

    # Its driver-host dies, then the server too, unseen: the restarted driver-host
    # rebuilds the server from etcd and supervises it again.
    driver_host = mesh.children["driver-host-servers"].pid
    assert driver_host
    os.kill(driver_host, signal.SIGKILL)
    while pid_alive(driver_host):
        await asyncio.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    killed = time.monotonic()
    while (await read_in(clients["a-ok"], share, back)) != 0:
        assert time.monotonic() - killed < 30, "the share server was not rebuilt"
        await asyncio.sleep(0.2)
    print(f"share server rebuilt {time.monotonic() - killed:.2f}s after its driver-host died")
    assert back.read_bytes() == data.read_bytes()
    assert await read_in(clients["a-other"], share, back) != 0, "a rule was lost"

    uids = await _uids(alpha, net_c, net_d)
    await delete_share(alpha, other.name)
    # The share that left is withdrawn from the server, and its export id rests.
    assert len(list(pidfile.parent.glob("exports.d/*.conf"))) == 1
    deadline = time.monotonic() + 10  # the id is released just after the record goes
    while len((server := (await _share_servers(mesh, "servers"))[0]).export_ids) > 1:
        assert time.monotonic() < deadline, "the deleted share kept its export id"
        await asyncio.sleep(0.1)
    assert len(server.export_ids) == 1 and len(server.released_export_ids) == 1
    assert server.released_export_ids[0].export_id not in server.export_ids.values()
    assert await read_in(clients["a-ok"], share, back) == 0
    await delete_share(alpha, share.name)
    assert not processes_mentioning(str(servers)), "the share server outlived its last share"
    _host_parts_gone([], servers)
    for name in (net_c, net_d):
        await alpha.wait(
            await alpha.call(
                alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=name)
            )
        )
    _host_parts_gone(uids, servers)
