"""The local driver's pool: the filesystem that holds the share and snapshot images.

Snapshots need a filesystem that shares blocks between files (reflink). The host's own
filesystem rarely does, so by default the pool is an XFS image of its own, `pool.img`,
loop-mounted on `images/`: the images keep their paths whatever the layout. The layouts:

- `image`: `pool.img` (XFS with reflink) mounted on `images/`; snapshots allowed;
- `direct`: `pool_dir` is itself on a reflink filesystem; snapshots allowed;
- `legacy`: images written straight into `images/` on a filesystem without reflink, by
  drivers before snapshots; they keep working, without snapshots.

Snapshot images live in `images/snapshots/`, on the same filesystem as the shares'.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Literal

from sharemesh.runtime.commands import CommandError

from . import _loopfs, _reflink
from ._loopfs import GIB

log = logging.getLogger("sharemesh.driver_host.pool")

Layout = Literal["image", "direct", "legacy"]

# Mounted with `discard`: a deleted image's blocks go back to the host at once (the loop
# device punches holes in pool.img). Measured here on a 1 GiB image: the unlink takes
# ~5 ms either way, where an `fstrim` after each delete takes ~200 ms.
_MOUNT_OPTIONS = "discard"
_MIB = 1 << 20


def image_bytes(capacity_gib: int) -> int:
    """The size of `pool.img` for a pool of `capacity_gib`: XFS keeps ~1-2 % for its log
    and its per-AG reservations (reflink's refcount btree), which shares must not lose."""
    capacity = capacity_gib * GIB
    return capacity + max(64 * _MIB, capacity // 32)


class Pool:
    def __init__(self, pool_dir: Path, capacity_gib: int) -> None:
        self.dir = Path(pool_dir)
        self.capacity_gib = capacity_gib
        self.images = self.dir / "images"
        """One `<share_id>.img` per share."""
        self.snapshots = self.images / "snapshots"
        """One `<snapshot_id>.img` per snapshot."""
        self.image = self.dir / "pool.img"
        self.layout: Layout | None = None

    @property
    def reflink(self) -> bool:
        """Whether images can be copied by reflink: snapshots are possible."""
        return self.layout in ("image", "direct")

    async def open(self) -> None:
        """Finds (or makes) the pool and mounts it; idempotent, and before any share."""
        self.dir.mkdir(parents=True, exist_ok=True)
        layout = self._layout()
        if layout == "image":
            try:
                await self._mount_image()
            except CommandError as error:
                if self.image.exists():
                    raise  # the pool is there and will not mount: never serve without it
                # No room (or no XFS) for a new pool's filesystem: serve plain images
                # beside each other, as pools made before snapshots do.
                log.warning(
                    "pool %s: its reflink filesystem could not be made (%s); its shares "
                    "are plain images, and it offers no snapshots",
                    self.dir,
                    error,
                )
                self.layout = layout = "legacy"
        self.images.mkdir(exist_ok=True)
        if layout != "legacy":
            self.snapshots.mkdir(exist_ok=True)
        elif self.layout is None:
            log.warning(
                "pool %s holds its images on a filesystem without reflink (made before "
                "snapshots): its shares are served, but it offers no snapshots",
                self.dir,
            )
        self.layout = layout

    def _layout(self) -> Layout:
        if self.image.exists():
            return "image"
        if _reflink.supports_reflink(self.dir):
            return "direct"
        if self.images.is_dir() and any(self.images.iterdir()):
            return "legacy"  # never hide shares under a new mount
        return "image"

    async def _mount_image(self) -> None:
        wanted = image_bytes(self.capacity_gib)
        fresh = await _loopfs.create_image(self.image, wanted, mkfs_options=("-m", "reflink=1"))
        device = await _loopfs.mount(self.image, self.images, fresh, _MOUNT_OPTIONS)
        if _loopfs.image_size(self.image) < wanted:  # the operator raised capacity_gib
            await _loopfs.grow_image(self.image, wanted)
            await _loopfs.refresh_size(device)
            await _loopfs.grow_filesystem(self.images)
            log.info("pool %s grown to %s GiB", self.dir, self.capacity_gib)

    async def close(self) -> None:
        """Unmounts the pool and frees its loop device (its shares are unmounted first).
        Also from a process that never opened it (a release after a crash)."""
        if self.layout not in (None, "image") or not self.image.exists():
            return
        device = _loopfs.mounted_device(self.images)
        try:
            await _loopfs.unmount(self.images)
        except CommandError as error:
            if error.returncode != errno.EBUSY:
                raise
            # A server still stopping (a gateway's Ganesha reading a share) holds it for a
            # moment more: detach it now, and the kernel frees it once the last user goes.
            log.info("pool %s still busy; unmounting it lazily", self.dir)
            await _loopfs.unmount(self.images, lazy=True)
        await _loopfs.detach(self.image, device)

    def used_bytes(self) -> int:
        """Space really used: blocks shared by reflink copies count once."""
        if self.layout == "image":
            st = os.statvfs(self.images)
            return (st.f_blocks - st.f_bavail) * st.f_frsize
        # The pool shares its filesystem with others: count its own files' blocks.
        total = 0
        for directory in (self.images, self.snapshots):
            for image in directory.glob("*.img") if directory.is_dir() else ():
                try:
                    total += _loopfs.reserved_bytes(image)
                except FileNotFoundError:  # deleted meanwhile
                    pass
        return total

    def settle(self) -> None:
        """After a delete: wait until the pool's filesystem reports the space as free."""
        if self.reflink:
            _reflink.settle(self.images)
