"""The mesh's counters, kept in etcd beside what they count: the GiB a pool has
allocated, the GiB a project's shares hold, the last export id of a backend's Ganesha.

One counter change is one upsert, added to the caller's transaction with the change it
counts: written at the revision read, or created only if still absent. A concurrent
change of the counter therefore fails the whole transaction (ABORTED), to be retried
on a fresh read; two writers can never both count from the same value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from sharemesh.state.v1 import records_pb2

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
        record = self.record_type()
        if self.found is not None:
            record.CopyFrom(self.found.value)
        setattr(record, self.field, value)
        txn.put(self.key, record, self.found.mod_revision if self.found else None)
        if self.found is None:
            txn.check(self.key, 0)  # created once: a racing creator fails this txn
        return value

    def add(self, txn: Txn, delta: int) -> int:
        """Adds to `txn` the change by `delta` (never below 0); returns the new value."""
        return self.set(txn, max(self.value + delta, 0))


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


async def read_usage(store: Store, project: str) -> Counter[records_pb2.ProjectUsage]:
    key = keys.usage_key(store.root, project)
    return await read(store, key, records_pb2.ProjectUsage, "share_gib")


async def read_export_ids(store: Store, backend: str) -> Counter[records_pb2.ExportIdCounter]:
    key = keys.export_ids_key(store.root, backend)
    return await read(store, key, records_pb2.ExportIdCounter, "last_export_id")
