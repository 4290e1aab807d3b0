"""A watch cache of what the api lists, in the manner of kube-apiserver's watch cache.

etcd 3.4 walks every key of a range to count it, even with a limit, so a page read from
etcd costs O(records in the collection). Instead each api process lists the collections
it serves once, then watches etcd from the next revision and applies every change to a
key-ordered copy in memory: a page is a bisect plus `page_size` items.

- What is kept: each record's serialized bytes and revisions. A page parses only what
  it returns. For shares, a few facts (network, type, unplaced GiB) are indexed so the
  in-use checks and the quota's first look read no other record.
- Consistency (read your writes): before a read, the cache asks etcd for its current
  revision (a range of one key: O(1)) and waits, briefly, until it has applied that
  revision. It watches every key of etcd, not only its collections: each revision of
  etcd is then a write it sees, so "applied revision R" is exact. When it cannot catch
  up in time (or is listing), the caller reads etcd as before.
- Faults: a compacted watch lists again; an etcd that is away is waited for with
  backoff, resuming the watch after the last revision applied.
- Metrics: shares, snapshots and operations are counted by state as they change, so a
  scrape reads a few counts, never the records.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aetcd import rpc
from google.protobuf.message import DecodeError, Message

from sharemesh.runtime import lifecycle, metrics, retry
from sharemesh.runtime.coordination import Store, Versioned, _store
from sharemesh.runtime.coordination._client import (
    Compacted,
    WatchStream,
    prefix_end,
    range_,
    range_request,
)
from sharemesh.runtime.errors import ShareMeshError, Unavailable
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, snapshot_pb2

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

# The collections the api lists (records directly under `{root}{collection}/`).
COLLECTIONS = (
    "shares",
    "accessRules",
    "snapshots",
    "shareNetworks",
    "attachments",
    "operations",
    "shareTypes",
)
# How long a read waits for the cache to apply etcd's current revision before it reads
# etcd instead: changes normally arrive within a millisecond.
CATCH_UP_SECONDS = 1.0
# Records per range while listing: few ranges (each costs O(N) in etcd 3.4), each well
# under gRPC's 4 MiB message limit.
LIST_PAGE = 2000
# The collections counted by state (shares are parsed for their facts anyway).
COUNTED = ("shares", "snapshots", "operations")


@dataclass(frozen=True, slots=True)
class Entry:
    """One record as etcd holds it."""

    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class ShareFacts:
    """What the api asks of every share at once: which network and type it uses, and
    what it will take from its project's quota while it waits for placement."""

    project: str
    share_network: str
    share_type: str
    unplaced_gib: int

    @staticmethod
    def of(record: records_pb2.ShareRecord) -> ShareFacts:
        share = record.spec.share
        waiting = (
            lifecycle.share.state(record) == share_pb2.Share.CREATING and not record.allocated_gib
        )
        return ShareFacts(
            record.project,
            share.share_network,
            share.share_type,
            share.size_gib if waiting else 0,
        )


def decode(key: str, entry: Entry, record_type: type[M]) -> Versioned[M]:
    """Parsed as the Store parses (its schema version checked), when a page is read."""
    message = _store.decode(key, entry.value, record_type)
    return Versioned(message, entry.mod_revision, entry.create_revision, key)


