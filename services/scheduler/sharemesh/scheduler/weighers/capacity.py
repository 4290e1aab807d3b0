"""Prefers pools with more room left: a positive multiplier spreads shares across
pools, a negative one stacks them onto the fullest pool that still fits."""

from .._placement import Candidate, Request
from ..filters.capacity import limit_gib


class CapacityWeigher:
    name = "capacity"

    def weigh(self, pool: Candidate, request: Request) -> float:
        return limit_gib(pool, request) - pool.allocated_gib
