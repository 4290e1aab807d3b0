"""The local driver: each share an XFS image file on a loop device, served by one Ganesha.

The image's size is a hard limit (a full share answers NOSPC), grows online, and never
shrinks (XFS cannot). The images live in a pool with reflink (`_pool`), so a snapshot is
a reflink copy of a frozen share's image (`_reflink`): instant, and sharing every block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sharemesh.ganesha import ClientRule, Export, snapshot_pseudo
from sharemesh.ganesha._export import parse_clients
from sharemesh.runtime import concurrency
from sharemesh.runtime.errors import InvalidArgument, NotFound

from . import _loopfs, _reflink, _revert
from ._loopfs import GIB, READ_ONLY
from ._pool import Pool
from ._served import ServedDriver, ServedOptions
from .base import (
    AccessRuleSpec,
    BackendStats,
    Capabilities,
    ExportLocation,
    GatewayAccess,
    ShareSpec,
    SnapshotSpec,
    check_snapshot,
    client_blocks,
    unsupported,
)

log = logging.getLogger("sharemesh.driver_host.local")
_RELEASES_AT_ONCE = 32  # shares unmounted and detached at once when the mesh stops


@dataclass(frozen=True, kw_only=True)
class LocalDriverConfig(ServedOptions):
    pool_dir: Path
    """Holds `pool.img` (the pool's XFS, unless `pool_dir` is on a reflink filesystem
    already), `images/` (one sparse image per share, and `snapshots/`), `mnt/` (the
    shares' mountpoints) and `snapmnt/` (those of exported snapshots)."""
    capacity_gib: int
    """What the pool offers (its images are sparse); shares' sizes add up to at most
    this times `max_over_subscription_ratio`."""
    gateway_fsal: str = "VFS"
    """How a gateway on this host reaches the shares: `VFS` reads the mounted filesystem;
    `PROXY_V4` proxies this backend's NFS export (slower; for tests and remote hosts)."""
    driver_handles_share_servers: bool = False
    """Serve shares on share networks from a share server of this backend on each
    network (mode 1), instead of through the host's gateway (mode 2)."""


class LocalDriver(ServedDriver):
    """Implements `Driver` on loop-mounted XFS images in `config.pool_dir`."""

    kind = "local"
    config: LocalDriverConfig

    def __init__(self, config: LocalDriverConfig) -> None:
        super().__init__(config)
        self.pool = Pool(Path(config.pool_dir), config.capacity_gib)
        self.images = self.pool.images
        self.mounts = Path(config.pool_dir) / "mnt"
        self.snapshot_mounts = Path(config.pool_dir) / "snapmnt"
        self.work = Path(config.pool_dir) / "work"
        """Scratch mountpoints of copies being made."""
        # Each share's clients as last applied: a revert exports it again with them.
        self._clients: dict[str, tuple[ClientRule, ...]] = {}
        self._sizes: dict[str, int] | None = None
        """Each share's image size, kept as images are made, grown and deleted: a look
        at what is provisioned is not a stat of every image (per create). An image being
        made or grown counts at the size it was admitted at (`_provisioning`)."""

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.pool.open()  # the shares' images are on it
        self._sizes = None  # counted again from the images
        self.mounts.mkdir(parents=True, exist_ok=True)
        # Mount every share, and every exported snapshot, before a fresh Ganesha reads
        # its export files: an export of an empty mountpoint would put clients' writes on
        # the pool's own filesystem.
        for image in sorted(self.images.glob("*.img")):
            await self._mount(image.stem)
            if _reflink.thaw(self._mountpoint(image.stem)):
                log.warning("share %s was left frozen by a snapshot; thawed", image.stem)
        await _reflink.clear_work(self.work)
        for stale in self.pool.snapshots.glob(".*.tmp") if self.pool.reflink else ():
            stale.unlink(missing_ok=True)  # copies a crash left unfinished
        for mountpoint in self._exported_snapshots():
            image = self._exported_image(mountpoint.name)
            if image.exists():
                await _loopfs.mount(image, mountpoint, options=READ_ONLY)
            else:
                _loopfs.remove_mountpoint(mountpoint)  # a delete that crashed
        await self._start_serving()

    async def stop(self, stop_servers: bool) -> None:
        await super().stop(stop_servers)
        if stop_servers:
            # The whole mesh is going down: release the host too. Images stay in the
            # pool, and the next start mounts them again. Many at once: each detach
            # waits for the kernel to free its device, and a stop has a deadline.
            released = [
                *((self._mountpoint(i.stem), i) for i in sorted(self.images.glob("*.img"))),
                *((m, self._exported_image(m.name)) for m in self._exported_snapshots()),
            ]
            await concurrency.bounded(
                (_loopfs.release(mountpoint, image) for mountpoint, image in released),
                _RELEASES_AT_ONCE,
            )
            await self.pool.close()

    def _exported_snapshots(self) -> list[Path]:
        """Mountpoints of the snapshots `export_snapshot` serves (made by it, removed
        by `delete_snapshot`)."""
        return sorted(self.snapshot_mounts.iterdir()) if self.snapshot_mounts.is_dir() else []

    # ---- stats -----------------------------------------------------------------------

    def _limit_bytes(self) -> int:
        """What the pool may provision in all; the scheduler's policy is finer (a type
        may ask for thick shares), this is the backend's own hard stop."""
        return int(self.config.capacity_gib * self.config.max_over_subscription_ratio * GIB)

    def _provisioned_bytes(self) -> int:
        if self._sizes is None:
            self._sizes = {}
            for image in self.images.glob("*.img") if self.images.is_dir() else ():
                self._sized(image.stem)
        return sum(self._sizes.values())

    def _sized(self, share_id: str) -> None:
        """Notes the size of the share's image (made, grown or deleted just now)."""
        if self._sizes is None:
            return  # not counted yet: the first look counts every image
        try:
            self._sizes[share_id] = _loopfs.image_size(self._image(share_id))
        except FileNotFoundError:
            self._sizes.pop(share_id, None)

    @contextlib.contextmanager
    def _provisioning(self, share_id: str, size: int, what: str) -> Iterator[None]:
        """Admits the share's image at `size` bytes, refusing more than the pool may
        provision (`what` names it), and counts it at that size at once, in the same
        step: creates and grows check against each other while their images are made,
        with no lock held over mkfs. After, it counts as what the image is."""
        provisioned = self._provisioned_bytes()
        assert self._sizes is not None  # counted by the look above
        held = self._sizes.get(share_id, 0)
        if size > held:
            self._check_room(self._limit_bytes(), provisioned - held, size, what)
            self._sizes[share_id] = size
        try:
            yield
        finally:
            self._sized(share_id)

    def capabilities(self) -> Capabilities:
        # Sparse images are thin; XFS cannot shrink; snapshots need a reflink pool.
        reflink = self.pool.reflink
        return self._offers(
            Capabilities(
                snapshot_support=reflink,
                create_share_from_snapshot_support=reflink,
                revert_to_snapshot_support=reflink,
                mount_snapshot_support=reflink,
                driver_handles_share_servers=self.config.driver_handles_share_servers,
            )
        )

    async def stats(self) -> BackendStats:
        total = float(self.config.capacity_gib)
        return self._pool_stats(
            total_gib=total,
            free_gib=max(0.0, total - self.pool.used_bytes() / GIB),
            provisioned_gib=self._provisioned_bytes() / GIB,
        )

    # ---- shares ----------------------------------------------------------------------

    def _image(self, share: ShareSpec | str) -> Path:
        share_id = share if isinstance(share, str) else share.share_id
        return self.images / f"{share_id}.img"

    def _mountpoint(self, share: ShareSpec | str) -> Path:
        share_id = share if isinstance(share, str) else share.share_id
        return self.mounts / share_id

    def _native_access(self, share: ShareSpec) -> GatewayAccess | None:
        if self.config.gateway_fsal == "PROXY_V4":
            return None
        # The gateway runs on this host, so it can read the mounted filesystem directly.
        return GatewayAccess(fsal="VFS", path=str(self._mountpoint(share)))

    async def _export(self, share: ShareSpec, clients: tuple[ClientRule, ...]) -> Export:
        return Export(
            export_id=share.export_id,
            path=str(self._mountpoint(share)),
            pseudo=self._pseudo(share),
            clients=clients,
        )

    async def _apply(self, share: ShareSpec, export: Export) -> None:
        await super()._apply(share, export)
        self._clients[share.share_id] = export.clients

    async def _mount(self, share_id: str, fresh: bool = False) -> str:
        """Mounts the share's image (through its loop device); returns the device."""
        return await _loopfs.mount(self._image(share_id), self._mountpoint(share_id), fresh)

    def _new_share(self, share: ShareSpec) -> contextlib.AbstractContextManager[None]:
        """Admits a new share's image while it is made (`_provisioning`)."""
        size = share.size_gib * GIB
        return self._provisioning(share.share_id, size, f"{share.size_gib} GiB more")

    async def _make(self, share: ShareSpec) -> None:
        image = self._image(share)
        fresh = False
        if not image.exists():
            with self._new_share(share):
                fresh = await _loopfs.create_image(image, share.size_gib * GIB, reserve=share.thick)
        await self._mount(share.share_id, fresh)

    async def _remove(self, share: ShareSpec) -> None:
        await _loopfs.release(self._mountpoint(share), self._image(share))
        await _loopfs.delete_image(self._image(share))
        self._sized(share.share_id)
        self._revert_intent(share).unlink(missing_ok=True)
        _loopfs.remove_mountpoint(self._mountpoint(share))
        self.pool.settle()

    def _forget(self, share_id: str) -> None:
        super()._forget(share_id)
        self._clients.pop(share_id, None)

    async def resize_share(self, share: ShareSpec, new_size_gib: int) -> None:
        self._check(share)
        async with self._lock(share.share_id):
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
            with self._provisioning(share.share_id, new, f"{share.name} at {new_size_gib} GiB"):
                await _loopfs.grow_image(image, new, reserve=share.thick)
            # Every step always, so a repeat after a crash between them completes the grow.
            await _loopfs.refresh_size(await self._mount(share.share_id))
            await _loopfs.grow_filesystem(self._mountpoint(share))
        log.info("resized share %s to %s GiB", share.name, new_size_gib)

    async def _ready(self, share: ShareSpec) -> None:
        if not self._image(share).exists():
            raise NotFound(f"share {share.name} has no image on this backend")
        await self._mount(share.share_id)

    # ---- snapshots: reflink copies in the pool (DESIGN §7) -----------------------------

    def _snapshot_image(self, snapshot_id: str) -> Path:
        """The snapshot as taken: never changed, the source of clones and reverts."""
        return self.pool.snapshots / f"{snapshot_id}.img"

    def _read_only_copy(self, snapshot_id: str) -> Path:
        """What an exported snapshot's mount reads: a reflink copy of its image with a
        UUID of its own in its superblocks (`_reflink.read_only_copy`)."""
        return self.pool.snapshots / f"{snapshot_id}.ro"

    def _exported_image(self, snapshot_id: str) -> Path:
        """The image an exported snapshot is mounted from: its read-only copy, or for a
        snapshot exported before those, its image (which was given a UUID of its own)."""
        copy = self._read_only_copy(snapshot_id)
        return copy if copy.exists() else self._snapshot_image(snapshot_id)

    def _offer(self, capability: str, action: str) -> None:
        """Refuses what a pool without reflink cannot do, naming the capability."""
        if not self.pool.reflink:
            raise unsupported(capability, action)

    async def create_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._offer("snapshot_support", f"cannot snapshot share {share.name}")
        self._check(share)
        check_snapshot(snapshot)
        target = self._snapshot_image(snapshot.snapshot_id)
        async with self._lock(share.share_id):
            if target.exists():
                return  # a repeat
            image, mountpoint = self._image(share), self._mountpoint(share)
            if not image.exists():
                raise NotFound(f"share {share.name} has no image on this backend")
            # A name of its own per attempt: a helper of a killed driver-host may still
            # be writing an earlier one, which nothing will rename.
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
            frozen = await _reflink.copy_image(image, tmp, self.work, mountpoint, new_uuid=False)
            os.replace(tmp, target)
        log.info("snapshot %s of %s taken, frozen %.3fs", snapshot.name, share.name, frozen)

    async def delete_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._offer("snapshot_support", f"cannot delete snapshot {snapshot.name}")
        check_snapshot(snapshot)
        image = self._snapshot_image(snapshot.snapshot_id)
        mountpoint = self.snapshot_mounts / snapshot.snapshot_id
        async with self._lock(snapshot.share_id):
            if snapshot.export_id:
                await self.ganesha.remove(snapshot.export_id)
            await _loopfs.release(mountpoint, self._exported_image(snapshot.snapshot_id))
            _loopfs.remove_mountpoint(mountpoint)
            await _loopfs.delete_image(self._read_only_copy(snapshot.snapshot_id))
            await _loopfs.delete_image(image)  # last: while it is there, a repeat finishes
            self.pool.settle()
        log.info("deleted snapshot %s", snapshot.name)

    async def export_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec, rules: Sequence[AccessRuleSpec]
    ) -> list[ExportLocation]:
        self._offer("mount_snapshot_support", f"cannot export snapshot {snapshot.name}")
        check_snapshot(snapshot)
        pseudo = snapshot_pseudo(snapshot.snapshot_id)
        mountpoint = self.snapshot_mounts / snapshot.snapshot_id
        # Every client of the share's rules, read-only whatever its level there.
        readers = [AccessRuleSpec(rule.access_to, "READ_ONLY") for rule in rules]
        export = Export(snapshot.export_id, str(mountpoint), pseudo, clients=client_blocks(readers))
        async with self._lock(snapshot.share_id):
            source = self._snapshot_source(snapshot)
            copy = self._read_only_copy(snapshot.snapshot_id)
            if _loopfs.mounted_device(mountpoint) is None and not copy.exists():
                # Served beside its share (and its share's other snapshots), it needs a
                # UUID of its own: Ganesha skips a second filesystem with the same.
                tmp = copy.with_name(f".{copy.name}.{uuid.uuid4().hex[:12]}.tmp")
                await _reflink.read_only_copy(source, tmp)
                os.replace(tmp, copy)
            image = self._exported_image(snapshot.snapshot_id)
            await _loopfs.mount(image, mountpoint, options=READ_ONLY)
            await self.ganesha.apply(export)
        return self._served_at(pseudo)

    def _snapshot_source(self, snapshot: SnapshotSpec) -> Path:
        source = self._snapshot_image(snapshot.snapshot_id)
        if not source.exists():
            raise NotFound(f"snapshot {snapshot.name} does not exist on this backend")
        return source

    async def create_share_from_snapshot(
        self, share: ShareSpec, snapshot: SnapshotSpec
    ) -> list[ExportLocation]:
        self._offer(
            "create_share_from_snapshot_support",
            f"cannot create share {share.name} from a snapshot",
        )
        self._check(share)
        check_snapshot(snapshot)
        started = time.monotonic()
        async with self._lock(share.share_id):
            image = self._image(share)
            fresh = not image.exists()
            if fresh:
                source = self._snapshot_source(snapshot)
                if share.size_gib * GIB < _loopfs.image_size(source):
                    raise InvalidArgument(
                        "size_gib",
                        f"must be at least the snapshot's {_loopfs.image_size(source) // GIB} GiB",
                    )
                with self._new_share(share):
                    tmp = _loopfs.temporary(image)
                    await _reflink.copy_image(source, tmp, self.work)
                    await _loopfs.grow_image(tmp, share.size_gib * GIB, reserve=share.thick)
                    os.replace(tmp, image)
            await self._mount(share.share_id, fresh)
            # Always: a repeat after a crash before it still grows the filesystem.
            await _loopfs.grow_filesystem(self._mountpoint(share))
            await self._serve_to_nobody(share)
        return self._created(share, started, snapshot)

    def _revert_intent(self, share: ShareSpec) -> Path:
        """Written once the reverted image is ready, removed once it serves: the
        snapshot and the clients, for a repeat after a crash while it was withdrawn."""
        return self.images / f".{share.share_id}.revert"

    async def revert_to_snapshot(self, share: ShareSpec, snapshot: SnapshotSpec) -> None:
        self._offer("revert_to_snapshot_support", f"cannot revert share {share.name}")
        self._check(share)
        check_snapshot(snapshot)
        if snapshot.share_id != share.share_id:
            raise InvalidArgument("snapshot", f"is not a snapshot of share {share.name}")
        started = time.monotonic()
        async with self._lock(share.share_id):
            image, mountpoint = self._image(share), self._mountpoint(share)
            if not image.exists():
                raise NotFound(f"share {share.name} has no image on this backend")
            tmp, intent = _loopfs.temporary(image), self._revert_intent(share)
            pending = _revert.read_intent(intent)
            # The intent outlives the swap, the copy (tmp) does not: both say it is done.
            if not (pending and pending[0] == snapshot.snapshot_id and not tmp.exists()):
                source = self._snapshot_source(snapshot)
                # A UUID of its own: the share's filesystem may outlive its unmount in a
                # mount namespace copied while it was mounted (a process that unshared
                # its mounts), and XFS mounts no second filesystem with its UUID.
                await _reflink.copy_image(source, tmp, self.work)
                # The share keeps its size if it grew since the snapshot.
                await _loopfs.grow_image(tmp, _loopfs.image_size(image), reserve=share.thick)
            clients = pending[1] if pending else await self._clients_of(share)
            _revert.write_intent(intent, snapshot.snapshot_id, clients)
            # The swap: clients see a pause from here until the export is back.
            paused = time.monotonic()
            await self.ganesha.remove(share.export_id)
            await _loopfs.release(mountpoint, image)
            if tmp.exists():
                os.replace(tmp, image)
                self._sized(share.share_id)
            await self._mount(share.share_id)
            await _loopfs.grow_filesystem(mountpoint)
            await self._serve(share, clients)
            intent.unlink()
        log.info(
            "reverted share %s to snapshot %s in %.3fs (unexported %.3fs)",
            share.name,
            snapshot.name,
            time.monotonic() - started,
            time.monotonic() - paused,
        )

    async def _clients_of(self, share: ShareSpec) -> tuple[ClientRule, ...]:
        """The share's clients now: as last applied, or after a restart as its export
        file says (Ganesha's accepted version, `GaneshaInstance` names it `<id>.conf`)."""
        if share.share_id in self._clients:
            return self._clients[share.share_id]
        file = self.ganesha.exports_dir / f"{share.export_id}.conf"
        try:
            return parse_clients(await asyncio.to_thread(file.read_text))
        except FileNotFoundError:
            return ()
