"""What the mesh has allocated on each pool: durable per-pool records, changed only in
the transactions that place, grow or release shares."""

from __future__ import annotations

from sharemesh.state.v1.records_pb2 import PoolAllocation

from .coordination import Store, Versioned, keys


async def pool_allocations(store: Store) -> dict[str, Versioned[PoolAllocation]]:
    """Every pool's allocation by pool name, in one range read."""
    found = await store.scan(keys.allocations_prefix(store.root), PoolAllocation)
    return {keys.pool_of_allocation_key(store.root, item.key): item for item in found}
