"""Choosing a pool: filters drop the pools that cannot take a share, weighers rank the
rest. Pure logic over a snapshot of pools, so it is tested and benchmarked alone."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Candidate:
    pool: str
    """Full pool name, `backends/{backend}/pools/{pool}`."""
    backend: str
    total_gib: int
    allocated_gib: int
    """What the pool's shares hold, from the durable allocation record."""
    capabilities: Mapping[str, str] = field(default_factory=dict)
    availability_zone: str = ""

    @property
    def unallocated_gib(self) -> int:
        return self.total_gib - self.allocated_gib


@dataclass(frozen=True)
class Request:
    size_gib: int
    extra_specs: Mapping[str, str] = field(default_factory=dict)
    """The share type's extra specs."""
    availability_zone: str = ""
    """The zone the share asks for; empty for any."""
    tried: frozenset[str] = frozenset()
    """Pools a create already failed on."""


class Filter(Protocol):
    name: str

    def predicate(self, request: Request) -> Callable[[Candidate], bool]:
        """The test for one request, prepared once and run on every pool."""
        ...

    def reason(self, request: Request) -> str:
        """Why the last pools were rejected, for the share's state_message."""
        ...


class Weigher(Protocol):
    name: str

    def weigh(self, pool: Candidate, request: Request) -> float:
        """A raw score; higher is better. Scores are normalized across candidates."""
        ...


class NoValidPool(Exception):
    """No pool can take the share; the message names the filter that rejected the last ones."""


class Placement:
    def __init__(self, filters: Sequence[Filter], weighers: Sequence[tuple[Weigher, float]]):
        self.filters = list(filters)
        self.weighers = list(weighers)

    def choose(self, candidates: Iterable[Candidate], request: Request) -> Candidate:
        pools = list(candidates)
        if not pools:
            raise NoValidPool("no backend with a pool is registered")
        for rule in self.filters:
            passes = rule.predicate(request)
            kept = [pool for pool in pools if passes(pool)]
            if not kept:
                raise NoValidPool(f"{rule.name} filter: {rule.reason(request)}")
            pools = kept
        if len(pools) == 1 or not self.weighers:
            return pools[0]
        totals = [0.0] * len(pools)
        for weigher, multiplier in self.weighers:
            raw = [weigher.weigh(pool, request) for pool in pools]
            low, high = min(raw), max(raw)
            if high > low:
                for i, value in enumerate(raw):
                    totals[i] += multiplier * (value - low) / (high - low)
        best = max(range(len(pools)), key=lambda i: (totals[i], pools[i].pool))
        return pools[best]
