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
from .local import CAPABILITIES as LOCAL_CAPABILITIES
from .local import LocalDriver, LocalDriverConfig

__all__ = [
    "AccessLevel",
    "AccessRuleSpec",
    "BackendStats",
    "Driver",
    "ExportLocation",
    "LOCAL_CAPABILITIES",
    "LocalDriver",
    "LocalDriverConfig",
    "PoolStats",
    "ShareSpec",
]