class Snapshot:
    """The cached records in key order at `revision`, and the share indexes. Pure: the
    watch loop feeds it; readers page through it."""

    def __init__(self, root: str, collections: Iterable[str] = COLLECTIONS) -> None:
        self.root = root
        self.prefixes = tuple(f"{root}{c}/" for c in collections)
        self.shares_prefix = f"{root}shares/"
        self.revision = 0
        self._keys: list[str] = []  # sorted; inserts are a memmove of pointers
        self._entries: dict[str, Entry] = {}
        self._facts: dict[str, ShareFacts] = {}
        self._by_field: dict[str, dict[str, set[str]]] = {"share_network": {}, "share_type": {}}
        self._unplaced: dict[str, int] = {}
        self._counted = tuple(f"{root}{c}/" for c in COUNTED)
        self._state_of: dict[str, tuple[str, str]] = {}  # key -> (collection, state)
        self._states_seen: dict[tuple[str, str], tuple[str, str]] = {}
        self.states: dict[str, Counter[str]] = {c: Counter() for c in COUNTED}

    def __len__(self) -> int:
        return len(self._keys)

    def cached(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def reset(self, items: Iterable[tuple[str, Entry]], revision: int) -> None:
        """Everything anew, as listed at `revision` (in any order)."""
        self._entries = dict(items)
        self._keys = sorted(self._entries)
        self._facts.clear()
        self._unplaced.clear()
        self._state_of.clear()
        for counts in self.states.values():
            for state in counts:  # kept at 0: a state's series does not vanish on a relist
                counts[state] = 0
        for index in self._by_field.values():
            index.clear()
        for key, entry in self._entries.items():
            self._index(key, entry)
        self.revision = revision

    def put(self, key: str, entry: Entry) -> None:
        if key not in self._entries:
            bisect.insort(self._keys, key)
        self._entries[key] = entry
        self._index(key, entry)

    def delete(self, key: str) -> None:
        if self._entries.pop(key, None) is None:
            return
        del self._keys[bisect.bisect_left(self._keys, key)]
        self._unindex(key)

    def advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)

    def page(self, prefix: str, after: str, limit: int) -> tuple[list[tuple[str, Entry]], bool]:
        """Up to `limit` records directly under `prefix` whose id sorts after `after`
        ('' from the start), and whether more follow."""
        start = prefix + after + "\0" if after else prefix
        found: list[tuple[str, Entry]] = []
        for key in self._range(start, prefix):
            if "/" in key[len(prefix) :]:
                continue  # a nested record, as `Store.list` skips
            if len(found) == limit:
                return found, True
            found.append((key, self._entries[key]))
        return found, False

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def shares_using(self, field: str, value: str) -> list[str]:
        """Names of the shares whose `field` (share_network or share_type) is `value`."""
        keys = self._by_field[field].get(value, ())
        return sorted(key[len(self.shares_prefix) :] for key in keys)

    def unplaced_gib(self, project: str) -> int:
        return self._unplaced.get(project, 0)

    def _range(self, start: str, prefix: str) -> Iterator[str]:
        index = bisect.bisect_left(self._keys, start)
        while index < len(self._keys) and self._keys[index].startswith(prefix):
            yield self._keys[index]
            index += 1

    def _index(self, key: str, entry: Entry) -> None:
        if not key.startswith(self._counted):
            return
        self._unindex(key)
        if not key.startswith(self.shares_prefix):
            self._count(key, _state(key[len(self.root) :].split("/", 1)[0], key, entry.value))
            return
        try:  # decoded as the Store does: an older layout reads in today's
            record = _store.decode(key, entry.value, records_pb2.ShareRecord)
        except ShareMeshError as unreadable:  # not a record, or a newer sharemesh's
            log.warning("share record %s not indexed: %s", key, unreadable.message)
            return
        self._count(key, ("shares", share_pb2.Share.State.Name(lifecycle.share.state(record))))
        facts = self._facts[key] = ShareFacts.of(record)
        for field, index in self._by_field.items():
            if value := getattr(facts, field):
                index.setdefault(value, set()).add(key)
        if facts.unplaced_gib:
            held = self._unplaced.get(facts.project, 0)
            self._unplaced[facts.project] = held + facts.unplaced_gib

    def _count(self, key: str, state: tuple[str, str] | None) -> None:
        if state is not None:
            # One tuple per state, not per record: 100,000 records would hold 100,000.
            self._state_of[key] = state = self._states_seen.setdefault(state, state)
            self.states[state[0]][state[1]] += 1

    def _unindex(self, key: str) -> None:
        if (counted := self._state_of.pop(key, None)) is not None:
            collection, state = counted
            self.states[collection][state] -= 1
        facts = self._facts.pop(key, None)
        if facts is None:
            return
        for field, index in self._by_field.items():
            value = getattr(facts, field)
            users = index.get(value)
            if users is not None:
                users.discard(key)
                if not users:
                    del index[value]
        if facts.unplaced_gib:
            left = self._unplaced[facts.project] - facts.unplaced_gib
            if left:
                self._unplaced[facts.project] = left
            else:
                del self._unplaced[facts.project]


def _state(collection: str, key: str, value: bytes) -> tuple[str, str] | None:
    """The state of a snapshot or operation record (None: unparsable)."""
    try:
        if collection == "snapshots":
            snapshot = records_pb2.SnapshotRecord.FromString(value).snapshot
            return "snapshots", snapshot_pb2.Snapshot.State.Name(snapshot.state)
        operation = records_pb2.OperationRecord.FromString(value).operation
    except DecodeError:
        log.warning("record %s does not parse; not counted", key)
        return None
    if not operation.done:
        return "operations", "RUNNING"
    return "operations", "FAILED" if operation.HasField("error") else "SUCCEEDED"


