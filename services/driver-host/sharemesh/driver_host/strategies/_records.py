"""What a share holds in etcd beside its record, given back in the caller's transaction:
its capacity and quota (through the ledger), its export id, its index keys; and the
recording of an outcome with the operations that waited for it."""

from __future__ import annotations

import asyncio

from sharemesh.runtime import ledger, operations, quota
from sharemesh.runtime.coordination import Store, Txn, Versioned, keys
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

from ._common import Backend


async def finish(
    store: Store,
    txn: Txn,
    found: Versioned[records_pb2.ShareRecord],
    *,
    response: share_pb2.Share | None = None,
    error: Exception | None = None,
    read: operations.Read | None = None,
) -> None:
    """Writes the record, compared with it as read, and finishes what waited on it
    (the transition that changed it stamped it); `read`: those operations if read."""
    record = found.value
    pending = list(record.pending_operations)
    del record.pending_operations[:]
    txn.put(found.key, record, found.mod_revision)
    await operations.finish_pending(store, txn, pending, response=response, error=error, read=read)


async def release(
    store: Store, txn: Txn, record: records_pb2.ShareRecord, gib: int | None = None
) -> None:
    """Gives the share's reservation (or `gib` of it) back to its pool and project; a
    negative `gib` takes that much again (a shrink that failed). All of it given back,
    the share no longer holds a place in its project's count (quota.holds_place)."""
    gib = record.allocated_gib if gib is None else gib
    if not gib:
        return
    # Asked together, one read: this runs in the counters' turn, which deletes wait for.
    _, allocation = await asyncio.gather(
        quota.adjust(store, txn, record.project, -gib, -1 if gib == record.allocated_gib else 0),
        ledger.read_pool(store, record.placement.pool),
    )
    if allocation.found is not None:
        allocation.add(txn, -gib)
    record.allocated_gib -= gib


def release_export_id(backend: Backend, txn: Txn, record: records_pb2.ShareRecord) -> None:
    """Gives the share's Export_Id back, to rest in quarantine; its export is gone."""
    ledger.release_export_id(backend.store, txn, backend.short_name, record.export_id)


def host_index_key(store: Store, record: records_pb2.ShareRecord) -> str:
    return keys.host_index_key(
        store.root, record.status.host, record.spec.share.share_network, record.spec.share.name
    )


def unindex(backend: Backend, txn: Txn, record: records_pb2.ShareRecord) -> None:
    """The share leaves this backend (and its host's gateway): so do its index keys."""
    share = record.spec.share
    txn.delete(
        keys.backend_index_key(
            backend.store.root, backend.short_name, share.name, share.share_network
        )
    )
    if record.status.host and record.spec.share.share_network:
        txn.delete(host_index_key(backend.store, record))
