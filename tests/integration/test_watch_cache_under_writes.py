"""The api's watch cache against a real etcd while other clients write all the time, as
in a busy mesh: its reads stay served from it (no listing again, no read of etcd but its
revision), and each one sees every write acknowledged before it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request

from sharemesh.api._cache import WatchCache
from sharemesh.runtime.coordination import Store
from sharemesh.state.v1 import records_pb2

R = records_pb2.ShareRecord
_RANGES = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="Range"[^}]*\} (\d+)', re.M)


def ranges_answered(etcd_server) -> int:  # type: ignore[no-untyped-def]
    """etcd's own count of the ranges it has answered."""
    # Served in plaintext beside a TLS client port, where the launcher has `metrics_url`.
    base = getattr(etcd_server, "metrics_url", etcd_server.endpoint)
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return sum(int(n) for n in _RANGES.findall(response.read().decode()))


async def test_writes_applied_while_its_revision_is_read_do_not_make_it_list_again(  # type: ignore[no-untyped-def]
    etcd_client, etcd_root
):
    store = Store(etcd_client, etcd_root)
    # Time to catch up is generous: what is tested is that it never gives up on a
    # cache that is merely behind, not how fast a loaded machine applies the writes.
    cache = WatchCache(store, catch_up_seconds=10.0)
    runner = asyncio.create_task(cache.run())
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        # Busy, as a mesh under load is, but not flat out: eight writers in a tight loop
        # outrun any single watcher, which is not what this test is about.
        key = store.key_of(f"projects/p/shares/w{i}")
        revision = await store.create(key, R(project="p"))
        while not stop.is_set():
            revision = await store.update(key, R(project="p"), revision)
            await asyncio.sleep(0.0005)

    try:
        for _ in range(500):
            if cache.ready:
                break
            await asyncio.sleep(0.01)
        assert cache.ready
        writers = [asyncio.create_task(writer(i)) for i in range(8)]

        async def reader(i: int) -> None:
            for j in range(25):
                mine = store.key_of(f"projects/p/shares/r{i}-{j}")
                revision = await store.create(mine, R(project="p"))
                # The cache applies others' changes while it asks etcd for its revision:
                # that is no sign of an etcd that lost its data.
                assert await cache.consistent(), f"read {i}-{j} fell back to etcd"
                entry = cache.snapshot.get(mine)
                assert entry is not None and entry.mod_revision == revision

        # As many at once as the api answers under load.
        await asyncio.gather(*(reader(i) for i in range(32)))
        stop.set()
        await asyncio.gather(*writers)
        assert cache.ready
    finally:
        stop.set()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_reader_waiting_for_one_key_wakes_for_that_key_alone(  # type: ignore[no-untyped-def]
    etcd_client, etcd_root
):
    store = Store(etcd_client, etcd_root)
    watched, other = store.key_of("projects/p/shares/watched"), store.key_of("projects/p/shares/o")
    revision = await store.create(watched, R(project="p"))
    # Time to catch up is generous: what is tested is that it never gives up on a
    # cache that is merely behind, not how fast a loaded machine applies the writes.
    cache = WatchCache(store, catch_up_seconds=10.0)
    runner = asyncio.create_task(cache.run())
    try:
        for _ in range(500):
            if cache.ready:
                break
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(cache.changed(watched))
        await store.create(other, R(project="p"))
        for _ in range(20):  # other keys change: it keeps waiting
            await store.put(other, R(project="q"))
        assert await cache.consistent()
        assert not waiting.done()
        written = await store.update(watched, R(project="p", allocated_gib=1), revision)
        await asyncio.wait_for(waiting, 5)
        entry = cache.snapshot.get(watched)
        assert entry is not None and entry.mod_revision == written
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_readers_at_once_share_their_reads_of_etcds_revision(  # type: ignore[no-untyped-def]
    etcd_server, etcd_client, etcd_root
):
    store = Store(etcd_client, etcd_root)
    # Time to catch up is generous: what is tested is that it never gives up on a
    # cache that is merely behind, not how fast a loaded machine applies the writes.
    cache = WatchCache(store, catch_up_seconds=10.0)
    runner = asyncio.create_task(cache.run())
    try:
        for _ in range(500):
            if cache.ready:
                break
            await asyncio.sleep(0.01)
        spent = 0
        for burst in range(5):
            key = store.key_of(f"projects/p/shares/b{burst}")
            revision = await store.create(key, R(project="p"))
            before = ranges_answered(etcd_server)
            # 32 requests at once, each after the write: each sees it.
            assert all(await asyncio.gather(*(cache.consistent() for _ in range(32))))
            spent += ranges_answered(etcd_server) - before
            entry = cache.snapshot.get(key)
            assert entry is not None and entry.mod_revision == revision
        assert spent <= 2 * 5, f"{spent} reads of etcd's revision for 5 bursts of 32"
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
