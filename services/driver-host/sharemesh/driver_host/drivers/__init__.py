"""Storage drivers and the contract they implement."""

from .base import (
    AccessLevel,
    AccessRuleSpec,
    BackendStats,
    Driver,
    ExportLocation,
    PoolStats,
    ShareSpec,
)

__all__ = [
    "AccessLevel",
    "AccessRuleSpec",
    "BackendStats",
    "Driver",
    "ExportLocation",
    "PoolStats",
    "ShareSpec",
]
