"""The scheduler process: active/standby through an etcd election. Only the leader
migrates the mesh's records to this code's schema, then places: an informer over the
shares that wait for placement feeds its work queue (`PlaceShare` nudges only
enqueue); the others wait in the election queue and take over when its lease ends."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import grpc

from sharemesh.runtime import controllers, lifecycle, migrations, operations, retry
from sharemesh.runtime.coordination import Election, Leadership, Versioned, keys
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

ShareRecord = records_pb2.ShareRecord
OperationRecord = records_pb2.OperationRecord
# Placements decide one at a time (Placer's lock), but one waiting for a backend that
# is away holds its worker: enough workers that such waits do not hold up the rest.
_WORKERS = 32


def _unplaced(record: ShareRecord) -> bool:
    return (
        lifecycle.share.state(record) == share_pb2.Share.CREATING and not record.placement.backend
    )


class SchedulerService(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, app: SchedulerApp) -> None:
        self._app = app

    async def PlaceShare(  # noqa: N802
        self, request: scheduler_service_pb2.PlaceShareRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_service_pb2.PlaceShareResponse:
        if self._app.placer is None:
            raise Unavailable("this scheduler is standing by; ask the leader")
        # A nudge: the queue places it soon; the leader's watch would find it anyway.
        self._app.queue.add(request.name)
        return scheduler_service_pb2.PlaceShareResponse()


class SchedulerApp:
    def __init__(self, context: Context) -> None:
        self._context = context
        self._store = context.store
        self._peers = Peers(context.store)
        self.placer: Placer | None = None
        self.queue = controllers.WorkQueue()
        self.bindings = [
            Binding(
                scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
                scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server,
                SchedulerService(self),
            )
        ]

    async def run(self, endpoint: str) -> None:
        election = Election(
            self._context.session, keys.election_prefix(self._store.root, "scheduler")
        )
        log.info("standing for leadership")
        # Campaigning again with the same session reuses its place in the queue.
        leadership = await retry.persist(
            "standing for leadership", lambda: election.campaign(endpoint.encode())
        )
        # Older records are brought to this code's schema before anything is placed;
        # a leader that dies meanwhile leaves the rest to the next one.
        await migrations.run(self._store, leadership)
        log.info("leading; placing shares")
        shares = controllers.Informer(
            self._store,
            self._store.root + "shares/",
            ShareRecord,
            keep=_unplaced,
            name="shares waiting for placement",
        )
        self.placer = Placer(
            self._store,
            self._peers,
            leadership,
            placement(self._context.config.scheduler),
            self._context.config.quotas,
            self._context.config.export_id_quarantine_seconds,
            lambda name: shares.get(self._store.key_of(name)),
            self._context.config.retry_deadline_seconds,
            expected_backends=[f"backends/{b.name}" for b in self._context.config.backends],
        )
        controller = controllers.Controller("placement", self._place, _WORKERS, self.queue)
        shares.add_handler(self._share_changed)
        finished = controllers.Informer(
            self._store,
            self._store.root + "operations/",
            records_pb2.OperationRecord,
            keep=lambda record: record.operation.done,
            name="finished operations",
        )
        # The lease (not an unreachable etcd) ends this leadership: the informer and
        # the loops ride etcd being away; the slow resync costs O(unplaced shares).
        interval = self._context.config.reconcile_interval_seconds
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(shares.run())
                group.create_task(finished.run())
                group.create_task(self._peers.watch_backends())  # what placements read
                group.create_task(controller.run())
                group.create_task(retry.every(interval, "resync", _async(shares.resync)))
                group.create_task(
                    retry.every(
                        interval,
                        "expiring operations",
                        functools.partial(self.expire_operations, leadership, finished),
                        first=0,
                    )
                )
        finally:
            self.placer = None

    async def _place(self, name: str) -> None:
        placer = self.placer
        if placer is not None:
            await placer.place(name)

    def _share_changed(
        self, old: Versioned[ShareRecord] | None, new: Versioned[ShareRecord] | None
    ) -> None:
        if new is not None:
            self.queue.add(new.value.spec.share.name)
        elif old is not None and self.placer is not None:
            self.placer.forget(old.value.spec.share.name)

    async def expire_operations(
        self, leadership: Leadership, finished: controllers.Informer[OperationRecord]
    ) -> None:
        expired = await operations.expire(
            self._store,
            self._context.config.operation_retention_seconds,
            leadership,
            finished.items(),
        )
        if expired:
            log.info("expired %d finished operations", expired)

    async def close(self) -> None:
        self.queue.shutdown()
        await self._peers.close()


def _async(call: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        call()

    return run


async def build(context: Context, args: argparse.Namespace) -> SchedulerApp:
    return SchedulerApp(context)
