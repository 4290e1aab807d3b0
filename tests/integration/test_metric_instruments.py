"""Metrics in one process against a real etcd and a real gRPC server, read over HTTP from
the endpoint as a scraper would: RPCs by method and code, the api cache's records by
state as they change, work-queue depth and retries, leader changes. Counters are
per process, so each test reads the change it made."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from share_records import share_in
from test_list_cache_etcd import running

from sharemesh.api._cache import WatchCache
from sharemesh.runtime import controllers, metrics
from sharemesh.runtime.config import TelemetryConfig
from sharemesh.runtime.coordination import Election, Session, Store, keys
from sharemesh.runtime.errors import Unavailable
from sharemesh.runtime.server import GrpcServer
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, snapshot_pb2

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TTL = 2


@pytest.fixture(scope="module")
async def endpoint() -> AsyncIterator[str]:
    url = await metrics.start("test", TelemetryConfig(metrics_listen="127.0.0.1:0"))
    try:
        yield url
    finally:
        await metrics.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
        return str(answer.read().decode())


async def scrape(url: str) -> Samples:
    text = await asyncio.to_thread(_get, url)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_rpcs_are_counted_by_method_and_code(endpoint: str) -> None:
    server = GrpcServer("127.0.0.1:0", [])
    port = await server.start()
    check = "grpc.health.v1.Health/Check"
    requests, seconds = (
        "sharemesh_rpc_server_requests_total",
        "sharemesh_rpc_server_duration_seconds",
    )
    before = await scrape(endpoint)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(3):
                await health.Check(health_pb2.HealthCheckRequest())
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
    after = await scrape(endpoint)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew(requests, method=check, code="OK") == 3
    assert grew(requests, method=check, code="NOT_FOUND") == 1
    assert grew(f"{seconds}_count", method=check, code="OK") == 3
    assert grew(f"{seconds}_bucket", method=check, code="OK", le="+Inf") == 3
    assert 0 < grew(f"{seconds}_sum", method=check, code="OK") < 3


def _share(name: str, state: int) -> records_pb2.ShareRecord:
    return share_in(name, state, placed_on="backends/b/pools/p")


def _snapshot(name: str, state: int) -> records_pb2.SnapshotRecord:
    record = records_pb2.SnapshotRecord(project="p")
    record.snapshot.name, record.snapshot.state = name, state  # type: ignore[assignment]
    return record


def _operation(name: str, done: bool = False, failed: bool = False) -> records_pb2.OperationRecord:
    record = records_pb2.OperationRecord(project="p")
    record.operation.name, record.operation.done = name, done
    if failed:
        record.operation.error.code = 9
    return record


def _nonzero(states: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {c: {s: n for s, n in counts.items() if n} for c, counts in states.items()}


async def test_the_api_cache_counts_records_by_state_as_they_change(
    endpoint: str,
    etcd_client,
    etcd_root: str,  # type: ignore[no-untyped-def]
) -> None:
    store = Store(etcd_client, etcd_root)
    Share, Snapshot = share_pb2.Share, snapshot_pb2.Snapshot
    a, b = "projects/p/shares/a", "projects/p/shares/b"
    snap = f"{a}/snapshots/s"
    op1, op2 = "projects/p/operations/o1", "projects/p/operations/o2"
    await store.create(store.key_of(a), _share(a, Share.ACTIVE))
    await store.create(store.key_of(op1), _operation(op1, done=True))
    cache = WatchCache(store)
    async with running(cache):
        # What was listed, then what the watch brings.
        await store.create(store.key_of(b), _share(b, Share.CREATING))
        await store.create(store.key_of(snap), _snapshot(snap, Snapshot.CREATING))
        await store.create(store.key_of(op2), _operation(op2))
        assert await cache.consistent()
        assert cache.record_states() == {
            "shares": {"ACTIVE": 1, "CREATING": 1},
            "snapshots": {"CREATING": 1},
            "operations": {"SUCCEEDED": 1, "RUNNING": 1},
        }
        # A record that changes state moves from one count to the other.
        await store.put(store.key_of(b), _share(b, Share.ERROR))
        await store.put(store.key_of(snap), _snapshot(snap, Snapshot.READY))
        await store.put(store.key_of(op2), _operation(op2, done=True, failed=True))
        await store.delete(store.key_of(a))
        assert await cache.consistent()
        samples = await scrape(endpoint)
        assert value(samples, "sharemesh_shares", state="ACTIVE") == 0
        assert value(samples, "sharemesh_shares", state="CREATING") == 0
        assert value(samples, "sharemesh_shares", state="ERROR") == 1
        assert value(samples, "sharemesh_snapshots", state="READY") == 1
        assert value(samples, "sharemesh_snapshots", state="CREATING") == 0
        assert value(samples, "sharemesh_operations", state="FAILED") == 1
        assert value(samples, "sharemesh_operations", state="SUCCEEDED") == 1
        assert value(samples, "sharemesh_operations", state="RUNNING") == 0
        # A cache that lists the same records now counts the same (the listing path).
        fresh = WatchCache(store)
        async with running(fresh):
            assert _nonzero(fresh.record_states()) == _nonzero(cache.record_states())
    del cache, fresh
    gc.collect()  # gone caches report nothing
    samples = await scrape(endpoint)
    assert ("sharemesh_shares", frozenset({("state", "ERROR")})) not in samples


async def test_work_queue_depth_and_retries(endpoint: str) -> None:
    failures = {"flaky": 2}
    finished = asyncio.Event()

    async def reconcile(key: str) -> None:
        if failures.get(key, 0):
            failures[key] -= 1
            raise Unavailable("not yet")
        if key == "flaky":  # one worker, in order: the others were done before
            finished.set()

    name = "test queue"
    controller = controllers.Controller(name, reconcile, workers=1)
    for key in ("a", "b", "c"):
        controller.queue.add(key)
    assert value(await scrape(endpoint), "sharemesh_workqueue_depth", queue=name) == 3
    before = value(await scrape(endpoint), "sharemesh_workqueue_retries_total", queue=name)
    controller.queue.add("flaky")
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(finished.wait(), 5)
    finally:
        await controller.stop(timeout=1)
        task.cancel()
    samples = await scrape(endpoint)
    assert value(samples, "sharemesh_workqueue_retries_total", queue=name) - before == 2
    assert value(samples, "sharemesh_workqueue_depth", queue=name) == 0


async def test_leader_changes_are_counted(endpoint: str, etcd_client, etcd_root: str) -> None:  # type: ignore[no-untyped-def]
    election = keys.election_prefix(etcd_root, "metrics-test")
    labels = {"election": "metrics-test"}
    async with Session(etcd_client, TTL) as first, Session(etcd_client, TTL) as second:
        one, two = Election(first, election), Election(second, election)
        await one.campaign(b"one")
        samples = await scrape(endpoint)
        assert value(samples, "sharemesh_leader", **labels) == 1
        assert value(samples, "sharemesh_leader_changes_total", **labels) == 1
        waiting = asyncio.create_task(two.campaign(b"two"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await one.resign()
        await asyncio.wait_for(waiting, 5)
        samples = await scrape(endpoint)
        # Both candidates live in this process: the gauge counts one leader still.
        assert value(samples, "sharemesh_leader", **labels) == 1
        assert value(samples, "sharemesh_leader_changes_total", **labels) == 2
        await two.resign()
    assert value(await scrape(endpoint), "sharemesh_leader", **labels) == 0


async def test_a_request_too_long_is_closed_unanswered(endpoint: str) -> None:
    host, port = endpoint.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"x" * 10_000 + b"\r\n\r\n")
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with the rest of the request unread
        answer = b""
    assert answer == b""
    writer.close()
    # The endpoint still answers the next scraper.
    assert "process_cpu_seconds_total" in {name for name, _ in await scrape(endpoint)}
