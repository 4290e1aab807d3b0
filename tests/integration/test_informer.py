"""The informer against a real etcd: it lists, then sees creates, updates and deletes
through its watch; it lists again when etcd compacted the revision it would resume
from, and it carries on after etcd restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from google.protobuf import wrappers_pb2

from sharemesh.launcher.etcd_server import EtcdServer
from sharemesh.runtime.controllers import Controller, Informer
from sharemesh.runtime.coordination import Store, Versioned, connect
from sharemesh.runtime.ports import free_port

S = wrappers_pb2.StringValue
Change = tuple[str, str, str]  # (kind, key, value)


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _running(informer: Informer[S]) -> AsyncIterator[list[Change]]:
    changes: list[Change] = []

    def record(old: Versioned[S] | None, new: Versioned[S] | None) -> None:
        if new is None:
            assert old is not None
            changes.append(("delete", old.key, old.value.value))
        else:
            changes.append(("add" if old is None else "update", new.key, new.value.value))

    informer.add_handler(record)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        yield changes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_lists_then_sees_an_add_an_update_and_a_delete(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    a, b = store.key_of("projects/p/shares/a"), store.key_of("projects/p/shares/b")
    await store.create(a, S(value="a1"))
    informer = Informer(store, etcd_root + "shares/", S)
    async with _running(informer) as changes:
        assert changes == [("add", a, "a1")]
        revision = await store.create(b, S(value="b1"))
        await store.update(b, S(value="b2"), revision)
        await store.delete(a)
        expected = [("add", a, "a1"), ("add", b, "b1"), ("update", b, "b2"), ("delete", a, "a1")]
        await _eventually(lambda: changes == expected, "the watched changes")
        assert [found.value.value for found in informer.items()] == ["b2"]
        assert informer.get(a) is None


async def test_keep_caches_only_what_is_ours_and_leaving_it_is_a_delete(
    etcd_client, etcd_root
) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    mine, other = store.key_of("projects/p/shares/m"), store.key_of("projects/p/shares/o")
    await store.create(mine, S(value="mine"))
    await store.create(other, S(value="theirs"))
    informer = Informer(store, etcd_root + "shares/", S, keep=lambda v: v.value.startswith("mine"))
    async with _running(informer) as changes:
        assert changes == [("add", mine, "mine")]
        await store.put(other, S(value="mine too"))
        await store.put(mine, S(value="moved away"))
        expected = [("add", mine, "mine"), ("add", other, "mine too"), ("delete", mine, "mine")]
        await _eventually(lambda: changes == expected, "ownership changes")
        assert [found.key for found in informer.items()] == [other]


async def test_index_groups_records_and_follows_moves_and_deletes(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    a, b = store.key_of("projects/p/shares/a"), store.key_of("projects/p/shares/b")
    await store.create(a, S(value="x:a"))
    informer = Informer(store, etcd_root + "shares/", S, index=lambda v: v.value.split(":")[0])
    async with _running(informer) as changes:
        assert [f.key for f in informer.indexed("x")] == [a]
        await store.create(b, S(value="x:b"))
        await store.put(a, S(value="y:a"))  # moves to another group
        await _eventually(lambda: len(changes) == 3, "the add and the move")
        assert [f.key for f in informer.indexed("x")] == [b]
        assert [f.value.value for f in informer.indexed("y")] == ["y:a"]
        await store.delete(b)
        await _eventually(lambda: len(changes) == 4, "the delete")
        assert informer.indexed("x") == []


async def test_lists_again_after_its_revision_was_compacted(etcd_client, etcd_root) -> None:  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    a, b, c = (store.key_of(f"projects/p/shares/{n}") for n in "abc")
    await store.create(a, S(value="a1"))
    await store.create(b, S(value="b1"))
    informer = Informer(store, etcd_root + "shares/", S)
    async with _running(informer) as changes:
        pass  # listed; now stopped, as a process whose watch broke
    # Meanwhile: b changes, a goes, c comes, and etcd compacts those revisions away.
    await store.put(b, S(value="b2"))
    await store.delete(a)
    revision = await store.create(c, S(value="c1"))
    await etcd_client.compact(revision)
    async with _running(informer) as changes:
        await _eventually(lambda: informer.relists == 1, "a second list")
        await _eventually(lambda: len(changes) == 3, "the listed difference")
        assert sorted(changes) == [("add", c, "c1"), ("delete", a, "a1"), ("update", b, "b2")]
        await store.put(c, S(value="c2"))  # and it watches again from the new list
        await _eventually(lambda: changes[-1] == ("update", c, "c2"), "a change after it")


async def test_carries_on_after_etcd_restarts(tmp_path: Path) -> None:
    # Fixed ports, so that the restarted etcd is where the client looks.
    server = EtcdServer(tmp_path / "etcd", client_port=free_port(), peer_port=free_port())
    async with server as etcd, connect(etcd.endpoint) as client:
        store = Store(client, "/informer/")
        a, b = store.key_of("projects/p/shares/a"), store.key_of("projects/p/shares/b")
        await store.create(a, S(value="a1"))
        informer = Informer(store, "/informer/shares/", S)
        handled: list[str] = []

        async def reconcile(key: str) -> None:
            handled.append(key)

        controller = Controller("test", reconcile)
        informer.add_handler(lambda old, new: controller.queue.add((new or old).key))  # type: ignore[union-attr]
        async with _running(informer) as changes:
            workers = asyncio.create_task(controller.run())
            await _eventually(lambda: handled == [a], "the listed key worked on")
            await etcd.stop()
            await asyncio.sleep(1)
            await etcd.start()
            # The client reconnects when etcd is back; writes may fail until then.
            deadline = time.monotonic() + 20
            while True:
                try:
                    await store.create(b, S(value="b1"))
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            await _eventually(lambda: ("add", b, "b1") in changes, "a change after the restart", 20)
            await _eventually(lambda: handled == [a, b], "the new key worked on")
            await controller.stop()
            await workers
