"""Scheduler filters, one per module; the config names them in the order they run."""

from .availability_zone import AvailabilityZoneFilter
from .capabilities import CapabilitiesFilter
from .capacity import CapacityFilter
from .retry import RetryFilter

FILTERS = {
    f.name: f for f in (RetryFilter, AvailabilityZoneFilter, CapacityFilter, CapabilitiesFilter)
}

__all__ = [
    "FILTERS",
    "AvailabilityZoneFilter",
    "CapabilitiesFilter",
    "CapacityFilter",
    "RetryFilter",
]
