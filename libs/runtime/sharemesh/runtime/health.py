"""Client side of `grpc.health.v1`: wait until a service answers SERVING."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .errors import Unavailable


async def check(
    address: str, service: str = "", timeout: float = 1.0, root_certificates: bytes | None = None
) -> int:
    """The serving status of `service` at `address` (a HealthCheckResponse status);
    over TLS when `root_certificates` are given."""
    channel = (
        grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))
        if root_certificates
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return int(response.status)


async def wait_serving(
    address: str, timeout: float = 30.0, service: str = "", root_certificates: bytes | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = await check(address, service, root_certificates=root_certificates)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = "not serving"
        except grpc.aio.AioRpcError as e:
            last = e.code().name
        await asyncio.sleep(0.1)
    raise Unavailable(f"{address} not SERVING after {timeout:.0f}s ({last})")
