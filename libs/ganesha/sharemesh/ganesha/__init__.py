"""The Ganesha export manager: one NFS-Ganesha server per instance, one export per share.

Drivers and the gateway describe exports (`Export`) and hand them to a `GaneshaInstance`,
which writes one file per export, applies it over the instance's private D-Bus and
returns only when Ganesha reports the new client list. Every client that reaches a config
is an IPv4 or IPv6 address or CIDR (`parse_client`); a refused export is never included.
"""

from ._dbus import LiveExport
from ._export import (
    Access,
    CephFsal,
    ClientRule,
    Export,
    Fsal,
    GlusterFsal,
    ProxyV4Fsal,
    VfsFsal,
    client_rules,
    normalize_client,
    parse_client,
    share_of_pseudo,
    share_pseudo,
    snapshot_pseudo,
)
from ._instance import ExportRefused, GaneshaInstance, RefusedExport

__all__ = [
    "Access",
    "CephFsal",
    "ClientRule",
    "Export",
    "ExportRefused",
    "GaneshaInstance",
    "LiveExport",
    "Fsal",
    "GlusterFsal",
    "ProxyV4Fsal",
    "RefusedExport",
    "VfsFsal",
    "client_rules",
    "normalize_client",
    "parse_client",
    "share_of_pseudo",
    "share_pseudo",
    "snapshot_pseudo",
]
