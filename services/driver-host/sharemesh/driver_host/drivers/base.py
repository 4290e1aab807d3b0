"""The driver contract: what the share manager asks of a storage backend.

Small and declarative. Every call is idempotent and may be repeated after a crash or a
restart of the driver host; deleting what does not exist is success. Drivers receive
these plain values, never protos or etcd records.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, Protocol, runtime_checkable

from sharemesh.ganesha import ClientRule, client_rules
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument

AccessLevel = Literal["READ_WRITE", "READ_ONLY"]

_SHARE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


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


def check_share(share: ShareSpec, pool: str) -> None:
    """Refuses a share a driver serving `pool` cannot take, before anything is touched."""
    if not _SHARE_ID.match(share.share_id):
        raise InvalidArgument("share_id", "letters, digits, '-' and '_' only, at most 128")
    if share.size_gib < 1:
        raise InvalidArgument("size_gib", "must be at least 1")
    if share.pool != pool:
        raise InvalidArgument("pool", f"this backend has pool {pool!r} only")


def check_snapshot(snapshot: SnapshotSpec) -> None:
    """Refuses a snapshot id a driver cannot name files or subvolumes by."""
    if not _SHARE_ID.match(snapshot.snapshot_id):
        raise InvalidArgument("snapshot_id", "letters, digits, '-' and '_' only, at most 128")


@dataclass(frozen=True)
class SnapshotSpec:
    """A point-in-time copy of a share, as a driver needs to know it."""

    snapshot_id: str
    """Stable unique id, safe for file names."""
    name: str
    """The resource name, for logs."""
    share_id: str
    """The share it is (or was) a copy of (its `ShareSpec.share_id`)."""
    size_gib: int = 0
    """The share's size when the snapshot was taken; a share made from it is at least this."""
    export_id: int = 0
    """Ganesha Export_Id of the snapshot's own read-only export (`export_snapshot`); 0
    when it is not exported."""


Progress = Callable[[int, str], Awaitable[None]]
_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "sharemesh_driver_progress", default=None
)


async def report_progress(percent: int, detail: str) -> None:
    """Tells whoever waits for the call in progress how far it is (say, a clone the
    backend makes asynchronously); nothing when no one listens."""
    listener = _progress.get()
    if listener is not None:
        await listener(percent, detail)


@contextlib.contextmanager
def progress_to(listener: Progress) -> Iterator[None]:
    """Driver calls made inside report their progress to `listener`."""
    token = _progress.set(listener)
    try:
        yield
    finally:
        _progress.reset(token)


@dataclass(frozen=True)
class AccessRuleSpec:
    """One client's access: an IP address or CIDR and the level it gets."""

    access_to: str
    access_level: AccessLevel


def client_blocks(rules: Sequence[AccessRuleSpec]) -> tuple[ClientRule, ...]:
    """The NFS server's CLIENT blocks for `rules`, most specific first (the first match
    wins); a bad level or address is InvalidArgument."""
    for rule in rules:
        if rule.access_level not in ("READ_WRITE", "READ_ONLY"):
            raise InvalidArgument("access_level", f"unknown level {rule.access_level!r}")
    return client_rules(
        (rule.access_to, "RW" if rule.access_level == "READ_WRITE" else "RO") for rule in rules
    )


@dataclass(frozen=True)
class GatewayAccess:
    """How a gateway on the backend's host reaches a share: a native FSAL on a path the
    host has mounted (`VFS`) or straight to the backend's cluster (`GLUSTER` through
    libgfapi, `CEPH` through libcephfs), or the backend's NFS export (`PROXY_V4`)."""

    fsal: Literal["VFS", "PROXY_V4", "GLUSTER", "CEPH"]
    path: str
    """VFS: the share's directory on the host; PROXY_V4: its path on the server; GLUSTER:
    the export's name in Ganesha; CEPH: the share's directory in the file system."""
    server: str = ""
    """GLUSTER: the volfile server's address; PROXY_V4: the NFS server's, when gateways
    on other hosts may reach it (empty: only this host's, through its storage leg)."""
    nfs_port: int = 0
    server_generation: str = ""
    """PROXY_V4: the serving NFS server's incarnation; it changes when the server restarts."""
    volume: str = ""
    volpath: str = ""
    """GLUSTER: the volume, and the share's directory in it."""
    filesystem: str = ""
    user_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    """CEPH: the file system, and the cephx user (limited to the backend's subvolume
    group, never the admin) with its key."""
    ceph_conf: str = ""
    """CEPH: the cluster's ceph.conf on the gateway's host."""
    routes: tuple[str, ...] = ()
    """GLUSTER, CEPH: the cluster's addresses (or CIDRs) a gateway routes to through its
    storage leg."""


