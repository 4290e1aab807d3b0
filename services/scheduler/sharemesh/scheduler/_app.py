"""The scheduler process: active/standby through an etcd election. Only the leader
places; the others wait in the queue and take over when its lease ends."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging

from sharemesh.runtime import operations, retry
from sharemesh.runtime.coordination import Election, Leadership, keys
from sharemesh.runtime.errors import Unavailable
from sharemesh.runtime.peers import Peers
from sharemesh.runtime.process import Context
from sharemesh.runtime.server import Binding
from sharemesh.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

from ._compose import placement
from ._placer import Placer

log = logging.getLogger(__name__)


class SchedulerService(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, app: SchedulerApp) -> None:
        self._app = app

    async def PlaceShare(self, request, context):  # noqa: N802
        placer = self._app.placer
        if placer is None:
            raise Unavailable("this scheduler is standing by; ask the leader")
        # Placement runs on even if the caller goes away: it is the leader's work.
        self._app.spawn(placer.place(request.name))
        return scheduler_service_pb2.PlaceShareResponse()


class SchedulerApp:
    def __init__(self, context: Context) -> None:
        self._context = context
        self._store = context.store
        self._peers = Peers(context.store)
        self.placer: Placer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.bindings = [
            Binding(
                scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
                scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server,
                SchedulerService(self),
            )
        ]

    def spawn(self, work) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(work) -> None:  # type: ignore[no-untyped-def]
        try:
            await work
        except Exception as error:
            if not retry.transient(error):
                log.exception("placement failed; the reconciler will retry")
                return
            # etcd or the backend is away for now: that heals, one line says why.
            log.warning(
                "placement not finished (%s); the reconciler will retry", retry.reason(error)
            )

    async def run(self, endpoint: str) -> None:
        election = Election(
            self._context.session, keys.election_prefix(self._store.root, "scheduler")
        )
        log.info("standing for leadership")
        # Campaigning again with the same session reuses its place in the queue.
        leadership = await retry.persist(
            "standing for leadership", lambda: election.campaign(endpoint.encode())
        )
        log.info("leading; placing shares")
        self.placer = Placer(
            self._store,
            self._peers,
            leadership,
            placement(self._context.config.scheduler),
            self._context.config.quotas,
            self._context.config.export_id_quarantine_seconds,
            self._context.config.retry_deadline_seconds,
        )
        try:
            # Every round at once, then each interval; etcd away makes a round retry
            # sooner, and the lease (not an unreachable etcd) ends this leadership.
            await retry.every(
                self._context.config.reconcile_interval_seconds,
                "reconcile",
                functools.partial(self._round, leadership),
                first=0,
            )
        finally:
            self.placer = None

    async def _round(self, leadership: Leadership) -> None:
        await self.reconcile()
        await self.expire_operations(leadership)

    async def reconcile(self) -> None:
        """Finds shares a lost nudge or a crash left waiting, and places them; and, as
        the mesh's one leader, expires old operations."""
        placer = self.placer
        assert placer is not None
        waiting = (share_pb2.Share.CREATING, share_pb2.Share.UPDATING, share_pb2.Share.DELETING)
        for found in await self._store.scan(self._store.root + "shares/", records_pb2.ShareRecord):
            if found.value.share.state == share_pb2.Share.CREATING and not found.value.backend:
                self.spawn(placer.place(found.value.share.name))
            elif found.value.share.state in waiting and found.value.backend:
                self._peers.nudge(
                    f"sync {found.value.share.name}",
                    functools.partial(
                        self._peers.sync_share, found.value.backend, found.value.share.name
                    ),
                )

    async def expire_operations(self, leadership: Leadership) -> None:
        expired = await operations.expire(
            self._store, self._context.config.operation_retention_seconds, leadership
        )
        if expired:
            log.info("expired %d finished operations", expired)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._peers.close()


async def build(context: Context, args: argparse.Namespace) -> SchedulerApp:
    return SchedulerApp(context)
