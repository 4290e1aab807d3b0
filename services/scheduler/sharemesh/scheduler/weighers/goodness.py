"""Prefers pools whose backend reports a higher `goodness` (0-100) capability."""

from .._placement import Candidate, Request


class GoodnessWeigher:
    name = "goodness"

    def weigh(self, pool: Candidate, request: Request) -> float:
        try:
            return min(max(float(pool.capabilities.get("goodness", 0)), 0.0), 100.0)
        except ValueError:
            return 0.0
