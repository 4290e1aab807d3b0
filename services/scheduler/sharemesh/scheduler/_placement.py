"""Choosing a pool: pure logic over a snapshot of pools and their allocations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    pool: str
    """Full pool name, `backends/{backend}/pools/{pool}`."""
    backend: str
    total_gib: int
    allocated_gib: int
    capabilities: Mapping[str, str] = field(default_factory=dict)

    @property
    def unallocated_gib(self) -> int:
        return self.total_gib - self.allocated_gib


class NoValidPool(Exception):
    """No pool can take the share; the message says why, for the share's state_message."""


def choose(candidates: Iterable[Candidate], size_gib: int, tried: Iterable[str] = ()) -> Candidate:
    """The pool with the most unallocated capacity that fits (spreads shares)."""
    skipped = set(tried)
    pools = [c for c in candidates if c.pool not in skipped]
    if not pools:
        raise NoValidPool(
            "no backend with a pool is registered" if not skipped else "every pool has been tried"
        )
    fits = [c for c in pools if c.unallocated_gib >= size_gib]
    if not fits:
        best = max(pools, key=lambda c: c.unallocated_gib)
        raise NoValidPool(
            f"capacity filter: no pool has {size_gib} GiB unallocated "
            f"(largest: {max(best.unallocated_gib, 0)} GiB in {best.pool})"
        )
    return max(fits, key=lambda c: (c.unallocated_gib, c.pool))
