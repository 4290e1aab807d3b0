"""Three backends in one mesh: `local` (XFS loop images), `cephfs` and `glusterfs` (the
session's dev cluster and volume). Share types decide where a share lands, by the
operator's own capability (`backend_kind`) or by what only some drivers offer; a type no
pool satisfies fails naming the filter. A share on each backend carries bytes over real
NFS, and a clone of a CephFS snapshot lands on the CephFS pool."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import (
    pool_service_pb2,
    pool_service_pb2_grpc,
    snapshot_pb2,
)
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    RW,
    Share,
    all_pools_registered,
    create_share_types,
    delete_share,
    grant,
    pool_of,
    read,
    running_mesh,
    three_backends,
    write,
)

pytestmark = pytest.mark.e2e
CLIENT = "127.0.0.1"

POOLS = {
    "local": "backends/local/pools/default",
    "ceph": "backends/ceph/pools/cephfs",
    "gluster": "backends/gluster/pools/default",
}

# Type -> (extra specs, the backend it must land on). The last three by what the drivers
# offer: mountable snapshots on local alone; clones on local and cephfs; shrinks on
# cephfs and glusterfs.
TYPES: dict[str, tuple[dict[str, str], str]] = {
    "on-local": ({"backend_kind": "local"}, "local"),
    "on-ceph": ({"backend_kind": "ceph"}, "ceph"),
    "on-gluster": ({"backend_kind": "gluster"}, "gluster"),
    "mountable-snapshots": ({"mount_snapshot_support": "<is> True"}, "local"),
    "clones-and-shrinks": (
        {"create_share_from_snapshot_support": "<is> True", "shrink_support": "<is> True"},
        "ceph",
    ),
    "shrinks-no-clones": (
        {"shrink_support": "<is> True", "create_share_from_snapshot_support": "<is> False"},
        "gluster",
    ),
}
# No backend both mounts snapshots and shrinks.
IMPOSSIBLE = {"mount_snapshot_support": "<is> True", "shrink_support": "<is> True"}


@pytest.fixture(scope="module")
async def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    ceph_cluster: tuple[Path, Path],
    gluster_volume: str,
) -> AsyncIterator[LocalMesh]:
    conf, keyring = ceph_cluster
    config = three_backends(conf, keyring, gluster_volume, local_gib=8, group="mixed")
    async with running_mesh(tmp_path_factory, config) as running:
        async with Client(running.api_address, running.admin_token) as admin:
            specs = {type_id: specs for type_id, (specs, _) in TYPES.items()}
            await create_share_types(admin, {**specs, "impossible": IMPOSSIBLE})
            await all_pools_registered(admin, set(POOLS.values()))
        yield running


async def create(client: Client, share_id: str, share_type: str = "", source: str = "") -> Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id=share_id,
            share=Share(
                size_gib=1,
                share_type=f"shareTypes/{share_type}" if share_type else "",
                source_snapshot=source,
            ),
        ),
    )
    return await client.wait(op, Share)


async def test_share_types_place_shares_on_the_backend_that_offers_what_they_ask(
    mesh: LocalMesh, alpha: Client, admin: Client
) -> None:
    placed = {}
    for type_id in TYPES:
        try:
            share = await create(alpha, type_id, type_id)
        except OperationFailed as failed:  # say which pools the scheduler had then
            pools = pool_service_pb2_grpc.PoolServiceStub(admin._channel)
            view = await pools.ListPools(
                pool_service_pb2.ListPoolsRequest(parent="backends/-"), metadata=admin.metadata
            )
            raise AssertionError(f"{type_id}: {failed}; pools now: {list(view.pools)}") from failed
        assert share.state == Share.ACTIVE
        placed[type_id] = await pool_of(admin, share)
    assert placed == {type_id: POOLS[backend] for type_id, (_, backend) in TYPES.items()}

    with pytest.raises(OperationFailed) as failed:
        await create(alpha, "nowhere", "impossible")
    assert failed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed.value.error.reason == "NO_VALID_POOL"
    assert "capabilities filter" in failed.value.error.message
    share = await alpha.call(
        alpha.shares.GetShare, ss.GetShareRequest(name="projects/alpha/shares/nowhere")
    )
    assert share.state == Share.ERROR and "capabilities filter" in share.state_message

    for type_id in TYPES:
        await delete_share(alpha, f"projects/alpha/shares/{type_id}")
    await delete_share(alpha, share.name)


async def test_a_share_on_each_backend_is_written_and_read_over_nfs(
    alpha: Client, admin: Client, tmp_path: Path
) -> None:
    back = tmp_path / "back.bin"
    shares = {}
    for backend in POOLS:
        data = tmp_path / f"{backend}.bin"
        data.write_bytes(backend.encode() * 16 + os.urandom(1 << 20))
        share = shares[backend] = await create(alpha, f"data-{backend}", f"on-{backend}")
        await grant(alpha, share.name, CLIENT, RW)
        code, out = await write(share, data, "data.bin")
        assert code == 0, f"{backend}: {out}"
        code, out = await read(share, back, "data.bin")
        assert code == 0 and back.read_bytes() == data.read_bytes(), f"{backend}: {out}"
    # Each backend serves its own share from its own Ganesha.
    ports = {s.export_locations[0].nfs_port for s in shares.values()}
    assert len(ports) == 3, ports

    # A clone of a CephFS snapshot is made by Ceph, so it lands on the CephFS pool.
    origin = shares["ceph"]
    op = await alpha.call(
        alpha.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(
            parent=origin.name, snapshot_id="s1", snapshot=snapshot_pb2.Snapshot()
        ),
    )
    taken = await alpha.wait(op, snapshot_pb2.Snapshot)
    clone = await create(alpha, "ceph-clone", source=taken.name)
    assert clone.state == Share.ACTIVE
    assert await pool_of(admin, clone) == POOLS["ceph"]
    await grant(alpha, clone.name, CLIENT, RW)
    assert (await read(clone, back, "data.bin"))[0] == 0
    assert back.read_bytes() == (tmp_path / "ceph.bin").read_bytes()

    await delete_share(alpha, clone.name)
    await alpha.wait(
        await alpha.call(alpha.shares.DeleteSnapshot, ss.DeleteSnapshotRequest(name=taken.name))
    )
    for share in shares.values():
        await delete_share(alpha, share.name)
