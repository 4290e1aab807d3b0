"""What every backend that serves its shares through a Ganesha of its own has in common.

`local`, `cephfs` and `glusterfs` differ in how a share is stored (an image on a loop
device, a subvolume, a directory of a volume) and the same in how it is served: one
Ganesha per backend, one export per share at the share's pseudo path, the share's access
rules as that export's clients, Ganesha adopted at start and supervised after. This
module is that second half, once: `ServedOptions`, the options each driver's config
extends, and `ServedDriver`, the base each driver extends with its storage.

A base class rather than a composed helper: what is shared is the `Driver` contract's
own methods (`supervise`, `update_access`, `ensure_share`, `create_share`,
`delete_share`, `stop`, the refusals of snapshots a backend does not offer), so a
helper would leave each driver forwarding every one of them. The drivers fill in a few
hooks instead: `_export` (what Ganesha serves), `_make`, `_ready`, `_remove` (their
storage), and `_native_access` (how a gateway reaches the storage without NFS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from sharemesh.ganesha import (
    ClientRule,
    Export,
    GaneshaInstance,
    RefusedExport,
    share_of_pseudo,
    share_pseudo,
)
from sharemesh.runtime.errors import InvalidArgument, ResourceExhausted

from .base import (
    AccessRuleSpec,
    BackendStats,
    Capabilities,
    ExportLocation,
    GatewayAccess,
    PoolStats,
    ShareSpec,
    SnapshotSpec,
    check_share,
    client_blocks,
    unsupported,
)

GIB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class ServedOptions:
    """The options of a backend that serves its shares through a Ganesha of its own."""

    pool_name: str = "default"
    """The pool's name: it is `backends/{backend}/pools/{pool_name}`."""
    max_over_subscription_ratio: float = 1.0
    """Shares are thin, so the pool may promise more than it has: up to this many times
    its capacity in all (Manila's thin provisioning). 1.0 promises no more."""
    reserved_percentage: float = 0.0
    """Capacity the scheduler keeps free, in percent, e.g. for growth of what is written."""
    host: str = "127.0.0.1"
    """The address clients use, in export locations."""
    nfs_port: int
    """The TCP port the backend's Ganesha serves NFS on."""
    mount_port: int
    """The TCP port of its MOUNT service (NFSv3 clients)."""
    state_dir: Path
    """The Ganesha instance's state: config, export files, pidfiles, log, bus (and the
    driver's own, such as the libgfapi client's log)."""
    grace_seconds: int = 0
    """Ganesha's NFSv4 grace period after a restart, in which clients reclaim their
    locks; 0 serves at once (no reclaim)."""
    bind_address: str | None = None
    """The address Ganesha listens on; unset: all."""
    availability_zone: str = ""
    """The zone the pool is in, for the scheduler's availability-zone filter."""
    capabilities: Mapping[str, str] = field(default_factory=dict)
    """Custom capabilities the operator gives the pool (e.g. `tier = "gold"`), matched
    against share types' extra specs; they cannot override what the driver reports."""


