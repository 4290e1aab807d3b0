"""A share's snapshots made true on its backend, under the share's lock (ShareSync holds
it): taken, and exported read-only where the backend offers it; exported to the new
client list when the share's rules change; deleted; and the share reverted to one. Each
outcome is recorded with the operations that waited for it, fenced by the lock, in the
same transaction as the quota and export id it gives back (a delete that races another
process for the project's usage counts again, as a share's delete does)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sharemesh.runtime import errors, ledger, lifecycle, operations, quota
from sharemesh.runtime.coordination import Mutex, Txn, Versioned, keys
from sharemesh.runtime.errors import FailedPrecondition, NotFound, ShareMeshError, Unavailable
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, snapshot_pb2

from .drivers import ExportLocation, ShareSpec, SnapshotSpec
from .strategies import Backend, rules_of

log = logging.getLogger(__name__)

Snapshot = snapshot_pb2.Snapshot
SnapshotRecord = records_pb2.SnapshotRecord
Snapshots = list[Versioned[SnapshotRecord]]
Rules = list[Versioned[records_pb2.AccessRuleRecord]]
FailureOf = Callable[[ShareMeshError], ShareMeshError]


def snapshot_spec(share: records_pb2.ShareRecord, record: SnapshotRecord) -> SnapshotSpec:
    return SnapshotSpec(
        snapshot_id=record.snapshot.uid,
        name=record.snapshot.name,
        share_id=share.spec.share.uid,
        size_gib=record.snapshot.size_gib,
        export_id=record.export_id,
    )


def settled(snapshots: Snapshots) -> bool:
    """Whether every snapshot is recorded as true, with nothing waiting."""
    return all(
        s.value.snapshot.state in (Snapshot.READY, Snapshot.ERROR)
        and not s.value.delete_requested
        and not s.value.pending_operations
        for s in snapshots
    )


def _locations(found: Sequence[ExportLocation]) -> list[share_pb2.ExportLocation]:
    return [
        share_pb2.ExportLocation(path=e.path, nfs_port=e.nfs_port, mount_port=e.mount_port)
        for e in found
    ]


class SnapshotSync:
    def __init__(self, backend: Backend, export_id_quarantine_seconds: float) -> None:
        self._backend = backend
        self._store = backend.store
        self._driver = backend.driver
        self._quarantine = export_id_quarantine_seconds
        self._mountable: dict[str, bool] = {}

    async def listed(self, share: str) -> Snapshots:
        found, _ = await self._store.list_all(
            self._store.prefix_of(share, "snapshots"), SnapshotRecord
        )
        return found

    async def mountable(self, share: records_pb2.ShareRecord, spec: ShareSpec) -> bool:
        """Whether the share's snapshots are exported read-only: its pool offers it, and
        the share is flat (a share on a share network is reached through its network,
        which the backend's own export is not on)."""
        if share.spec.share.share_network:
            return False
        if spec.pool not in self._mountable:
            stats = await self._driver.stats()
            for pool in stats.pools:
                self._mountable[pool.name] = pool.offers.mount_snapshot_support
        return self._mountable.get(spec.pool, False)

    # ---- revert ----------------------------------------------------------------------

    async def revert(
        self, found: Versioned[records_pb2.ShareRecord], spec: ShareSpec, lock: Mutex
    ) -> Versioned[records_pb2.ShareRecord]:
        """Puts the snapshot's data back into the share, and records that at once (a
        repeat would wipe what clients wrote since); the caller then realizes the share
        (its rules, its record ACTIVE). Returns the record as written."""
        record = found.value
        name = lifecycle.share.pending_revert(record)
        snapshot = await self._store.get(self._store.key_of(name), SnapshotRecord)
        if snapshot is None:
            raise NotFound(f"{name} is gone; the share keeps its data")
        await self._driver.revert_to_snapshot(spec, snapshot_spec(record, snapshot.value))
        lifecycle.share.reverted(record)
        txn = self._store.txn().fence(lock).put(found.key, record, found.mod_revision)
        revision = await txn.commit()
        log.info("reverted %s to %s", record.spec.share.name, snapshot.value.snapshot.name)
        return Versioned(record, revision, found.create_revision, found.key)

    # ---- take, export, delete ----------------------------------------------------------

    async def sync(
        self,
        share: Versioned[records_pb2.ShareRecord],
        spec: ShareSpec,
        snapshots: Snapshots,
        rules: Rules,
        lock: Mutex,
        failure_of: FailureOf,
    ) -> None:
        """Every snapshot of the share made true: deleted or taken."""
        mountable = await self.mountable(share.value, spec)
        for found in snapshots:
            record = found.value
            if record.delete_requested:
                await self.delete(share.value, spec, found, lock, failure_of, forced=False)
            elif record.snapshot.state == Snapshot.CREATING:
                await self._take(share.value, spec, found, rules, lock, mountable, failure_of)

    async def export_all(
        self,
        share: records_pb2.ShareRecord,
        spec: ShareSpec,
        snapshots: Snapshots,
        rules: Rules,
    ) -> None:
        """The share's rules changed: each READY snapshot's export gets its new clients
        (a failure is the rule change's, raised)."""
        if not snapshots or not await self.mountable(share, spec):
            return
        for found in snapshots:
            record = found.value
            if record.snapshot.state == Snapshot.READY and record.export_id:
                await self._driver.export_snapshot(
                    spec, snapshot_spec(share, record), rules_of(rules)
                )

    async def settle_on_error(
        self,
        share: records_pb2.ShareRecord,
        spec: ShareSpec,
        snapshots: Snapshots,
        lock: Mutex,
        failure_of: FailureOf,
    ) -> None:
        """A share in ERROR: snapshots asked to go are deleted, and none waiting to be
        taken is taken from it; each of those fails, saying why."""
        in_error = FailedPrecondition(
            f"{share.spec.share.name} is in ERROR: no snapshot is taken of it",
            reason="SHARE_NOT_USABLE",
        )
        for found in snapshots:
            if found.value.delete_requested:
                await self.delete(share, spec, found, lock, failure_of, forced=False)
            elif found.value.snapshot.state == Snapshot.CREATING:
                await self._failed(share, spec, found, in_error, lock)

    async def ensure(
        self,
        share: records_pb2.ShareRecord,
        spec: ShareSpec,
        snapshots: Snapshots,
        rules: Rules,
    ) -> None:
        """After a restart: every READY snapshot of the share exported again."""
        if not snapshots or not await self.mountable(share, spec):
            return
        for found in snapshots:
            if found.value.snapshot.state == Snapshot.READY and found.value.export_id:
                try:
                    await self._driver.export_snapshot(
                        spec, snapshot_spec(share, found.value), rules_of(rules)
                    )
                except ShareMeshError as error:  # one refused export never stops the rest
                    if isinstance(error, Unavailable):
                        raise
                    log.warning("%s not exported again: %s", found.value.snapshot.name, error)

    async def _take(
        self,
        share: records_pb2.ShareRecord,
        spec: ShareSpec,
        found: Versioned[SnapshotRecord],
        rules: Rules,
        lock: Mutex,
        mountable: bool,
        failure_of: FailureOf,
    ) -> None:
        if mountable and not found.value.export_id:
            found = await self._with_export_id(found, lock)
        record = found.value
        snapshot = snapshot_spec(share, record)
        try:
            await self._driver.create_snapshot(spec, snapshot)
            served = (
                await self._driver.export_snapshot(spec, snapshot, rules_of(rules))
                if mountable
                else []
            )
        except ShareMeshError as failure:
            error = errors.for_tenant(failure_of(failure), record.snapshot.name, log)
            await self._failed(share, spec, found, error, lock)
            return
        lifecycle.snapshot.taken(record, _locations(served))
        pending = list(record.pending_operations)
        del record.pending_operations[:]
        txn = self._store.txn().fence(lock).put(found.key, record, found.mod_revision)
        await operations.finish_pending(self._store, txn, pending, response=record.snapshot)
        await txn.commit()
        log.info("took %s", record.snapshot.name)

    async def _with_export_id(
        self, found: Versioned[SnapshotRecord], lock: Mutex
    ) -> Versioned[SnapshotRecord]:
        """The snapshot's export id, taken and recorded before its export exists, so a
        crash in between finds it again instead of taking another."""
        txn = self._store.txn().fence(lock)
        found.value.export_id = await ledger.take_export_id(
            self._store, txn, self._backend.short_name, self._quarantine
        )
        txn.put(found.key, found.value, found.mod_revision)
        await txn.commit()
        again = await self._store.get(found.key, SnapshotRecord)
        if again is None:
            raise NotFound(f"{found.value.snapshot.name} is gone")
        return again

    async def _failed(
        self,
        share: records_pb2.ShareRecord,
        spec: ShareSpec,
        found: Versioned[SnapshotRecord],
        error: ShareMeshError,
        lock: Mutex,
    ) -> None:
        """Taking it failed for good: what the backend made of it goes, and it is ERROR
        (holding its quota until it is deleted, as in Manila)."""
        record = found.value
        try:
            await self._driver.delete_snapshot(spec, snapshot_spec(share, record))
        except ShareMeshError as undo:
            log.warning("%s could not be undone: %s", record.snapshot.name, undo.message)
            export_gone = False
        else:
            export_gone = True
        txn = self._store.txn().fence(lock)
        if export_gone:
            ledger.release_export_id(self._store, txn, self._backend.short_name, record.export_id)
            record.export_id = 0
        lifecycle.snapshot.failed(record, error.message)
        pending = list(record.pending_operations)
        del record.pending_operations[:]
        txn.put(found.key, record, found.mod_revision)
        await operations.finish_pending(self._store, txn, pending, error=error)
        await txn.commit()

    async def delete(
        self,
        share: records_pb2.ShareRecord,
        spec: ShareSpec,
        found: Versioned[SnapshotRecord],
        lock: Mutex,
        failure_of: FailureOf,
        *,
        forced: bool,
    ) -> ShareMeshError | None:
        """Deletes the snapshot from the backend, then its record, giving back its quota
        and export id. A refusal leaves it in ERROR with the reason (returned), unless
        `forced` (its share is being force-deleted): then its record goes anyway."""
        record = found.value
        export_gone = True
        try:
            await self._driver.delete_snapshot(spec, snapshot_spec(share, record))
        except ShareMeshError as failure:
            error = errors.for_tenant(failure_of(failure), record.snapshot.name, log)
            if not forced:
                lifecycle.snapshot.delete_refused(record, error.message)
                pending = list(record.pending_operations)
                del record.pending_operations[:]
                txn = self._store.txn().fence(lock).put(found.key, record, found.mod_revision)
                await operations.finish_pending(self._store, txn, pending, error=error)
                await txn.commit()
                return error
            log.warning("dropping %s although the backend failed: %s", record.snapshot.name, error)
            export_gone = False
        if not record.delete_requested:
            lifecycle.snapshot.delete_requested(record)
        lifecycle.snapshot.released(record)

        async def build() -> Txn:
            txn = self._store.txn().fence(lock).delete(found.key, found.mod_revision)
            if export_gone:
                ledger.release_export_id(
                    self._store, txn, self._backend.short_name, record.export_id
                )
            await operations.finish_for_deleted(self._store, txn, record.pending_operations)
            return txn

        async def count(txn: Txn) -> None:
            await quota.release_snapshot(
                self._store, txn, record.project, int(record.snapshot.size_gib)
            )

        # A race for the project's usage counts again; the backend's delete is done.
        usage = [keys.usage_key(self._store.root, record.project)]
        await ledger.commit_counted(self._store, usage, build, count)
        log.info("deleted %s", record.snapshot.name)
        return None

    async def delete_all(
        self,
        share: Versioned[records_pb2.ShareRecord],
        snapshots: Snapshots,
        spec: ShareSpec,
        lock: Mutex,
        failure_of: FailureOf,
    ) -> None:
        """Before the share goes: each of its snapshots (the api accepts the delete of a
        share with snapshots only when forced, and marks them deleted with it). A
        refusal (not forced) is raised: the share stays, with the snapshot."""
        for found in snapshots:
            forced = share.value.spec.force_delete
            if refused := await self.delete(
                share.value, spec, found, lock, failure_of, forced=forced
            ):
                raise refused
