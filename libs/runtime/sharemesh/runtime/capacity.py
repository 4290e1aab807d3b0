"""What the mesh has allocated on each pool (durable per-pool records, changed only in
the transactions that place, grow or release shares), and how much a pool may allocate."""

from __future__ import annotations

from collections.abc import Mapping

from sharemesh.state.v1.records_pb2 import PoolAllocation

from .coordination import Store, Versioned, keys


async def pool_allocations(store: Store) -> dict[str, Versioned[PoolAllocation]]:
    """Every pool's allocation by pool name, in one range read."""
    found = await store.scan(keys.allocations_prefix(store.root), PoolAllocation)
    return {keys.pool_of_allocation_key(store.root, item.key): item for item in found}


def provisions_thin(capabilities: Mapping[str, str], extra_specs: Mapping[str, str]) -> bool:
    """A share is thin when its pool can do it and its type does not ask for thick
    (`thin_provisioning = false`)."""
    asked = extra_specs.get("thin_provisioning", "true").lower().replace("<is>", "").strip()
    return capabilities.get("thin_provisioning", "false").strip().lower() == "true" and (
        asked != "false"
    )


def limit_gib(total_gib: float, capabilities: Mapping[str, str], thin: bool) -> float:
    """What a pool may hand out in all: its capacity less the reserved percentage, and
    for thin shares up to `max_over_subscription_ratio` times that (Manila's rule)."""
    usable = total_gib * (1 - _number(capabilities, "reserved_percentage", 0.0) / 100)
    if thin:
        return usable * max(_number(capabilities, "max_over_subscription_ratio", 1.0), 1.0)
    return usable


def _number(capabilities: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(capabilities.get(key, default))
    except (TypeError, ValueError):
        return default
