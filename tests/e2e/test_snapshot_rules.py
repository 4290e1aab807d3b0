"""The rules of snapshots, through the public API of a whole mesh: what a tenant may do
with them and what the mesh refuses, and the quota under a crowd of concurrent creates.
The backends are in-memory fake drivers (one offering snapshots, one not), so these
tests are about the mesh's rules; `test_snapshots.py` shows the data through real NFS
on the local backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_pb2, share_type_pb2, share_type_service_pb2_grpc, snapshot_pb2
from sharemesh.v1 import share_service_pb2 as ss
from sharemesh.v1 import share_type_service_pb2 as sts

from mesh_ops import TENANT_KEYS, error_reason, project_usage, refused, running_mesh

pytestmark = pytest.mark.e2e

Share = share_pb2.Share
Snapshot = snapshot_pb2.Snapshot
SNAPSHOT_LIMIT = 5
CODE = grpc.StatusCode

CONFIG = (
    """
reconcile_interval_seconds = 2

[quotas.project_snapshots]
alpha = %d

[[backends]]
name = "snappy"
driver = "fake"
[backends.options]
capacity_gib = 100
snapshot_support = true

[[backends]]
name = "plain"
driver = "fake"
[backends.options]
capacity_gib = 100
"""
    % SNAPSHOT_LIMIT
    + TENANT_KEYS
)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG) as running:
        async with Client(running.api_address, running.admin_token) as admin:
            types = share_type_service_pb2_grpc.ShareTypeServiceStub(admin._channel)
            for type_id, offered in (("snaps", "<is> True"), ("plain", "<is> False")):
                await types.CreateShareType(
                    sts.CreateShareTypeRequest(
                        share_type_id=type_id,
                        share_type=share_type_pb2.ShareType(
                            extra_specs={"snapshot_support": offered}
                        ),
                    ),
                    metadata=admin.metadata,
                )
        yield running


# `alpha`, `beta` and `admin` (conftest.py) are clients of this module's `mesh`.


async def new_share(
    client: Client, share_id: str, *, kind: str = "snaps", size_gib: int = 2, source: str = ""
) -> Share:
    op = await client.call(
        client.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id=share_id,
            share=Share(size_gib=size_gib, share_type=f"shareTypes/{kind}", source_snapshot=source),
        ),
    )
    return await client.wait(op, Share)


async def snap(client: Client, share: str, snapshot_id: str, **labels: str) -> Snapshot:
    op = await client.call(
        client.shares.CreateSnapshot,
        ss.CreateSnapshotRequest(
            parent=share, snapshot_id=snapshot_id, snapshot=Snapshot(labels=labels)
        ),
    )
    return await client.wait(op, Snapshot)


async def snapshots_of(client: Client, share: str) -> list[Snapshot]:
    listed = await client.call(client.shares.ListSnapshots, ss.ListSnapshotsRequest(parent=share))
    return list(listed.snapshots)


async def delete(client: Client, name: str, *, force: bool = False) -> None:
    if "/snapshots/" in name:
        op = await client.call(client.shares.DeleteSnapshot, ss.DeleteSnapshotRequest(name=name))
    else:
        op = await client.call(
            client.shares.DeleteShare, ss.DeleteShareRequest(name=name, force=force)
        )
    await client.wait(op)


async def test_a_snapshot_is_taken_listed_and_deleted(alpha: Client, mesh: LocalMesh) -> None:
    share = await new_share(alpha, "life", size_gib=3)
    before = await project_usage(mesh, "alpha")
    taken = await snap(alpha, share.name, "first", why="before-upgrade")
    assert taken.name == f"{share.name}/snapshots/first"
    assert taken.state == Snapshot.READY
    assert taken.size_gib == 3 and taken.create_time.seconds > 0 and taken.uid
    assert dict(taken.labels) == {"why": "before-upgrade"}
    assert taken.export_locations, "the backend offers mountable snapshots"
    assert taken.etag
    usage = await project_usage(mesh, "alpha")
    assert (usage.snapshots, usage.snapshot_gib) == (before.snapshots + 1, before.snapshot_gib + 3)

    got = await alpha.call(alpha.shares.GetSnapshot, ss.GetSnapshotRequest(name=taken.name))
    assert got == taken
    second = await snap(alpha, share.name, "second")
    page = await alpha.call(
        alpha.shares.ListSnapshots, ss.ListSnapshotsRequest(parent=share.name, page_size=1)
    )
    assert [s.name for s in page.snapshots] == [taken.name] and page.next_page_token
    rest = await alpha.call(
        alpha.shares.ListSnapshots,
        ss.ListSnapshotsRequest(parent=share.name, page_token=page.next_page_token),
    )
    assert [s.name for s in rest.snapshots] == [second.name] and not rest.next_page_token
    ready = await alpha.call(
        alpha.shares.ListSnapshots, ss.ListSnapshotsRequest(parent=share.name, filter="state=ERROR")
    )
    assert not ready.snapshots

    await delete(alpha, taken.name)
    await delete(alpha, second.name)
    await refused(
        alpha.call(alpha.shares.GetSnapshot, ss.GetSnapshotRequest(name=taken.name)),
        CODE.NOT_FOUND,
    )
    assert await project_usage(mesh, "alpha") == before
    await delete(alpha, share.name)


async def test_a_share_with_snapshots_is_deleted_only_with_force(
    alpha: Client, mesh: LocalMesh
) -> None:
    share = await new_share(alpha, "forced")
    before = await project_usage(mesh, "alpha")
    kept = [await snap(alpha, share.name, f"s{i}") for i in range(2)]

    error = await refused(
        alpha.call(alpha.shares.DeleteShare, ss.DeleteShareRequest(name=share.name)),
        CODE.FAILED_PRECONDITION,
    )
    assert error_reason(error) == "SHARE_HAS_SNAPSHOTS"
    assert kept[0].name in error.details() and "force" in error.details()
    # Nothing changed.
    now = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert now.state == Share.ACTIVE
    assert [s.state for s in await snapshots_of(alpha, share.name)] == [Snapshot.READY] * 2

    await delete(alpha, share.name, force=True)
    for name in (share.name, *(s.name for s in kept)):
        get = alpha.shares.GetSnapshot if "/snapshots/" in name else alpha.shares.GetShare
        request = (
            ss.GetSnapshotRequest(name=name)
            if "/snapshots/" in name
            else ss.GetShareRequest(name=name)
        )
        await refused(alpha.call(get, request), CODE.NOT_FOUND)
    usage = await project_usage(mesh, "alpha")
    assert (usage.snapshots, usage.snapshot_gib) == (before.snapshots, before.snapshot_gib)


async def test_a_share_reverts_only_to_its_latest_snapshot(alpha: Client) -> None:
    share = await new_share(alpha, "reverts")
    older = await snap(alpha, share.name, "older")
    newer = await snap(alpha, share.name, "newer")

    error = await refused(
        alpha.call(
            alpha.shares.RevertShare, ss.RevertShareRequest(name=share.name, snapshot=older.name)
        ),
        CODE.FAILED_PRECONDITION,
    )
    assert error_reason(error) == "SNAPSHOT_NOT_LATEST"
    assert newer.name in error.details()
    now = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=share.name))
    assert now.state == Share.ACTIVE

    reverted = await alpha.wait(
        await alpha.call(
            alpha.shares.RevertShare, ss.RevertShareRequest(name=share.name, snapshot=newer.name)
        ),
        Share,
    )
    assert reverted.state == Share.ACTIVE and reverted.size_gib == share.size_gib
    # Once the newer one is gone, the older one is the latest.
    await delete(alpha, newer.name)
    await alpha.wait(
        await alpha.call(
            alpha.shares.RevertShare, ss.RevertShareRequest(name=share.name, snapshot=older.name)
        ),
        Share,
    )
    other = await new_share(alpha, "reverts-other")
    error = await refused(
        alpha.call(
            alpha.shares.RevertShare, ss.RevertShareRequest(name=other.name, snapshot=older.name)
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "snapshot" in error.details()
    await delete(alpha, share.name, force=True)
    await delete(alpha, other.name)


async def test_what_the_backend_cannot_do_is_refused_naming_the_capability(
    alpha: Client, mesh: LocalMesh
) -> None:
    share = await new_share(alpha, "no-snaps", kind="plain")
    before = await project_usage(mesh, "alpha")
    error = await refused(
        alpha.call(
            alpha.shares.CreateSnapshot,
            ss.CreateSnapshotRequest(parent=share.name, snapshot_id="s", snapshot=Snapshot()),
        ),
        CODE.FAILED_PRECONDITION,
    )
    assert "snapshot_support" in error.details()
    assert error_reason(error) == "SNAPSHOT_NOT_SUPPORTED"
    assert not await snapshots_of(alpha, share.name)
    assert await project_usage(mesh, "alpha") == before
    await delete(alpha, share.name)


async def test_a_share_from_a_snapshot_lands_on_the_source_pool(
    alpha: Client, beta: Client, admin: Client
) -> None:
    source = await new_share(alpha, "origin", size_gib=2)
    taken = await snap(alpha, source.name, "base")

    clone = await new_share(alpha, "clone", size_gib=0, source=taken.name)
    assert clone.state == Share.ACTIVE
    assert clone.size_gib == 2, "a clone is the snapshot's size unless asked bigger"
    assert clone.source_snapshot == taken.name
    pools = [
        (await admin.call(admin.shares.GetShare, ss.GetShareRequest(name=n))).pool
        for n in (source.name, clone.name)
    ]
    assert pools[0] == pools[1] == "backends/snappy/pools/default"
    bigger = await new_share(alpha, "clone-big", size_gib=5, source=taken.name)
    assert bigger.size_gib == 5

    error = await refused(
        alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha",
                share_id="too-small",
                share=Share(size_gib=1, source_snapshot=taken.name),
            ),
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert "share.size_gib" in error.details()
    # Another project's snapshot is not there at all, for beta.
    await refused(
        beta.call(
            beta.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/beta",
                share_id="theft",
                share=Share(size_gib=2, source_snapshot=taken.name),
            ),
        ),
        CODE.NOT_FOUND,
    )
    await refused(
        beta.call(beta.shares.GetSnapshot, ss.GetSnapshotRequest(name=taken.name)),
        CODE.NOT_FOUND,
    )
    # The clones are shares of their own: the snapshot and its share can go first.
    await delete(alpha, source.name, force=True)
    now = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=clone.name))
    assert now.state == Share.ACTIVE
    for name in (clone.name, bigger.name):
        await delete(alpha, name)


async def test_bad_snapshot_requests_are_refused_naming_the_field(alpha: Client) -> None:
    share = await new_share(alpha, "bad-input")
    for snapshot_id in ("", "Upper", "x" * 70, "a/b"):
        error = await refused(
            alpha.call(
                alpha.shares.CreateSnapshot,
                ss.CreateSnapshotRequest(
                    parent=share.name, snapshot_id=snapshot_id, snapshot=Snapshot()
                ),
            ),
            CODE.INVALID_ARGUMENT,
        )
        assert "snapshot_id" in error.details()
    await refused(
        alpha.call(
            alpha.shares.GetSnapshot,
            ss.GetSnapshotRequest(name=f"{share.name}/snapshots/missing"),
        ),
        CODE.NOT_FOUND,
    )
    await snap(alpha, share.name, "dup")
    await refused(
        alpha.call(
            alpha.shares.CreateSnapshot,
            ss.CreateSnapshotRequest(parent=share.name, snapshot_id="dup", snapshot=Snapshot()),
        ),
        CODE.ALREADY_EXISTS,
    )
    await delete(alpha, share.name, force=True)


async def test_the_snapshot_quota_holds_under_concurrent_creates(
    alpha: Client, mesh: LocalMesh
) -> None:
    share = await new_share(alpha, "crowd", size_gib=1)
    before = await project_usage(mesh, "alpha")
    assert before.snapshots == 0, "earlier tests left snapshots behind"

    async def one(n: int) -> str:
        try:
            op = await alpha.call(
                alpha.shares.CreateSnapshot,
                ss.CreateSnapshotRequest(
                    parent=share.name, snapshot_id=f"c{n}", snapshot=Snapshot()
                ),
            )
            await alpha.wait(op, Snapshot)
            return "taken"
        except grpc.aio.AioRpcError as error:
            return error.code().name
        except OperationFailed as failed:
            return f"failed {failed.code.name}"

    outcomes = await asyncio.gather(*(one(n) for n in range(20)))
    taken = outcomes.count("taken")
    assert taken == SNAPSHOT_LIMIT, outcomes
    assert set(outcomes) <= {"taken", "RESOURCE_EXHAUSTED", "ABORTED"}, outcomes
    listed = await snapshots_of(alpha, share.name)
    usage = await project_usage(mesh, "alpha")
    assert usage.snapshots == len(listed) == SNAPSHOT_LIMIT
    assert usage.snapshot_gib == sum(s.size_gib for s in listed)
    await delete(alpha, share.name, force=True)
    usage = await project_usage(mesh, "alpha")
    assert (usage.snapshots, usage.snapshot_gib) == (0, 0)
