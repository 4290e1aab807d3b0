"""Calls an outsider would make to the mesh's internal servers, and the outsiders: a
plaintext client, a certificate from another CA, a tenant's API key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from aetcd import rpc as etcd_rpc

from sharemesh.driver.v1 import driver_service_pb2, driver_service_pb2_grpc
from sharemesh.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sharemesh.runtime import certs, tls
from sharemesh.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc

SHARE = "projects/alpha/shares/not-there"
NETWORK = "projects/alpha/shareNetworks/not-there"

# One call per target: what a caller would do there. Each answers OK to a caller whose
# role may make it.
Call = Callable[[grpc.aio.Channel, tuple[tuple[str, str], ...]], Awaitable[object]]


def place(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Awaitable[object]:
    stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
    return stub.PlaceShare(
        scheduler_service_pb2.PlaceShareRequest(name=SHARE), metadata=metadata, timeout=5
    )


def sync_share(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> Awaitable[object]:
    stub = driver_service_pb2_grpc.DriverServiceStub(channel)
    return stub.SyncShare(
        driver_service_pb2.SyncShareRequest(name=SHARE), metadata=metadata, timeout=5
    )


def sync_network(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> Awaitable[object]:
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    return stub.SyncShareNetwork(
        gateway_service_pb2.SyncShareNetworkRequest(share_network=NETWORK),
        metadata=metadata,
        timeout=5,
    )


def etcd_range(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> Awaitable[object]:
    return etcd_rpc.KVStub(channel).Range(
        etcd_rpc.RangeRequest(key=b"/sharemesh/", range_end=b"/sharemesh0", limit=1),
        metadata=metadata,
        timeout=5,
    )


def credentials(identity: tls.Identity) -> grpc.ChannelCredentials:
    ca, cert, key = identity.read()
    return grpc.ssl_channel_credentials(ca, key, cert)


async def answer(
    address: str,
    call: Call,
    credentials: grpc.ChannelCredentials | None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.StatusCode:
    channel = (
        grpc.aio.secure_channel(address, credentials)
        if credentials
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            await call(channel, metadata)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


Outsider = tuple[grpc.ChannelCredentials | None, tuple[tuple[str, str], ...]]


def outsiders(work: Path, mesh_ca: Path) -> dict[str, Outsider]:
    """Who must be refused, as (channel credentials, metadata)."""
    # Same names and roles, another CA: what someone who copied the layout would make.
    stranger = certs.MeshCA(work / "stranger")
    cert, key = stranger.ensure(certs.Leaf("api", "api"))
    forged = tls.Identity(str(stranger.cert_file), str(cert), str(key))
    trusts_mesh = grpc.ssl_channel_credentials(mesh_ca.read_bytes())
    tenant = (("authorization", "Bearer alpha-key"),)
    return {
        "plaintext": (None, ()),
        "another CA": (credentials(forged), ()),
        "a tenant's API key in plaintext": (None, tenant),
        "a tenant's API key over TLS": (trusts_mesh, tenant),
    }
