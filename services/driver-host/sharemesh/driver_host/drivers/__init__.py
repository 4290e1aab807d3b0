"""Storage drivers and the contract they implement."""

from collections.abc import Mapping
from typing import Any

from sharemesh.runtime.config import from_mapping
from sharemesh.runtime.errors import InvalidArgument

from .base import (
    AccessLevel,
    AccessRuleSpec,
    BackendStats,
    Capabilities,
    Driver,
    ExportLocation,
    GatewayAccess,
    PoolStats,
    Progress,
    ShareSpec,
    SnapshotSpec,
    progress_to,
    report_progress,
)
from .cephfs import CephFsDriver, CephFsDriverConfig
from .fake import FakeBackend, FakeDriver, FakeDriverConfig
from .glusterfs import GlusterDriver, GlusterDriverConfig
from .local import LocalDriver, LocalDriverConfig

__all__ = [
    "AccessLevel",
    "AccessRuleSpec",
    "BackendStats",
    "Capabilities",
    "CephFsDriver",
    "CephFsDriverConfig",
    "Driver",
    "ExportLocation",
    "FakeBackend",
    "FakeDriver",
    "FakeDriverConfig",
    "GatewayAccess",
    "GlusterDriver",
    "GlusterDriverConfig",
    "LocalDriver",
    "LocalDriverConfig",
    "PoolStats",
    "Progress",
    "ShareSpec",
    "SnapshotSpec",
    "progress_to",
    "report_progress",
    "create",
]


def create(driver: str, options: Mapping[str, Any]) -> Driver:
    """The driver named in a backend's config, built from its typed options."""
    if driver == "local":
        return LocalDriver(from_mapping(LocalDriverConfig, options, "options."))
    if driver == "fake":
        return FakeDriver(from_mapping(FakeDriverConfig, options, "options."))
    if driver == "cephfs":
        return CephFsDriver(from_mapping(CephFsDriverConfig, options, "options."))
    if driver == "glusterfs":
        return GlusterDriver(from_mapping(GlusterDriverConfig, options, "options."))
    raise InvalidArgument(
        "driver", f"unknown driver {driver!r}; known: cephfs, fake, glusterfs, local"
    )
