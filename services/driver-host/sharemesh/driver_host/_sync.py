"""Making a share on this backend true to its etcd record: create, grow, apply the
whole rule set, or delete, then record the result and finish the waiting operations
in one transaction fenced by the share's lock. This is the orchestration (the lock,
retries, the deadline, recording the outcome); how a share is made true on the backend
is its strategy's (see `strategies`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from sharemesh import network
from sharemesh.runtime import errors, lifecycle, operations, retry, telemetry
from sharemesh.runtime.coordination import Mutex, Session, Store, Txn, Versioned, keys
from sharemesh.runtime.errors import (
    Aborted,
    FencedOut,
    NotFound,
    ShareMeshError,
    Unavailable,
)
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2

from . import strategies
from ._snapshots import SnapshotSync, settled, snapshot_spec
from .drivers import Driver, Progress, ShareSpec, SnapshotSpec, progress_to
from .strategies import _records, rules_of, spec_of

log = logging.getLogger(__name__)

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
_ATTEMPTS = 8


def _settled(
    record: records_pb2.ShareRecord, rules: list[Versioned[records_pb2.AccessRuleRecord]]
) -> bool:
    """Whether the share and its rules are recorded as true, with nothing waiting. An
    ACTIVE share's message (why its last grow failed) stays until its next change: a
    sync that merely runs again (a nudge that arrived during the grow) must not wipe it."""
    return (
        lifecycle.share.state(record) == Share.ACTIVE
        and not record.pending_operations
        and all(
            (r.value.rule.state == AccessRule.ACTIVE or not lifecycle.access_rule.in_force(r.value))
            and not r.value.pending_operations
            and not r.value.delete_requested
            for r in rules
        )
    )


class ShareSync:
    def __init__(
        self,
        store: Store,
        session: Session,
        driver: Driver,
        backend: str,
        peers: Peers,
        max_attempts: int,
        host: str,
        retry_deadline_seconds: float = 600.0,
        export_id_quarantine_seconds: float = 3600.0,
    ) -> None:
        self._store = store
        self._retry_deadline = retry_deadline_seconds
        self._stopping = asyncio.Event()
        self._session = session
        self._driver = driver
        self._peers = peers
        self._max_attempts = max_attempts
        self.backend = backend  # `backends/{name}`
        self._backend = strategies.Backend(store, driver, backend, host, peers)
        self._flat = strategies.Flat(self._backend)
        self._behind_gateway = strategies.BehindGateway(self._backend)
        # Set when this backend handles share servers (mode 1); otherwise shares on
        # share networks go through the host's gateway (mode 2).
        self._on_share_server: strategies.OnShareServer | None = None
        self._deletion = strategies.Deletion(self._backend)
        self._snapshots = SnapshotSync(self._backend, export_id_quarantine_seconds)

    def use_share_servers(self, servers: network.NetworkServers) -> None:
        self._on_share_server = strategies.OnShareServer(self._backend, servers)

    def _strategy_of(self, record: records_pb2.ShareRecord) -> strategies.Strategy:
        if not record.spec.share.share_network:
            return self._flat
        return self._on_share_server or self._behind_gateway

    def stop(self) -> None:
        """Syncs waiting to retry give up (the process is stopping)."""
        self._stopping.set()

    async def sync(self, name: str, waiting: Sequence[str] = ()) -> int | None:
        """Makes the share true to its record. A transient fault (a Ganesha that is
        restarting, a peer or etcd down for now) is retried with backoff; once the oldest
        operation waiting on the share has waited the retry deadline, one last try fails
        the waiting operations with UNAVAILABLE instead. With nothing waiting, the sync
        gives up at the deadline and leaves the share to the reconciler. `waiting`: the
        operations the watch shows the share waiting on, read with the lock.

        Returns the newest revision among the share, rules and snapshots it acted on
        (every change up to it was handled), or None if it left work to the reconciler."""
        backoff = retry.Backoff()
        started = time.time()
        final = False
        while True:
            try:
                return await self._sync_locked(name, final, waiting)
            except Unavailable as error:
                retry.unless_cancelled(error)
                if self._stopping.is_set():
                    raise
                log.info("sync of %s met a transient fault; retrying: %s", name, error.message)
            await backoff.wait(self._stopping)
            try:
                since = await self._waiting_since(name)
            except Unavailable:
                continue  # etcd is still away: nothing can be failed without it anyway
            if since is None and retry.past_deadline(started, self._retry_deadline):
                raise Unavailable(f"sync of {name} still failing after the retry deadline")
            final = retry.past_deadline(since, self._retry_deadline)

    async def _waiting_since(self, name: str) -> float | None:
        found = await self._store.get(self._store.key_of(name), records_pb2.ShareRecord)
        if found is None:
            return None
        rules, _ = await self._store.list_all(
            self._store.prefix_of(name, "accessRules"), records_pb2.AccessRuleRecord
        )
        pending = [*found.value.pending_operations]
        for rule in rules:
            pending.extend(rule.value.pending_operations)
        for snapshot in await self._snapshots.listed(name):
            pending.extend(snapshot.value.pending_operations)
        return await retry.waiting_since(self._store, pending)

    def _unless_final(self, error: ShareMeshError, final: bool) -> ShareMeshError:
        """A transient fault is raised, to be retried, until the deadline has passed;
        then it is the failure to report."""
        if not isinstance(error, Unavailable):
            return error
        if not final:
            raise error
        return Unavailable(
            f"gave up after retrying for {self._retry_deadline:.0f}s: {error.message}",
            reason="RETRY_DEADLINE_EXCEEDED",
        )

    async def _sync_locked(self, name: str, final: bool, waiting: Sequence[str]) -> int | None:
        key = self._store.key_of(name)
        children = [
            (self._store.prefix_of(name, "accessRules"), records_pb2.AccessRuleRecord),
            (self._store.prefix_of(name, "snapshots"), records_pb2.SnapshotRecord),
        ]
        mutex = Mutex(self._session, keys.lock_prefix(self._store.root, name))
        # The share, its rules, its snapshots and the operations it waits on at one
        # revision: read in the transaction that takes the lock when it is free, else the
        # first three in one of their own and the operations when they are finished.
        ranges = self._store.ranges_with(key, children)
        waits = [self._store.key_of(op) for op in waiting]
        async with mutex.lock([*ranges, *map(self._store.key_range, waits)]) as lock:
            reads = lock.reads
            for _ in range(_ATTEMPTS):
                try:
                    read_ops: dict[str, Versioned[records_pb2.OperationRecord] | None] = {}
                    if reads is not None:
                        read = await self._store.decode_with(
                            reads[: len(ranges)], records_pb2.ShareRecord, children
                        )
                        for op, op_read in zip(waits, reads[len(ranges) :], strict=True):
                            read_ops[op] = (
                                await self._store.decode_with(
                                    [op_read], records_pb2.OperationRecord, []
                                )
                            )[0]
                    else:
                        read = await self._store.get_with(key, records_pb2.ShareRecord, children)
                    reads = None  # a race reads afresh
                    return await self._sync_once(read, lock, final, read_ops)
                except FencedOut:
                    raise  # the lock is lost (so is the lease): the next holder finishes
                except Aborted as race:  # a rule or the share changed meanwhile: again
                    log.debug("sync of %s raced (%s); again", name, race)
            log.warning("sync of %s kept racing; the reconciler will finish it", name)
            return None

    async def _sync_once(
        self,
        read: tuple[
            Versioned[records_pb2.ShareRecord] | None,
            list[list[Versioned[Any]]],
        ],
        lock: Mutex,
        final: bool,
        read_ops: operations.Read,
    ) -> int:
        found, (rules, snapshots) = read
        if found is None or found.value.placement.backend != self.backend:
            return 0
        with telemetry.continued(found.value.trace_parent, "sync share"):
            await self._sync_found(found, rules, snapshots, lock, final, read_ops)
        return max(item.mod_revision for item in (found, *rules, *snapshots))

    async def _sync_found(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
        snapshots: list[Versioned[records_pb2.SnapshotRecord]],
        lock: Mutex,
        final: bool,
        read_ops: operations.Read,
    ) -> None:
        spec = spec_of(found.value)
        failure_of = lambda e: self._unless_final(e, final)  # noqa: E731
        state = lifecycle.share.state(found.value)
        if state == Share.ERROR:
            # Only a delete (or an admin's reset) moves a share out of ERROR; its
            # snapshots still go when asked, and none is taken from it.
            await self._snapshots.settle_on_error(found.value, spec, snapshots, lock, failure_of)
            return
        strategy = self._strategy_of(found.value)
        if state == Share.DELETING:
            try:
                await self._snapshots.delete_all(found, snapshots, spec, lock, failure_of)
            except ShareMeshError as refused:
                await self._deletion.refuse(found, refused, lock)
                return
            await self._deletion.delete(found, rules, spec, lock, strategy, failure_of)
            return
        rules_changed = any(r.value.pending_operations or r.value.delete_requested for r in rules)
        try:
            source = await self._source_of(found.value)
            if lifecycle.share.pending_revert(found.value):
                found = await self._snapshots.revert(found, spec, lock)
            with progress_to(self._progress_of(found.value)):
                found, locations = await strategy.realize(found, spec, rules, lock, source)
            if rules_changed:
                # Before the rule changes are recorded as done: a revoked client must
                # lose its snapshots too, and a failure here leaves the changes waiting.
                await self._snapshots.export_all(found.value, spec, snapshots, rules)
        except ShareMeshError as error:
            await self._fail(found, rules, spec, self._unless_final(error, final), lock)
            return
        record = found.value
        served = [
            share_pb2.ExportLocation(path=e.path, nfs_port=e.nfs_port, mount_port=e.mount_port)
            for e in locations
        ]
        snapshots_to_sync = not settled(snapshots) or rules_changed  # else nothing to write
        recorded = list(record.status.export_locations)
        if not _settled(record, rules) or served not in ([], recorded):
            txn = self._store.txn().fence(lock)
            if source is not None:
                await self._release_source(txn, record)
            lifecycle.share.realized(record, served)
            await self._settle_rules(txn, rules)
            await _records.finish(
                self._store, txn, found, response=lifecycle.share.public(record), read=read_ops
            )
            if snapshots_to_sync:
                await txn.commit()
            else:  # the last write of this sync: the lock goes with it
                await lock.commit_releasing(txn)
        if snapshots_to_sync:
            await self._snapshots.sync(found, spec, snapshots, rules, lock, failure_of)

    def _progress_of(self, record: records_pb2.ShareRecord) -> Progress:
        """What the driver reports of a long call (a clone) goes into the metadata of the
        operations that wait for the share."""
        waiting = list(record.pending_operations)

        async def tell(percent: int, detail: str) -> None:
            for name in waiting:
                found = await self._store.get(self._store.key_of(name), records_pb2.OperationRecord)
                if found is None or found.value.operation.done:
                    continue
                operations.set_progress(found.value, detail, percent)
                try:
                    await self._store.txn().put(found.key, found.value, found.mod_revision).commit()
                except Aborted:
                    pass  # finished meanwhile; the next report tries again

        return tell

    async def _release_source(self, txn: Txn, record: records_pb2.ShareRecord) -> None:
        """A share made from a snapshot no longer holds it (the api refuses the
        snapshot's delete while a share is being made from it)."""
        found = await self._store.get(
            self._store.key_of(record.spec.share.source_snapshot), records_pb2.SnapshotRecord
        )
        if found is not None and record.spec.share.name in found.value.clones:
            found.value.clones.remove(record.spec.share.name)
            txn.put(found.key, found.value, found.mod_revision)

    async def _source_of(self, record: records_pb2.ShareRecord) -> SnapshotSpec | None:
        """The snapshot a share not made yet is to be made from, if any."""
        if record.status.realized_size_gib or not record.spec.share.source_snapshot:
            return None
        name = record.spec.share.source_snapshot
        snapshot = await self._store.get(self._store.key_of(name), records_pb2.SnapshotRecord)
        share = await self._store.get(
            self._store.key_of(name.rsplit("/snapshots/", 1)[0]), records_pb2.ShareRecord
        )
        if snapshot is None or share is None:
            raise NotFound(f"{name}, the snapshot to make the share from, is gone")
        return snapshot_spec(share.value, snapshot.value)

    async def serve_networks(self, shares: list[Versioned[records_pb2.ShareRecord]]) -> None:
        """Every share server of this backend made true (see OnShareServer.serve_all)."""
        if self._on_share_server is not None:
            await self._on_share_server.serve_all(shares)

    async def ensure(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
        snapshots: Sequence[Versioned[records_pb2.SnapshotRecord]] = (),
    ) -> None:
        """After a restart: mount and export an ACTIVE share again, with `rules` (its
        rules, as the caller's watch holds them), and its READY snapshots' exports."""
        # A share on a network is exported here to nobody (or a proxying gateway's
        # links): its tenants' rules apply at its gateway or share server.
        record = found.value
        spec = spec_of(record)
        if not record.spec.share.share_network:
            backend_rules = rules_of(rules)
        elif record.status.HasField("gateway_access"):
            backend_rules = self._behind_gateway.backend_rules(spec)
        else:
            backend_rules = []
        await self._driver.ensure_share(spec, backend_rules)
        await self._snapshots.ensure(record, spec, list(snapshots), rules)

    async def tell_gateways(self, shares: list[Versioned[records_pb2.ShareRecord]]) -> None:
        """After `ensure` mounted the shares again, each network's gateway syncs once."""
        await self._behind_gateway.tell(shares)

    async def _settle_rules(
        self, txn: Txn, rules: list[Versioned[records_pb2.AccessRuleRecord]]
    ) -> None:
        for rule in rules:
            pending = list(rule.value.pending_operations)
            if rule.value.delete_requested:
                txn.delete(rule.key, rule.mod_revision)
                await operations.finish_pending(self._store, txn, pending)
            elif pending or rule.value.rule.state not in (AccessRule.ACTIVE, AccessRule.ERROR):
                lifecycle.access_rule.applied(rule.value)
                del rule.value.pending_operations[:]
                txn.put(rule.key, rule.value, rule.mod_revision)
                await operations.finish_pending(self._store, txn, pending, response=rule.value.rule)

    async def _fail(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
        spec: ShareSpec,
        error: ShareMeshError,
        lock: Mutex,
    ) -> None:
        """A create that failed is undone on the backend and gives its capacity back; a
        resize that failed leaves the share ACTIVE at its size, and its capacity as it was;
        any other change that failed leaves the share in ERROR with the reason."""
        record = found.value
        error = errors.for_tenant(error, record.spec.share.name, log)
        txn = self._store.txn().fence(lock)
        if record.status.realized_size_gib == 0:
            try:
                await self._driver.delete_share(spec)
            except ShareMeshError as undo:  # it keeps its place until it is deleted
                log.warning("%s could not be undone: %s", record.spec.share.name, undo.message)
            else:
                await _records.release(self._store, txn, record)
                # A create that ran out of time for a transient fault fails; any other
                # failure may fare better on another pool.
                if len(record.placement.tried_pools) + 1 < self._max_attempts and not isinstance(
                    error, Unavailable
                ):
                    await self._place_elsewhere(txn, found, error)
                    return
        realized = record.status.realized_size_gib
        if realized > 0 and lifecycle.share.size_of(record) != realized:
            given_back = lifecycle.share.resize_failed(record, error.message)
            await _records.release(self._store, txn, record, given_back)
        elif lifecycle.share.state(record) != Share.ACTIVE or record.pending_operations:
            lifecycle.share.failed(record, error.message)
        # else only rule changes waited: they fail below, and the share keeps serving the
        # rule set in force (a refused export keeps its last accepted version).
        for rule in rules:
            if rule.value.pending_operations:
                await operations.finish_pending(
                    self._store, txn, rule.value.pending_operations, error=error
                )
                del rule.value.pending_operations[:]
                lifecycle.access_rule.failed(rule.value, error.message)
                txn.put(rule.key, rule.value, rule.mod_revision)
        await _records.finish(self._store, txn, found, error=error)
        await txn.commit()

    async def _place_elsewhere(
        self, txn: Txn, found: Versioned[records_pb2.ShareRecord], error: ShareMeshError
    ) -> None:
        """Hands a create that failed here back to the scheduler, which skips this pool."""
        record = found.value
        _records.unindex(self._backend, txn, record)
        _records.release_export_id(self._backend, txn, record)
        # Which pool failed is for admins (Share.pool is theirs); the log names it.
        failed_pool = lifecycle.share.retried_elsewhere(record, error.message)
        txn.put(found.key, record, found.mod_revision)
        await txn.commit()
        log.info("%s failed on %s; asked for another pool", record.spec.share.name, failed_pool)
        name = record.spec.share.name
        self._peers.nudge(f"place {name}", lambda: self._peers.place_share(name))
