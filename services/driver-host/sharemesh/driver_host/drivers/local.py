"""The local driver: each share an XFS image file on a loop device, served by one Ganesha.

The image's size is a hard limit (a full share answers NOSPC), grows online, and never
shrinks (XFS cannot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sharemesh.ganesha import (
    Export,
    GaneshaInstance,
    RefusedExport,
    share_of_pseudo,
    share_pseudo,
)
from sharemesh.runtime.errors import InvalidArgument, NotFound, ResourceExhausted

from . import _loopfs
from ._loopfs import GIB
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

log = logging.getLogger("sharemesh.driver_host.local")


@dataclass(frozen=True, kw_only=True)
class LocalDriverConfig:
    pool_dir: Path
    """Holds `images/` (one sparse image per share) and `mnt/` (their mountpoints)."""
    pool_name: str = "default"
    capacity_gib: int
    """What the pool offers; shares' sizes add up to at most this times the ratio."""
    max_over_subscription_ratio: float = 1.0
    """Images are sparse, so the pool may promise more than it has: up to this many
    times `capacity_gib` in all (Manila's thin provisioning). 1.0 promises no more."""
    reserved_percentage: float = 0.0
    """Capacity the scheduler keeps free, in percent, e.g. for growth of what is written."""
    host: str = "127.0.0.1"
    """The address clients use, in export locations."""
    nfs_port: int
    mount_port: int
    state_dir: Path
    """The Ganesha instance's state: config, export files, pidfiles, log, bus."""
    grace_seconds: int = 0
    bind_address: str | None = None
    availability_zone: str = ""
    """The zone the pool is in, for the scheduler's availability-zone filter."""
    gateway_fsal: str = "VFS"
    """How a gateway on this host reaches the shares: `VFS` reads the mounted filesystem;
    `PROXY_V4` proxies this backend's NFS export (slower; for tests and remote hosts)."""
    driver_handles_share_servers: bool = False
    """Serve shares on share networks from a share server of this backend on each
    network (mode 1), instead of through the host's gateway (mode 2)."""
    capabilities: Mapping[str, str] = field(default_factory=dict)
    """Custom capabilities the operator gives the pool (e.g. `tier = "gold"`), matched
    against share types' extra specs; they cannot override what the driver reports."""


@dataclass
class _Locks:
    by_share: dict[str, asyncio.Lock] = field(default_factory=dict)

    def of(self, share_id: str) -> asyncio.Lock:
        return self.by_share.setdefault(share_id, asyncio.Lock())


