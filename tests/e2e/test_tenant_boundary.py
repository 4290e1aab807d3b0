"""The tenant boundary of the public API: every call authenticates first, methods not
offered yet say so, and a tenant sees only its own world: no admin-only fields, no
sign of other projects' resources, no host paths or etcd keys in what it can read."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import message
from google.rpc import error_details_pb2, status_pb2

from sharemesh.client import Client, OperationFailed
from sharemesh.launcher import LocalMesh
from sharemesh.v1 import pool_service_pb2, pool_service_pb2_grpc
from sharemesh.v1 import share_network_service_pb2 as sns
from sharemesh.v1 import share_service_pb2 as ss

from mesh_ops import (
    TENANT_KEYS,
    Share,
    create_network,
    create_share,
    delete_share,
    live_shares,
    running_mesh,
)

pytestmark = pytest.mark.e2e

# "cramped" is a 1 MiB tmpfs in a zone of its own, so a share asked for there fails in
# the driver (mkfs.xfs runs out of room) with the kind of message that names host paths.
# Project gamma has a quota of 3 GiB.
CONFIG = (
    """
reconcile_interval_seconds = 2
[scheduler]
max_attempts = 1
[quotas]
projects = {{ gamma = 3 }}

[[backends]]
name = "local"
[backends.options]
capacity_gib = 12

[[backends]]
name = "cramped"
[backends.options]
capacity_gib = 2
availability_zone = "cramped"
pool_dir = "{cramped}"
"""
    + TENANT_KEYS
    + """
