"""A mesh of three hosts, each a network namespace with its own etcd member and gateway
(`sharemesh up --hosts 3`): guests on hosts 2 and 3 mount one share of a backend on
host 1 through their own host's gateway; host 2 dies whole and comes back; then every
host restarts in turn. Real etcd cluster, Ganesha, loop XFS and NFS clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import mtls_ops
import pytest
from google.longrunning import operations_pb2
from hosts_ops import (
    Traffic,
    client,
    etcd_members_answering,
    running_hosts,
    shared_share,
    wait_for_leader,
)

from sharemesh.client import Client
from sharemesh.launcher import HostsMesh
from sharemesh.launcher import _hosts as hosts
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import Share, nfs_in, nfs_location
from support import guest_namespaces

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HostsMesh]:
    async with running_hosts(tmp_path_factory.mktemp("hosts")) as running:
        yield running


@pytest.fixture(scope="module")
async def alpha(mesh: HostsMesh) -> AsyncIterator[Client]:
    async with client(mesh, "alpha-key") as made:
        yield made


@pytest.fixture(scope="module")
async def alpha2(mesh: HostsMesh) -> AsyncIterator[Client]:
    """The same tenant through the api of host 2."""
    async with client(mesh, "alpha-key", host=1) as made:
        yield made


@pytest.fixture(scope="module")
async def admin(mesh: HostsMesh) -> AsyncIterator[Client]:
    async with client(mesh, mesh.admin_token) as made:
        yield made


@pytest.fixture(scope="module")
def guests() -> Iterator[dict[str, tuple[str, str]]]:
    with guest_namespaces("g2", "g3") as made:
        yield {"host-2": (made["g2"], "10.31.0.20"), "host-3": (made["g3"], "10.31.0.30")}


@pytest.fixture(scope="module")
async def share(
    mesh: HostsMesh, alpha: Client, admin: Client, guests: dict[str, tuple[str, str]]
) -> Share:
    return await shared_share(alpha, admin, guests, "spread")


async def test_guests_on_two_hosts_mount_one_share_through_their_own_gateways(
    mesh: HostsMesh, share: Share, guests: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    (g2, _), (g3, _) = guests["host-2"], guests["host-3"]
    data = tmp_path / "a.bin"
    data.write_bytes(os.urandom(256 << 10))
    assert await nfs_in(g2, str(data), nfs_location(share, "a.bin", 3)) == 0
    back = tmp_path / "back.bin"
    assert await nfs_in(g3, nfs_location(share, "a.bin", 4), str(back)) == 0
    assert back.read_bytes() == data.read_bytes()

    # Each guest's host proxies the backend of host 1 across the management network.
    for host in ("host-2", "host-3"):
        exports = list((mesh.fabric.host(host).state_dir / "gateway").glob("*/exports.d/*.conf"))
        assert exports, f"{host} runs no gateway"
        assert any("PROXY_V4" in e.read_text() for e in exports)
    # One location for every guest: the network's gateway endpoint, on each host's bridge.
    (location,) = share.export_locations
    assert location.path.startswith("10.31.0."), location.path


async def test_outsiders_are_refused_on_every_host(mesh: HostsMesh, tmp_path: Path) -> None:
    """Beyond loopback, on each host's own address: the scheduler, the driver-host, the
    gateway and every etcd member refuse a plaintext client, another CA's certificate
    and a tenant's key, and answer the mesh's own."""
    h1, _, h3 = mesh.hosts
    leads = mesh.fabric.host(await mesh.scheduler_leader() or "host-1")  # a standby refuses
    targets = {
        f"scheduler of {leads.name}": (f"{leads.address}:{hosts.SCHEDULER_PORT}", mtls_ops.place),
        "driver-host of host-1": (
            f"{h1.address}:{hosts.FIRST_DRIVER_HOST_PORT}",
            mtls_ops.sync_share,
        ),
        "gateway of host-3": (f"{h3.address}:{hosts.GATEWAY_PORT}", mtls_ops.sync_network),
        **{
            f"etcd of {h.name}": (f"{h.address}:{hosts.ETCD_CLIENT_PORT}", mtls_ops.etcd_range)
            for h in mesh.hosts
        },
    }
    outsiders = mtls_ops.outsiders(tmp_path, Path(mesh.ca_file))
    for target, (address, call) in targets.items():
        own = mesh.operator() if target.startswith("etcd") else mesh.identity("api", "host-1")
        answered = await mtls_ops.answer(address, call, mtls_ops.credentials(own))
        assert answered == grpc.StatusCode.OK, target
        for who, (credentials, metadata) in outsiders.items():
            code = await mtls_ops.answer(address, call, credentials, metadata)
            assert code == grpc.StatusCode.UNAVAILABLE, (target, who, code)


async def _create(alpha: Client, share_id: str) -> Share:
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(parent="projects/alpha", share_id=share_id, share=Share(size_gib=1)),
    )
    made = await alpha.wait(op, Share, timeout=90)
    assert made is not None
    return made


async def test_a_host_dies_whole_and_comes_back(
    mesh: HostsMesh,
    share: Share,
    alpha: Client,
    guests: dict[str, tuple[str, str]],
    tmp_path: Path,
) -> None:
    # Host 2's scheduler leads (host 1's is killed until it does), so its death moves the lead.
    if await mesh.scheduler_leader() != "host-2":
        scheduler = mesh.children["host-1"]["scheduler"]
        assert scheduler.pid is not None
        os.kill(scheduler.pid, 9)  # its launcher starts it again, as a standby
        await wait_for_leader(mesh, "host-2")

    (g2, _), (g3, _) = guests["host-2"], guests["host-3"]
    async with (
        Traffic(g3, share, tmp_path / "g3") as survivor,
        Traffic(g2, share, tmp_path / "g2") as victim,
    ):
        await asyncio.sleep(2)
        assert survivor.ok and victim.ok, "traffic did not start"
        killed = time.monotonic()
        await mesh.kill_host("host-2")

        led = await wait_for_leader(mesh, "host-1")
        assert await etcd_members_answering(mesh) == ["host-1", "host-3"]
        # Operations acknowledged while host 2 is dead are all carried out.
        made = [await _create(alpha, f"while-dead-{i}") for i in range(3)]
        assert all(m.state == Share.ACTIVE for m in made)
        await asyncio.sleep(3)
        during = time.monotonic()
        assert survivor.succeeded_between(killed, during) >= 3
        assert survivor.ok[-1] > during - 3, "host 3's guest stopped being served"

        await mesh.start_host("host-2")
        back = time.monotonic()
        assert await etcd_members_answering(mesh) == ["host-1", "host-2", "host-3"]
        deadline = back + 60
        while not victim.succeeded_between(back, time.monotonic()):
            assert time.monotonic() < deadline, "host 2's guest was not served again"
            await asyncio.sleep(0.5)
        returned = time.monotonic()

    print(
        f"\nhost death -> host-1's scheduler leading: {led - killed:.2f}s; longest stall "
        f"of host 3's guest: {survivor.longest_stall(killed, during):.2f}s; host 2 back "
        f"serving its guest {returned - back:.2f}s after its start"
    )
    for m in made:
        found = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=m.name))
        assert found.state == Share.ACTIVE


async def test_a_rolling_restart_loses_nothing_and_keeps_serving(
    mesh: HostsMesh,
    share: Share,
    alpha: Client,
    alpha2: Client,
    guests: dict[str, tuple[str, str]],
    tmp_path: Path,
) -> None:
    apis = {"host-1": alpha, "host-2": alpha2}
    restarting: list[str] = []
    acknowledged: list[str] = []
    refused: list[str] = []

    def api() -> Client:
        return next(c for h, c in apis.items() if h not in restarting)

    async def done(name: str) -> operations_pb2.Operation:
        """The operation once done, asked of whichever api is up."""
        while True:
            try:
                op = await api().call(
                    api().operations.GetOperation, operations_pb2.GetOperationRequest(name=name)
                )
                if op.done:
                    return op
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            await asyncio.sleep(0.2)

    async def operations() -> None:
        """Creates a share and deletes it, again and again, through an api whose host is
        up; a request refused as UNAVAILABLE was not acknowledged, and is retried."""
        n = 0
        while True:
            n += 1
            share_id = f"rolling-{n}"
            for request in (
                ss.CreateShareRequest(
                    parent="projects/alpha", share_id=share_id, share=Share(size_gib=1)
                ),
                ss.DeleteShareRequest(name=f"projects/alpha/shares/{share_id}"),
            ):
                while True:
                    client = api()
                    method = (
                        client.shares.CreateShare
                        if isinstance(request, ss.CreateShareRequest)
                        else client.shares.DeleteShare
                    )
                    try:
                        op = await client.call(method, request)
                        break
                    except grpc.aio.AioRpcError as error:
                        refused.append(f"{share_id}: {error.code().name}")
                        await asyncio.sleep(0.2)
                acknowledged.append(op.name)
                await done(op.name)

    (g2, _), (g3, _) = guests["host-2"], guests["host-3"]
    stalls: dict[str, float] = {}
    async with (
        Traffic(g2, share, tmp_path / "g2") as on2,
        Traffic(g3, share, tmp_path / "g3") as on3,
    ):
        writer = asyncio.create_task(operations())
        try:
            for host in ("host-1", "host-2", "host-3"):
                restarting[:] = [host]
                began = time.monotonic()
                await mesh.restart_host(host)
                restarting.clear()
                await asyncio.sleep(2)
                ended = time.monotonic()
                for guest in (on2, on3):
                    assert guest.succeeded_between(began, ended), (
                        f"{guest.netns} not served during {host}'s restart: {guest.errors}"
                    )
                    stalls[f"{guest.netns[-2:]} during {host}"] = guest.longest_stall(began, ended)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    assert len(acknowledged) >= 10
    for name in acknowledged:  # each acknowledged create and delete was carried out
        op = await asyncio.wait_for(done(name), 120)
        assert not op.HasField("error"), (name, op.error)
    left = await alpha.call(alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha"))
    assert not [s.name for s in left.shares if "/rolling-" in s.name][:-1]
    print(
        f"\nrolling restart: {len(acknowledged)} creates and deletes acknowledged and done; "
        f"refused (and retried): {refused}"
    )
    print("longest stalls: " + ", ".join(f"{k} {v:.2f}s" for k, v in stalls.items()))
