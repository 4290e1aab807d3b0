"""Placing shares while this process leads: choose a pool, then write the placement
and the pool's reservation in one transaction fenced by leadership, so two schedulers
can never place at once and a pool is never over-allocated."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable

from google.protobuf import empty_pb2

from sharemesh.runtime import (
    capacity,
    errors,
    ledger,
    lifecycle,
    operations,
    quota,
    retry,
    telemetry,
)
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Leadership, Store, Txn, Versioned, keys
from sharemesh.runtime.errors import Aborted, ResourceExhausted, ShareMeshError, Unavailable
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, share_type_pb2

from ._placement import Candidate, NoValidPool, Placement, Request

log = logging.getLogger(__name__)

Share = share_pb2.Share
_ATTEMPTS = 10


class _BackendsMissing(Exception):
    """No registered pool takes the share, but a backend is not registered (yet): one
    that restarts may, so the create waits rather than fails."""


class Placer:
    def __init__(
        self,
        store: Store,
        peers: Peers,
        leadership: Leadership,
        placement: Placement,
        quotas: QuotaConfig,
        export_id_quarantine_seconds: float,
        unplaced: Callable[[str], Versioned[records_pb2.ShareRecord] | None],
        retry_deadline_seconds: float = 600.0,
        expected_backends: Iterable[str] = (),
    ) -> None:
        self._store = store
        # The watch's record of a share waiting for placement (None once it is placed).
        self._unplaced = unplaced
        # Per share, the revision this leader placed it at, until the watch shows that:
        # a nudge or watch event that queued it meanwhile then finds nothing to do.
        self._placed: dict[str, int] = {}
        # Backends the config names: one that is not registered (starting, or its lease
        # lapsed for a moment) may come back, so a share waits for it rather than fail.
        self._expected_backends = frozenset(expected_backends)
        self._retry_deadline = retry_deadline_seconds
        self._waiting: set[str] = set()  # shares whose placement waits to retry
        self._export_id_quarantine = export_id_quarantine_seconds
        self._quotas = quotas
        self._placement = placement
        self._peers = peers
        self._leadership = leadership
        # One decision at a time: each reads allocations that the previous one wrote.
        self._lock = asyncio.Lock()

    async def place(self, name: str) -> None:
        """Places the share and nudges its backend. While backends are missing or etcd
        is away, it retries with backoff (one loop per share; a nudge meanwhile joins
        it), until the create's deadline or the end of this leadership."""
        if name in self._waiting:
            return
        self._waiting.add(name)
        try:
            backoff = retry.Backoff()
            while not self._leadership.done.is_set():
                try:
                    backend = await self._place_racing(name)
                except (_BackendsMissing, Unavailable) as transient:
                    retry.unless_cancelled(transient)
                    log.info("placement of %s waits: %s", name, transient)
                    await backoff.wait(self._leadership.done)
                    continue
                if backend:  # its driver-host may be busy retrying: never wait on it here
                    self._peers.nudge(
                        f"sync {name}", functools.partial(self._peers.sync_share, backend, name)
                    )
                return
        finally:
            self._waiting.discard(name)

    def forget(self, name: str) -> None:
        """The watch no longer holds the share as waiting: its placement (if this leader
        made it) is seen, and no older event of it can follow."""
        self._placed.pop(name, None)

    async def _place_racing(self, name: str) -> str | None:
        for attempt in range(_ATTEMPTS):
            try:
                async with self._lock:
                    return await self._place_once(name, fresh=attempt > 0)
            except Aborted as race:  # the share or an allocation changed: decide again
                log.debug("placement of %s raced (%s); retrying", name, race)
        return None

    async def _place_once(self, name: str, fresh: bool) -> str | None:
        """Places the share if it waits for placement; returns its backend to nudge
        (None when it was placed already, or is not to be).

        What waits is what the watch holds: a nudge that comes before the watch's event
        finds nothing, and the event queues it. The first attempt places the watch's
        copy, which is current unless a write raced it; the transaction's compare then
        refuses it, and the next attempt reads etcd."""
        waiting = self._unplaced(name)
        if waiting is None or waiting.mod_revision <= self._placed.get(name, 0):
            return None
        if fresh:
            found = await self._store.get(self._store.key_of(name), records_pb2.ShareRecord)
            if found is None:
                return None
        else:
            record = records_pb2.ShareRecord()
            record.CopyFrom(waiting.value)  # the watch's copy is shared: never change it
            found = Versioned(record, waiting.mod_revision, waiting.create_revision, waiting.key)
        with telemetry.continued(found.value.trace_parent, "place share"):
            return await self._place_found(found)

    async def _place_found(self, found: Versioned[records_pb2.ShareRecord]) -> str | None:
        name, record = found.value.spec.share.name, found.value
        if record.placement.backend:  # placed already (a nudge and the watch both asked): its
            return None  # backend was nudged then, and its own watch has the record
        if lifecycle.share.state(record) != Share.CREATING:
            return None
        size = record.spec.share.size_gib
        txn = self._store.txn().fence(self._leadership)
        # Placements are one at a time: what they read, they read at once.
        over, (registered, allocations), request = await asyncio.gather(
            self._reserve(txn, record, size), self._candidates(), self._request(record)
        )
        if over is not None:
            await self._fail(found, over)
            return None
        candidates = registered
        if record.spec.share.source_snapshot:
            # A share made from a snapshot is a copy the source's backend makes in place:
            # only the source share's pool can hold it.
            source = await self._source_pool(record.spec.share.source_snapshot)
            candidates = [c for c in registered if c.pool == source]
        try:
            chosen = self._placement.choose(candidates, request)
        except NoValidPool as reason:
            await self._no_valid_pool(found, registered, allocations, str(reason))
            return None
        ledger.pool(self._store, chosen.pool, allocations.get(chosen.pool)).add(txn, size)
        try:
            export_id = await self._take_export_id(txn, chosen.backend.split("/")[-1])
        except ResourceExhausted as exhausted:
            await self._fail(found, exhausted)
            return None
        lifecycle.share.placed(
            record,
            backend=chosen.backend,
            pool=chosen.pool,
            export_id=export_id,
            thick=not capacity.provisions_thin(chosen.capabilities, request.extra_specs),
            availability_zone=chosen.availability_zone,
        )
        txn.put(found.key, record, found.mod_revision)
        # In the same transaction: the backend finds its shares through this key.
        backend = chosen.backend.split("/")[-1]
        index = keys.backend_index_key(
            self._store.root, backend, name, record.spec.share.share_network
        )
        txn.put(index, empty_pb2.Empty())
        revision = await txn.commit()
        if self._unplaced(name) is not None:  # until the watch shows the placement
            self._placed[name] = revision
        log.info("placed %s on %s", name, chosen.pool)
        return chosen.backend

    async def _reserve(
        self, txn: Txn, record: records_pb2.ShareRecord, size: int
    ) -> ResourceExhausted | None:
        """Adds the share's quota reservation to `txn`; why not, if the quota is full.
        It is reserved here, where placements are one at a time, and checked against the
        usage this txn compares, so racing creates and resizes cannot together overshoot
        it (the api's check is only a first look)."""
        try:
            await quota.reserve_share(self._store, txn, self._quotas, record.project, size)
        except ResourceExhausted as over:
            return over
        return None

    async def _source_pool(self, snapshot: str) -> str:
        share = snapshot.rsplit("/snapshots/", 1)[0]
        found = await self._store.get(self._store.key_of(share), records_pb2.ShareRecord)
        return found.value.placement.pool if found is not None else ""

    async def _take_export_id(self, txn: Txn, backend: str) -> int:
        """Export ids are unique per backend Ganesha; they are taken at placement."""
        return await ledger.take_export_id(self._store, txn, backend, self._export_id_quarantine)

    async def _candidates(
        self,
    ) -> tuple[list[Candidate], dict[str, Versioned[records_pb2.PoolAllocation]]]:
        backends, allocations = await asyncio.gather(
            self._peers.backends(), capacity.pool_allocations(self._store)
        )
        candidates = [
            Candidate(
                pool.name,
                backend.name,
                pool.total_gib,
                allocations[pool.name].value.allocated_gib if pool.name in allocations else 0,
                pool.capabilities,
                pool.availability_zone or pool.capabilities.get("availability_zone", ""),
            )
            for backend in backends
            for pool in backend.pools
        ]
        return candidates, allocations

    async def _request(self, record: records_pb2.ShareRecord) -> Request:
        specs: dict[str, str] = {}
        found = await self._store.get(
            self._store.key_of(record.spec.share.share_type), share_type_pb2.ShareType
        )
        if found is not None:
            specs = dict(found.value.extra_specs)
        if not record.spec.share.share_network:
            # A backend that handles share servers serves shares on share networks only.
            specs.setdefault("driver_handles_share_servers", "<is> False")
        return Request(
            record.spec.share.size_gib,
            specs,
            record.spec.share.availability_zone,
            frozenset(record.placement.tried_pools),
        )

    async def _no_valid_pool(
        self,
        found: Versioned[records_pb2.ShareRecord],
        candidates: list[Candidate],
        allocations: dict[str, Versioned[records_pb2.PoolAllocation]],
        reason: str,
    ) -> None:
        """No registered pool takes the share. If a backend is missing (none registered,
        or one the config names or whose pools hold allocations is not), it may take it
        once it is back: the
        create waits until its deadline, then fails UNAVAILABLE. Otherwise the pools
        that are there refused it for a reason of their own, and it fails now."""
        record = found.value
        registered = {candidate.backend for candidate in candidates}
        known = {pool.rsplit("/pools/", 1)[0] for pool in allocations} | self._expected_backends
        if candidates and known <= registered:
            size = record.spec.share.size_gib
            await self._fail(
                found,
                ResourceExhausted(f"no pool can hold {size} GiB: {reason}", reason="NO_VALID_POOL"),
            )
            return
        since = await retry.waiting_since(self._store, record.pending_operations)
        if since is None:
            since = record.spec.share.create_time.ToMicroseconds() / 1e6
        if not retry.past_deadline(since, self._retry_deadline):
            raise _BackendsMissing(f"no registered pool takes it ({reason}); a backend is down")
        await self._fail(
            found,
            Unavailable(
                f"no backend that could hold the share came back within "
                f"{self._retry_deadline:.0f}s ({reason})",
                reason="BACKEND_UNAVAILABLE",
            ),
        )

    async def _fail(self, found: Versioned[records_pb2.ShareRecord], error: ShareMeshError) -> None:
        record = found.value
        error = errors.for_tenant(error, record.spec.share.name, log)
        lifecycle.share.placement_failed(record, error.message)
        pending = list(record.pending_operations)
        del record.pending_operations[:]
        txn = self._store.txn().fence(self._leadership).put(found.key, record, found.mod_revision)
        await operations.finish_pending(self._store, txn, pending, error=error)
        await txn.commit()
