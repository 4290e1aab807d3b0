"""The driver-host process: one backend's driver, registered under this process's
lease, kept true to etcd by nudges (`SyncShare`) and by a periodic reconcile."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from sharemesh import network
from sharemesh.driver.v1 import driver_service_pb2, driver_service_pb2_grpc
from sharemesh.runtime import names, operations, retry
from sharemesh.runtime.config import BackendConfig, MeshConfig
from sharemesh.runtime.coordination import keys
from sharemesh.runtime.peers import Peers
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2

from . import drivers
from ._sync import ShareSync

log = logging.getLogger(__name__)

Share = share_pb2.Share
_WAITING = (Share.CREATING, Share.UPDATING, Share.DELETING)


class DriverService(driver_service_pb2_grpc.DriverServiceServicer):
    def __init__(self, app: DriverHostApp) -> None:
        self._app = app

    async def SyncShare(self, request, context):  # noqa: N802
        names.SHARE.parse("name", request.name)
        # Shielded: a caller that gives up must not cancel a half-made change.
        await asyncio.shield(self._app.sync(request.name))
        return driver_service_pb2.SyncShareResponse()

    async def GetBackend(self, request, context):  # noqa: N802
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
        )
        self._syncs: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.share_servers: network.NetworkServers | None = None
        self._endpoint = ""
        self.bindings = [
            Binding(
                driver_service_pb2.DESCRIPTOR.services_by_name["DriverService"].full_name,
                driver_service_pb2_grpc.add_DriverServiceServicer_to_server,
                DriverService(self),
            )
        ]

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

    def sync(self, name: str) -> asyncio.Task[None]:
        """One sync per share at a time here; a nudge during one queues behind it."""
        previous = self._syncs.get(name)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await self._sync.sync(name)

        task = asyncio.create_task(run(), name=f"sync {name}")
        self._syncs[name] = task
        task.add_done_callback(lambda t: self._sync_done(name, t))
        return task

    def _sync_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._syncs.get(name) is task:
            self._syncs.pop(name)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.warning(
                "sync of %s failed (%s); the reconciler tries again",
                name,
                getattr(error, "message", error),
            )

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

    async def run(self, endpoint: str) -> None:
        self._endpoint = endpoint
        key = keys.backend_key(self._store.root, self.backend.split("/")[-1])
        await retry.persist("re-exporting this backend's shares", self._ensure_active)
        refresh = functools.partial(self._register, key)
        await retry.persist("registering", refresh)
        log.info("registered %s at %s", self.backend, endpoint)
        # Each loop rides out etcd and peers being away (retry.every): the lease, not
        # an unreachable etcd, decides when this process must start over.
        interval = self._context.config.reconcile_interval_seconds
        async with asyncio.TaskGroup() as group:
            group.create_task(self.driver.supervise(self._backend_server_restarted))
            group.create_task(retry.every(self._refresh_interval(), "refresh", refresh))
            group.create_task(retry.every(interval, "reconcile", self.reconcile))

    async def _register(self, key: str) -> None:
        await self._store.put(key, await self.registration(), lease=self._context.session.lease_id)

    def _refresh_interval(self) -> float:
        return max(self._context.config.etcd.lease_ttl_seconds / 2, 1)

    async def _ensure_active(self) -> None:
        """After a restart, every ACTIVE share of this backend serves again, with its rules,
        and so do the gateways and share servers that serve its shares on networks."""
        mine = await self._mine()
        for found in mine:
            if found.value.share.state == Share.ACTIVE:
                try:
                    await self._sync.ensure(found)
                except Exception as error:
                    if retry.transient(error):
                        raise  # the whole re-export waits for etcd (retry.persist)
                    log.exception("could not re-export %s", found.value.share.name)
        await self._sync.tell_gateways(mine)
        await self._sync.serve_networks(mine)

    async def _mine(self):  # type: ignore[no-untyped-def]
        shares = await self._store.scan(self._store.root + "shares/", records_pb2.ShareRecord)
        return [s for s in shares if s.value.backend == self.backend]

    async def _backend_server_restarted(self, refused: Sequence[str] = ()) -> None:
        """A restarted backend server breaks the gateways that proxy it: syncing those
        shares records the new incarnation, and their gateways restart their proxies.
        The shares (by uid) whose exports it `refused` are synced too: the sync applies
        the export again and, refused again, marks that share alone failed, with why."""
        refusals = set(refused)

        async def sync_them() -> None:
            # etcd away now means waiting for it: those shares still need their sync.
            for found in await retry.persist("finding the restarted server's shares", self._mine):
                share = found.value
                if share.gateway_access.fsal == "PROXY_V4" or share.share.uid in refusals:
                    if share.share.uid in refusals:
                        log.warning(
                            "the restarted Ganesha refused the export of %s", share.share.name
                        )
                    self.sync(share.share.name)

        # In the background: Ganesha's supervision must go on while etcd is away.
        task = asyncio.create_task(sync_them(), name="sync after a server restart")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reconcile(self) -> None:
        """Finishes work a lost nudge or a crash left behind."""
        rules = await self._store.scan(
            self._store.root + "accessRules/", records_pb2.AccessRuleRecord
        )
        pending_rules = {
            r.value.rule.name.rsplit("/accessRules/", 1)[0]
            for r in rules
            if r.value.rule.state != access_rule_pb2.AccessRule.ACTIVE
        }
        mine = await self._mine()
        for found in mine:
            name = found.value.share.name
            if found.value.share.state in _WAITING or name in pending_rules:
                if name not in self._syncs:
                    self.sync(name)
        await self._sync.serve_networks(mine)

    async def close(self) -> None:
        self._sync.stop()  # a sync waiting to retry gives up now; the next process resumes
        for task in list(self._background):
            task.cancel()
        for task in list(self._syncs.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        # Only an orderly stop lets go of the servers: after a lost lease the next
        # incarnation adopts them, and clients keep being served meanwhile.
        release = self._own_servers and self._context.stopping.is_set()
        if self.share_servers is not None:
            await self.share_servers.stop(stop_servers=release)
        await self.driver.stop(stop_servers=release)
        await self._peers.close()


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
    await app.driver.start()
    await app.enable_share_servers()
    return app
