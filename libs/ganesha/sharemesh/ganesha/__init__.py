"""The Ganesha export manager: one NFS-Ganesha server per instance, one export per share.

Drivers and the gateway describe exports (`Export`) and hand them to a `GaneshaInstance`,
which writes one file per export, applies it over the instance's private D-Bus and
returns only when Ganesha reports the new client list.
"""

from ._dbus import LiveExport
from ._export import (
    Access,
    ClientRule,
    Export,
    ProxyV4Fsal,
    VfsFsal,
    client_rules,
    normalize_client,
    share_pseudo,
)
from ._instance import GaneshaInstance

__all__ = [
    "Access",
    "ClientRule",
    "Export",
    "GaneshaInstance",
    "LiveExport",
    "ProxyV4Fsal",
    "VfsFsal",
    "client_rules",
    "normalize_client",
    "share_pseudo",
]
