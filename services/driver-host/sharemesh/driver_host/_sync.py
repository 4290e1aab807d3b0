"""Making a share on this backend true to its etcd record: create, grow, apply the
whole rule set, or delete, then record the result and finish the waiting operations
in one transaction fenced by the share's lock."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import grpc
from google.protobuf import empty_pb2

from sharemesh import network
from sharemesh.runtime import (
    controllers,
    errors,
    export_ids,
    ledger,
    lifecycle,
    operations,
    quota,
    retry,
    telemetry,
)
from sharemesh.runtime.coordination import Mutex, Session, Store, Txn, Versioned, keys
from sharemesh.runtime.errors import (
    Aborted,
    FencedOut,
    ShareMeshError,
    Unavailable,
    from_rpc_error,
)
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2

from .drivers import AccessRuleSpec, Driver, ExportLocation, ShareSpec

log = logging.getLogger(__name__)

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
_ATTEMPTS = 8
_COUNTER_ATTEMPTS = 20


def spec_of(record: records_pb2.ShareRecord) -> ShareSpec:
    return ShareSpec(
        share_id=record.share.uid,
        name=record.share.name,
        size_gib=record.share.size_gib,
        pool=record.pool.rsplit("/", 1)[-1],
        export_id=record.export_id,
        thick=record.thick_provisioned,
    )


def rules_of(rules: list[Versioned[records_pb2.AccessRuleRecord]]) -> list[AccessRuleSpec]:
    return [
        AccessRuleSpec(
            r.value.rule.access_to, AccessRule.AccessLevel.Name(r.value.rule.access_level)
        )
        for r in rules
        if not r.value.delete_requested
    ]  # type: ignore[arg-type]


def _settled(
    record: records_pb2.ShareRecord, rules: list[Versioned[records_pb2.AccessRuleRecord]]
) -> bool:
    """Whether the share and its rules are recorded as true, with nothing waiting."""
    return (
        record.share.state == Share.ACTIVE
        and not record.share.state_message
        and not record.pending_operations
        and record.realized_size_gib == record.share.size_gib
        and all(
            r.value.rule.state == AccessRule.ACTIVE
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
    ) -> None:
        self._store = store
        self._retry_deadline = retry_deadline_seconds
        self._stopping = asyncio.Event()
        # Set when this backend handles share servers (mode 1); otherwise shares on
        # share networks go through the host's gateway (mode 2).
        self._share_servers: network.NetworkServers | None = None
        self._network_locks: dict[str, asyncio.Lock] = {}
        self._host = host  # the host this backend (and its gateway) runs on
        self._session = session
        self._driver = driver
        self._peers = peers
        self._max_attempts = max_attempts
        self.backend = backend  # `backends/{name}`

    def use_share_servers(self, servers: network.NetworkServers) -> None:
        self._share_servers = servers

    def stop(self) -> None:
        """Syncs waiting to retry give up (the process is stopping)."""
        self._stopping.set()

    async def sync(self, name: str) -> None:
        """Makes the share true to its record. A transient fault (a Ganesha that is
        restarting, a peer or etcd down for now) is retried with backoff; once the oldest
        operation waiting on the share has waited the retry deadline, one last try fails
        the waiting operations with UNAVAILABLE instead. With nothing waiting, the sync
        gives up at the deadline and leaves the share to the reconciler."""
        backoff = retry.Backoff()
        started = time.time()
        final = False
        while True:
            try:
                await self._sync_locked(name, final)
                return
            except Unavailable as error:
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

    async def _sync_locked(self, name: str, final: bool) -> None:
        async with Mutex(self._session, keys.lock_prefix(self._store.root, name)).lock() as lock:
            for _ in range(_ATTEMPTS):
                try:
                    await self._sync_once(name, lock, final)
                    return
                except FencedOut:
                    raise  # the lock is lost (so is the lease): the next holder finishes
                except Aborted as race:  # a rule or the share changed meanwhile: again
                    log.debug("sync of %s raced (%s); again", name, race)
            log.warning("sync of %s kept racing; the reconciler will finish it", name)

    async def _sync_once(self, name: str, lock: Mutex, final: bool) -> None:
        found = await self._store.get(self._store.key_of(name), records_pb2.ShareRecord)
        if found is None or found.value.backend != self.backend:
            return
        with telemetry.continued(found.value.trace_parent, "sync share"):
            await self._sync_found(found, lock, final)

    async def _sync_found(
        self, found: Versioned[records_pb2.ShareRecord], lock: Mutex, final: bool
    ) -> None:
        name = found.value.share.name
        record = found.value
        if record.share.state == Share.ERROR and not record.delete_requested:
            return  # only a delete (or an admin's reset) moves a share out of ERROR
        rules, _ = await self._store.list_all(
            self._store.prefix_of(name, "accessRules"), records_pb2.AccessRuleRecord
        )
        spec = spec_of(record)
        if record.delete_requested:
            await self._delete(found, rules, spec, lock, final)
            return
        try:
            if record.share.share_network and self._share_servers is not None:
                found, locations = await self._realize_on_share_server(found, spec)
            elif record.share.share_network:
                found, locations = await self._realize_behind_gateway(found, spec, lock)
                record = found.value
            else:
                locations = await self._realize(record, spec, rules)
        except ShareMeshError as error:
            await self._fail(found, rules, spec, self._unless_final(error, final), lock)
            return
        served = [
            share_pb2.ExportLocation(path=e.path, nfs_port=e.nfs_port, mount_port=e.mount_port)
            for e in locations
        ]
        if _settled(record, rules) and served in ([], list(record.share.export_locations)):
            return  # already true and recorded so: a repeated sync writes nothing
        txn = self._store.txn().fence(lock)
        lifecycle.share.realized(record, served)
        await self._settle_rules(txn, rules)
        await self._finish(txn, found, response=record.share)
        await txn.commit()

    async def _realize(
        self,
        record: records_pb2.ShareRecord,
        spec: ShareSpec,
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
    ) -> list[ExportLocation]:
        desired = rules_of(rules)
        created = record.realized_size_gib == 0
        locations = await self._create_or_grow(record, spec)
        if created and not desired:
            return locations  # a new export already admits nobody
        await self._driver.update_access(spec, desired)
        return locations

    async def _create_or_grow(
        self, record: records_pb2.ShareRecord, spec: ShareSpec
    ) -> list[ExportLocation]:
        """Makes the share on the backend, or grows it to its recorded size; returns the
        backend's export locations when it made the share."""
        if record.realized_size_gib == 0:
            return await self._driver.create_share(spec)
        if record.share.size_gib > record.realized_size_gib:
            await self._driver.resize_share(spec, record.share.size_gib)
            lifecycle.share.grown(record)  # for real: a later failure must not undo it
        return []

    async def _export_on_backend(
        self, spec: ShareSpec, created: bool, rules: list[AccessRuleSpec]
    ) -> None:
        """The backend's side of a share served on a share network: mounted, and exported
        to `rules` (the gateways' links, or nobody). A new share is that already; one that
        existed is made so every time, because a share reset to ACTIVE after a failed
        delete may be neither, and the server would re-export an empty directory."""
        if not created or rules:
            await self._driver.update_access(spec, rules)

    async def _realize_behind_gateway(
        self, found: Versioned[records_pb2.ShareRecord], spec: ShareSpec, lock: Mutex
    ) -> tuple[Versioned[records_pb2.ShareRecord], list[ExportLocation]]:
        """A share on a share network, on this flat backend: the backend exports it to
        nobody, and the gateway on its host re-exports it into the tenant network with the
        tenant's rules. Done when the gateway has confirmed the export."""
        record = found.value
        created = record.realized_size_gib == 0
        await self._create_or_grow(record, spec)
        access = self._driver.gateway_access(spec)
        # A proxying gateway reads the backend's own export: grant the gateways' links.
        proxies = access.fsal == "PROXY_V4"
        storage = [AccessRuleSpec(str(network.STORAGE_RANGE), "READ_WRITE")] if proxies else []
        await self._export_on_backend(spec, created, storage)
        wanted = records_pb2.GatewayAccess(
            fsal=access.fsal,
            path=access.path,
            server=access.server,
            nfs_port=access.nfs_port,
            server_generation=access.server_generation,
        )
        if record.gateway_access != wanted or record.host != self._host:
            txn = self._store.txn().fence(lock)
            if record.host and record.host != self._host:
                txn.delete(self._host_index_key(record))
            record.gateway_access.CopyFrom(wanted)
            record.host = self._host
            txn.put(self._host_index_key(record), empty_pb2.Empty())
            txn.put(found.key, record, found.mod_revision)
            found = Versioned(record, await txn.commit(), found.create_revision, found.key)
        await self._sync_gateway(record)
        gateway = await self._store.get(
            keys.network_server_key(
                self._store.root, "gateways", record.host, record.share.share_network
            ),
            records_pb2.NetworkServerRecord,
        )
        if gateway is None:
            raise Unavailable(f"the gateway of {record.share.share_network} is not up")
        return found, [ExportLocation(*network.location(gateway.value, record.share.uid))]

    async def _realize_on_share_server(
        self, found: Versioned[records_pb2.ShareRecord], spec: ShareSpec
    ) -> tuple[Versioned[records_pb2.ShareRecord], list[ExportLocation]]:
        """A share on a share network, on a backend that handles share servers: the
        backend's own server on that network exports it (set up with the network's first
        share); its flat export admits nobody."""
        record = found.value
        created = record.realized_size_gib == 0
        await self._create_or_grow(record, spec)
        await self._export_on_backend(spec, created, [])
        server = await self._serve_network(record.share.share_network, record, making=True)
        assert server is not None
        return found, [ExportLocation(*network.location(server, record.share.uid))]

    async def serve_networks(self, shares: list[Versioned[records_pb2.ShareRecord]]) -> None:
        """Every share server of this backend made true: after a restart (a server the
        mesh stopped is rebuilt, one that died unseen is restarted and supervised), and
        on each reconcile (a server no share needs any more goes)."""
        if self._share_servers is None:
            return
        networks = {s.value.share.share_network for s in shares if s.value.share.share_network}
        networks |= {server.share_network for server in await self._share_servers.owned()}
        for share_network in sorted(networks):
            try:
                await self._serve_network(share_network)
            except ShareMeshError as error:
                log.warning("share server of %s not in order: %s", share_network, error.message)

    async def _serve_network(
        self,
        share_network: str,
        current: records_pb2.ShareRecord | None = None,
        *,
        making: bool = False,
    ) -> records_pb2.NetworkServerRecord | None:
        """Makes this backend's share server on the network export exactly its live
        shares there (with `current` as the syncing share's record, served if it is
        being `making`); none left tears the server down."""
        assert self._share_servers is not None
        # One network at a time: each sync builds the server's whole export set, so two
        # at once could each drop the share the other is adding.
        async with self._network_locks.setdefault(share_network, asyncio.Lock()):
            return await self._serve_network_locked(share_network, current, making)

    async def _shares_on(
        self, share_network: str, including: records_pb2.ShareRecord | None
    ) -> list[records_pb2.ShareRecord]:
        """This backend's shares on the network, found through the index placement
        wrote (never a range over the mesh), and `including` as given."""
        shares = [] if including is None else [including]
        root, backend = self._store.root, self.backend.split("/")[-1]
        indexed, _ = await controllers.list_prefix(
            self._store, keys.backend_index_prefix(root, backend, share_network), empty_pb2.Empty
        )
        for index in indexed:
            name = keys.share_of_index_key(index.key)
            if including is not None and name == including.share.name:
                continue
            found = await self._store.get(self._store.key_of(name), records_pb2.ShareRecord)
            if found is not None and found.value.backend == self.backend:
                shares.append(found.value)
        return shares

    async def _serve_network_locked(
        self, share_network: str, current: records_pb2.ShareRecord | None, making: bool
    ) -> records_pb2.NetworkServerRecord | None:
        assert self._share_servers is not None
        server = await self._store.get(
            self._share_servers.key(share_network), records_pb2.NetworkServerRecord
        )
        exported = set(server.value.export_ids) if server else set()
        served, retained = [], []
        for share in await self._shares_on(share_network, current):
            if making and share is current:
                pass
            elif share.delete_requested or not (
                # Realized, or being made by another sync that got here first (not one
                # whose create failed: its filesystem is gone).
                share.realized_size_gib
                or (share.share.uid in exported and share.share.state == Share.CREATING)
            ):
                retained.append(share.share.uid)  # not served now; its id stays its own
                continue
            rules, _ = await self._store.list_all(
                self._store.prefix_of(share.share.name, "accessRules"), records_pb2.AccessRuleRecord
            )
            path = self._driver.gateway_access(spec_of(share)).path
            served.append(
                network.Served(share.share.uid, path, network.tenant_rules(r.value for r in rules))
            )
        return await self._share_servers.serve(share_network, served, retained)

    async def _sync_gateway(self, record: records_pb2.ShareRecord) -> None:
        try:
            await self._peers.sync_share_network(record.host, record.share.share_network)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        except ConnectionError as error:
            raise Unavailable(str(error)) from None

    async def ensure(self, found: Versioned[records_pb2.ShareRecord]) -> None:
        """After a restart: mount and export an ACTIVE share again, with its rules."""
        rules, _ = await self._store.list_all(
            self._store.prefix_of(found.value.share.name, "accessRules"),
            records_pb2.AccessRuleRecord,
        )
        # A share behind a gateway is exported to nobody here: its rules apply there.
        record = found.value
        behind_gateway = bool(record.share.share_network)
        await self._driver.ensure_share(spec_of(record), [] if behind_gateway else rules_of(rules))

    async def tell_gateways(self, shares: list[Versioned[records_pb2.ShareRecord]]) -> None:
        """A gateway serves a share's filesystem only once it is mounted: after `ensure`
        mounted them again, each network's gateway syncs once."""
        told = set()
        for found in shares:
            record = found.value
            network_of = (record.host, record.share.share_network)
            if not record.HasField("gateway_access") or network_of in told:
                continue
            told.add(network_of)
            try:
                await self._sync_gateway(record)
            except ShareMeshError as error:  # its own reconcile catches up
                log.info("gateway of %s not told: %s", record.share.share_network, error.message)

    async def _settle_rules(
        self, txn: Txn, rules: list[Versioned[records_pb2.AccessRuleRecord]]
    ) -> None:
        for rule in rules:
            pending = list(rule.value.pending_operations)
            if rule.value.delete_requested:
                txn.delete(rule.key, rule.mod_revision)
                await operations.finish_pending(self._store, txn, pending)
            elif pending or rule.value.rule.state != AccessRule.ACTIVE:
                lifecycle.access_rule.applied(rule.value)
                del rule.value.pending_operations[:]
                txn.put(rule.key, rule.value, rule.mod_revision)
                await operations.finish_pending(self._store, txn, pending, response=rule.value.rule)

    async def _finish(
        self,
        txn: Txn,
        found: Versioned[records_pb2.ShareRecord],
        *,
        response: Share | None = None,
        error: Exception | None = None,
    ) -> None:
        record = found.value
        pending = list(record.pending_operations)
        del record.pending_operations[:]
        record.share.update_time.CopyFrom(operations.now())
        txn.put(found.key, record, found.mod_revision)
        await operations.finish_pending(self._store, txn, pending, response=response, error=error)

    async def _delete(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
        spec: ShareSpec,
        lock: Mutex,
        final: bool,
    ) -> None:
        record = found.value
        export_gone = True
        try:
            # Whoever serves it on its tenant network lets go of it before the backend.
            await self._sync_network_server(record)
            await self._driver.delete_share(spec)
        except ShareMeshError as failure:
            error = self._unless_final(failure, final)
            if not record.force_delete:
                await self._refuse_delete(found, error, lock)
                return
            log.warning(
                "force-deleting %s although the backend failed: %s",
                record.share.name,
                error.message,
            )
            export_gone = False
        await self._forget(found, rules, lock, export_gone)
        log.info("deleted %s", record.share.name)
        await self._let_network_server_forget(record)

    async def _sync_network_server(
        self, record: records_pb2.ShareRecord, *, gone: bool = False
    ) -> None:
        """Has whoever serves the share on its tenant network (the host's gateway, or this
        backend's share server) serve what etcd says now (`record` as it is, unless it
        is `gone` from etcd)."""
        if record.HasField("gateway_access"):
            await self._sync_gateway(record)
        elif record.share.share_network and self._share_servers is not None:
            await self._serve_network(record.share.share_network, None if gone else record)

    async def _let_network_server_forget(self, record: records_pb2.ShareRecord) -> None:
        """Once the record is gone, the share's server on its network puts the share's
        export id into quarantine (while it was being deleted, the id stayed its own)."""
        try:
            await self._sync_network_server(record, gone=True)
        except ShareMeshError as error:  # the next sync of the network does it then
            log.info("network %s not synced after a delete: %s", record.share.share_network, error)

    async def _forget(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
        lock: Mutex,
        export_gone: bool,
    ) -> None:
        """Removes a share gone from its backend from etcd, with its rules, and gives back
        its capacity, quota and export id; the id only if its export is gone (a forced
        delete may leave it live, and no other share may get its id then).

        Concurrent deletes race only for the pool's and project's counters; such a race
        is counted again here, rather than redoing the backend's work, which a retry of
        the whole sync would."""
        for attempt in range(_COUNTER_ATTEMPTS):
            record = records_pb2.ShareRecord()
            record.CopyFrom(found.value)
            txn = self._store.txn().fence(lock)
            for rule in rules:
                txn.delete(rule.key, rule.mod_revision)
                await operations.finish_for_deleted(self._store, txn, rule.value.pending_operations)
            await self._release(txn, record)
            if export_gone:
                self._release_export_id(txn, record)
            self._unindex(txn, record)
            txn.delete(found.key, found.mod_revision)
            await operations.finish_for_deleted(self._store, txn, record.pending_operations)
            try:
                await txn.commit()
                return
            except FencedOut:
                raise  # the lock is lost: whoever holds it now finishes
            except Aborted:
                now = await self._store.get(found.key, records_pb2.ShareRecord)
                if now is None or now.mod_revision != found.mod_revision:
                    raise  # the share itself changed: the whole sync decides again
                if attempt == _COUNTER_ATTEMPTS - 1:
                    raise
                # Many deletes at once all want the same counters: spread the retries.
                await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
                rules, _ = await self._store.list_all(
                    self._store.prefix_of(record.share.name, "accessRules"),
                    records_pb2.AccessRuleRecord,
                )

    async def _refuse_delete(
        self, found: Versioned[records_pb2.ShareRecord], error: ShareMeshError, lock: Mutex
    ) -> None:
        """A delete the backend refused leaves the share in ERROR with the reason, to be
        deleted again (with `force` to drop the record whatever the backend says)."""
        record = found.value
        error = errors.for_tenant(error, f"delete of {record.share.name}", log)
        lifecycle.share.delete_refused(record, error.message)
        txn = self._store.txn().fence(lock)
        await self._finish(txn, found, error=error)
        await txn.commit()

    async def _release(
        self, txn: Txn, record: records_pb2.ShareRecord, gib: int | None = None
    ) -> None:
        """Gives the share's reservation (or `gib` of it) back to its pool and project."""
        gib = record.allocated_gib if gib is None else gib
        if not gib:
            return
        allocation = await ledger.read_pool(self._store, record.pool)
        if allocation.found is None:
            return
        await quota.adjust(self._store, txn, record.project, -gib)
        allocation.add(txn, -gib)
        record.allocated_gib -= gib

    def _host_index_key(self, record: records_pb2.ShareRecord) -> str:
        root, share = self._store.root, record.share
        return keys.host_index_key(root, record.host, share.share_network, share.name)

    def _unindex(self, txn: Txn, record: records_pb2.ShareRecord) -> None:
        """The share leaves this backend (and its host's gateway): so do its index keys."""
        root, backend, share = self._store.root, self.backend.split("/")[-1], record.share
        txn.delete(keys.backend_index_key(root, backend, share.name, share.share_network))
        if record.host and record.share.share_network:
            txn.delete(self._host_index_key(record))

    def _release_export_id(self, txn: Txn, record: records_pb2.ShareRecord) -> None:
        """Gives the share's Export_Id back, to rest in quarantine; its export is gone."""
        if not record.export_id:
            return
        now = operations.now()
        backend = self.backend.split("/")[-1]
        key = keys.released_export_id_key(
            self._store.root, backend, now.ToMilliseconds(), record.export_id
        )
        txn.put(key, export_ids.released(record.export_id, now))

    async def _fail(
        self,
        found: Versioned[records_pb2.ShareRecord],
        rules: list[Versioned[records_pb2.AccessRuleRecord]],
        spec: ShareSpec,
        error: ShareMeshError,
        lock: Mutex,
    ) -> None:
        """A create that failed is undone on the backend and gives its capacity back; a
        grow that failed leaves the share ACTIVE at its size and gives back what it took;
        any other change that failed leaves the share in ERROR with the reason."""
        record = found.value
        error = errors.for_tenant(error, record.share.name, log)
        txn = self._store.txn().fence(lock)
        if record.realized_size_gib == 0:
            try:
                await self._driver.delete_share(spec)
            except ShareMeshError as undo:  # it keeps its place until it is deleted
                log.warning("%s could not be undone: %s", record.share.name, undo.message)
            else:
                await self._release(txn, record)
                # A create that ran out of time for a transient fault fails; any other
                # failure may fare better on another pool.
                if len(record.tried_pools) + 1 < self._max_attempts and not isinstance(
                    error, Unavailable
                ):
                    await self._place_elsewhere(txn, found, error)
                    return
        if record.share.size_gib > record.realized_size_gib > 0:
            await self._release(txn, record, lifecycle.share.grow_failed(record, error.message))
        else:
            lifecycle.share.failed(record, error.message)
        for rule in rules:
            if rule.value.pending_operations:
                await operations.finish_pending(
                    self._store, txn, rule.value.pending_operations, error=error
                )
                del rule.value.pending_operations[:]
                lifecycle.access_rule.failed(rule.value, error.message)
                txn.put(rule.key, rule.value, rule.mod_revision)
        await self._finish(txn, found, error=error)
        await txn.commit()

    async def _place_elsewhere(
        self, txn: Txn, found: Versioned[records_pb2.ShareRecord], error: ShareMeshError
    ) -> None:
        """Hands a create that failed here back to the scheduler, which skips this pool."""
        record = found.value
        self._unindex(txn, record)
        self._release_export_id(txn, record)
        # Which pool failed is for admins (Share.pool is theirs); the log names it.
        failed_pool = lifecycle.share.retried_elsewhere(record, error.message)
        txn.put(found.key, record, found.mod_revision)
        await txn.commit()
        log.info("%s failed on %s; asked for another pool", record.share.name, failed_pool)
        name = record.share.name
        self._peers.nudge(f"place {name}", lambda: self._peers.place_share(name))
