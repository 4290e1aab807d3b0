"""Many backends behind one active/standby scheduler: shares land where their type and
zone demand, the pool view shows it, and placement survives the leader's death."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.runtime.coordination import connect, keys, leader
from sharemesh.v1 import (
    pool_service_pb2,
    pool_service_pb2_grpc,
    share_type_pb2,
    share_type_service_pb2_grpc,
)
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_service_pb2 as sts

from mesh_ops import (
    TENANT_KEYS,
    Share,
    create_share,
    delete_share,
    live_shares,
    pool_of,
    running_mesh,
)
from support import pid_alive

pytestmark = pytest.mark.e2e
TTL = 3
GIB = 1 << 30

CONFIG = (
    """
reconcile_interval_seconds = 2

[[backends]]
name = "big"
[backends.options]
capacity_gib = 20
availability_zone = "az1"
capabilities = { tier = "gold" }

[[backends]]
name = "small"
[backends.options]
capacity_gib = 6
max_over_subscription_ratio = 1.5   # its images are sparse: it may promise 9 GiB
availability_zone = "az1"
capabilities = { tier = "silver" }

[[backends]]
name = "remote"
[backends.options]
capacity_gib = 10
availability_zone = "az2"
"""
    + TENANT_KEYS
)

TYPES = {
    "gold": {"tier": "gold"},
    "silverish": {"tier": "<or> silver <or> bronze"},
    "far": {"availability_zones": "az2"},
    "platinum": {"tier": "platinum"},
}


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG, schedulers=2) as mesh:
        yield mesh


async def _create(client: Client, share_id: str, size_gib: int = 1, **share: object) -> Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha", share_id=share_id, share=Share(size_gib=size_gib, **share)
        ),
    )
    return await client.wait(op, Share)


async def test_shares_land_where_type_and_zone_demand(
    mesh: LocalMesh, admin: Client, alpha: Client
) -> None:
    types = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
    for type_id, specs in TYPES.items():
        await types.CreateShareType(
            sts.CreateShareTypeRequest(
                share_type_id=type_id, share_type=share_type_pb2.ShareType(extra_specs=specs)
            ),
            metadata=admin.metadata,
        )
    tenant_types = share_type_service_pb2_grpc.ShareTypeServiceStub(alpha._channel)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenant_types.CreateShareType(
            sts.CreateShareTypeRequest(share_type_id="mine", share_type=share_type_pb2.ShareType()),
            metadata=alpha.metadata,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await tenant_types.ListShareTypes(sts.ListShareTypesRequest(), metadata=alpha.metadata)
    assert {t.name for t in listed.share_types} >= {f"shareTypes/{t}" for t in TYPES}

    placed = {
        "g": await pool_of(admin, await _create(alpha, "g", share_type="shareTypes/gold")),
        "s": await pool_of(admin, await _create(alpha, "s", share_type="shareTypes/silverish")),
        "f": await pool_of(admin, await _create(alpha, "f", share_type="shareTypes/far")),
        "z": await pool_of(admin, await _create(alpha, "z", availability_zone="az2")),
        "d": await pool_of(
            admin, await _create(alpha, "d")
        ),  # default type: the pool with most room
    }
    assert placed == {
        "g": "backends/big/pools/default",
        "s": "backends/small/pools/default",
        "f": "backends/remote/pools/default",
        "z": "backends/remote/pools/default",
        "d": "backends/big/pools/default",
    }
    with pytest.raises(OperationFailed) as failed:
        await _create(alpha, "p", share_type="shareTypes/platinum")
    assert failed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    share = await alpha.call(
        alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/p")
    )
    assert share.state == Share.ERROR and "capabilities filter" in share.state_message
    with pytest.raises(OperationFailed, match="availability_zone filter"):
        await _create(alpha, "nowhere", availability_zone="az9")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _create(alpha, "typo", share_type="shareTypes/nope")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    pools = pool_service_pb2_grpc.PoolServiceStub(admin._channel)
    view = await pools.ListPools(
        pool_service_pb2.ListPoolsRequest(parent="backends/-"), metadata=admin.metadata
    )
    by_name = {p.name: p for p in view.pools}
    assert by_name["backends/big/pools/default"].allocated_gib == 2
    assert by_name["backends/big/pools/default"].capabilities["tier"] == "gold"
    assert by_name["backends/remote/pools/default"].availability_zone == "az2"
    assert by_name["backends/small/pools/default"].total_gib == 6

    with pytest.raises(grpc.aio.AioRpcError) as in_use:
        await types.DeleteShareType(
            sts.DeleteShareTypeRequest(name="shareTypes/gold"), metadata=admin.metadata
        )
    assert in_use.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for record in await live_shares(mesh):
        await delete_share(alpha, record.spec.share.name)
    await types.DeleteShareType(
        sts.DeleteShareTypeRequest(name="shareTypes/gold"), metadata=admin.metadata
    )


async def test_a_thin_pool_promises_its_ratio_and_thick_shares_own_their_blocks(
    mesh: LocalMesh, admin: Client, alpha: Client
) -> None:
    types = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
    for type_id, specs in {
        "thin-silver": {"tier": "silver"},
        "thick-silver": {"tier": "silver", "thin_provisioning": "<is> False"},
    }.items():
        await types.CreateShareType(
            sts.CreateShareTypeRequest(
                share_type_id=type_id, share_type=share_type_pb2.ShareType(extra_specs=specs)
            ),
            metadata=admin.metadata,
        )
    thick = await _create(alpha, "thick", share_type="shareTypes/thick-silver", size_gib=2)
    thin = [
        await _create(alpha, f"thin-{i}", share_type="shareTypes/thin-silver") for i in range(7)
    ]
    assert {await pool_of(admin, s) for s in [thick, *thin]} == {"backends/small/pools/default"}
    # 9 GiB promised on a 6 GiB pool: the ratio of 1.5 allows that, and no more.
    with pytest.raises(OperationFailed, match="capacity filter") as full:
        await _create(alpha, "thin-7", share_type="shareTypes/thin-silver")
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    images = mesh.state_dir / "pools" / "small" / "images"
    uids = {r.spec.share.name.rsplit("/", 1)[-1]: r.spec.share.uid for r in await live_shares(mesh)}

    def on_disk(share_id: str) -> tuple[int, int]:
        stat = (images / f"{uids[share_id]}.img").stat()
        return stat.st_size, stat.st_blocks * 512

    size, held = on_disk("thick")
    assert size == 2 * GIB and held >= size  # every block reserved on the pool's filesystem
    size, held = on_disk("thin-0")
    assert size == GIB and held < GIB // 8  # only what XFS wrote

    # With 6 GiB promised, the pool has no usable GiB left for thick growth or shares,
    # while thin shares may still take the over-subscribed 3.
    for share in thin[4:]:
        await delete_share(alpha, share.name)
    with pytest.raises(grpc.aio.AioRpcError) as no_room:
        await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=thick.name, size_gib=3)
        )
    assert no_room.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(OperationFailed, match="capacity filter"):
        await _create(alpha, "thick-2", share_type="shareTypes/thick-silver")
    grown = await alpha.wait(
        await alpha.call(
            alpha.shares.ResizeShare, ss.ResizeShareRequest(name=thin[0].name, size_gib=3)
        ),
        Share,
    )
    assert grown.size_gib == 3 and on_disk("thin-0")[1] < GIB // 8
    for record in await live_shares(mesh):
        await delete_share(alpha, record.spec.share.name)
    for type_id in ("thin-silver", "thick-silver"):
        await types.DeleteShareType(
            sts.DeleteShareTypeRequest(name=f"shareTypes/{type_id}"), metadata=admin.metadata
        )


async def test_a_backend_that_stops_answering_leaves_placement_and_comes_back(
    mesh: LocalMesh, admin: Client, alpha: Client
) -> None:
    pools = pool_service_pb2_grpc.PoolServiceStub(admin._channel)

    async def listed() -> set[str]:
        view = await pools.ListPools(
            pool_service_pb2.ListPoolsRequest(parent="backends/-"), metadata=admin.metadata
        )
        return {p.name for p in view.pools}

    remote = "backends/remote/pools/default"
    assert remote in await listed()
    pid = mesh.children["driver-host-remote"].pid
    assert pid
    # A frozen process keeps its sockets but renews nothing: its lease runs out.
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        while remote in await listed():
            assert time.monotonic() - frozen <= TTL + 2, "the pool outlived its lease"
            await asyncio.sleep(0.1)
        print(f"\nremote pool left placement {time.monotonic() - frozen:.2f}s after SIGSTOP")
        # Its pool may come back, so a create only it can take waits instead of failing.
        waiting = await alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha",
                share_id="while-away",
                share=Share(size_gib=1, availability_zone="az2"),
            ),
        )
        await asyncio.sleep(TTL)
        pending = await alpha.call(
            alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/while-away")
        )
        assert pending.state == Share.CREATING
    finally:
        os.kill(pid, signal.SIGCONT)
    # Thawed, it finds its lease gone, exits, and its supervisor starts it afresh.
    deadline = time.monotonic() + 60
    while remote not in await listed():
        assert time.monotonic() < deadline, "the backend never registered again"
        await asyncio.sleep(0.2)
    waited = await alpha.wait(waiting, Share)
    assert waited.state == Share.ACTIVE and await pool_of(admin, waited) == remote
    back = await _create(alpha, "back", availability_zone="az2")
    assert back.state == Share.ACTIVE and await pool_of(admin, back) == remote
    for record in await live_shares(mesh):
        await delete_share(alpha, record.spec.share.name)


async def test_a_killed_leader_is_replaced_and_every_create_completes(
    mesh: LocalMesh, alpha: Client
) -> None:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        prefix = keys.election_prefix("/sharemesh/", "scheduler")
        leading = (await leader(client, prefix) or b"").decode()
        name = next(n for n, a in mesh.addresses().items() if a == leading)
        creates = [
            asyncio.create_task(create_share(alpha, "alpha", f"stream-{i}")) for i in range(4)
        ]
        await asyncio.sleep(0.1)
        pid = mesh.children[name].pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while pid_alive(pid):
            await asyncio.sleep(0.01)
        creates += [
            asyncio.create_task(create_share(alpha, "alpha", f"stream-{i}")) for i in range(4, 12)
        ]
        while (await leader(client, prefix) or b"").decode() in ("", leading):
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        print(f"\nnew leader {took:.2f}s after kill -9 of {name} (lease TTL {TTL}s)")
        assert took <= TTL + 2
        shares = await asyncio.gather(*creates)
        assert all(s.state == Share.ACTIVE for s in shares)
        for share in shares:
            await delete_share(alpha, share.name)


async def test_two_hundred_racing_creates_never_overcommit(mesh: LocalMesh, alpha: Client) -> None:
    async def create(i: int) -> Share | OperationFailed:
        try:
            return await create_share(alpha, "alpha", f"race-{i}")
        except OperationFailed as failed:
            return failed

    results = await asyncio.gather(*(create(i) for i in range(200)))
    made = [r for r in results if isinstance(r, Share)]
    refused = [r for r in results if isinstance(r, OperationFailed)]
    assert all(f.code == grpc.StatusCode.RESOURCE_EXHAUSTED for f in refused)
    capacity = {
        "backends/big/pools/default": 20,
        "backends/small/pools/default": 9,  # 6 GiB over-subscribed 1.5 times
        "backends/remote/pools/default": 10,
    }
    # The default type takes any zone, so every pool fills to exactly what it may promise.
    assert len(made) == sum(capacity.values()) and len(refused) == 200 - len(made)
    pools = pool_service_pb2_grpc.PoolServiceStub(alpha._channel)
    async with Client(mesh.api_address, mesh.admin_token) as admin:
        view = await pools.ListPools(
            pool_service_pb2.ListPoolsRequest(parent="backends/-"), metadata=admin.metadata
        )
    records = await live_shares(mesh)
    for pool in view.pools:
        holding = sum(r.allocated_gib for r in records if r.placement.pool == pool.name)
        assert pool.allocated_gib == holding == capacity[pool.name], pool.name
    await asyncio.gather(*(delete_share(alpha, r.spec.share.name) for r in records))
    assert not await live_shares(mesh)
