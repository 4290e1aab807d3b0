"""Keeps pools with room for the share, after the backend's reserved percentage, and
with thin provisioning up to `max_over_subscription_ratio` times the usable capacity."""

from collections.abc import Callable

from sharemesh.runtime import capacity

from .._placement import Candidate, Request


def limit_gib(pool: Candidate, request: Request) -> float:
    """How much the pool may hand out in all for a share of this request."""
    thin = capacity.provisions_thin(pool.capabilities, request.extra_specs)
    return capacity.limit_gib(pool.total_gib, pool.capabilities, thin)


class CapacityFilter:
    name = "capacity"

    def predicate(self, request: Request) -> Callable[[Candidate], bool]:
        return lambda pool: pool.allocated_gib + request.size_gib <= limit_gib(pool, request)

    def reason(self, request: Request) -> str:
        return f"no pool has {request.size_gib} GiB unallocated"
