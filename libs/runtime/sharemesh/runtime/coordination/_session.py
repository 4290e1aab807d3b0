"""Session: a lease plus our own keep-alive task (aetcd has none)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aetcd
import grpc
from aetcd import rpc

from sharemesh.runtime.errors import FailedPrecondition, Unavailable

from . import _client

log = logging.getLogger(__name__)


class Session:
    """A lease kept alive every ttl/2 until `close()`.

    `done` is set when the lease is lost: a refresh answers TTL <= 0 (expired or
    revoked), or refreshes keep failing until the TTL counted from the last successful
    refresh has passed (measured from when that refresh was *sent*, so `done` fires no
    later than the server can have expired it). `close()` is idempotent, stops the
    keep-alive, and revokes the lease so leased keys vanish at once.
    """

    def __init__(self, client: aetcd.Client, ttl: int = 10) -> None:
        if ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        self.client = client
        self.ttl = ttl
        self._lease_id: int | None = None
        self._granted_ttl = ttl
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._suspended = False
        self._last_ok = 0.0

    @property
    def lease_id(self) -> int:
        if self._lease_id is None:
            raise FailedPrecondition("session not started")
        return self._lease_id

    @property
    def lease_hex(self) -> str:
        return f"{self.lease_id:x}"

    @property
    def lost(self) -> bool:
        return self.done.is_set()

    async def start(self) -> Session:
        if self._lease_id is not None:
            return self
        sent = time.monotonic()
        self._lease_id, self._granted_ttl = await _client.lease_grant(self.client, self.ttl)
        self._last_ok = sent
        self._task = asyncio.get_running_loop().create_task(
            self._keepalive(), name=f"etcd-keepalive-{self._lease_id:x}"
        )
        return self

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _keepalive(self) -> None:
        """Refreshes every TTL/2 while refreshes succeed: each one wakes an idle process
        (about 2-3 ms of CPU here, half a service's idle cost), and TTL/3 made half as
        many again. A failed refresh is tried again after TTL/20, each try bounded by
        TTL/4, so a fault that outlasts one try still leaves room for more before the
        lease could expire (TTL/3 with a try per interval left one)."""
        lease = self._lease_id
        assert lease is not None
        stream = _KeepAliveStream(self.client, lease)
        delay = max(self._granted_ttl / 2.0, 0.1)
        try:
            while True:
                await asyncio.sleep(delay)
                sent = time.monotonic()
                left = self._last_ok + self._granted_ttl - sent
                try:
                    ttl = await stream.refresh(timeout=max(min(left, self._granted_ttl / 4), 0.1))
                except Exception as error:  # noqa: BLE001 - retried until the TTL passed
                    stream.close()  # the next refresh opens a new stream
                    if time.monotonic() - self._last_ok >= self._granted_ttl:
                        log.warning(
                            "lease %x lost: refreshes failed for its whole TTL (%s)", lease, error
                        )
                        return
                    log.info("lease %x refresh failed, retrying: %s", lease, error)
                    delay = self._granted_ttl / 20.0
                    continue
                if ttl <= 0:
                    log.warning("lease %x lost: expired or revoked", lease)
                    return
                self._last_ok = sent
                self._granted_ttl = ttl
                delay = max(ttl / 2.0, 0.1)
        finally:
            stream.close()
            if not self._suspended:  # a frozen process would not notice either
                self.done.set()

    def suspend_keepalive(self) -> None:
        """Test hook: stop refreshing without revoking or setting `done`, as if the
        process froze; the lease then expires on the server after its TTL."""
        self._suspended = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop the keep-alive and revoke the lease (idempotent)."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            if self._lease_id is not None:
                await _client.lease_revoke(self.client, self._lease_id, timeout=5.0)
        except Exception as error:  # noqa: BLE001 - the lease expires on its own anyway
            log.warning("revoking lease %x failed: %s", self._lease_id or 0, error)
        finally:
            self.done.set()


class _KeepAliveStream:
    """One LeaseKeepAlive stream for every refresh of a lease, opened on first use and
    again after a failure: a stream per refresh cost etcd and us about four times as
    much CPU, paid by every process every few seconds while idle."""

    def __init__(self, client: aetcd.Client, lease_id: int) -> None:
        self._client = client
        self._request = rpc.LeaseKeepAliveRequest(ID=lease_id)
        self._call: grpc.aio.StreamStreamCall | None = None

    async def refresh(self, timeout: float) -> int:
        """Refresh the lease once; the new TTL (<= 0: the lease is gone)."""
        try:
            async with asyncio.timeout(timeout):
                if self._call is None:
                    _client._ready(self._client)  # noqa: SLF001 - never reopen a closed client
                    self._call = self._client.leasestub.LeaseKeepAlive(
                        metadata=self._client.metadata
                    )
                await self._call.write(self._request)
                reply = await self._call.read()
        except TimeoutError:
            raise Unavailable("etcd lease keep-alive: no answer in time") from None
        except Exception as error:
            raise _client.map_rpc_error(error) from error
        if reply is grpc.aio.EOF:
            raise Unavailable("etcd lease keep-alive: the stream ended")
        return int(reply.TTL)

    def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
