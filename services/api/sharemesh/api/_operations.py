"""`google.longrunning.Operations` over the operation records in etcd, each shown as
its caller may see it."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from sharemesh.runtime import names, validation
from sharemesh.runtime.coordination import Store, Versioned
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from sharemesh.state.v1 import records_pb2

from . import _paging
from ._auth import Authenticator, Caller
from ._base import operation_view
from ._cache import Entry, WatchCache, decode

DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 300.0


class Operations(operations_pb2_grpc.OperationsServicer):
    def __init__(self, store: Store, auth: Authenticator, cache: WatchCache) -> None:
        self._store = store
        self._auth = auth
        self._cache = cache

    async def _get(self, name: str, caller: Caller) -> Versioned[records_pb2.OperationRecord]:
        names.OPERATION.parse("name", name)
        caller.check_resource(name)
        found = await self._store.get(self._store.key_of(name), records_pb2.OperationRecord)
        if found is None:
            raise NotFound(f"{name} not found")
        return found

    async def GetOperation(  # noqa: N802
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        caller = self._auth.caller(context)
        found = await self._get(request.name, caller)
        return operation_view(caller, found.value.operation, found.mod_revision)

    async def ListOperations(  # noqa: N802
        self, request: operations_pb2.ListOperationsRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.ListOperationsResponse:
        # `name` is the collection's parent, `projects/{project}`.
        validation.check_request(request)
        project = names.PROJECT.parse("name", request.name)["project"]
        caller = self._auth.caller(context)
        caller.check_parent(project)
        if request.filter not in ("", "done=false", "done=true"):
            raise InvalidArgument("filter", "only done=true or done=false is supported")
        items, token = await _paging.page(
            self._store,
            self._store.prefix_of(request.name, "operations"),
            records_pb2.OperationRecord,
            request.page_token,
            request.page_size,
            scope=request.filter,
            cache=self._cache,
        )
        response = operations_pb2.ListOperationsResponse(
            operations=[
                operation_view(caller, i.value.operation, i.mod_revision)
                for i in items
                if not request.filter or str(i.value.operation.done).lower() == request.filter[5:]
            ],
            next_page_token=token,
        )
        return response

    async def WaitOperation(  # noqa: N802
        self, request: operations_pb2.WaitOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        caller = self._auth.caller(context)
        names.OPERATION.parse("name", request.name)
        caller.check_resource(request.name)
        timeout = DEFAULT_WAIT_SECONDS
        if request.HasField("timeout"):
            timeout = min(request.timeout.ToTimedelta().total_seconds(), MAX_WAIT_SECONDS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0)
        found = await self._wait_in_cache(request.name, deadline)
        if found is not None:
            return operation_view(caller, found.value.operation, found.mod_revision)
        # The cache cannot say (it is listing): read etcd and watch the one key.
        found = await self._get(request.name, caller)
        if found.value.operation.done or loop.time() >= deadline:
            return operation_view(caller, found.value.operation, found.mod_revision)
        # Watching from just after the revision we read cannot miss the completion.
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout_at(deadline):
                async for event in self._store.watch_prefix(
                    found.key, found.mod_revision + 1, records_pb2.OperationRecord
                ):
                    record = event.value  # None for a DELETE
                    if (
                        event.key == found.key
                        and isinstance(record, records_pb2.OperationRecord)
                        and record.operation.done
                    ):
                        return operation_view(caller, record.operation, event.mod_revision)
        found = await self._get(request.name, caller)
        return operation_view(caller, found.value.operation, found.mod_revision)

    async def _wait_in_cache(
        self, name: str, deadline: float
    ) -> Versioned[records_pb2.OperationRecord] | None:
        """The operation once it is done, or as it is at `deadline`, from the watch cache,
        which follows every operation anyway: no read and no watch of etcd per wait
        (a client waits on every operation it starts). NOT_FOUND if etcd has no such
        operation; None when the cache cannot say (listing), to read etcd instead."""
        cache, loop = self._cache, asyncio.get_running_loop()
        key = self._store.key_of(name)
        if cache.ready and cache.snapshot.get(key) is None:
            # Just made, the operation may not be here yet. Made here (a client usually
            # waits where it created), it is once the cache has this process's writes;
            # made by another api process, catch up with etcd's revision (one read of one
            # key). Then its absence is the truth.
            if not await cache.has_own_writes():
                return None
            if cache.snapshot.get(key) is None and not await cache.consistent():
                return None
        last: Entry | None = None
        found: Versioned[records_pb2.OperationRecord] | None = None
        while cache.ready:
            entry = cache.snapshot.get(key)
            if entry is None:
                raise NotFound(f"{name} not found")
            if found is None or entry is not last:  # parsed again only when it changed
                last, found = entry, decode(key, entry, records_pb2.OperationRecord)
            if found.value.operation.done or loop.time() >= deadline:
                return found
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await cache.changed(key)
        return None

    async def DeleteOperation(  # noqa: N802
        self, request: operations_pb2.DeleteOperationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        validation.check_request(request)
        await self._get(request.name, self._auth.caller(context))
        await self._store.delete(self._store.key_of(request.name))
        return empty_pb2.Empty()

    async def CancelOperation(  # noqa: N802
        self, request: operations_pb2.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        validation.check_request(request)
        await self._get(request.name, self._auth.caller(context))
        raise FailedPrecondition(
            "sharemesh operations cannot be cancelled; delete the resource instead",
            reason="NOT_CANCELLABLE",
        )
