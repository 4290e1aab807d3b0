"""Election (and the create-revision queue that Mutex shares), after etcd's concurrency.

Each participant owns the key `{prefix}/<lease hex>`, created under its session's lease.
Keys are ordered by create revision; the first one is the leader/owner. A waiter
watches only its predecessor (the greatest create revision below its own) for deletion,
then re-checks, so a departure wakes exactly one waiter. Only direct children of
`{prefix}/` count, so a queue nested under a deeper prefix never interferes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import aetcd
from aetcd import rpc

from sharemesh.runtime import metrics
from sharemesh.runtime.errors import Aborted, Unavailable

from . import _client
from ._client import Fence
from ._session import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRY_DELAY = 0.2


def _queue_prefix(prefix: str) -> str:
    prefix = prefix.rstrip("/")
    if not prefix:
        raise ValueError("empty election/lock prefix")
    return prefix + "/"


def _direct(kvs: object, queue: str) -> list[rpc.KeyValue]:
    """The direct children of `queue` (ignore deeper keys of nested queues)."""
    start = len(queue.encode())
    return [kv for kv in kvs if b"/" not in kv.key[start:] and len(kv.key) > start]  # type: ignore[attr-defined]


def _queue_range(queue: str, **kwargs: object) -> rpc.RangeRequest:
    return _client.range_request(queue, _client.prefix_end(queue), sort_target="create", **kwargs)  # type: ignore[arg-type]


async def _first(client: aetcd.Client, queue: str) -> tuple[rpc.KeyValue | None, int]:
    """The owner (lowest create revision) of a queue, and the read revision."""
    response = await _client.range_(client, _queue_range(queue))
    kvs = _direct(response.kvs, queue)
    return (kvs[0] if kvs else None), response.header.revision


async def _until_lost(session: Session, awaitable: Awaitable[T], what: str) -> T:
    """Await `awaitable`, but raise Aborted as soon as the session is lost."""
    work = asyncio.ensure_future(awaitable)
    lost = asyncio.ensure_future(session.done.wait())
    try:
        await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise Aborted(f"session lease lost while {what}")
    finally:
        for task in (work, lost):
            if not task.done():
                task.cancel()
        for task in (work, lost):
            with contextlib.suppress(BaseException):
                await task


async def _wait_predecessors(session: Session, queue: str, my_rev: int) -> None:
    """Return when no key of `queue` older than `my_rev` is left (etcd's waitDeletes)."""
    client = session.client
    while True:
        if session.done.is_set():
            raise Aborted(f"session lease lost while waiting in {queue}")
        try:
            response = await _client.range_(
                client, _queue_range(queue, descend=True, max_create_revision=my_rev - 1)
            )
            older = _direct(response.kvs, queue)
            if not older:
                return
            predecessor = older[0]
            await _until_lost(
                session,
                _client.wait_deleted(client, predecessor.key, response.header.revision),
                f"waiting in {queue}",
            )
        except Unavailable as error:
            if _client.is_closed(client):
                raise
            log.info("waiting in %s: %s; retrying", queue, error)
            await asyncio.sleep(_RETRY_DELAY)


async def _enqueue(
    session: Session, key: str, value: bytes, reads: Sequence[rpc.RangeRequest] = ()
) -> tuple[int, rpc.KeyValue | None, bool, list[rpc.RangeResponse]]:
    """Create our queue key (or reuse it if our lease already owns it).

    Returns (our create revision, the queue's owner kv, whether we created the key,
    and the answers to `reads`, read in the same transaction when we created it)."""
    client, lease = session.client, session.lease_id
    queue = key.rsplit("/", 1)[0] + "/"
    response = await _client.txn(
        client,
        [_client.Compare(_client.b(key), "create", "==", 0)],
        success=[
            _client.op_put(key, value, lease),
            _client.op_range(_queue_range(queue)),
            *(_client.op_range(r) for r in reads),
        ],
        failure=[
            _client.op_range(_client.range_request(key)),
            _client.op_range(_queue_range(queue)),
        ],
    )
    if response.succeeded:
        my_rev = response.header.revision
        owners = _direct(response.responses[1].response_range.kvs, queue)
        read = [r.response_range for r in response.responses[2:]]
        return my_rev, (owners[0] if owners else None), True, read
    existing = response.responses[0].response_range.kvs
    if not existing:  # deleted between compare and read cannot happen in one txn
        raise Aborted(f"queue key {key} vanished")
    kv = existing[0]
    if kv.lease != lease:
        raise Aborted(f"queue key {key} belongs to lease {kv.lease:x}, not ours")
    owners = _direct(response.responses[1].response_range.kvs, queue)
    if kv.value != value:
        update = await _client.txn(
            client,
            [_client.Compare(kv.key, "create", "==", kv.create_revision)],
            success=[_client.op_put(key, value, lease)],
        )
        if not update.succeeded:
            raise Aborted(f"queue key {key} changed while re-campaigning")
    return kv.create_revision, (owners[0] if owners else None), False, []


async def _dequeue(session: Session, key: str, rev: int) -> None:
    """Delete our queue key if it is still the one we created (best effort)."""
    with contextlib.suppress(Exception):
        await _client.txn(
            session.client,
            [_client.Compare(_client.b(key), "create", "==", rev)],
            success=[_client.op_delete(key)],
        )


class Leadership:
    """Proof of leadership: the candidate key and its create revision."""

    def __init__(self, election: Election, key: str, revision: int, value: bytes) -> None:
        self.election = election
        self.key = key
        self.revision = revision
        self.value = value

    def fence(self) -> Fence:
        """`create_revision(key) == revision`: put it in every write made as leader."""
        return Fence(self.key, self.revision)

    @property
    def done(self) -> asyncio.Event:
        """Set when the session's lease is lost (leadership with it)."""
        return self.election.session.done

    async def is_current(self) -> bool:
        """Whether our key is still the leader key (a read, not a guarantee: fence writes)."""
        owner, _ = await _first(self.election.session.client, self.election.queue)
        return owner is not None and owner.create_revision == self.revision

    async def resign(self) -> None:
        await self.election.resign()


class Election:
    """A leader election under `prefix` (e.g. `keys.election_prefix(root, "scheduler")`).

    One campaign per session and prefix at a time (the key is per lease)."""

    def __init__(self, session: Session, prefix: str) -> None:
        self.session = session
        self.prefix = prefix.rstrip("/")
        self.queue = _queue_prefix(prefix)
        self.leadership: Leadership | None = None
        self._rev = 0

    @property
    def key(self) -> str:
        return f"{self.queue}{self.session.lease_hex}"

    async def campaign(self, value: bytes) -> Leadership:
        """Queue up and wait until elected; cancellation or a lost session leaves the queue."""
        if self.session.done.is_set():
            raise Aborted("session lease lost")
        key = self.key
        rev, owner, _created, _ = await _enqueue(self.session, key, value)
        self._rev = rev
        try:
            if owner is None or owner.create_revision != rev:
                await _wait_predecessors(self.session, self.queue, rev)
                mine, _ = await _client.get_kv(self.session.client, key)
                if mine is None or mine.create_revision != rev:
                    raise Aborted(f"candidate key {key} vanished while campaigning (lease lost?)")
        except BaseException:
            await asyncio.shield(_dequeue(self.session, key, rev))
            self._rev = 0
            raise
        self.leadership = Leadership(self, key, rev, value)
        metrics.leader_elected(self.prefix.rsplit("/", 1)[-1])
        return self.leadership

    async def resign(self) -> None:
        """Give up leadership (or a pending candidacy); idempotent."""
        if self._rev:
            await _dequeue(self.session, self.key, self._rev)
        if self.leadership is not None:
            metrics.leader_resigned(self.prefix.rsplit("/", 1)[-1])
        self._rev = 0
        self.leadership = None


async def leader(client: aetcd.Client, prefix: str) -> bytes | None:
    """The current leader's value under `prefix`, or None when nobody leads."""
    owner, _ = await _first(client, _queue_prefix(prefix))
    return None if owner is None else owner.value


async def observe(client: aetcd.Client, prefix: str) -> AsyncIterator[bytes | None]:
    """Yield the leader value now and on every change (None: nobody leads).

    Reads, then watches the queue from the next revision, re-reading on each event,
    and resumes after a broken watch stream; ends when the client is closed."""
    queue = _queue_prefix(prefix)
    last: object = object()
    while True:
        try:
            owner, revision = await _first(client, queue)
            current = None if owner is None else owner.value
            if current != last:
                last = current
                yield current
            if _client.is_closed(client):
                return
            watch = await client.watch(
                queue.encode(), range_end=_client.prefix_end(queue), start_revision=revision + 1
            )
            try:
                async for _event in watch:
                    owner, _ = await _first(client, queue)
                    current = None if owner is None else owner.value
                    if current != last:
                        last = current
                        yield current
            finally:
                with contextlib.suppress(Exception):
                    await watch.cancel()
            if _client.is_closed(client):
                return  # the watch ended because the client was closed
        except (Unavailable, aetcd.ClientError) as error:
            if _client.is_closed(client):
                return
            log.info("observing %s: %s; re-reading", queue, error)
            await asyncio.sleep(_RETRY_DELAY)
