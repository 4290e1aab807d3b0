"""Skips pools a create already failed on, so a retry lands somewhere else."""

from collections.abc import Callable

from .._placement import Candidate, Request


class RetryFilter:
    name = "retry"

    def predicate(self, request: Request) -> Callable[[Candidate], bool]:
        tried = request.tried
        return lambda pool: pool.pool not in tried

    def reason(self, request: Request) -> str:
        return f"every pool has been tried ({len(request.tried)})"