def check_gateway_fsal(option: str) -> None:
    """A cluster backend's `gateway_fsal` option: `NATIVE` (gateways reach the cluster
    with the backend's own FSAL) or `PROXY_V4` (they proxy the backend's NFS export)."""
    if option not in ("NATIVE", "PROXY_V4"):
        raise InvalidArgument("options.gateway_fsal", 'must be "NATIVE" or "PROXY_V4"')


def gateways_reach(routes: Sequence[str]) -> bool:
    """Whether gateways can reach a cluster at these addresses natively: each runs in a
    network namespace with a loopback of its own, so never one on the host's loopback."""
    try:
        networks = [ipaddress.ip_network(r, strict=False) for r in routes]
    except ValueError:
        return False
    return bool(networks) and not any(n.is_loopback for n in networks)


@dataclass(frozen=True)
class ExportLocation:
    """Where clients mount the share."""

    path: str
    """`host:/pseudo`."""
    nfs_port: int
    mount_port: int
    """The MOUNT (NFSv3) port; NFSv4 clients need only `nfs_port`."""


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a pool offers, typed. The mesh carries them as Manila's capability strings
    (`PoolCapacity.capabilities`, matched by share types' extra specs); `as_strings`
    renders that form, the only place it is made."""

    snapshot_support: bool = False
    create_share_from_snapshot_support: bool = False
    revert_to_snapshot_support: bool = False
    mount_snapshot_support: bool = False
    shrink_support: bool = False
    thin_provisioning: bool = False
    """Shares take blocks as they are written, so the pool may promise more than it has."""
    driver_handles_share_servers: bool = False
    max_over_subscription_ratio: float = 1.0
    """Thin pools may provision up to this many times their capacity."""
    reserved_percentage: float = 0.0
    """Capacity, in percent, the scheduler keeps free."""
    availability_zone: str = ""
    storage_protocol: str = "NFS"
    custom: Mapping[str, str] = field(default_factory=dict)
    """The operator's own capabilities (e.g. `tier = "gold"`); they cannot override
    what the driver reports."""

    def as_strings(self) -> dict[str, str]:
        """The wire form: `{"shrink_support": "false", "reserved_percentage": "0.0", ...}`."""
        reported = {
            f.name: _capability_string(getattr(self, f.name))
            for f in fields(self)
            if f.name != "custom"
        }
        return {**self.custom, **reported}


def _capability_string(value: bool | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # what `<is> True` and the api's checks read
    return str(value)


def unsupported(capability: str, action: str) -> FailedPrecondition:
    """The refusal of an operation the pool's capabilities do not offer, naming the
    capability, e.g. `unsupported("shrink_support", "cannot shrink share s from 2 to 1 GiB")`."""
    return FailedPrecondition(
        f"{action}: backend capability {capability} is false",
        reason=f"{capability.removesuffix('_support').upper()}_NOT_SUPPORTED",
        metadata={"capability": capability},
    )


@dataclass(frozen=True)
class PoolStats:
    name: str
    total_gib: float
    free_gib: float
    provisioned_gib: float
    """Sum of the sizes of the shares in the pool (thin: may exceed what is used)."""
    offers: Capabilities = field(default_factory=Capabilities)
    """What the pool can do, typed."""

    @property
    def capabilities(self) -> dict[str, str]:
        """`offers` as the capability strings the mesh records and schedules by."""
        return self.offers.as_strings()


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
        the `shrink_support` capability (`unsupported`)."""

    async def update_access(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        """Make the export's clients exactly `rules`; returns when the NFS server has them."""

    async def ensure_share(
        self, share: ShareSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        """Make an existing share mounted and exported with `rules` again (after a restart)."""

    async def create_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        """Take a consistent point-in-time copy. Without `snapshot_support`, and for
        each operation below without its own capability, raise `unsupported(...)`."""

    async def delete_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        """Destroy the copy; a missing snapshot is success."""

    async def create_share_from_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec
    ) -> list[ExportLocation]:
        """`create_share` whose data is the snapshot's (`create_share_from_snapshot_support`).
        A backend that copies for a while reports how far it is (`report_progress`)."""

    async def revert_to_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        """Put the share's data back as the snapshot has it (`revert_to_snapshot_support`).
        The share keeps its size, its export and its rules; clients see a short pause."""

    async def export_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        """Serve the snapshot read-only at its own export (`snapshot.export_id`) to the
        clients of `rules`, whatever their level (`mount_snapshot_support`). Idempotent,
        and what serves it again after a restart; `delete_snapshot` withdraws it."""

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
