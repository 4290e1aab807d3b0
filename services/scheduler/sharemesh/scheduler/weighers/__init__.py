"""Scheduler weighers, one per module; the config gives each a multiplier."""

from .capacity import CapacityWeigher
from .goodness import GoodnessWeigher

WEIGHERS = {w.name: w for w in (CapacityWeigher, GoodnessWeigher)}

__all__ = ["WEIGHERS", "CapacityWeigher", "GoodnessWeigher"]
