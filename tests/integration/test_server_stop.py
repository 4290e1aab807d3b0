"""A service that stops (told to, or after losing its etcd lease) lets the calls in
flight finish within its grace; a call that outlasts it answers UNAVAILABLE, which a
client retries (with its request id), not CANCELLED, which leaves it unsure. Real gRPC
server and client on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sharemesh.runtime.server import Binding, GrpcServer
from sharemesh.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc

pytestmark = pytest.mark.integration


class _Scheduler(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    """Places quickly, or never: a handler stuck on something that will not come."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def PlaceShare(  # noqa: N802
        self, request: scheduler_service_pb2.PlaceShareRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_service_pb2.PlaceShareResponse:
        if request.name.endswith("/quick"):
            await asyncio.sleep(0.2)
        else:
            self.started.set()
            await asyncio.Event().wait()
        return scheduler_service_pb2.PlaceShareResponse()


@contextlib.asynccontextmanager
async def _serving(servicer: _Scheduler) -> AsyncIterator[tuple[GrpcServer, str]]:
    server = GrpcServer(
        "127.0.0.1:0",
        [
            Binding(
                "sharemesh.scheduler.v1.SchedulerService",
                scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server,
                servicer,
            )
        ],
    )
    port = await server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=0)  # stopped already, unless the test failed first


async def test_a_call_that_outlasts_the_stop_answers_unavailable_and_a_quick_one_finishes() -> None:
    servicer = _Scheduler()
    async with (
        _serving(servicer) as (server, address),
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        stuck = asyncio.ensure_future(
            stub.PlaceShare(scheduler_service_pb2.PlaceShareRequest(name="projects/p/shares/s"))
        )
        await asyncio.wait_for(servicer.started.wait(), 10)
        quick = asyncio.ensure_future(
            stub.PlaceShare(scheduler_service_pb2.PlaceShareRequest(name="projects/p/shares/quick"))
        )
        await asyncio.sleep(0.05)  # both in flight
        await server.stop(grace=1.0)
        assert await quick == scheduler_service_pb2.PlaceShareResponse()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stuck
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stopping" in (refused.value.details() or "")


async def test_a_health_watch_sees_not_serving_then_unavailable() -> None:
    async with (
        _serving(_Scheduler()) as (server, address),
        grpc.aio.insecure_channel(address) as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.ensure_future(server.stop(grace=0.5))
        statuses = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                response = await watch.read()
                assert response is not grpc.aio.EOF
                statuses.append(response.status)
        await stopping
        assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
