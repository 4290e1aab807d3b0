"""The driver contract: what the share manager asks of a storage backend.

Small and declarative. Every call is idempotent and may be repeated after a crash or a
restart of the driver host; deleting what does not exist is success. Drivers receive
these plain values, never protos or etcd records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

AccessLevel = Literal["READ_WRITE", "READ_ONLY"]


@dataclass(frozen=True)
class ShareSpec:
    """The share as a driver needs to know it."""

    share_id: str
    """Stable unique id, safe for file names (the driver names images, dirs, exports by it)."""
    name: str
    """The resource name (`projects/p/locations/l/shares/s`), for logs and labels."""
    size_gib: int
    """The size the share should have; a hard limit where the backend can enforce one."""
    pool: str
    """The pool the scheduler placed it in."""
    export_id: int
    """Ganesha Export_Id, allocated by the mesh, unique per Ganesha instance."""
    thick: bool = False
    """The pool counts the share thick: the backend reserves all of its blocks."""


@dataclass(frozen=True)
class AccessRuleSpec:
    """One client's access: an IP address or CIDR and the level it gets."""

    access_to: str
    access_level: AccessLevel


@dataclass(frozen=True)
class GatewayAccess:
    """How a gateway on the backend's host reaches a share: a native FSAL on a path the
    host has mounted (`VFS`), or the backend's NFS export (`PROXY_V4`)."""

    fsal: Literal["VFS", "PROXY_V4"]
    path: str
    """VFS: the share's directory on the host; PROXY_V4: its path on the server."""
    server: str = ""
    nfs_port: int = 0
    server_generation: str = ""
    """PROXY_V4: the serving NFS server's incarnation; it changes when the server restarts."""


@dataclass(frozen=True)
class ExportLocation:
    """Where clients mount the share."""

    path: str
    """`host:/pseudo`."""
    nfs_port: int
    mount_port: int
    """The MOUNT (NFSv3) port; NFSv4 clients need only `nfs_port`."""


@dataclass(frozen=True)
class PoolStats:
    name: str
    total_gib: float
    free_gib: float
    provisioned_gib: float
    """Sum of the sizes of the shares in the pool (thin: may exceed what is used)."""
    capabilities: Mapping[str, str] = field(default_factory=dict)
    """Manila-style capability strings, e.g. `shrink_support: "false"`."""


@dataclass(frozen=True)
class BackendStats:
    pools: tuple[PoolStats, ...]


@runtime_checkable
class Driver(Protocol):
    """A storage backend. Every method is idempotent and safe to repeat after a restart."""

    async def start(self) -> None:
        """Start the backend's servers, or adopt the ones a previous incarnation left."""

    async def stop(self, stop_servers: bool) -> None:
        """Stop supervising; with `stop_servers`, stop the NFS servers too (orderly shutdown)."""

    async def stats(self) -> BackendStats:
        """Pools, capacity and capabilities."""

    async def create_share(self, share: ShareSpec) -> list[ExportLocation]:
        """Provision and export the share; no client may mount it until `update_access`."""

    async def delete_share(self, share: ShareSpec) -> None:
        """Withdraw the export and destroy the data; a missing share is success."""

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        """Grow online. A shrink the backend cannot do raises FailedPrecondition naming
        the `shrink_support` capability."""

    async def update_access(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        """Make the export's clients exactly `rules`; returns when the NFS server has them."""

    async def ensure_share(
        self, share: ShareSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        """Make an existing share mounted and exported with `rules` again (after a restart)."""

    def gateway_access(self, share: ShareSpec) -> GatewayAccess:
        """How a gateway on this backend's host reaches the share."""

    async def supervise(
        self, on_restart: Callable[[Sequence[str]], Awaitable[None]] | None = None
    ) -> None:
        """Keep the backend's servers running until `stop`; restart and re-export on
        death, then call `on_restart` (so what proxies them can follow) with the share
        ids (`ShareSpec.share_id`) whose exports the server refused, usually none. The
        other shares serve; a refused share serves nothing until its export is fixed.
        Exports refused at `start` are told to the first call."""
