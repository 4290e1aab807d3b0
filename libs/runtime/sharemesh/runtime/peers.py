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
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from sharemesh.driver.v1 import driver_service_pb2, driver_service_pb2_grpc
from sharemesh.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sharemesh.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from sharemesh.state.v1 import records_pb2

from . import retry, telemetry, tls
from .controllers import Informer
from .coordination import Store, keys, leader
from .errors import ShareMeshError, Unavailable, from_rpc_error

log = logging.getLogger(__name__)

NUDGE_TIMEOUT = 30.0
# How long an endpoint looked up for a call is used again without reading etcd: a read
# per nudge was a third of the api's etcd reads per share. One that fails is looked up
# again at once, so a peer that moved is found on the first failed call.
ENDPOINT_TTL = 10.0


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
        self._endpoints: dict[str, tuple[str, float]] = {}  # peer -> (endpoint, when read)
        self._registrations: Informer[records_pb2.BackendRecord] | None = None

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

    async def watch_backends(self) -> None:
        """Until cancelled, keeps the backends' registrations in memory from a watch, so
        that `backend` and `backends` read no etcd (a placement read them all)."""
        informer = Informer(
            self._store,
            keys.backends_prefix(self._store.root),
            records_pb2.BackendRecord,
            name="backend registrations",
        )
        self._registrations = informer
        try:
            await informer.run()
        finally:
            self._registrations = None

    def _watched(self) -> Informer[records_pb2.BackendRecord] | None:
        informer = self._registrations
        return informer if informer is not None and informer.synced.is_set() else None

    async def backend(self, backend: str) -> records_pb2.BackendRecord | None:
        """The live registration of `backends/{name}` (None when its driver-host is down)."""
        key = keys.backend_key(self._store.root, backend.split("/")[-1])
        if (watched := self._watched()) is not None:
            kept = watched.get(key)
            return kept.value if kept else None
        found = await self._store.get(key, records_pb2.BackendRecord)
        return found.value if found else None

    async def backends(self) -> list[records_pb2.BackendRecord]:
        if (watched := self._watched()) is not None:
            return [item.value for item in sorted(watched.items(), key=lambda i: i.key)]
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

    async def _host_endpoint(self, host: str) -> str | None:
        found = await self._store.get(keys.host_key(self._store.root, host), records_pb2.HostRecord)
        return found.value.endpoint if found else None

    async def _backend_endpoint(self, backend: str) -> str | None:
        record = await self.backend(backend)
        return record.endpoint if record else None

    async def _call(
        self,
        peer: str,
        look_up: Callable[[], Awaitable[str | None]],
        call: Callable[[grpc.aio.Channel], Awaitable[object]],
        missing: str,
    ) -> None:
        """`call` on the channel to `peer`, at the endpoint read within ENDPOINT_TTL,
        or else at the one `look_up` reads now (none: UNAVAILABLE `missing`). A call to
        a remembered endpoint that is UNAVAILABLE is made again if the peer moved."""
        kept = self._endpoints.get(peer)
        failed: Unavailable | None = None
        if kept is not None and time.monotonic() - kept[1] < ENDPOINT_TTL:
            try:
                async with _translated():
                    await call(self.channel(kept[0]))
                return
            except Unavailable as error:
                failed = error
        endpoint = await look_up()
        if not endpoint:
            self._endpoints.pop(peer, None)
            raise Unavailable(missing)
        self._endpoints[peer] = (endpoint, time.monotonic())
        if failed is not None and kept is not None and endpoint == kept[0]:
            raise failed  # still there, and not answering
        async with _translated():
            await call(self.channel(endpoint))

    async def sync_share_network(self, host: str, share_network: str) -> None:
        """Asks `host`'s gateway to make its part of the network match etcd, and waits."""
        request = gateway_service_pb2.SyncShareNetworkRequest(share_network=share_network)
        await self._call(
            f"gateway of {host}",
            lambda: self._host_endpoint(host),
            lambda channel: gateway_service_pb2_grpc.GatewayServiceStub(channel).SyncShareNetwork(
                request, timeout=NUDGE_TIMEOUT
            ),
            f"no gateway service runs on host {host}",
        )

    async def place_share(self, name: str) -> None:
        request = scheduler_service_pb2.PlaceShareRequest(name=name)
        await self._call(
            "the scheduler",
            self.scheduler_endpoint,
            lambda channel: scheduler_service_pb2_grpc.SchedulerServiceStub(channel).PlaceShare(
                request, timeout=NUDGE_TIMEOUT
            ),
            "no scheduler leads",
        )

    async def sync_share(self, backend: str, name: str) -> None:
        request = driver_service_pb2.SyncShareRequest(name=name)
        await self._call(
            backend,
            lambda: self._backend_endpoint(backend),
            lambda channel: driver_service_pb2_grpc.DriverServiceStub(channel).SyncShare(
                request, timeout=NUDGE_TIMEOUT
            ),
            f"{backend} is not registered",
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
