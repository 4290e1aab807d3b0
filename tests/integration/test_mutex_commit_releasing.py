"""A share's lock let go in the same etcd transaction as the last write made under it
(one write where two were), against a real etcd: the write and the release are one, the
next waiter goes on at once, nothing more is written under that hold, and a commit that
fails leaves the lock held."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import wrappers_pb2

from sharemesh.runtime.coordination import Mutex, Session, Store, keys
from sharemesh.runtime.errors import Aborted, FailedPrecondition

TTL = 2
S = wrappers_pb2.StringValue


async def queue(store: Store, prefix: str) -> list[str]:
    response = await store.client.get_prefix((prefix + "/").encode())
    return [kv.key.decode() for kv in response]


async def test_the_last_write_takes_the_lock_with_it(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = keys.lock_prefix(etcd_root, "projects/p/shares/s")
    record = store.key_of("projects/p/shares/s")
    async with Session(etcd_client, TTL) as mine, Session(etcd_client, TTL) as theirs:
        held = Mutex(mine, prefix)
        await held.acquire()
        waiter = Mutex(theirs, prefix)
        waiting = asyncio.create_task(waiter.acquire())
        while len(await queue(store, prefix)) < 2:
            await asyncio.sleep(0.01)

        revision = await held.commit_releasing(store.txn().fence(held).create(record, S(value="v")))
        found = await store.get(record, S)
        assert found is not None and found.value.value == "v" and found.mod_revision == revision
        await asyncio.wait_for(waiting, 5)  # the waiter holds it now
        assert await queue(store, prefix) == [waiter.key]
        assert not held.held
        with pytest.raises(FailedPrecondition):
            held.fence()  # nothing more is written under that hold

        await held.release()  # lets go in-process; etcd has nothing left to delete
        assert (await store.get(record, S)).mod_revision == revision  # type: ignore[union-attr]
        assert await queue(store, prefix) == [waiter.key]
        await waiter.release()
        assert await queue(store, prefix) == []


async def test_a_commit_that_fails_keeps_the_lock(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = keys.lock_prefix(etcd_root, "projects/p/shares/s")
    record = store.key_of("projects/p/shares/s")
    written = await store.create(record, S(value="v1"))
    async with Session(etcd_client, TTL) as mine:
        async with Mutex(mine, prefix).lock() as held:
            stale = store.txn().fence(held).put(record, S(value="v2"), written - 1)
            with pytest.raises(Aborted):
                await held.commit_releasing(stale)
            assert held.held and await queue(store, prefix) == [held.key]
            await store.update(record, S(value="v2"), written, fences=[held])
        assert await queue(store, prefix) == []
