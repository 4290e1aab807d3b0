"""`sharemesh.v1.PoolService`: the admin's view of backends and pools, with what each
reports (capacity, capabilities) and what the mesh has allocated on it."""

from __future__ import annotations

import grpc

from sharemesh.runtime import names, validation
from sharemesh.runtime.capacity import pool_allocations
from sharemesh.runtime.coordination import Store
from sharemesh.runtime.errors import InvalidArgument
from sharemesh.runtime.peers import Peers
from sharemesh.v1 import pool_pb2, pool_service_pb2, pool_service_pb2_grpc

from ._auth import Authenticator


class Pools(pool_service_pb2_grpc.PoolServiceServicer):
    def __init__(self, store: Store, peers: Peers, auth: Authenticator) -> None:
        self._store = store
        self._peers = peers
        self._auth = auth

    async def ListPools(  # noqa: N802
        self, request: pool_service_pb2.ListPoolsRequest, context: grpc.aio.ServicerContext
    ) -> pool_service_pb2.ListPoolsResponse:
        self._auth.caller(context).check_admin()
        validation.check_request(request)
        parts = request.parent.split("/")
        if len(parts) != 2 or parts[0] != "backends":
            raise InvalidArgument("parent", "must be backends/- or backends/{backend}")
        if parts[1] != "-":
            names.check_id("parent", parts[1])
        if request.page_token:
            raise InvalidArgument("page_token", "pools fit on one page; list again")
        pools: list[pool_pb2.Pool] = []
        allocations = await pool_allocations(self._store)
        for backend in await self._peers.backends():
            if parts[1] not in ("-", backend.name.split("/")[-1]):
                continue
            for capacity in backend.pools:
                allocation = allocations.get(capacity.name)
                pool = pool_pb2.Pool(
                    name=capacity.name,
                    total_gib=capacity.total_gib,
                    free_gib=capacity.free_gib,
                    provisioned_gib=capacity.provisioned_gib,
                    allocated_gib=allocation.value.allocated_gib if allocation else 0,
                    availability_zone=capacity.availability_zone
                    or capacity.capabilities.get("availability_zone", ""),
                    endpoint=backend.endpoint,
                )
                pool.capabilities.update(capacity.capabilities)
                pools.append(pool)
        pools.sort(key=lambda p: p.name)
        return pool_service_pb2.ListPoolsResponse(pools=pools)
