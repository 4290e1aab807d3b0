"""The driver-host process: one backend's driver, registered under this process's
lease, kept true to etcd by watches: informers over this backend's shares and their
rules feed a work queue whose workers sync one share at a time (`SyncShare` nudges
only enqueue). A slow resync of what is cached catches what a handler missed.

One sync per change: a change comes both as a nudge and as a watch event, and the
second one, queued while the first sync ran, is dropped when the caches show nothing
that sync did not handle (it cost a lock, a read and an export call per change)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from sharemesh import network
from sharemesh.driver.v1 import driver_service_pb2, driver_service_pb2_grpc
from sharemesh.runtime import (
    concurrency,
    controllers,
    ledger,
    lifecycle,
    metrics,
    migrations,
    names,
    operations,
    retry,
)
from sharemesh.runtime.config import BackendConfig, MeshConfig
from sharemesh.runtime.coordination import Versioned, _client, keys
from sharemesh.runtime.peers import Peers
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2, snapshot_pb2

from . import drivers
from ._sync import ShareSync

log = logging.getLogger(__name__)

Share = share_pb2.Share
Snapshot = snapshot_pb2.Snapshot
AccessRule = access_rule_pb2.AccessRule
ShareRecord = records_pb2.ShareRecord
RuleRecord = records_pb2.AccessRuleRecord
SnapshotRecord = records_pb2.SnapshotRecord
_WAITING = (Share.CREATING, Share.UPDATING, Share.DELETING)
_WORKERS = 16  # shares synced at once (each holds its share's etcd lock)
_READS_IN_FLIGHT = 32  # etcd reads at once while listing this backend's records
T = TypeVar("T")
M = TypeVar("M", bound=Message)


class DriverService(driver_service_pb2_grpc.DriverServiceServicer):
    def __init__(self, app: DriverHostApp) -> None:
        self._app = app

    async def SyncShare(  # noqa: N802
        self, request: driver_service_pb2.SyncShareRequest, context: grpc.aio.ServicerContext
    ) -> driver_service_pb2.SyncShareResponse:
        names.SHARE.parse("name", request.name)
        # A nudge: the work queue syncs the share soon; the watch would find it anyway.
        self._app.nudged(request.name)
        return driver_service_pb2.SyncShareResponse()

    async def GetBackend(  # noqa: N802
        self, request: driver_service_pb2.GetBackendRequest, context: grpc.aio.ServicerContext
    ) -> driver_service_pb2.GetBackendResponse:
        return driver_service_pb2.GetBackendResponse(backend=await self._app.registration())


class DriverHostApp:
    def __init__(self, context: Context, backend_name: str, own_servers: bool) -> None:
        self._context = context
        self._store = context.store
        self._config = context.config.backend(backend_name)
        self.backend = f"backends/{backend_name}"
        self._own_servers = own_servers
        self.driver = drivers.create(self._config.driver, self._config.options)
        self._peers = Peers(context.store)
        self._sync = ShareSync(
            context.store,
            context.session,
            self.driver,
            self.backend,
            self._peers,
            context.config.scheduler.max_attempts,
            context.config.gateway.host,
            context.config.retry_deadline_seconds,
            context.config.export_id_quarantine_seconds,
        )
        self._controller = controllers.Controller(
            f"sync of {self.backend}", self._reconcile, workers=_WORKERS
        )
        # Per share, the newest revision its last finished sync handled; and the shares
        # queued to sync whatever the caches say (not a watched change: see `sync`).
        self._handled: dict[str, int] = {}
        self._forced: set[str] = set()
        self._synced = asyncio.Event()  # a sync ran: the capacity may have moved
        self._shares = controllers.Informer(
            self._store,
            self._store.root + "shares/",
            ShareRecord,
            keep=lambda record: record.placement.backend == self.backend,
            lister=self._list_own_shares,
            name=f"shares of {self.backend}",
        )
        self._shares.add_handler(self._share_changed)
        self._rules = controllers.Informer(
            self._store,
            self._store.root + "accessRules/",
            RuleRecord,
            keep=self._rule_is_mine,
            lister=self._list_own_rules,
            name=f"access rules of {self.backend}",
            index=lambda rule: _share_of(rule.rule.name, "accessRules"),
        )
        self._rules.add_handler(self._rule_changed)
        self._snapshots = controllers.Informer(
            self._store,
            self._store.root + "snapshots/",
            SnapshotRecord,
            keep=self._snapshot_is_mine,
            lister=self._list_own_snapshots,
            name=f"snapshots of {self.backend}",
            index=lambda snapshot: _share_of(snapshot.snapshot.name, "snapshots"),
        )
        self._snapshots.add_handler(self._snapshot_changed)
        self.share_servers: network.NetworkServers | None = None
        self._endpoint = ""
        # The registration as last written (without its time), and when.
        self._published = b""
        self._published_at = 0.0
        self.bindings = [
            Binding(
                driver_service_pb2.DESCRIPTOR.services_by_name["DriverService"].full_name,
                driver_service_pb2_grpc.add_DriverServiceServicer_to_server,
                DriverService(self),
            )
        ]
        metrics.observe_pools(self.pool_usage)

    async def enable_share_servers(self) -> None:
        """A driver that handles share servers gets a network server per share network."""
        stats = await self.driver.stats()
        if any(
            pool.capabilities.get("driver_handles_share_servers") == "true" for pool in stats.pools
        ):
            self.share_servers = network.NetworkServers(
                self._store,
                "shareServers",
                self._config.name,
                _servers_dir(self._config),
                self._context.config.export_id_quarantine_seconds,
            )
            self._sync.use_share_servers(self.share_servers)

    def sync(self, name: str) -> None:
        """Queues a sync of the share that runs whatever the caches say: one at a time
        per share, one asked for during a sync runs once more after, a failed one again
        with backoff."""
        self._forced.add(name)
        self._controller.queue.add(name)

    def nudged(self, name: str) -> None:
        """A nudge (api, scheduler, operator). With no sync of the share queued or
        running it syncs at once: the fast path, should the watch be behind. Otherwise
        the watch brings the change as well, and the sync runs again only for what the
        caches show that the last one did not handle."""
        if self._controller.queue.holds(name):
            self._controller.queue.add(name)
        else:
            self.sync(name)

    def _changed(self, name: str, resync: bool) -> None:
        if resync:  # the safety net: whatever the last sync handled
            self.sync(name)
        else:
            self._controller.queue.add(name)

    async def _reconcile(self, name: str) -> None:
        forced = name in self._forced
        self._forced.discard(name)
        if not forced and self._handled_already(name):
            return
        self._handled.pop(name, None)  # a sync that fails handled nothing for sure
        try:
            share = self._shares.get(self._store.key_of(name))
            waiting = share.value.pending_operations if share is not None else ()
            handled = await self._sync.sync(name, waiting)
        finally:
            self._synced.set()
        if handled is not None:
            self._handled[name] = handled

    def _handled_already(self, name: str) -> bool:
        """Whether the share's last sync finished at or after every change the caches
        hold that waits for one (its own writes wait for nothing)."""
        handled = self._handled.get(name)
        if handled is None:
            return False
        share = self._shares.get(self._store.key_of(name))
        return (
            (share is None or not _share_waits(share.value) or share.mod_revision <= handled)
            and all(
                not _rule_waits(rule.value) or rule.mod_revision <= handled
                for rule in self._rules.indexed(name)
            )
            and all(
                not _snapshot_waits(snapshot.value) or snapshot.mod_revision <= handled
                for snapshot in self._snapshots.indexed(name)
            )
        )

    # The informers: only this backend's shares, found through the index placement
    # writes, and only their rules.

    async def _list_own_shares(self) -> tuple[list[Versioned[ShareRecord]], int]:
        backend = self.backend.split("/")[-1]
        indexed, revision = await controllers.list_prefix(
            self._store, keys.backend_index_prefix(self._store.root, backend), empty_pb2.Empty
        )
        # Each read at or after `revision`, as the informer needs; many at once, so a
        # restart with a thousand shares is not a thousand round trips in a row.
        found = await concurrency.bounded(
            (
                self._store.get(self._store.key_of(keys.share_of_index_key(i.key)), ShareRecord)
                for i in indexed
            ),
            _READS_IN_FLIGHT,
        )
        return [
            f for f in found if f is not None and f.value.placement.backend == self.backend
        ], revision

    def _rule_is_mine(self, rule: RuleRecord) -> bool:
        return self._is_mine(_share_of(rule.rule.name, "accessRules"))

    def _snapshot_is_mine(self, snapshot: SnapshotRecord) -> bool:
        return self._is_mine(_share_of(snapshot.snapshot.name, "snapshots"))

    def _is_mine(self, share: str) -> bool:
        return self._shares.get(self._store.key_of(share)) is not None

    async def _list_own_rules(self) -> tuple[list[Versioned[RuleRecord]], int]:
        return await self._list_under_own_shares("accessRules", RuleRecord)

    async def _list_own_snapshots(self) -> tuple[list[Versioned[SnapshotRecord]], int]:
        return await self._list_under_own_shares("snapshots", SnapshotRecord)

    async def _list_under_own_shares(
        self, collection: str, record_type: type[M]
    ) -> tuple[list[Versioned[M]], int]:
        """A collection of this backend's shares (their rules, their snapshots), read
        share by share: O(own shares), never a range over the whole mesh."""
        # The revision first: every list below reads at or after it.
        _, revision = await _client.get_kv(self._store.client, self._store.root)
        listed = await concurrency.bounded(
            (
                self._store.list_all(
                    self._store.prefix_of(share.value.spec.share.name, collection), record_type
                )
                for share in self._shares.items()
            ),
            _READS_IN_FLIGHT,
        )
        return [item for items, _ in listed for item in items], revision

    def _share_changed(
        self, old: Versioned[ShareRecord] | None, new: Versioned[ShareRecord] | None
    ) -> None:
        if new is not None and _share_waits(new.value):
            self._changed(new.value.spec.share.name, resync=old is new)

    def _rule_changed(
        self, old: Versioned[RuleRecord] | None, new: Versioned[RuleRecord] | None
    ) -> None:
        if new is not None and _rule_waits(new.value):
            self._changed(_share_of(new.value.rule.name, "accessRules"), resync=old is new)

    def _snapshot_changed(
        self, old: Versioned[SnapshotRecord] | None, new: Versioned[SnapshotRecord] | None
    ) -> None:
        if new is not None and _snapshot_waits(new.value):
            self._changed(_share_of(new.value.snapshot.name, "snapshots"), resync=old is new)

    async def registration(self) -> records_pb2.BackendRecord:
        stats = await self.driver.stats()
        record = records_pb2.BackendRecord(
            name=self.backend,
            endpoint=self._endpoint,
            driver=self._config.driver,
            host=self._context.config.gateway.host,
            update_time=operations.now(),
        )
        for pool in stats.pools:
            capacity = record.pools.add(
                name=f"{self.backend}/pools/{pool.name}",
                total_gib=int(pool.total_gib),
                free_gib=int(pool.free_gib),
                provisioned_gib=int(pool.provisioned_gib),
            )
            capacity.capabilities.update(pool.capabilities)
            capacity.availability_zone = pool.capabilities.get("availability_zone", "")
        return record

    async def pool_usage(self) -> list[metrics.PoolUsage]:
        """This backend's pools for a metrics scrape: the driver's view and the ledger's."""
        usage = []
        for pool in (await self.driver.stats()).pools:
            name = f"{self.backend}/pools/{pool.name}"
            allocated = (await ledger.read_pool(self._store, name)).value
            usage.append(
                metrics.PoolUsage(
                    name, pool.total_gib, pool.free_gib, pool.provisioned_gib, allocated
                )
            )
        return usage

    async def run(self, endpoint: str) -> None:
        self._endpoint = endpoint
        key = keys.backend_key(self._store.root, self.backend.split("/")[-1])
        refresh = functools.partial(self._register, key)
        # Each loop rides out etcd and peers being away (the informers and retry.every
        # wait with backoff): the lease, not an unreachable etcd, decides when this
        # process must start over.
        interval = self._context.config.reconcile_interval_seconds
        async with asyncio.TaskGroup() as group:
            # A mesh being upgraded: its shares are found through index keys the
            # migration may still be writing.
            await migrations.wait_for(self._store, migrations.SCHEMA)
            # Rules are known by their share: the shares' cache is filled first.
            group.create_task(self._shares.run())
            await self._shares.synced.wait()
            group.create_task(self._rules.run())
            group.create_task(self._snapshots.run())
            await self._rules.synced.wait()
            await self._snapshots.synced.wait()
            await retry.persist("re-exporting this backend's shares", self._ensure_active)
            await retry.persist("registering", refresh)
            log.info("registered %s at %s", self.backend, endpoint)
            # The waiting work the informers listed was queued; now it runs.
            group.create_task(self._controller.run())
            group.create_task(self.driver.supervise(self._backend_server_restarted))
            group.create_task(self._keep_registered(refresh))
            group.create_task(retry.every(interval, "resync", self.resync))

    async def _register(self, key: str) -> None:
        """Writes the registration when it changed (capacity, endpoint…), and at least
        once per reconcile interval as a net. The lease keeps the key alive: a put every
        few seconds cost etcd a write, and every watcher an event, while nothing changed."""
        record = await self.registration()
        content = _without_time(record)
        if (
            content == self._published
            and time.monotonic() - self._published_at
            < self._context.config.reconcile_interval_seconds
        ):
            return
        await self._store.put(key, record, lease=self._context.session.lease_id)
        self._published, self._published_at = content, time.monotonic()

    async def _keep_registered(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Refreshes the registration TTL/2 after syncs (they move the capacity), and
        once per reconcile interval otherwise (clients' data moves the free space too).
        A check every TTL/2 woke an idle driver-host 12 times a minute, each reading the
        size of every share image (the driver's stats)."""
        while True:
            try:
                await asyncio.wait_for(
                    self._synced.wait(), self._context.config.reconcile_interval_seconds
                )
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(self._refresh_interval())  # one check for a burst
            self._synced.clear()
            try:
                await retry.persist("refreshing the registration", refresh)
            except Exception:
                log.exception("refreshing the registration failed; again next round")

    def _refresh_interval(self) -> float:
        return max(self._context.config.etcd.lease_ttl_seconds / 2, 1)

    async def _ensure_active(self) -> None:
        """After a restart, every ACTIVE share of this backend serves again, with its rules,
        and so do the gateways and share servers that serve its shares on networks."""
        mine = self._shares.items()
        for found in mine:
            if lifecycle.share.state(found.value) == Share.ACTIVE:
                name = found.value.spec.share.name
                try:
                    # Rules and snapshots from the watches: no read per share.
                    await self._sync.ensure(
                        found, self._rules.indexed(name), self._snapshots.indexed(name)
                    )
                except Exception as error:
                    if retry.transient(error):
                        raise  # the whole re-export waits for etcd (retry.persist)
                    log.exception("could not re-export %s", found.value.spec.share.name)
        await self._sync.tell_gateways(mine)
        await self._sync.serve_networks(mine)

    async def _backend_server_restarted(self, refused: Sequence[str] = ()) -> None:
        """A restarted backend server breaks the gateways that proxy it: syncing those
        shares records the new incarnation, and their gateways restart their proxies.
        The shares (by uid) whose exports it `refused` are synced too: the sync applies
        the export again and, refused again, marks that share alone failed, with why."""
        refusals = set(refused)

        for found in self._shares.items():
            share = found.value
            if share.status.gateway_access.fsal == "PROXY_V4" or share.spec.share.uid in refusals:
                if share.spec.share.uid in refusals:
                    log.warning(
                        "the restarted Ganesha refused the export of %s", share.spec.share.name
                    )
                self.sync(share.spec.share.name)

    async def resync(self) -> None:
        """The safety net, O(this backend's shares) and no etcd range: every cached
        share and rule through the handlers again (work a handler dropped is queued),
        and this backend's share servers made true (one no share needs any more goes)."""
        self._shares.resync()
        self._rules.resync()
        self._snapshots.resync()
        for name in [n for n in self._handled if self._shares.get(self._store.key_of(n)) is None]:
            del self._handled[name]  # gone from this backend
        await self._sync.serve_networks(self._shares.items())

    async def close(self) -> None:
        self._sync.stop()  # a sync waiting to retry gives up now; the next process resumes
        await self._controller.stop(timeout=30)
        # Only an orderly stop lets go of the servers: after a lost lease the next
        # incarnation adopts them, and clients keep being served meanwhile.
        release = self._own_servers and self._context.stopping.is_set()
        if self.share_servers is not None:
            await self.share_servers.stop(stop_servers=release)
        await self.driver.stop(stop_servers=release)
        await self._peers.close()


def _share_of(name: str, collection: str) -> str:
    """The share a rule or a snapshot belongs to."""
    return name.rsplit(f"/{collection}/", 1)[0]


def _share_waits(record: ShareRecord) -> bool:
    return lifecycle.share.state(record) in _WAITING


def _rule_waits(record: RuleRecord) -> bool:
    in_force = record.rule.state in (AccessRule.ACTIVE, AccessRule.ERROR)
    return record.delete_requested or bool(record.pending_operations) or not in_force


def _snapshot_waits(record: SnapshotRecord) -> bool:
    waiting = record.snapshot.state in (Snapshot.CREATING, Snapshot.DELETING)
    return record.delete_requested or bool(record.pending_operations) or waiting


def _without_time(record: records_pb2.BackendRecord) -> bytes:
    """What a registration says, whenever it was made."""
    copy = records_pb2.BackendRecord()
    copy.CopyFrom(record)
    copy.ClearField("update_time")
    return copy.SerializeToString(deterministic=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", required=True, help="which [[backends]] entry to host")
    parser.add_argument(
        "--own-servers",
        action="store_true",
        help="stop this backend's Ganesha on an orderly exit (the launcher "
        "sets it); without it Ganesha keeps serving across restarts",
    )


async def release(config: MeshConfig, args: argparse.Namespace) -> None:
    """Stops the backend's servers and unmounts its shares, from the config alone: for
    a driver-host that died, when etcd may be dead too."""
    backend = config.backend(args.backend)
    # Share servers first: they export the shares the driver then unmounts.
    await network.release_servers("shareServers", _servers_dir(backend))
    driver = drivers.create(backend.driver, backend.options)
    await driver.stop(stop_servers=True)
    log.info("released %s", backend.name)


def _servers_dir(backend: BackendConfig) -> Path:
    """Where the backend's share servers keep their files (one directory each)."""
    return Path(backend.state_dir or f"/var/lib/sharemesh/backends/{backend.name}")


async def build(context: Context, args: argparse.Namespace) -> DriverHostApp:
    app = DriverHostApp(context, args.backend, args.own_servers)
    # A Ganesha that fails to start (its ports or rpcbind busy for a moment) is retried,
    # not a crash of the service.
    await retry.persist("starting the backend", app.driver.start)
    await app.enable_share_servers()
    return app
