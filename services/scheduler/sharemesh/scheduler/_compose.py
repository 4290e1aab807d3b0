"""Builds the placement pipeline the config names."""

from __future__ import annotations

from sharemesh.runtime.config import SchedulerConfig
from sharemesh.runtime.errors import InvalidArgument

from ._placement import Placement
from .filters import FILTERS
from .weighers import WEIGHERS


def placement(config: SchedulerConfig) -> Placement:
    unknown = [n for n in config.filters if n not in FILTERS]
    if unknown:
        raise InvalidArgument("scheduler.filters", f"unknown {unknown}; known {sorted(FILTERS)}")
    unknown = [n for n in config.weighers if n not in WEIGHERS]
    if unknown:
        raise InvalidArgument("scheduler.weighers", f"unknown {unknown}; known {sorted(WEIGHERS)}")
    return Placement(
        [FILTERS[name]() for name in config.filters],
        [
            (WEIGHERS[name](), float(multiplier))
            for name, multiplier in config.weighers.items()
            if multiplier
        ],
    )
