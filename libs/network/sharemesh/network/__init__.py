"""The `netns` tenant-network plugin: a share network is a Linux bridge, each member a
network namespace joined to it by a veth pair (DESIGN §8)."""

from ._netns import (
    MESH_NETNS_PREFIX,
    STORAGE_RANGE,
    bridge_name,
    ensure_bridge,
    ensure_namespace,
    ensure_storage_leg,
    exec_in,
    host_ifname,
    join,
    leave,
    member_ifname,
    members,
    namespace_exists,
    netns_name,
    remove_bridge,
    remove_namespace,
    storage_addresses,
)
from ._servers import NetworkServers, Served, location, tenant_rules

__all__ = [
    "MESH_NETNS_PREFIX",
    "STORAGE_RANGE",
    "ensure_storage_leg",
    "storage_addresses",
    "NetworkServers",
    "Served",
    "location",
    "tenant_rules",
    "bridge_name",
    "ensure_bridge",
    "ensure_namespace",
    "exec_in",
    "host_ifname",
    "join",
    "leave",
    "member_ifname",
    "members",
    "namespace_exists",
    "netns_name",
    "remove_bridge",
    "remove_namespace",
]
