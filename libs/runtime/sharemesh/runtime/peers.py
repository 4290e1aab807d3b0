"""Finding and nudging the other services: the scheduler's leader, a backend's
driver-host, a host's gateway. Endpoints come from etcd registrations; channels are
kept per endpoint and, with mutual TLS, present this process's certificate and verify
the peer's against the mesh CA. A nudge is the fast path only: if it is lost, a reconciler finds
the work in etcd, so a failed nudge is logged, never raised.

This is the one place where a peer's gRPC errors become the mesh's own: a call answers
the exception behind the peer's status (errors.from_rpc_error), and a peer that is not
registered or not reachable is UNAVAILABLE, to be retried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from sharemesh.driver.v1 import driver_service_pb2, driver_service_pb2_grpc
from sharemesh.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sharemesh.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from sharemesh.state.v1 import records_pb2

from . import retry, telemetry, tls
from .coordination import Store, keys, leader
from .errors import ShareMeshError, Unavailable, from_rpc_error

log = logging.getLogger(__name__)

NUDGE_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """A failed call to a peer as the mesh's exception."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None
    except ConnectionError as error:  # the channel could not reach the peer
        raise Unavailable(str(error)) from None


class Peers:
    def __init__(self, store: Store, identity: tls.Identity | None = None) -> None:
        """`identity` defaults to the process's own (`tls.configure`); none: plaintext."""
        self._store = store
        identity = identity or tls.own()
        self._credentials = tls.ChannelCredentials(identity) if identity else None
        self._channels: dict[str, tuple[object, grpc.aio.Channel]] = {}
        self._retired: list[grpc.aio.Channel] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        """The channel to `endpoint`; a new one once the certificate files changed, so
        that a rotated certificate is presented (the old one's calls run to their end)."""
        version, credentials = self._credentials.current() if self._credentials else (None, None)
        kept = self._channels.get(endpoint)
        if kept is not None and kept[0] == version:
            return kept[1]
        if kept is not None:
            self._retired.append(kept[1])
        interceptors = telemetry.client_interceptors()
        channel = (
            grpc.aio.secure_channel(endpoint, credentials, interceptors=interceptors)
            if credentials
            else grpc.aio.insecure_channel(endpoint, interceptors=interceptors)
        )
        self._channels[endpoint] = (version, channel)
        return channel

    async def scheduler_endpoint(self) -> str | None:
        value = await leader(
            self._store.client, keys.election_prefix(self._store.root, "scheduler")
        )
        return value.decode() if value else None

    async def backend(self, backend: str) -> records_pb2.BackendRecord | None:
        """The live registration of `backends/{name}` (None when its driver-host is down)."""
        found = await self._store.get(
            keys.backend_key(self._store.root, backend.split("/")[-1]), records_pb2.BackendRecord
        )
        return found.value if found else None

    async def backends(self) -> list[records_pb2.BackendRecord]:
        found, _ = await self._store.list_all(
            keys.backends_prefix(self._store.root), records_pb2.BackendRecord
        )
        return [item.value for item in found]

    async def hosts(self) -> list[str]:
        """The hosts whose gateway service is up."""
        found, _ = await self._store.list_all(
            keys.hosts_prefix(self._store.root), records_pb2.HostRecord
        )
        return [item.value.name for item in found]

    async def sync_share_network(self, host: str, share_network: str) -> None:
        """Asks `host`'s gateway to make its part of the network match etcd, and waits."""
        found = await self._store.get(keys.host_key(self._store.root, host), records_pb2.HostRecord)
        if found is None:
            raise Unavailable(f"no gateway service runs on host {host}")
        stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel(found.value.endpoint))
        async with _translated():
            await stub.SyncShareNetwork(
                gateway_service_pb2.SyncShareNetworkRequest(share_network=share_network),
                timeout=NUDGE_TIMEOUT,
            )

    async def place_share(self, name: str) -> None:
        endpoint = await self.scheduler_endpoint()
        if not endpoint:
            raise Unavailable("no scheduler leads")
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(self.channel(endpoint))
        async with _translated():
            await stub.PlaceShare(
                scheduler_service_pb2.PlaceShareRequest(name=name), timeout=NUDGE_TIMEOUT
            )

    async def sync_share(self, backend: str, name: str) -> None:
        record = await self.backend(backend)
        if record is None:
            raise Unavailable(f"{backend} is not registered")
        stub = driver_service_pb2_grpc.DriverServiceStub(self.channel(record.endpoint))
        async with _translated():
            await stub.SyncShare(
                driver_service_pb2.SyncShareRequest(name=name), timeout=NUDGE_TIMEOUT
            )

    def nudge(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """Runs `call` in the background; a failure waits for the reconciler."""

        async def attempt() -> None:
            try:
                await call()
            except ShareMeshError as error:
                # Refused, or the peer or etcd is away: all the reconciler's to finish.
                log.info(
                    "nudge %s not delivered (%s); the reconciler will pick it up",
                    what,
                    retry.reason(error),
                )

        task = asyncio.create_task(attempt(), name=f"nudge {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for _, channel in self._channels.values():
            await channel.close()
        for channel in self._retired:
            await channel.close()
