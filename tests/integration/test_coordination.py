"""Coordination against a real etcd (random ports): elections across processes, fencing,
optimistic concurrency, mutexes and paged lists."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

from sharemesh.runtime.coordination import (
    Election,
    Fence,
    Mutex,
    Session,
    Store,
    _client,
    connect,
    keys,
    leader,
    observe,
)
from sharemesh.runtime.errors import (
    Aborted,
    AlreadyExists,
    FencedOut,
    InvalidArgument,
    NotFound,
)

TTL = 2
CANDIDATE = Path(__file__).with_name("_candidate.py")
S = wrappers_pb2.StringValue
Int64 = wrappers_pb2.Int64Value


async def _queue_len(client, prefix: str) -> int:  # type: ignore[no-untyped-def]
    response = await client.get_prefix((prefix + "/").encode())
    return len(response)


async def _wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Candidate:
    """One `_candidate.py` process; always killed and reaped."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc, self.name = proc, name

    @classmethod
    async def start(cls, endpoint: str, prefix: str, name: str, *record: str) -> _Candidate:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CANDIDATE),
            endpoint,
            prefix,
            name,
            str(TTL),
            *record,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        return cls(proc, name)

    async def expect(self, line: str, timeout: float) -> None:
        async def read() -> None:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before {line!r}"
                    )
                if raw.decode().strip().startswith(line):
                    return

        await asyncio.wait_for(read(), timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


# 1. leader election across processes


async def test_leader_process_killed_successor_takes_over_within_ttl(
    etcd_server, etcd_client, etcd_root
):  # type: ignore[no-untyped-def]
    prefix = keys.election_prefix(etcd_root, "scheduler")
    candidates: list[_Candidate] = []
    try:
        a = await _Candidate.start(etcd_server.endpoint, prefix, "a")
        candidates.append(a)
        await a.expect("LEADER a", timeout=15)
        b = await _Candidate.start(etcd_server.endpoint, prefix, "b")
        candidates.append(b)
        await b.expect("CANDIDATE b", timeout=15)
        await _wait_for(lambda: _queue_len_is(etcd_client, prefix, 2), what="b queued")
        assert await leader(etcd_client, prefix) == b"a"

        killed = time.monotonic()
        os.kill(a.proc.pid, signal.SIGKILL)
        await b.expect("LEADER b", timeout=TTL + 5)
        took = time.monotonic() - killed
        print(f"successor elected {took:.2f}s after SIGKILL (ttl {TTL}s)")
        assert took <= TTL + 2, f"successor took {took:.2f}s"
        assert await leader(etcd_client, prefix) == b"b"
    finally:
        for candidate in candidates:
            await candidate.stop()


async def _queue_len_is(client, prefix: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await _queue_len(client, prefix) == n


async def test_each_candidate_waits_only_for_its_predecessor(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    prefix = keys.election_prefix(etcd_root, "chain")
    async with (
        Session(etcd_client, TTL) as s1,
        Session(etcd_client, TTL) as s2,
        Session(etcd_client, TTL) as s3,
    ):
        e1, e2, e3 = Election(s1, prefix), Election(s2, prefix), Election(s3, prefix)
        await e1.campaign(b"1")
        t2 = asyncio.ensure_future(e2.campaign(b"2"))
        await _wait_for(lambda: _queue_len_is(etcd_client, prefix, 2), what="2 queued")
        t3 = asyncio.ensure_future(e3.campaign(b"3"))
        await _wait_for(lambda: _queue_len_is(etcd_client, prefix, 3), what="3 queued")
        # The middle candidate leaves: the third now waits for the first, not for nobody.
        t2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t2
        await asyncio.sleep(0.3)
        assert not t3.done()
        assert await leader(etcd_client, prefix) == b"1"
        await e1.resign()
        lead3 = await asyncio.wait_for(t3, 5)
        assert await leader(etcd_client, prefix) == b"3"
        assert await lead3.is_current()


async def test_observe_yields_leader_changes(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    prefix = keys.election_prefix(etcd_root, "obs")
    seen: list[bytes | None] = []
    changed = asyncio.Event()

    async def watch() -> None:
        async for value in observe(etcd_client, prefix):
            seen.append(value)
            changed.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await _wait_for(lambda: _true(seen == [None]), what="initial None")
        async with Session(etcd_client, TTL) as s1, Session(etcd_client, TTL) as s2:
            e1, e2 = Election(s1, prefix), Election(s2, prefix)
            await e1.campaign(b"one")
            t2 = asyncio.ensure_future(e2.campaign(b"two"))
            await _wait_for(lambda: _true(seen[-1:] == [b"one"]), what="one")
            await e1.resign()
            await asyncio.wait_for(t2, 5)
            await _wait_for(lambda: _true(seen[-1:] == [b"two"]), what="two")
        await _wait_for(lambda: _true(seen[-1:] == [None]), what="nobody after close")
        assert seen == [None, b"one", b"two", None]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _true(value: bool) -> bool:
    return value


# 2. fencing


async def test_expired_leader_write_is_fenced_out(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    key = store.key_of("projects/p1/shares/s1")
    prefix = keys.election_prefix(etcd_root, "fence")
    old = Session(etcd_client, TTL)
    async with old, Session(etcd_client, TTL) as new:
        first = await Election(old, prefix).campaign(b"old")
        await store.create(key, S(value="v1"), fences=[first.fence()])
        record = await store.get(key, S)
        assert record is not None

        old.suspend_keepalive()  # as if the process froze: no refresh, no `done`
        started = time.monotonic()
        second = await asyncio.wait_for(Election(new, prefix).campaign(b"new"), TTL + 3)
        assert time.monotonic() - started <= TTL + 2
        assert not old.done.is_set()  # the frozen leader has not noticed

        with pytest.raises(FencedOut) as caught:
            await store.update(key, S(value="stale leader"), record.mod_revision, fences=[first])
        assert isinstance(caught.value, Aborted)  # maps to ABORTED on the wire
        assert (await store.get(key, S)) == record  # unchanged

        with pytest.raises(FencedOut):
            await store.txn().put(key, S(value="x")).fence(first).commit()
        assert (await store.get(key, S)) == record

        await store.update(key, S(value="v2"), record.mod_revision, fences=[second.fence()])
        assert (await store.get(key, S)).value.value == "v2"


async def test_frozen_leader_process_is_fenced_out(etcd_server, etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    """SIGSTOP the leader past its lease: after SIGCONT its next fenced write is refused."""
    prefix = keys.election_prefix(etcd_root, "frozen")
    store = Store(etcd_client, etcd_root)
    record = store.key_of("projects/p1/shares/s1")
    candidates: list[_Candidate] = []
    try:
        a = await _Candidate.start(etcd_server.endpoint, prefix, "a", record)
        candidates.append(a)
        await a.expect("LEADER a", timeout=15)
        await _wait_for(lambda: _value_is(store, record, "a"), what="a writing")
        os.kill(a.proc.pid, signal.SIGSTOP)
        frozen = await store.get(record, S)

        async with Session(etcd_client, TTL) as session:
            new = await asyncio.wait_for(Election(session, prefix).campaign(b"test"), TTL + 3)
            await store.update(record, S(value="new leader"), frozen.mod_revision, fences=[new])
            written = await store.get(record, S)

            os.kill(a.proc.pid, signal.SIGCONT)
            await a.expect("FENCED a", timeout=10)
            assert await asyncio.wait_for(a.proc.wait(), 10) == 2
            assert await store.get(record, S) == written  # the stale leader changed nothing
    finally:
        for candidate in candidates:
            await candidate.stop()


async def _value_is(store: Store, key: str, value: str) -> bool:
    record = await store.get(key, S)
    return record is not None and record.value.value == value


async def test_session_lost_sets_done(etcd_client):  # type: ignore[no-untyped-def]
    async with Session(etcd_client, TTL) as session:
        assert not session.done.is_set()
        await _client.lease_revoke(etcd_client, session.lease_id)  # someone revoked it
        await asyncio.wait_for(session.done.wait(), TTL + 1)


async def test_close_revokes_lease_and_leased_keys_vanish(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    key = (etcd_root + "registry/backends/b1").encode()
    session = Session(etcd_client, 30)
    async with session:
        await etcd_client.put(key, b"alive", lease=session.lease_id)
        await asyncio.sleep(TTL)  # keep-alive keeps it
        assert await etcd_client.get(key) is not None
    assert session.done.is_set()
    assert await etcd_client.get(key) is None  # revoked now, not after 30 s
    await session.close()  # idempotent


# 3. optimistic concurrency


async def test_twenty_racing_writers_exactly_one_wins(etcd_server, etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    key = store.key_of("projects/p1/shares/s1")
    await store.create(key, S(value="v0"))
    base = await store.get(key, S)
    assert base is not None
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(etcd_server.endpoint)) for _ in range(4)]
        stores = [Store(c, etcd_root) for c in clients]
        results = await asyncio.gather(
            *(stores[i % 4].update(key, S(value=f"w{i}"), base.mod_revision) for i in range(20)),
            return_exceptions=True,
        )
    wins = [r for r in results if isinstance(r, int)]
    losses = [r for r in results if isinstance(r, Aborted)]
    assert len(wins) == 1 and len(losses) == 19, results
    assert not any(isinstance(r, FencedOut) for r in losses)
    assert all(key in str(r) for r in losses)
    final = await store.get(key, S)
    assert final is not None and final.mod_revision == wins[0]
    assert final.value.value != "v0"


async def test_store_errors_name_the_key(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    key = store.key_of("projects/p1/shares/s1")
    rev = await store.create(key, S(value="a"))
    with pytest.raises(AlreadyExists, match="s1"):
        await store.create(key, S(value="b"))
    with pytest.raises(NotFound):
        await store.update(store.key_of("projects/p1/shares/nope"), S(value="x"), 5)
    with pytest.raises(Aborted):
        await store.delete(key, expected_mod_revision=rev + 100)
    assert await store.delete(key, expected_mod_revision=rev)
    assert await store.get(key, S) is None
    assert not await store.delete(key)


async def test_txn_writes_record_operation_and_counter_atomically(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    share = store.key_of("projects/p1/shares/s1")
    op = store.key_of("projects/p1/operations/op1")
    counter = keys.allocation_key(etcd_root, "b1", "pool1")
    await store.create(counter, Int64(value=0))
    alloc = await store.get(counter, Int64)
    rev = await (
        store.txn()
        .create(share, S(value="share"))
        .create(op, S(value="op"))
        .put(counter, Int64(value=10), expected_mod_revision=alloc.mod_revision)
        .commit()
    )
    assert (await store.get(share, S)).create_revision == rev
    assert (await store.get(op, S)).value.value == "op"
    assert (await store.get(counter, Int64)).value.value == 10

    # A second reservation against the stale counter writes nothing at all.
    share2 = store.key_of("projects/p1/shares/s2")
    with pytest.raises(Aborted, match="pool1"):
        await (
            store.txn()
            .create(share2, S(value="share2"))
            .put(counter, Int64(value=20), expected_mod_revision=alloc.mod_revision)
            .commit()
        )
    assert await store.get(share2, S) is None
    assert (await store.get(counter, Int64)).value.value == 10

    with pytest.raises(AlreadyExists, match="operations/op1"):
        await store.txn().create(share2, S(value="x")).create(op, S(value="again")).commit()
    assert await store.get(share2, S) is None


async def test_txn_writes_records_as_they_are_at_commit(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    """A record changed after it was added (an Operation finished by the mutation it
    records) is written with that change."""
    store = Store(etcd_client, etcd_root)
    key = store.key_of("projects/p1/operations/late")
    record = S(value="running")
    txn = store.txn().create(key, record)
    record.value = "done"
    await txn.commit()
    assert (await store.get(key, S)).value.value == "done"


# 4. mutex


async def test_mutex_try_acquire_busy_and_handover_on_session_close(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    prefix = keys.lock_prefix(etcd_root, "projects/p1/shares/s1")
    store = Store(etcd_client, etcd_root)
    record = store.key_of("projects/p1/shares/s1")
    holder_session = Session(etcd_client, TTL)
    async with holder_session, Session(etcd_client, TTL) as waiter_session:
        held = Mutex(holder_session, prefix)
        await held.try_acquire()
        await store.create(record, S(value="v1"), fences=[held])

        other = Mutex(waiter_session, prefix)
        with pytest.raises(Aborted, match="busy"):
            await other.try_acquire()
        assert await _queue_len(etcd_client, prefix) == 1  # the busy attempt left no key

        # A second task of the holder's own process is excluded too.
        with pytest.raises(Aborted, match="busy"):
            await Mutex(holder_session, prefix).try_acquire()

        waiting = asyncio.ensure_future(other.acquire())
        await _wait_for(lambda: _queue_len_is(etcd_client, prefix, 2), what="waiter queued")
        assert not waiting.done()

        await holder_session.close()  # graceful stop revokes: the waiter goes next at once
        closed = time.monotonic()
        await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - closed < 1.0
        assert other.held

        current = await store.get(record, S)
        with pytest.raises(FencedOut):
            await store.update(
                record, S(value="old holder"), current.mod_revision, fences=[held.fence()]
            )
        await store.update(record, S(value="v2"), current.mod_revision, fences=[other.fence()])
        await other.release()
        assert await _queue_len(etcd_client, prefix) == 0


async def test_mutex_lock_context_and_fifo(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    prefix = keys.lock_prefix(etcd_root, "gc")
    order: list[str] = []
    async with Session(etcd_client, TTL) as s1, Session(etcd_client, TTL) as s2:
        m1, m2 = Mutex(s1, prefix), Mutex(s2, prefix)
        async with m1.lock():

            async def second() -> None:
                async with m2.lock():
                    order.append("m2")

            task = asyncio.ensure_future(second())
            await _wait_for(lambda: _queue_len_is(etcd_client, prefix, 2), what="m2 queued")
            order.append("m1")
        await asyncio.wait_for(task, 5)
        assert order == ["m1", "m2"]
        assert await _queue_len(etcd_client, prefix) == 0
        # Same-session exclusion for the blocking path as well.
        async with m1.lock():
            other_task = asyncio.ensure_future(Mutex(s1, prefix).acquire())
            await asyncio.sleep(0.2)
            assert not other_task.done()
        other_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await other_task


async def test_mutex_reads_come_with_a_free_lock_only(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    share, prefix = store.key_of("projects/p/shares/s"), keys.lock_prefix(etcd_root, "s")
    children = [(store.prefix_of("projects/p/shares/s", "accessRules"), S)]
    await store.create(share, S(value="v1"))
    await store.create(store.key_of("projects/p/shares/s/accessRules/r"), S(value="r1"))
    reads = store.ranges_with(share, children)
    async with Session(etcd_client, TTL) as s1, Session(etcd_client, TTL) as s2:
        async with Mutex(s1, prefix).lock(reads) as held:
            assert held.reads is not None  # read as the lock was taken: no round trip more
            found, (rules,) = await store.decode_with(held.reads, S, children)
            assert found is not None and found.value.value == "v1"
            assert [r.value.value for r in rules] == ["r1"]
            other = Mutex(s2, prefix)
            waiter = asyncio.ensure_future(other.acquire(reads))
            await _wait_for(lambda: _queue_len_is(etcd_client, prefix, 2), what="queued")
            await store.put(share, S(value="v2"))  # changed while the other waits
        await asyncio.wait_for(waiter, 5)
        # Taken after a wait: what was read while queueing may be stale, so none is given.
        assert other.reads is None
        await other.release()


# 5. paging


async def test_list_pages_in_key_order_at_fixed_revision(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    names = [f"projects/p1/shares/s{i:02d}" for i in range(25)]
    for name in reversed(names):
        await store.create(store.key_of(name), S(value=name))
        await store.create(store.key_of(f"{name}/accessRules/r1"), S(value="rule"))
    await store.create(store.key_of("projects/p10/shares/s00"), S(value="other project"))
    prefix = store.prefix_of("projects/p1", "shares")

    got: list[str] = []
    items, revision, more = await store.list(prefix, S, limit=10)
    pages = 1
    got += [store.name_of(i.key) for i in items]
    # Written after the first page: invisible at the page token's revision.
    await store.create(store.key_of("projects/p1/shares/s05a"), S(value="late"))
    await store.delete(store.key_of("projects/p1/shares/s20"))
    while more:
        items, read_rev, more = await store.list(
            prefix, S, start_after=items[-1].key, limit=10, revision=revision
        )
        assert read_rev == revision
        pages += 1
        got += [store.name_of(i.key) for i in items]
    assert pages == 3
    assert got == names
    assert all(i.value.value == n for i, n in zip(items, names[20:]))

    current, _, more = await store.list(prefix, S, limit=100)
    assert not more
    assert len(current) == 25 and "projects/p1/shares/s05a" in [
        store.name_of(i.key) for i in current
    ]


async def test_compacted_page_token_is_invalid_argument(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = store.prefix_of("projects/p1", "shares")
    await store.create(store.key_of("projects/p1/shares/a"), S(value="a"))
    await store.create(store.key_of("projects/p1/shares/b"), S(value="b"))
    items, revision, more = await store.list(prefix, S, limit=1)
    assert more
    await store.put(store.key_of("projects/p1/shares/c"), S(value="c"))
    current = (await store.list(prefix, S, limit=1))[1]
    await etcd_client.compact(current)
    with pytest.raises(InvalidArgument, match="page_token"):
        await store.list(prefix, S, start_after=items[-1].key, limit=1, revision=revision)


def _etcd_requests(server) -> Counter[str]:  # type: ignore[no-untyped-def]
    """The requests etcd has answered, by gRPC method (its own count)."""
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for method, count in re.findall(
        r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\d+)', text, re.M
    ):
        counts[method] += int(count)
    return counts


async def test_reads_asked_together_go_to_etcd_as_one_request(etcd_server, etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    for i in range(5):
        await store.put(store.key_of(f"things/k{i}"), S(value=f"v{i}"))
    await store.create(store.key_of("projects/p1/shares/a"), S(value="a"))
    prefix = store.prefix_of("projects/p1", "shares")

    before = _etcd_requests(etcd_server)
    *found, missing, (page, _, more) = await asyncio.gather(
        *(store.get(store.key_of(f"things/k{i}"), S) for i in range(5)),
        store.get(store.key_of("things/nothing-here"), S),
        store.list(prefix, S, limit=10),
    )
    spent = _etcd_requests(etcd_server) - before
    # Each reader has its own answer...
    assert [f.value.value for f in found] == [f"v{i}" for i in range(5)]
    assert missing is None
    assert [i.value.value for i in page] == ["a"] and not more
    # ...from one read-only transaction, where each was a request of its own.
    assert spent == Counter({"Txn": 1}), spent

    # One read alone is a plain range.
    before = _etcd_requests(etcd_server)
    assert (await store.get(store.key_of("things/k0"), S)).value.value == "v0"  # type: ignore[union-attr]
    assert _etcd_requests(etcd_server) - before == Counter({"Range": 1})


async def test_a_read_that_fails_fails_alone(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    await store.put(store.key_of("things/k"), S(value="v"))
    prefix = store.prefix_of("projects/p1", "shares")
    future_revision = 1 << 40
    stale, found = await asyncio.gather(
        store.list(prefix, S, limit=1, revision=future_revision),
        store.get(store.key_of("things/k"), S),
        return_exceptions=True,
    )
    assert isinstance(stale, InvalidArgument) and "page_token" in str(stale)
    assert not isinstance(found, BaseException) and found is not None
    assert found.value.value == "v"


async def test_watch_prefix_from_revision(etcd_client, etcd_root):  # type: ignore[no-untyped-def]
    store = Store(etcd_client, etcd_root)
    prefix = store.prefix_of("projects/p1", "shares")
    _, revision, _ = await store.list(prefix, S, limit=1)
    key = store.key_of("projects/p1/shares/w")
    rev = await store.create(key, S(value="w1"))
    await store.update(key, S(value="w2"), rev)
    await store.delete(key)
    events = []

    async def collect() -> None:
        async for event in store.watch_prefix(prefix, revision + 1, msg_type=S):
            events.append(event)
            if len(events) == 3:
                return

    await asyncio.wait_for(collect(), 5)
    assert [e.kind for e in events] == ["PUT", "PUT", "DELETE"]
    assert [e.value.value if e.value else None for e in events] == ["w1", "w2", None]
    assert all(e.key == key for e in events)


def test_fence_is_a_create_revision_compare() -> None:
    fence = Fence("/x/locks/a/1", 42)
    proto = fence.to_proto()
    assert proto.key == b"/x/locks/a/1" and proto.create_revision == 42
    assert fence.create_revision == 42
