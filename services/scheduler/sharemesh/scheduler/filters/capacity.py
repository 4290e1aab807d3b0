"""Keeps pools with room for the share, after the backend's reserved percentage, and
with thin provisioning up to `max_over_subscription_ratio` times the usable capacity."""

from collections.abc import Callable

from .._placement import Candidate, Request


def _number(capabilities: object, key: str, default: float) -> float:
    try:
        return float(capabilities.get(key, default))  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return default


def limit_gib(pool: Candidate, request: Request) -> float:
    """How much the pool may hand out in all for a share of this request."""
    usable = pool.total_gib * (1 - _number(pool.capabilities, "reserved_percentage", 0) / 100)
    thin = (
        pool.capabilities.get("thin_provisioning", "false").lower() == "true"
        and request.extra_specs.get("thin_provisioning", "true").lower() != "false"
    )
    if thin:
        return usable * max(_number(pool.capabilities, "max_over_subscription_ratio", 1.0), 1.0)
    return usable


class CapacityFilter:
    name = "capacity"

    def predicate(self, request: Request) -> Callable[[Candidate], bool]:
        return lambda pool: pool.allocated_gib + request.size_gib <= limit_gib(pool, request)

    def reason(self, request: Request) -> str:
        return f"no pool has {request.size_gib} GiB unallocated"
