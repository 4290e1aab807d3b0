"""Deleting a share, whichever way it is served: whoever serves it on its tenant network
lets go of it, the backend deletes it, and its record goes from etcd with its rules,
giving back its capacity, quota and export id; a delete the backend refuses leaves the
share in ERROR with the reason, unless it is forced."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sharemesh.runtime import errors, ledger, lifecycle, operations
from sharemesh.runtime.coordination import Mutex, Txn, Versioned, keys
from sharemesh.runtime.errors import ShareMeshError
from sharemesh.state.v1 import records_pb2

from ..drivers import ShareSpec
from . import _records
from ._common import Backend, Rules, Strategy

log = logging.getLogger(__name__)


class Deletion:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def delete(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: Rules,
        spec: ShareSpec,
        lock: Mutex,
        strategy: Strategy,
        failure_of: Callable[[ShareMeshError], ShareMeshError],
    ) -> None:
        """`failure_of` turns what the backend raised into the failure to record (it
        raises a transient fault again, to be retried while there is time)."""
        record = found.value
        export_gone = True
        try:
            # Whoever serves it on its tenant network lets go of it before the backend.
            await strategy.serve_network(record)
            await self._backend.driver.delete_share(spec)
        except ShareMeshError as failure:
            error = failure_of(failure)
            if not record.spec.force_delete:
                await self.refuse(found, error, lock)
                return
            log.warning(
                "force-deleting %s although the backend failed: %s",
                record.spec.share.name,
                error.message,
            )
            export_gone = False
        await self._forget(found, rules, lock, export_gone)
        log.info("deleted %s", record.spec.share.name)
        try:
            # Once the record is gone, the share's server on its network puts its export
            # id into quarantine (while it was being deleted, the id stayed its own).
            await strategy.serve_network(record, gone=True)
        except ShareMeshError as error:  # the next sync of the network does it then
            log.info(
                "network %s not synced after a delete: %s", record.spec.share.share_network, error
            )

    async def _forget(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: Rules,
        lock: Mutex,
        export_gone: bool,
    ) -> None:
        """Removes a share gone from its backend from etcd, with its rules, and gives back
        its capacity, quota and export id; the id only if its export is gone (a forced
        delete may leave it live, and no other share may get its id then).

        Concurrent deletes race only for the pool's and project's counters: the ledger
        counts them again on a race, rather than redoing the backend's work, which a
        retry of the whole sync would."""
        store = self._backend.store
        record = found.value
        lifecycle.share.released(record)

        async def build() -> Txn:
            txn = store.txn().fence(lock)
            for rule in rules:
                txn.delete(rule.key, rule.mod_revision)
                await operations.finish_for_deleted(store, txn, rule.value.pending_operations)
            if export_gone:
                _records.release_export_id(self._backend, txn, record)
            _records.unindex(self._backend, txn, record)
            txn.delete(found.key, found.mod_revision)
            await operations.finish_for_deleted(store, txn, record.pending_operations)
            return txn

        async def count(txn: Txn) -> None:
            held = records_pb2.ShareRecord()  # `release` counts down its copy
            held.CopyFrom(record)
            await _records.release(store, txn, held)

        counters = (
            keys.usage_key(store.root, record.project),
            keys.pool_allocation_key(store.root, record.placement.pool),
        )
        # The share's last write: the lock goes with it.
        await ledger.commit_counted(store, counters, build, count, lock.commit_releasing)

    async def refuse(
        self, found: Versioned[records_pb2.ShareRecord], error: ShareMeshError, lock: Mutex
    ) -> None:
        """The share stays, in ERROR with the reason, to be deleted again (with `force`
        to drop the record whatever the backend says)."""
        record = found.value
        error = errors.for_tenant(error, f"delete of {record.spec.share.name}", log)
        lifecycle.share.delete_refused(record, error.message)
        txn = self._backend.store.txn().fence(lock)
        await _records.finish(self._backend.store, txn, found, error=error)
        await txn.commit()
