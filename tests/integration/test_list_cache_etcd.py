"""The api's watch cache against a real etcd: it lists, then follows creates, updates and
deletes through its watch; a read waits until it has applied what etcd acknowledged (its
own process's writes without asking etcd); it lists again after a compaction; pages from
it honour the page token contract."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.request
from collections.abc import AsyncIterator

import pytest
from share_records import share_in

from sharemesh.api import _paging
from sharemesh.api._cache import WatchCache
from sharemesh.launcher.etcd_server import EtcdServer
from sharemesh.runtime.coordination import Store
from sharemesh.runtime.errors import InvalidArgument
from sharemesh.state.v1 import records_pb2

R = records_pb2.ShareRecord
_RANGES = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="Range"[^}]*\} (\d+)', re.M)


def record(name: str, *, network: str = "", size: int = 1) -> R:
    return share_in(name, size_gib=size, share_network=network)


@contextlib.asynccontextmanager
async def running(cache: WatchCache) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(cache.run())
    try:
        for _ in range(500):
            if cache.ready:
                break
            await asyncio.sleep(0.01)
        assert cache.ready, "the cache never listed"
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def names_in(cache: WatchCache, prefix: str) -> list[str]:
    items, _ = cache.page(prefix, "", 1000, R)
    return [i.value.spec.share.name for i in items]


async def test_lists_then_follows_every_change_and_reads_its_writes(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = store.prefix_of("projects/p", "shares")
    net = "projects/p/shareNetworks/n"
    a, b = "projects/p/shares/a", "projects/p/shares/b"
    await store.create(store.key_of(a), record(a))
    cache = WatchCache(store)
    async with running(cache):
        assert names_in(cache, prefix) == [a]
        # Each write is seen by the very next consistent read, with no sleep between.
        await store.create(store.key_of(b), record(b, network=net, size=3))
        assert await cache.consistent()
        assert names_in(cache, prefix) == [a, b]
        assert cache.snapshot.shares_using("share_network", net) == [b]
        found = await store.get(store.key_of(a), R)
        assert found is not None
        changed = record(a, size=9)
        revision = await store.update(store.key_of(a), changed, found.mod_revision)
        assert await cache.consistent()
        items, _ = cache.page(prefix, "", 10, R)
        assert (items[0].value.spec.share.size_gib, items[0].mod_revision) == (9, revision)
        await store.delete(store.key_of(b))
        assert await cache.consistent()
        assert names_in(cache, prefix) == [a]
        assert cache.snapshot.shares_using("share_network", net) == []
        assert await cache.shares_using("share_network", net) == []
        assert await cache.unplaced_gib("p") == 9


def ranges_served(server: EtcdServer) -> int:
    """The Range requests etcd has answered so far (its own count)."""
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return sum(int(n) for n in _RANGES.findall(text))


async def test_it_shows_its_own_process_writes_without_asking_etcd(  # type: ignore[no-untyped-def]
    etcd_server, etcd_client, etcd_root
):
    store = Store(etcd_client, etcd_root)
    prefix = store.prefix_of("projects/p", "shares")
    a, b = "projects/p/shares/a", "projects/p/shares/b"
    cache = WatchCache(store)
    async with running(cache):
        revision = await store.create(store.key_of(a), record(a, size=2))
        assert store.written_revision == revision
        before = ranges_served(etcd_server)
        # Seen once the watch brings it: no read of etcd's revision.
        assert await cache.has_own_writes()
        assert names_in(cache, prefix) == [a]
        assert await cache.unplaced_gib("p") == 2
        assert ranges_served(etcd_server) == before
        # Another process's write is not its own: a consistent read catches it.
        other = Store(etcd_client, etcd_root)
        await other.create(other.key_of(b), record(b))
        assert store.written_revision == revision
        assert await cache.consistent()
        assert names_in(cache, prefix) == [a, b]
        assert ranges_served(etcd_server) == before + 1


async def test_it_reads_a_record_with_its_children_as_the_store_does(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    a = "projects/p/shares/a"
    snapshots = store.prefix_of(a, "snapshots")
    children = [(snapshots, records_pb2.SnapshotRecord)]
    cache = WatchCache(store)
    async with running(cache):
        await store.create(store.key_of(a), record(a))
        for s in ("s1", "s2"):
            snapshot = records_pb2.SnapshotRecord()
            snapshot.snapshot.name = f"{a}/snapshots/{s}"
            await store.create(store.key_of(snapshot.snapshot.name), snapshot)
        cached = await cache.get_with(store.key_of(a), R, children)
        assert cached is not None
        assert cached == await store.get_with(store.key_of(a), R, children)
        b = "projects/p/shares/b"
        b_children = [(store.prefix_of(b, "snapshots"), records_pb2.SnapshotRecord)]
        assert await cache.get_with(store.key_of(b), R, b_children) == (None, [[]])
        # What the cache does not follow, it cannot say.
        usage = f"{etcd_root}usage/p"
        assert await cache.get_with(usage, records_pb2.ProjectUsage, []) is None


async def test_lists_again_after_the_revision_it_would_resume_from_was_compacted(
    etcd_client, etcd_root
):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = store.prefix_of("projects/p", "shares")
    names = [f"projects/p/shares/s{i}" for i in range(3)]
    for name in names[:2]:
        await store.create(store.key_of(name), record(name))
    cache = WatchCache(store)
    async with running(cache):
        assert names_in(cache, prefix) == names[:2]
    # While it does not watch: one goes, one comes, and etcd compacts that history away.
    await store.delete(store.key_of(names[0]))
    current = await store.create(store.key_of(names[2]), record(names[2]))
    await etcd_client.compact(current)
    async with running(cache):
        assert await cache.consistent()
        assert names_in(cache, prefix) == names[1:]
        assert cache.revision >= current


async def test_a_token_from_a_compacted_revision_pages_on_from_the_cache(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = store.prefix_of("projects/p", "shares")
    for i in range(5):
        name = f"projects/p/shares/s{i}"
        await store.create(store.key_of(name), record(name))
    cache = WatchCache(store)
    async with running(cache):
        first, token = await _paging.page(store, prefix, R, "", 2, cache=cache)
        assert [i.value.spec.share.name for i in first] == [
            "projects/p/shares/s0",
            "projects/p/shares/s1",
        ]
        # s1 goes and s9 comes after the first page; etcd compacts the token's revision.
        await store.delete(store.key_of("projects/p/shares/s1"))
        current = await store.create(
            store.key_of("projects/p/shares/s9"), record("projects/p/shares/s9")
        )
        await etcd_client.compact(current)
        # The cache serves the current state after the last id (AIP-158 allows it).
        rest, end = await _paging.page(store, prefix, R, token, 10, cache=cache)
        assert [i.value.spec.share.name for i in rest] == [
            "projects/p/shares/s2",
            "projects/p/shares/s3",
            "projects/p/shares/s4",
            "projects/p/shares/s9",
        ]
        assert end == ""
        # Without the cache the same token reads etcd at its revision: expired.
        with pytest.raises(InvalidArgument, match="page_token"):
            await _paging.page(store, prefix, R, token, 10)
        # Tampered, or for another list: refused either way.
        with pytest.raises(InvalidArgument, match="page_token"):
            await _paging.page(store, prefix, R, token[:-4] + "AAAA", 10, cache=cache)
        other = store.prefix_of("projects/q", "shares")
        with pytest.raises(InvalidArgument, match="page_token"):
            await _paging.page(store, other, R, token, 10, cache=cache)


async def test_a_cache_that_is_not_listing_sends_reads_to_etcd(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    name = "projects/p/shares/a"
    await store.create(store.key_of(name), record(name, network="projects/p/shareNetworks/n"))
    cache = WatchCache(store)  # never run
    assert not await cache.consistent()
    assert await cache.shares_using("share_network", "projects/p/shareNetworks/n") == [name]
    assert await cache.unplaced_gib("p") == 1
    items, _ = await _paging.page(
        store, store.prefix_of("projects/p", "shares"), R, "", 5, cache=cache
    )
    assert [i.value.spec.share.name for i in items] == [name]
