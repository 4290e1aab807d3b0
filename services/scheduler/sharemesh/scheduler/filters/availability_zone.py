"""Keeps pools in the zone the share asks for, or in one its type allows."""

from collections.abc import Callable

from .._placement import Candidate, Request


def _zones(request: Request) -> set[str]:
    if request.availability_zone:
        return {request.availability_zone}
    allowed = request.extra_specs.get("availability_zones", "")
    return {zone.strip() for zone in allowed.split(",") if zone.strip()}


class AvailabilityZoneFilter:
    name = "availability_zone"

    def predicate(self, request: Request) -> Callable[[Candidate], bool]:
        zones = _zones(request)
        return lambda pool: not zones or pool.availability_zone in zones

    def reason(self, request: Request) -> str:
        return f"no pool in availability zone {' or '.join(sorted(_zones(request)))}"
