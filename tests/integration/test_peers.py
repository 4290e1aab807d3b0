"""Finding peers against a real etcd and real gRPC servers: an endpoint looked up once
serves the next nudges, and a peer that moved is found again on the first call that
fails; a scheduler's placements read the backends' registrations from a watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from sharemesh.runtime.coordination import Election, Session, Store, keys
from sharemesh.runtime.errors import Unavailable
from sharemesh.runtime.peers import Peers
from sharemesh.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from sharemesh.state.v1 import records_pb2

pytestmark = pytest.mark.integration


class _Scheduler(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self) -> None:
        self.placed: list[str] = []

    async def PlaceShare(  # noqa: N802
        self, request: scheduler_service_pb2.PlaceShareRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_service_pb2.PlaceShareResponse:
        self.placed.append(request.name)
        return scheduler_service_pb2.PlaceShareResponse()


@contextlib.asynccontextmanager
async def _scheduler() -> AsyncIterator[tuple[str, _Scheduler, grpc.aio.Server]]:
    server = grpc.aio.server()
    servicer = _Scheduler()
    scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer, server
    finally:
        await server.stop(None)


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_nudge_finds_the_scheduler_that_took_over(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = keys.election_prefix(etcd_root, "scheduler")
    peers = Peers(store, identity=None)
    async with _scheduler() as (first, old, old_server), _scheduler() as (second, new, _):
        async with Session(etcd_client, ttl=5) as old_session:
            election = Election(old_session, prefix)
            await election.campaign(first.encode())
            await peers.place_share("projects/p/shares/a")
            await peers.place_share("projects/p/shares/b")  # at the endpoint it remembers
            assert old.placed == ["projects/p/shares/a", "projects/p/shares/b"]
            await old_server.stop(None)  # the old leader dies ...
            await election.resign()
        async with Session(etcd_client, ttl=5) as new_session:
            await Election(new_session, prefix).campaign(second.encode())  # ... one takes over
            # The remembered endpoint fails; the nudge reads the new one and arrives.
            await peers.place_share("projects/p/shares/c")
            assert new.placed == ["projects/p/shares/c"]
    await peers.close()


async def test_a_peer_that_is_there_but_not_answering_is_unavailable(
    etcd_client, etcd_root
) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = keys.election_prefix(etcd_root, "scheduler")
    peers = Peers(store, identity=None)
    async with _scheduler() as (endpoint, servicer, server):
        async with Session(etcd_client, ttl=5) as session:
            await Election(session, prefix).campaign(endpoint.encode())
            await peers.place_share("projects/p/shares/a")
            await server.stop(None)
            with pytest.raises(Unavailable):
                await peers.place_share("projects/p/shares/b")
    with pytest.raises(Unavailable, match="no scheduler leads"):
        await peers.place_share("projects/p/shares/c")
    await peers.close()


async def test_watched_registrations_follow_backends_coming_and_going(
    etcd_client, etcd_root
) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    peers = Peers(store, identity=None)
    one = keys.backend_key(etcd_root, "one")
    await store.put(one, records_pb2.BackendRecord(name="backends/one", endpoint="a:1"))
    watching = asyncio.create_task(peers.watch_backends())
    try:
        await _eventually(lambda: peers._watched() is not None, "the first list")  # noqa: SLF001
        assert [b.name for b in await peers.backends()] == ["backends/one"]
        two = keys.backend_key(etcd_root, "two")
        await store.put(two, records_pb2.BackendRecord(name="backends/two", endpoint="b:2"))
        await store.delete(one)
        expected = ["backends/two"]
        for _ in range(500):
            if [b.name for b in await peers.backends()] == expected:
                break
            await asyncio.sleep(0.02)
        assert [b.name for b in await peers.backends()] == expected
        assert await peers.backend("backends/one") is None
        found = await peers.backend("backends/two")
        assert found is not None and found.endpoint == "b:2"
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    await peers.close()