class WatchCache:
    """The api process's cache: `run()` keeps it current; `consistent()` says whether a
    read from it now would see every write etcd has acknowledged."""

    def __init__(self, store: Store, catch_up_seconds: float = CATCH_UP_SECONDS) -> None:
        self.store = store
        self.snapshot = Snapshot(store.root)
        self.ready = False
        self._catch_up = catch_up_seconds
        self._applied = asyncio.Event()
        self._watch_stream: WatchStream | None = None
        # Readers waiting for a change of one key (WaitOperation), woken by that key
        # alone rather than by every revision.
        self._key_waiters: dict[str, set[asyncio.Future[None]]] = {}
        # The read of etcd's revision that callers arriving now will share, and the
        # task that sends such reads one after another.
        self._next_read: asyncio.Future[int] | None = None
        self._reader: asyncio.Task[None] | None = None
        metrics.observe_records(self)

    def record_states(self) -> Mapping[str, Mapping[str, int]]:
        """Shares, snapshots and operations per state (nothing while listing)."""
        return self.snapshot.states if self.ready else {}

    async def run(self) -> None:
        """List, then watch, until cancelled: list again after a compaction, and wait
        with backoff while etcd is away."""
        backoff = retry.Backoff()
        while True:
            try:
                if not self.ready:
                    await self._list()
                    backoff = retry.Backoff()
                await self._watch()
            except Compacted:
                log.info("watch cache: revision %d was compacted; listing again", self.revision)
                self.ready = False
            except Exception as error:
                retry.unless_cancelled(error)
                if retry.transient(error):
                    log.warning("watch cache: %s; resuming", retry.reason(error))
                else:  # a bug, not etcd: readers fall back to etcd meanwhile
                    log.exception("watch cache failed; listing again")
                    self.ready = False
                await backoff.wait()

    @property
    def revision(self) -> int:
        return self.snapshot.revision

    async def current_revision(self) -> int:
        """etcd's revision now, at least that of every write acknowledged before this
        call: the header of a range of one key (O(1) in etcd). Callers at once share
        one read: one arriving while a read is in flight (it may have been served
        before their writes) waits for the next, sent after it arrived."""
        if self._next_read is None:
            self._next_read = asyncio.get_running_loop().create_future()
            # Never retrieved when every caller was cancelled: no warning for that.
            self._next_read.add_done_callback(lambda read: read.cancelled() or read.exception())
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read_revisions())
        return await asyncio.shield(self._next_read)

    async def _read_revisions(self) -> None:
        while (read := self._next_read) is not None:
            self._next_read = None  # later callers wait for the next read
            try:
                response = await range_(self.store.client, range_request(self.store.root))
            except asyncio.CancelledError:
                read.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - each caller gets it
                read.set_exception(error)
            else:
                read.set_result(int(response.header.revision))

    async def consistent(self) -> bool:
        """Whether the cache has applied every write etcd acknowledged before this call;
        waits up to `catch_up_seconds` for it. False: read etcd instead."""
        if not self.ready:
            return False
        # The revision applied before asking: the watch may apply newer ones while the
        # read is in flight, and etcd is behind the cache only if behind this one.
        applied = self.revision
        target = await self.current_revision()
        if target < applied:  # etcd lost its data: another history
            log.warning("watch cache: etcd is at revision %d, behind the cache", target)
            self._forget()
            return False
        return await self.caught_up(target)

    async def has_own_writes(self) -> bool:
        """Whether the cache has applied every write of this process; waits up to
        `catch_up_seconds` for it. Enough where another process's write may show a moment
        late; False: read etcd instead."""
        return self.ready and await self.caught_up(self.store.written_revision)

    async def get_with(
        self, key: str, record_type: type[M], children: Sequence[tuple[str, type[Message]]]
    ) -> tuple[Versioned[M] | None, list[list[Versioned[Any]]]] | None:
        """What `Store.get_with` reads (a record and the records directly under each
        prefix of `children`), from the cache at one revision once it has this process's
        own writes; None when it cannot say. For a first try of a write that compares what
        it read: a change another process made a moment ago fails the compare, and the
        retry reads etcd."""
        if not all(self.snapshot.cached(k) for k in (key, *(p for p, _ in children))):
            return None
        if not await self.has_own_writes():
            return None
        entry = self.snapshot.get(key)
        found = decode(key, entry, record_type) if entry is not None else None
        listed: list[list[Versioned[Any]]] = []
        for prefix, child_type in children:
            entries, _ = self.snapshot.page(prefix, "", _store.CHILDREN)
            listed.append([decode(k, e, child_type) for k, e in entries])
        return found, listed

    def _forget(self) -> None:
        """Lists again: stop the watch; `run` then finds the cache not ready."""
        self.ready = False
        if self._watch_stream is not None:
            self._watch_stream.cancel()

    async def caught_up(self, revision: int) -> bool:
        """Waits (bounded) until the cache has applied `revision`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._catch_up
        while self.ready and self.revision < revision:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._applied.wait(), left)
            except TimeoutError:
                return False
        return self.ready

    def page(
        self, prefix: str, after: str, limit: int, record_type: type[M]
    ) -> tuple[list[Versioned[M]], bool]:
        """One page, parsed; see `Snapshot.page`."""
        entries, more = self.snapshot.page(prefix, after, limit)
        return [decode(key, entry, record_type) for key, entry in entries], more

    async def shares_using(self, field: str, value: str) -> list[str]:
        """Names of the shares whose `field` (share_network or share_type) is `value`, in
        name order: from the index, or from a scan of etcd when the cache lags."""
        if await self.consistent():
            return self.snapshot.shares_using(field, value)
        scanned = await self.store.scan(self.snapshot.shares_prefix, records_pb2.ShareRecord)
        return sorted(
            s.value.spec.share.name for s in scanned if getattr(s.value.spec.share, field) == value
        )

    async def unplaced_gib(self, project: str) -> int:
        """What the project's shares that wait for placement will take from its quota,
        for a first look at a create (the scheduler reserves the quota for real): every
        share this process recorded is counted, one another api process recorded a moment
        ago maybe not yet. No read of etcd's revision per create."""
        if await self.has_own_writes():
            return self.snapshot.unplaced_gib(project)
        found, _ = await self.store.list_all(
            self.store.prefix_of(f"projects/{project}", "shares"), records_pb2.ShareRecord
        )
        return sum(ShareFacts.of(f.value).unplaced_gib for f in found)

    async def changed(self, key: str) -> None:
        """Returns once the cache has applied a change of `key`, or lists again (then
        `ready` is False until it has listed: read etcd meanwhile)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._key_waiters.setdefault(key, set())
        waiters.add(waiter)
        try:
            await waiter
        finally:
            waiters.discard(waiter)
            if not waiters and self._key_waiters.get(key) is waiters:
                del self._key_waiters[key]

    def _wake(self, keys: Iterable[str]) -> None:
        for key in keys:
            for waiter in self._key_waiters.pop(key, ()):
                if not waiter.done():
                    waiter.set_result(None)

    def _signal(self) -> None:
        # Wake every reader waiting for a revision; they re-check and wait again.
        self._applied.set()
        self._applied = asyncio.Event()

    async def _list(self) -> None:
        """Every cached collection at one revision."""
        self._wake(list(self._key_waiters))  # they read etcd while this lists
        client = self.store.client
        revision = 0
        items: list[tuple[str, Entry]] = []
        for prefix in self.snapshot.prefixes:
            start, end = prefix.encode(), prefix_end(prefix)
            while True:
                request = range_request(start, end, limit=LIST_PAGE, revision=revision)
                response = await range_(client, request)
                revision = revision or int(response.header.revision)
                items.extend(
                    (kv.key.decode(), Entry(kv.value, kv.mod_revision, kv.create_revision))
                    for kv in response.kvs
                )
                if not response.more or not response.kvs:
                    break
                start = response.kvs[-1].key + b"\0"
        self.snapshot.reset(items, revision)
        self.ready = True
        log.info("watch cache: %d records at revision %d", len(items), revision)
        self._signal()

    async def _watch(self) -> None:
        """Applies every change of etcd after the cached revision, in order. Events of
        one revision arrive in one response and are applied without yielding to the
        readers, so a reader never sees half a transaction."""
        stream = WatchStream(self.store.client, b"\0", b"\0", self.revision + 1)
        self._watch_stream = stream
        try:
            async with contextlib.aclosing(stream.batches()) as batches:
                async for batch in batches:
                    for event in batch:
                        kv = event.kv
                        key = kv.key.decode()
                        if self.snapshot.cached(key):
                            if event.type == rpc.Event.PUT:
                                entry = Entry(kv.value, kv.mod_revision, kv.create_revision)
                                self.snapshot.put(key, entry)
                            else:
                                self.snapshot.delete(key)
                            self._wake((key,))
                        self.snapshot.advance(kv.mod_revision)
                    self._signal()
        finally:
            self._watch_stream = None
        raise Unavailable("etcd watch ended")