class LocalDriver:
    """Implements `Driver` on loop-mounted XFS images in `config.pool_dir`."""

    def __init__(self, config: LocalDriverConfig) -> None:
        self.config = config
        self.images = Path(config.pool_dir) / "images"
        self.mounts = Path(config.pool_dir) / "mnt"
        self.ganesha = GaneshaInstance(
            Path(config.state_dir) / "ganesha",
            config.nfs_port,
            config.mount_port,
            grace_seconds=config.grace_seconds,
            bind_address=config.bind_address,
        )
        if config.max_over_subscription_ratio < 1:
            raise InvalidArgument(
                "options.max_over_subscription_ratio", "must be at least 1 (1 means thick)"
            )
        if not 0 <= config.reserved_percentage < 100:
            raise InvalidArgument("options.reserved_percentage", "must be from 0 to under 100")
        self._locks = _Locks()
        self._capacity = asyncio.Lock()
        self._stopping = asyncio.Event()
        # Exports Ganesha refused at `start`, told to the first `supervise` callback.
        self._refused_at_start: list[RefusedExport] = []

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping.clear()
        self.images.mkdir(parents=True, exist_ok=True)
        self.mounts.mkdir(parents=True, exist_ok=True)
        # Mount every share before a fresh Ganesha reads its export files: an export of an
        # empty mountpoint would put clients' writes on the pool's own filesystem.
        for image in sorted(self.images.glob("*.img")):
            await self._mount(image.stem)
        self._refused_at_start = await self.ganesha.start()  # adopts a running one

    async def stop(self, stop_servers: bool) -> None:
        self._stopping.set()
        if stop_servers:
            # The whole mesh is going down: release the host too. Images stay in the
            # pool, and the next start mounts them again.
            await self.ganesha.stop()
            for image in sorted(self.images.glob("*.img")):
                await self._unmount(image.stem)

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

    def _limit_bytes(self) -> int:
        """What the pool may provision in all; the scheduler's policy is finer (a type
        may ask for thick shares), this is the backend's own hard stop."""
        return int(self.config.capacity_gib * self.config.max_over_subscription_ratio * GIB)

    def _provisioned_bytes(self) -> int:
        total = 0
        for image in self.images.glob("*.img") if self.images.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):  # a delete removed it meanwhile
                total += _loopfs.image_size(image)
        return total

    def capabilities(self) -> Capabilities:
        # Sparse images are thin; XFS cannot shrink; snapshots are not built yet.
        return Capabilities(
            thin_provisioning=True,
            driver_handles_share_servers=self.config.driver_handles_share_servers,
            max_over_subscription_ratio=self.config.max_over_subscription_ratio,
            reserved_percentage=self.config.reserved_percentage,
            availability_zone=self.config.availability_zone,
            custom=self.config.capabilities,
        )

    async def stats(self) -> BackendStats:
        total = float(self.config.capacity_gib)
        provisioned = self._provisioned_bytes() / GIB
        pool = PoolStats(
            name=self.config.pool_name,
            total_gib=total,
            free_gib=max(0.0, total - provisioned),
            provisioned_gib=provisioned,
            offers=self.capabilities(),
        )
        return BackendStats(pools=(pool,))

    # ---- shares ----------------------------------------------------------------------

    def _image(self, share: ShareSpec | str) -> Path:
        share_id = share if isinstance(share, str) else share.share_id
        return self.images / f"{share_id}.img"

    def _mountpoint(self, share: ShareSpec | str) -> Path:
        share_id = share if isinstance(share, str) else share.share_id
        return self.mounts / share_id

    def _check(self, share: ShareSpec) -> None:
        check_share(share, self.config.pool_name)

    def gateway_access(self, share: ShareSpec) -> GatewayAccess:
        if self.config.gateway_fsal == "PROXY_V4":
            return GatewayAccess(
                fsal="PROXY_V4",
                path=self._pseudo(share),
                nfs_port=self.config.nfs_port,
                server_generation=self.ganesha.generation(),
            )
        # The gateway runs on this host, so it can read the mounted filesystem directly.
        return GatewayAccess(fsal="VFS", path=str(self._mountpoint(share)))

    def _locations(self, share: ShareSpec) -> list[ExportLocation]:
        return [
            ExportLocation(
                path=f"{self.config.host}:{self._pseudo(share)}",
                nfs_port=self.config.nfs_port,
                mount_port=self.config.mount_port,
            )
        ]

    @staticmethod
    def _pseudo(share: ShareSpec) -> str:
        return share_pseudo(share.share_id)

    def _export(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> Export:
        return Export(
            export_id=share.export_id,
            path=str(self._mountpoint(share)),
            pseudo=self._pseudo(share),
            clients=client_blocks(rules),
        )

    async def _mount(self, share_id: str, fresh: bool = False) -> str:
        """Mounts the share's image (through its loop device); returns the device."""
        return await _loopfs.mount(self._image(share_id), self._mountpoint(share_id), fresh)

    async def _unmount(self, share_id: str) -> None:
        """Unmounts the share and frees its loop device."""
        mountpoint, image = self._mountpoint(share_id), self._image(share_id)
        device = _loopfs.mounted_device(mountpoint)
        await _loopfs.unmount(mountpoint)
        if device is None and not image.exists():
            return  # a repeat: the image goes only after its device was freed
        await _loopfs.detach(image, device)

    async def create_share(self, share: ShareSpec) -> list[ExportLocation]:
        self._check(share)
        started = time.monotonic()
        async with self._locks.of(share.share_id):
            image = self._image(share)
            fresh = False
            if not image.exists():
                async with self._capacity:
                    wanted = self._provisioned_bytes() + share.size_gib * GIB
                    if wanted > self._limit_bytes():
                        raise ResourceExhausted(
                            f"pool {self.config.pool_name} may provision "
                            f"{self._limit_bytes() / GIB:.0f} GiB, "
                            f"{self._provisioned_bytes() / GIB:.0f} GiB provisioned; "
                            f"{share.size_gib} GiB more do not fit"
                        )
                    fresh = await _loopfs.create_image(
                        image, share.size_gib * GIB, reserve=share.thick
                    )
            await self._mount(share.share_id, fresh)
            # A repeat must not reset the clients that update_access set since.
            export = self._export(share, ())
            if not await self.ganesha.serves(export):
                await self.ganesha.apply(export)
        log.info(
            "created share %s (%s GiB) in %.2fs",
            share.name,
            share.size_gib,
            time.monotonic() - started,
        )
        return self._locations(share)

    async def delete_share(self, share: ShareSpec) -> None:
        async with self._locks.of(share.share_id):
            await self.ganesha.remove(share.export_id)
            await self._unmount(share.share_id)
            await _loopfs.delete_image(self._image(share))
            _loopfs.remove_mountpoint(self._mountpoint(share))
        self._locks.by_share.pop(share.share_id, None)
        log.info("deleted share %s", share.name)

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        self._check(share)
        async with self._locks.of(share.share_id):
            image = self._image(share)
            if not image.exists():
                raise NotFound(f"share {share.name} has no image on this backend")
            current = _loopfs.image_size(image)
            new = new_size_gib * GIB
            if new < current:
                raise unsupported(
                    "shrink_support",
                    f"cannot shrink share {share.name} from {current // GIB} to {new_size_gib} GiB",
                )
            async with self._capacity:
                if new > current and self._provisioned_bytes() - current + new > (
                    self._limit_bytes()
                ):
                    raise ResourceExhausted(
                        f"pool {self.config.pool_name} cannot grow {share.name} to "
                        f"{new_size_gib} GiB: it may provision "
                        f"{self._limit_bytes() / GIB:.0f} GiB"
                    )
                await _loopfs.grow_image(image, new, reserve=share.thick)
            # Every step always, so a repeat after a crash between them completes the grow.
            await _loopfs.refresh_size(await self._mount(share.share_id))
            await _loopfs.grow_filesystem(self._mountpoint(share))
        log.info("resized share %s to %s GiB", share.name, new_size_gib)

    async def update_access(self, share: ShareSpec, rules: Sequence[AccessRuleSpec]) -> None:
        await self.ensure_share(share, rules)

    async def ensure_share(
        self, share: ShareSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        self._check(share)
        export = self._export(share, rules)  # validates the rules before touching anything
        async with self._locks.of(share.share_id):
            if not self._image(share).exists():
                raise NotFound(f"share {share.name} has no image on this backend")
            await self._mount(share.share_id)
            await self.ganesha.apply(export)
        return self._locations(share)

    # ---- snapshots (not offered yet: reflink copies of a frozen image, DESIGN §7) -------

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
