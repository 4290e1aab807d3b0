"""XFS filesystems in sparse image files on loop devices: the local driver's storage.

Every operation is idempotent: it checks the kernel's state (losetup -j, /proc/mounts)
and does only what is missing, so a repeat after a crash finishes the job.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

from sharemesh.runtime import commands
from sharemesh.runtime.commands import CommandError
from sharemesh.runtime.errors import Internal, ResourceExhausted

log = logging.getLogger("sharemesh.driver_host.loopfs")

GIB = 1 << 30


async def run(*argv: str, timeout: float = 120.0) -> str:
    """Runs a tool; its stdout, or CommandError carrying its stderr."""
    return (await commands.run(*argv, timeout=timeout)).stdout


# ---- image files -----------------------------------------------------------------------


async def create_image(image: Path, size_bytes: int, reserve: bool = False) -> None:
    """A sparse file holding a fresh XFS, or with `reserve` one whose blocks are all
    allocated on the pool's filesystem; appears under its name only when complete."""
    if image.exists():
        return
    image.parent.mkdir(parents=True, exist_ok=True)
    tmp = image.with_name(f".{image.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        await _size(tmp, size_bytes, reserve)
        await run("mkfs.xfs", "-q", str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, image)


def image_size(image: Path) -> int:
    return image.stat().st_size


def reserved_bytes(image: Path) -> int:
    """The bytes the pool's filesystem has allocated to the image."""
    return image.stat().st_blocks * 512


async def grow_image(image: Path, size_bytes: int, reserve: bool = False) -> None:
    if image_size(image) < size_bytes or (reserve and reserved_bytes(image) < size_bytes):
        await _size(image, size_bytes, reserve)


async def _size(image: Path, size_bytes: int, reserve: bool) -> None:
    def resize() -> None:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if reserve:
                os.posix_fallocate(fd, 0, size_bytes)  # ENOSPC if the pool cannot hold it
            else:
                os.ftruncate(fd, size_bytes)
        finally:
            os.close(fd)

    try:
        await asyncio.to_thread(resize)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ResourceExhausted(f"the pool's filesystem cannot hold {image.name}") from error
        raise


def delete_image(image: Path) -> None:
    image.unlink(missing_ok=True)
    image.with_name(f".{image.name}.tmp").unlink(missing_ok=True)


# ---- loop devices ------------------------------------------------------------------------


async def loop_devices(image: Path) -> list[str]:
    """Loop devices backed by `image` (`losetup -j`)."""
    out = await run("losetup", "-j", str(image))
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


async def attach(image: Path) -> str:
    devices = await loop_devices(image)
    if devices:
        return devices[0]
    return (await run("losetup", "-f", "--show", str(image))).strip()


async def refresh_size(device: str) -> None:
    """Make the loop device see the image's new size (`losetup -c`)."""
    await run("losetup", "-c", device)


async def detach(image: Path) -> None:
    for device in await loop_devices(image):
        try:
            await run("losetup", "-d", device)
        except CommandError as error:
            if "No such device" not in error.stderr:
                raise


# ---- mounts --------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounted_source(mountpoint: Path) -> str | None:
    """The device mounted at `mountpoint`, or None."""
    target = str(mountpoint)
    source = None
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and _unescape(parts[1]) == target:
                source = _unescape(parts[0])  # the last one is on top
    return source


async def mount(device: str, mountpoint: Path) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    source = mounted_source(mountpoint)
    if source == device:
        return
    if source is not None:
        raise Internal(f"{mountpoint} already has {source} mounted, not {device}")
    await run("mount", "-t", "xfs", device, str(mountpoint))


async def unmount(mountpoint: Path, attempts: int = 20) -> None:
    for attempt in range(attempts):
        if mounted_source(mountpoint) is None:
            return
        try:
            await run("umount", str(mountpoint))
        except CommandError as error:
            # The NFS server may hold files open for a moment after its export went away.
            if "busy" not in error.stderr or attempt == attempts - 1:
                raise
            log.info("%s busy; retrying unmount", mountpoint)
            await asyncio.sleep(0.25)


def remove_mountpoint(mountpoint: Path) -> None:
    try:
        mountpoint.rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise


async def grow_filesystem(mountpoint: Path) -> None:
    await run("xfs_growfs", str(mountpoint))
