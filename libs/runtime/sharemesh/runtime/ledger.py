"""The mesh's counters, kept in etcd beside what they count: the GiB a pool has
allocated, the GiB of a project's shares and the count and GiB of its snapshots, the
last export id of a backend's Ganesha.

One counter change is one upsert, added to the caller's transaction with the change it
counts: written at the revision read, or created only if still absent. A concurrent
change of the counter therefore fails the whole transaction (ABORTED), to be retried
on a fresh read; two writers can never both count from the same value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from sharemesh.state.v1 import records_pb2

from . import export_ids
from .coordination import Store, Txn, Versioned, keys

M = TypeVar("M", bound=Message)


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
    """A project's usage: the GiB of its shares (`share_gib`), or the count (`snapshots`)
    or GiB (`snapshot_gib`) of its snapshots; one record holds all three."""
    key = keys.usage_key(store.root, project)
    return await read(store, key, records_pb2.ProjectUsage, field)


async def read_export_ids(store: Store, backend: str) -> Counter[records_pb2.ExportIdCounter]:
    key = keys.export_ids_key(store.root, backend)
    return await read(store, key, records_pb2.ExportIdCounter, "last_export_id")


async def take_export_id(store: Store, txn: Txn, backend: str, quarantine_seconds: float) -> int:
    """Adds to `txn` the taking of an Export_Id on the backend's Ganesha (`backend` is its
    short name): the oldest released id past its quarantine, else the next new one. A
    racing taker fails the txn, as for every counter."""
    ids = await read_export_ids(store, backend)
    oldest, _, _ = await store.list(
        keys.released_export_ids_prefix(store.root, backend), records_pb2.ReleasedExportId, limit=1
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