def _routable(host: str) -> bool:
    """An address gateways on other hosts can be routed to (not loopback, not a name)."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServedDriver:
    """The half of `Driver` that serving through Ganesha makes: subclasses store."""

    kind: ClassVar[str]
    """The driver's name, in its logger's."""
    config: ServedOptions

    def __init__(self, config: ServedOptions, **ganesha: Any) -> None:
        """`ganesha`: more of its `GaneshaInstance`'s arguments (`env`, `stop_timeout`)."""
        if config.max_over_subscription_ratio < 1:
            raise InvalidArgument(
                "options.max_over_subscription_ratio", "must be at least 1 (1 means thick)"
            )
        if not 0 <= config.reserved_percentage < 100:
            raise InvalidArgument("options.reserved_percentage", "must be from 0 to under 100")
        self.config = config
        self.log = logging.getLogger(f"sharemesh.driver_host.{self.kind}")
        self.ganesha = GaneshaInstance(
            Path(config.state_dir) / "ganesha",
            config.nfs_port,
            config.mount_port,
            grace_seconds=config.grace_seconds,
            bind_address=config.bind_address,
            **ganesha,
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._capacity = asyncio.Lock()
        """Held from a look at what is provisioned to the provisioning it allows."""
        self._stopping = asyncio.Event()
        # Exports Ganesha refused at `start`, told to the first `supervise` callback.
        self._refused_at_start: list[RefusedExport] = []

    # ---- hooks: the driver's storage -------------------------------------------------

    async def _export(self, share: ShareSpec, clients: tuple[ClientRule, ...]) -> Export:
        """The share's export with `clients`; NotFound when the share is not stored."""
        raise NotImplementedError

    async def _make(self, share: ShareSpec) -> None:
        """Stores a new share, or finishes one a crash interrupted (under its lock)."""
        raise NotImplementedError

    async def _ready(self, share: ShareSpec) -> None:
        """Makes an existing share servable, NotFound when there is none (under its lock);
        by default `_export` finds out."""

    async def _remove(self, share: ShareSpec) -> None:
        """Removes the share's storage once it is no longer served; none is success."""
        raise NotImplementedError

    def _native_access(self, share: ShareSpec) -> GatewayAccess | None:
        """How a gateway reaches the share without this backend's NFS; None: it proxies."""
        return None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Readies the driver's storage, then `_start_serving`."""
        raise NotImplementedError

    async def _start_serving(self) -> None:
        """Starts Ganesha, or adopts a running one: last in `start`, once the storage
        its export files name is there."""
        self._stopping.clear()
        self._refused_at_start = await self.ganesha.start()

    async def stop(self, stop_servers: bool) -> None:
        self._stopping.set()
        if stop_servers:
            started = time.monotonic()
            await self.ganesha.stop()
            self.log.info("ganesha stopped in %.2fs", time.monotonic() - started)

    async def supervise(
        self, on_restart: Callable[[Sequence[str]], Awaitable[None]] | None = None
    ) -> None:
        # The instance re-applies every export itself, in order with rule changes.
        async def restarted(refused: Sequence[RefusedExport]) -> None:
            if on_restart is not None:
                await on_restart(_share_ids(refused))

        if self._refused_at_start:
            refused, self._refused_at_start = self._refused_at_start, []
            await restarted(refused)
        await self.ganesha.supervise(restarted, until=self._stopping)

    # ---- stats -----------------------------------------------------------------------

    def _offers(self, own: Capabilities) -> Capabilities:
        """The pool's capabilities: what the driver offers (`own`), thin, and what the
        operator's options say."""
        return replace(
            own,
            thin_provisioning=True,
            max_over_subscription_ratio=self.config.max_over_subscription_ratio,
            reserved_percentage=self.config.reserved_percentage,
            availability_zone=self.config.availability_zone,
            custom=self.config.capabilities,
        )

    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    def _pool_stats(
        self, total_gib: float, free_gib: float, provisioned_gib: float
    ) -> BackendStats:
        pool = PoolStats(
            name=self.config.pool_name,
            total_gib=total_gib,
            free_gib=free_gib,
            provisioned_gib=provisioned_gib,
            offers=self.capabilities(),
        )
        return BackendStats(pools=(pool,))

    def _check_room(self, limit: int, provisioned: int, more: int, what: str) -> None:
        """Refuses `more` bytes beyond what the pool may provision (`limit`, with
        `provisioned` already): `what` names them, e.g. "2 GiB more"."""
        if provisioned + more > limit:
            raise ResourceExhausted(
                f"pool {self.config.pool_name} may provision {limit / GIB:.0f} GiB, "
                f"{provisioned / GIB:.0f} GiB provisioned; {what} would exceed it"
            )

    # ---- shares ----------------------------------------------------------------------

    def _lock(self, share_id: str) -> asyncio.Lock:
        return self._locks.setdefault(share_id, asyncio.Lock())

    def _forget(self, share_id: str) -> None:
        """Drops what the driver holds of a deleted share."""
        self._locks.pop(share_id, None)

    def _check(self, share: ShareSpec) -> None:
        check_share(share, self.config.pool_name)

    @staticmethod
    def _pseudo(share: ShareSpec) -> str:
        return share_pseudo(share.share_id)

    def _locations(self, share: ShareSpec) -> list[ExportLocation]:
        return self._served_at(self._pseudo(share))

    def _served_at(self, pseudo: str) -> list[ExportLocation]:
        return [
            ExportLocation(
                path=f"{self.config.host}:{pseudo}",
                nfs_port=self.config.nfs_port,
                mount_port=self.config.mount_port,
            )
        ]

    def gateway_access(self, share: ShareSpec) -> GatewayAccess:
        # Served beyond loopback, the export is reachable from gateways on other hosts,
        # routed through their storage legs; on loopback only from this host's.
        across = _routable(self.config.host)
        return self._native_access(share) or GatewayAccess(
            fsal="PROXY_V4",
            path=self._pseudo(share),
            server=self.config.host if across else "",
            nfs_port=self.config.nfs_port,
            server_generation=self.ganesha.generation(),
            routes=(f"{self.config.host}/32",) if across else (),
        )

    async def _apply(self, share: ShareSpec, export: Export) -> None:
        await self.ganesha.apply(export)

    async def _serve(self, share: ShareSpec, clients: tuple[ClientRule, ...]) -> None:
        await self._apply(share, await self._export(share, clients))

    async def _serve_to_nobody(self, share: ShareSpec) -> None:
        """A new share's export; a repeat keeps the clients `update_access` set since."""
        export = await self._export(share, ())
        # Asked only of an export accepted before: a look per create was a third of the
        # NFS server's calls for it.
        if not self.ganesha.accepted(export.export_id) or not await self.ganesha.serves(export):
            await self._apply(share, export)

    async def create_share(self, share: ShareSpec) -> list[ExportLocation]:
        self._check(share)
        started = time.monotonic()
        async with self._lock(share.share_id):
            await self._make(share)
            await self._serve_to_nobody(share)
        return self._created(share, started)

    def _created(
        self, share: ShareSpec, started: float, snapshot: SnapshotSpec | None = None
    ) -> list[ExportLocation]:
        """Logs a share made (from `snapshot`), since `started`; its locations."""
        source = f" from snapshot {snapshot.name}" if snapshot is not None else ""
        took = time.monotonic() - started
        self.log.info(
            "created share %s (%s GiB)%s in %.2fs", share.name, share.size_gib, source, took
        )
        return self._locations(share)

    async def delete_share(self, share: ShareSpec) -> None:
        started = time.monotonic()
        async with self._lock(share.share_id):
            await self.ganesha.remove(share.export_id)
            await self._remove(share)
        self._forget(share.share_id)
        self.log.info("deleted share %s in %.2fs", share.name, time.monotonic() - started)

    async def update_access(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        await self.ensure_share(share, rules)

    async def ensure_share(
        self, share: ShareSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        self._check(share)
        clients = client_blocks(rules)  # validates the rules before touching anything
        async with self._lock(share.share_id):
            await self._ready(share)
            await self._serve(share, clients)
        return self._locations(share)

    # ---- snapshots: none unless the driver offers them --------------------------------

    async def create_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        raise unsupported("snapshot_support", f"cannot snapshot share {share.name}")

    async def delete_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        raise unsupported("snapshot_support", f"cannot delete snapshot {snapshot.name}")

    async def create_share_from_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec
    ) -> list[ExportLocation]:
        raise unsupported(
            "create_share_from_snapshot_support",
            f"cannot create share {share.name} from a snapshot",
        )

    async def revert_to_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        raise unsupported("revert_to_snapshot_support", f"cannot revert share {share.name}")

    async def export_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        raise unsupported("mount_snapshot_support", f"cannot export snapshot {snapshot.name}")


def _share_ids(refused: Sequence[RefusedExport]) -> list[str]:
    """The shares behind refused exports (an export of no share's pseudo path is only
    logged, by the instance)."""
    return [uid for r in refused if (uid := share_of_pseudo(r.pseudo)) is not None]
