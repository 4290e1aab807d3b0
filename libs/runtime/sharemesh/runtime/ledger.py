"""The mesh's counters, kept in etcd beside what they count: the GiB a pool has
allocated, the count and GiB of a project's shares and of its snapshots, the last
export id of a backend's Ganesha.

One counter change is one upsert, added to the caller's transaction with the change it
counts: written at the revision read, or created only if still absent. A concurrent
change of the counter therefore fails the whole transaction (ABORTED), to be retried
on a fresh read; two writers can never both count from the same value.

`commit_counted` is that retry for a change made once elsewhere (a backend's delete):
the writes of one process take turns on the counters, and a race with another process
counts again without doing the change again."""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from sharemesh.state.v1 import records_pb2

from . import export_ids
from .coordination import Store, Txn, Versioned, keys
from .errors import Aborted, FencedOut

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

_COUNTED_ATTEMPTS = 20
# Per store (one per process, as a rule): the writes that take turns on the counters.
_turns: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()


@dataclass
class Counter(Generic[M]):
    """One counter as read: an int `field` of the record at `key` (absent: 0)."""

    key: str
    record_type: type[M]
    field: str
    found: Versioned[M] | None

    @property
    def value(self) -> int:
        return int(getattr(self.found.value, self.field)) if self.found else 0

    def set(self, txn: Txn, value: int) -> int:
        """Adds to `txn` the write of `value`, compared with the counter as read."""
        self._write(txn, {self.field: value})
        return value

    def add(self, txn: Txn, delta: int, **also: int) -> int:
        """Adds to `txn` the change by `delta` (never below 0), and of the record's other
        counters named in `also` by theirs, in the one write; returns the new value."""
        before = self.found.value if self.found else self.record_type()
        changes = {self.field: delta, **also}
        values = {name: max(int(getattr(before, name)) + d, 0) for name, d in changes.items()}
        self._write(txn, values)
        return values[self.field]

    def _write(self, txn: Txn, values: dict[str, int]) -> None:
        record = self.record_type()
        if self.found is not None:
            record.CopyFrom(self.found.value)
        for name, value in values.items():
            setattr(record, name, value)
        txn.put(self.key, record, self.found.mod_revision if self.found else None)
        if self.found is None:
            txn.check(self.key, 0)  # created once: a racing creator fails this txn


async def read(store: Store, key: str, record_type: type[M], field: str) -> Counter[M]:
    return Counter(key, record_type, field, await store.get(key, record_type))


async def adjust(
    store: Store, txn: Txn, key: str, record_type: type[M], field: str, delta: int
) -> int:
    """Reads the counter and adds its change by `delta` to `txn`; returns the new value."""
    return (await read(store, key, record_type, field)).add(txn, delta)


async def commit_counted(
    store: Store,
    counters: Collection[str],
    build: Callable[[], Awaitable[Txn]],
    count: Callable[[Txn], Awaitable[object]],
    commit: Callable[[Txn], Awaitable[object]] | None = None,
) -> None:
    """Commits the transaction `build` makes, with the changes of `counters` (their keys)
    that `count` adds to it last, through `commit` (default: `txn.commit()`).

    What came before (say, the backend's delete of what the txn removes) is never done
    again here: the writes of this process take turns (count, commit), so they never race
    each other, and a race with another process on one of `counters` builds and counts
    again. Any other failure is raised: the failed compare is named, and the counters'
    compares come last, so a race is theirs only when nothing else changed."""
    for attempt in range(_COUNTED_ATTEMPTS):
        txn = await build()
        try:
            async with _turns.setdefault(store, asyncio.Lock()):
                await count(txn)
                await (commit(txn) if commit is not None else txn.commit())
            return
        except FencedOut:
            raise  # the lock or leadership is lost: whoever holds it now finishes
        except Aborted as race:
            raced = race.metadata.get("key")
            if raced not in counters or attempt == _COUNTED_ATTEMPTS - 1:
                raise
            log.debug("counter %s changed meanwhile; counting again", raced)
            await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))


# The mesh's counters, by what they count.


def pool(
    store: Store, pool_name: str, found: Versioned[records_pb2.PoolAllocation] | None
) -> Counter[records_pb2.PoolAllocation]:
    """A pool's allocation as already read (say, with the other pools')."""
    key = keys.pool_allocation_key(store.root, pool_name)
    return Counter(key, records_pb2.PoolAllocation, "allocated_gib", found)


async def read_pool(store: Store, pool_name: str) -> Counter[records_pb2.PoolAllocation]:
    key = keys.pool_allocation_key(store.root, pool_name)
    return await read(store, key, records_pb2.PoolAllocation, "allocated_gib")


async def read_usage(
    store: Store, project: str, field: str = "share_gib"
) -> Counter[records_pb2.ProjectUsage]:
    """A project's usage: the GiB of its shares (`share_gib`) and how many hold a place
    (`shares`, see quota.shares_held), or the count (`snapshots`) or GiB (`snapshot_gib`)
    of its snapshots; one record holds them all."""
    key = keys.usage_key(store.root, project)
    return await read(store, key, records_pb2.ProjectUsage, field)


async def read_export_ids(store: Store, backend: str) -> Counter[records_pb2.ExportIdCounter]:
    key = keys.export_ids_key(store.root, backend)
    return await read(store, key, records_pb2.ExportIdCounter, "last_export_id")


async def take_export_id(store: Store, txn: Txn, backend: str, quarantine_seconds: float) -> int:
    """Adds to `txn` the taking of an Export_Id on the backend's Ganesha (`backend` is its
    short name): the oldest released id past its quarantine, else the next new one. A
    racing taker fails the txn, as for every counter."""
    ids, (oldest, _, _) = await asyncio.gather(  # one read (coordination batches them)
        read_export_ids(store, backend),
        store.list(
            keys.released_export_ids_prefix(store.root, backend),
            records_pb2.ReleasedExportId,
            limit=1,
        ),
    )
    choice = export_ids.choose(
        ids.value,
        oldest[0].value if oldest else None,
        export_ids.now(),
        quarantine_seconds,
    )
    if choice.reused:
        txn.delete(oldest[0].key, oldest[0].mod_revision)
        return choice.export_id
    return ids.set(txn, choice.export_id)


def release_export_id(store: Store, txn: Txn, backend: str, export_id: int) -> None:
    """Adds to `txn` the return of `export_id` (if any) to rest in quarantine; its
    export is gone from the backend's Ganesha."""
    if not export_id:
        return
    now = export_ids.now()
    key = keys.released_export_id_key(store.root, backend, now.ToMilliseconds(), export_id)
    txn.put(key, export_ids.released(export_id, now))
