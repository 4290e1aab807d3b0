"""What a share's lifecycle asks of etcd, counted by etcd itself (its metrics): the
round trips each create and delete costs through a whole mesh, one at a time and many at
once, and WaitOperation answered from the api's watch cache."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2

from sharemesh.client import Client
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import share_pb2
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import MESH_CONFIG, create_share, delete_share, refused, running_mesh

_HANDLED = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\d+)', re.M)

# One create and one delete of a flat share, before they were counted: 34 ranges and 13
# transactions one at a time; 50 and 13.5 at 32 at once (deletes racing for the
# counters). Then about 22 and 16 (a sync's reads are one read-only transaction). Now 15
# and 8 one at a time, about 14.4 and 9.7 at 24 at once: one sync per change (not one
# per nudge and one per watch event), its reads in the lock's transaction, nudges to
# endpoints remembered, the scheduler's registrations watched. Now 5 and 11 one at a
# time, 3.5 and 11.2 at 24 at once: reads asked together are one read-only transaction,
# and the scheduler places the watch's copy of a share instead of reading it again.
# Now 1 and 10 one at a time, 0.4 and 10.1 at 24 at once: the api's first look at the
# quota and WaitOperation wait for the cache to show the process's own writes instead
# of reading etcd's revision, a create of the default type in a project without a limit
# reads nothing, a delete's first try reads the share from the cache, and a sync reads
# the operations it finishes with the lock.
RANGES_PER_SHARE = 2
REQUESTS_PER_SHARE = 13


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, MESH_CONFIG.format(capacity_gib=40)) as running:
        yield running


@pytest.fixture(scope="module")
async def alpha(mesh: LocalMesh) -> AsyncIterator[Client]:
    async with Client(mesh.api_address, "alpha-key") as client:
        yield client


def etcd_requests(mesh: LocalMesh) -> Counter[str]:
    """The requests etcd has answered so far, by gRPC method (its own count)."""
    assert mesh.etcd is not None
    # Served in plaintext beside a TLS client port, where the launcher has `metrics_url`.
    base = getattr(mesh.etcd, "metrics_url", mesh.etcd.endpoint)
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for method, count in _HANDLED.findall(text):
        counts[method] += int(count)
    return counts


async def per_share(mesh: LocalMesh, alpha: Client, prefix: str, count: int) -> dict[str, float]:
    """etcd's ranges and transactions per create+delete of `count` shares, all at once."""
    before = etcd_requests(mesh)
    shares = await asyncio.gather(
        *(create_share(alpha, "alpha", f"{prefix}-{i}") for i in range(count))
    )
    await asyncio.gather(*(delete_share(alpha, share.name) for share in shares))
    spent = etcd_requests(mesh) - before
    return {method: spent[method] / count for method in ("Range", "Txn")}


async def test_a_create_and_a_delete_cost_few_etcd_round_trips(
    mesh: LocalMesh, alpha: Client
) -> None:
    await delete_share(alpha, (await create_share(alpha, "alpha", "warm-up")).name)
    spent = Counter[str]()
    for i in range(4):
        spent.update(await per_share(mesh, alpha, f"one-{i}", 1))
    assert spent["Range"] / 4 <= RANGES_PER_SHARE, spent
    assert (spent["Range"] + spent["Txn"]) / 4 <= REQUESTS_PER_SHARE, spent


async def test_deletes_at_once_do_not_race_for_the_counters(mesh: LocalMesh, alpha: Client) -> None:
    spent = await per_share(mesh, alpha, "many", 24)
    # Racing deletes each committed ~5 times and re-read the counters each time.
    assert spent["Range"] <= RANGES_PER_SHARE, spent
    assert spent["Range"] + spent["Txn"] <= REQUESTS_PER_SHARE, spent


async def test_wait_operation_waits_for_the_change_and_knows_what_is_missing(
    mesh: LocalMesh, alpha: Client
) -> None:
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha", share_id="waited", share=share_pb2.Share(size_gib=1)
        ),
    )
    assert not op.done
    # Asked while the share is being made, the wait returns once it is done.
    done = await alpha.call(
        alpha.operations.WaitOperation,
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(seconds=30)
        ),
    )
    assert done.done and not done.HasField("error"), done
    share = share_pb2.Share()
    done.response.Unpack(share)
    assert share.state == share_pb2.Share.ACTIVE
    # Done is final: asked again, the same answer at once.
    again = await alpha.call(
        alpha.operations.WaitOperation, operations_pb2.WaitOperationRequest(name=op.name)
    )
    assert again == done
    await delete_share(alpha, share.name)
    missing = "projects/alpha/operations/op-00000000000000000000000000000000"
    await refused(
        alpha.call(
            alpha.operations.WaitOperation, operations_pb2.WaitOperationRequest(name=missing)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