[[api.tokens]]
token = "gamma-key"
project = "gamma"
"""
)

SNAPSHOT_CALLS = [
    ("ListSnapshots", ss.ListSnapshotsRequest(parent="projects/alpha/shares/s")),
    ("GetSnapshot", ss.GetSnapshotRequest(name="projects/alpha/shares/s/snapshots/n")),
    ("CreateSnapshot", ss.CreateSnapshotRequest(parent="projects/alpha/shares/s")),
    ("DeleteSnapshot", ss.DeleteSnapshotRequest(name="projects/alpha/shares/s/snapshots/n")),
    ("RevertShare", ss.RevertShareRequest(name="projects/alpha/shares/s")),
]


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory, cramped: Path) -> AsyncIterator[LocalMesh]:
    async with running_mesh(tmp_path_factory, CONFIG.format(cramped=cramped)) as mesh:
        yield mesh


@pytest.fixture(scope="module")
async def gamma(mesh: LocalMesh) -> AsyncIterator[Client]:
    async with Client(mesh.api_address, "gamma-key") as client:
        yield client


async def _refused(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return error.value


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no rich status in {error}")


def _detail(status: status_pb2.Status, kind: type[message.Message]) -> message.Message | None:
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            detail = kind()
            packed.Unpack(detail)
            return detail
    return None


def _leaks(text: str) -> list[str]:
    """Host paths and etcd keys in text a tenant can read (the pseudo paths tenants
    mount, `/shares/<uid>`, are theirs)."""
    return [
        word
        for word in text.replace(",", " ").replace("'", " ").split()
        if "/sharemesh/" in word
        or word.startswith(("/tmp", "/var", "/run", "/etc", "/dev", "/usr", "/proc"))
    ]


def _api_log_errors(mesh: LocalMesh) -> list[dict[str, str]]:
    lines = (mesh.state_dir / "logs" / "api.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in entries if e.get("level") in ("ERROR", "CRITICAL") or "exc" in e]


async def test_every_call_authenticates_first(mesh: LocalMesh, alpha: Client) -> None:
    async with (
        Client(mesh.api_address, "") as anonymous,
        Client(mesh.api_address, "wrong-key") as wrong,
    ):
        for method, request in SNAPSHOT_CALLS:
            for stranger in (anonymous, wrong):
                await _refused(
                    stranger.call(getattr(stranger.shares, method), request),
                    grpc.StatusCode.UNAUTHENTICATED,
                )
            # Past the key, a tenant's bad request is answered as such (no share `s`).
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await alpha.call(getattr(alpha.shares, method), request)
            assert answered.value.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
            ), (method, answered.value.details())
        # Before validation and before lookups: a malformed request still asks for a key.
        pools = pool_service_pb2_grpc.PoolServiceStub(anonymous._channel)
        for call in (
            anonymous.call(anonymous.shares.GetShare, ss.GetShareRequest(name="no such name")),
            anonymous.call(
                anonymous.operations.GetOperation, operations_pb2.GetOperationRequest(name="x")
            ),
            anonymous.call(
                anonymous.operations.ListOperations,
                operations_pb2.ListOperationsRequest(name="projects/alpha", filter="bogus"),
            ),
            pools.ListPools(pool_service_pb2.ListPoolsRequest(parent="nowhere")),
        ):
            await _refused(call, grpc.StatusCode.UNAUTHENTICATED)
    assert _api_log_errors(mesh) == []


async def test_pool_is_shown_to_admins_only(alpha: Client, admin: Client) -> None:
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(parent="projects/alpha", share_id="placed", share=Share(size_gib=1)),
    )
    made = await alpha.wait(op, Share)
    assert made is not None and made.state == Share.ACTIVE and made.pool == ""
    got = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=made.name))
    listed = await alpha.call(
        alpha.shares.ListShares, ss.ListSharesRequest(parent="projects/alpha")
    )
    operations = await alpha.call(
        alpha.operations.ListOperations, operations_pb2.ListOperationsRequest(name="projects/alpha")
    )
    assert got.pool == "" and [s.pool for s in listed.shares] == [""]
    for seen in operations.operations:
        if seen.response.Is(Share.DESCRIPTOR):
            share = Share()
            seen.response.Unpack(share)
            assert share.pool == ""
    by_admin = await admin.call(admin.shares.GetShare, ss.GetShareRequest(name=made.name))
    assert by_admin.pool == "backends/local/pools/default"
    done = await admin.call(
        admin.operations.GetOperation, operations_pb2.GetOperationRequest(name=op.name)
    )
    admin_view = Share()
    done.response.Unpack(admin_view)
    assert admin_view.pool == "backends/local/pools/default"
    await delete_share(alpha, made.name)


async def test_create_operation_response_has_the_shares_etag(alpha: Client) -> None:
    made = await create_share(alpha, "alpha", "tagged")
    got = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=made.name))
    assert made.etag and made.etag == got.etag
    await delete_share(alpha, made.name)


async def test_another_projects_network_is_not_found_whether_or_not_it_exists(
    mesh: LocalMesh, alpha: Client, beta: Client
) -> None:
    theirs = await create_network(alpha, "theirs")
    answers = []
    for network in (theirs, "projects/alpha/shareNetworks/nothing-here"):
        error = await _refused(
            beta.call(
                beta.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/beta",
                    share_id="borrower",
                    share=Share(size_gib=1, share_network=network),
                ),
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        info = _detail(_status(error), error_details_pb2.ErrorInfo)
        answers.append((error.details().replace(network, "N"), info.reason if info else ""))
    assert answers[0] == answers[1]  # nothing tells the two apart
    assert not [r for r in await live_shares(mesh) if r.spec.share.name.endswith("/borrower")]
    await alpha.wait(
        await alpha.call(
            alpha.networks.DeleteShareNetwork, sns.DeleteShareNetworkRequest(name=theirs)
        )
    )


async def test_tenants_read_no_host_paths_or_etcd_keys(alpha: Client) -> None:
    # A driver failure: mkfs.xfs runs out of room on the cramped pool.
    op = await alpha.call(
        alpha.shares.CreateShare,
        ss.CreateShareRequest(
            parent="projects/alpha",
            share_id="doomed",
            share=Share(size_gib=1, availability_zone="cramped"),
        ),
    )
    with pytest.raises(OperationFailed) as failed:
        await alpha.wait(op)
    name = "projects/alpha/shares/doomed"
    share = await alpha.call(alpha.shares.GetShare, ss.GetShareRequest(name=name))
    assert share.state == Share.ERROR and share.state_message
    seen = await alpha.call(
        alpha.operations.GetOperation, operations_pb2.GetOperationRequest(name=op.name)
    )
    tenant_texts = [
        failed.value.operation.error.message,
        seen.error.message,
        share.state_message,
        *(str(_detail(seen.error, error_details_pb2.ErrorInfo)).splitlines()),
    ]
    assert [leak for text in tenant_texts for leak in _leaks(text)] == [], tenant_texts

    # A create that loses to an existing share: the store's conflict names an etcd key.
    made = await create_share(alpha, "alpha", "taken")
    error = await _refused(
        alpha.call(
            alpha.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/alpha", share_id="taken", share=Share(size_gib=2)
            ),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    info = _detail(_status(error), error_details_pb2.ErrorInfo)
    assert info is not None and "key" not in info.metadata
    assert _leaks(error.details()) == [] and made.name in error.details()
    await delete_share(alpha, made.name)
    await delete_share(alpha, name)


def _quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    found = _detail(_status(error), error_details_pb2.QuotaFailure)
    assert isinstance(found, error_details_pb2.QuotaFailure), _status(error)
    return found


async def _gamma_shares(mesh: LocalMesh) -> list[str]:
    return sorted(
        r.spec.share.name
        for r in await live_shares(mesh)
        if r.spec.share.name.startswith("projects/gamma/")
    )


async def test_a_create_over_a_spent_quota_says_which_quota(mesh: LocalMesh, gamma: Client) -> None:
    held = await create_share(gamma, "gamma", "held", size_gib=2)
    try:
        error = await _refused(
            gamma.call(
                gamma.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/gamma", share_id="more", share=Share(size_gib=2)
                ),
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert await _gamma_shares(mesh) == [held.name]
    finally:
        await delete_share(gamma, held.name)
    (violation,) = _quota_failure(error).violations
    assert violation.subject == "projects/gamma" and "quota" in violation.description


async def test_shares_waiting_for_placement_count_against_the_quota(
    mesh: LocalMesh, gamma: Client
) -> None:
    # The scheduler is frozen, so the first share waits unplaced (and uncounted by the
    # usage the scheduler keeps) while the second asks for the rest of the quota.
    scheduler = mesh.children["scheduler"].pid
    assert scheduler
    os.kill(scheduler, signal.SIGSTOP)
    try:
        waiting = await gamma.call(
            gamma.shares.CreateShare,
            ss.CreateShareRequest(
                parent="projects/gamma", share_id="waiting", share=Share(size_gib=2)
            ),
        )
        error = await _refused(
            gamma.call(
                gamma.shares.CreateShare,
                ss.CreateShareRequest(
                    parent="projects/gamma", share_id="behind", share=Share(size_gib=2)
                ),
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert _quota_failure(error).violations
        assert await _gamma_shares(mesh) == ["projects/gamma/shares/waiting"]
    finally:
        os.kill(scheduler, signal.SIGCONT)
    await gamma.wait(waiting, timeout=60)
    await delete_share(gamma, "projects/gamma/shares/waiting")
