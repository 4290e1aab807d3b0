"""Skips pools a create already failed on, so a retry lands somewhere else."""

from .._placement import Candidate, Request


class RetryFilter:
    name = "retry"

    def passes(self, pool: Candidate, request: Request) -> bool:
        return pool.pool not in request.tried

    def reason(self, request: Request) -> str:
        return f"every pool has been tried ({len(request.tried)})"
