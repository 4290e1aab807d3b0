"""XFS filesystems in sparse image files on loop devices: the local driver's storage.

Every operation is idempotent: it checks the kernel's state (loop backing files, mounts)
and does only what is missing, so a repeat after a crash finishes the job. Loop devices
and mounts are system calls (`_loopdev`); mkfs.xfs and xfs_growfs are programs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sharemesh.runtime import commands
from sharemesh.runtime.commands import CommandError
from sharemesh.runtime.errors import Internal, ResourceExhausted

from . import _loopdev

log = logging.getLogger("sharemesh.driver_host.loopfs")

GIB = 1 << 30
DETACH_WAIT_SECONDS = 5.0
"""How long a detach waits for the kernel to free the device (its last close can come
after the unmount). Not longer: a stop detaches every share's, within the launcher's
stop timeout (15 s waits broke the stop of a mesh whose etcd had died)."""


async def run(*argv: str, timeout: float = 120.0) -> str:
    """Runs a tool; its stdout, or CommandError carrying its stderr."""
    return (await commands.run(*argv, timeout=timeout)).stdout


_T = TypeVar("_T")
# Mounts wait for the filesystem's reads, unmounts for its log writes: threads of their
# own, as many as ran the tools these calls replace (`commands`).
_CALLS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="loopfs")


async def _call(what: str, function: Callable[..., _T], *args: object) -> _T:
    """Runs a `_loopdev` call in a thread; its failure is a CommandError, as the tool's
    was, with the errno as its return code and the kernel's reason as its stderr."""
    try:
        return await asyncio.get_running_loop().run_in_executor(_CALLS, function, *args)
    except OSError as error:
        raise CommandError((what,), error.errno or -1, error.strerror or str(error)) from error


# ---- image files -----------------------------------------------------------------------


async def create_image(
    image: Path, size_bytes: int, reserve: bool = False, mkfs_options: tuple[str, ...] = ()
) -> bool:
    """A sparse file holding a fresh XFS, or with `reserve` one whose blocks are all
    allocated on the pool's filesystem; appears under its name only when complete.
    Returns False if the image was there already."""
    if image.exists():
        return False
    image.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(image)
    tmp.unlink(missing_ok=True)
    try:
        await _size(tmp, size_bytes, reserve)
        # -f: the file is new, so there is no filesystem to protect, and mkfs's search for
        # one (libblkid reading the signature places of the image) costs a third of its CPU.
        await run("mkfs.xfs", "-q", "-f", *mkfs_options, str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, image)
    return True


def temporary(image: Path) -> Path:
    """Where an image is made before it appears under its name."""
    return image.with_name(f".{image.name}.tmp")


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
            if not reserve:
                os.ftruncate(fd, size_bytes)
                return
            before = os.fstat(fd).st_size
            try:
                os.posix_fallocate(fd, 0, size_bytes)  # ENOSPC if the pool cannot hold it
            except OSError:
                os.ftruncate(fd, before)  # it may have grown part way: the share did not
                raise
        finally:
            os.close(fd)

    try:
        await asyncio.to_thread(resize)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ResourceExhausted(f"the pool's filesystem cannot hold {image.name}") from error
        raise


async def delete_image(image: Path) -> None:
    def unlink() -> None:
        image.unlink(missing_ok=True)
        temporary(image).unlink(missing_ok=True)

    await asyncio.to_thread(unlink)  # freeing a big image's extents takes milliseconds


# ---- loop devices ------------------------------------------------------------------------


def backing_file(device: str) -> str | None:
    """The file a loop device reads, or None when it is free."""
    try:
        text = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text()
    except OSError:
        return None
    return text.rstrip("\n")


def loop_devices(image: Path) -> list[str]:
    """Loop devices backed by `image`, found as `losetup -j` finds them: by reading every
    loop device's backing file. A host may have a thousand loop devices, so this is for
    repairs after a crash; a mounted share names its device through its mount."""
    target = _real_path(image)
    found = []
    for name in os.listdir("/sys/block"):
        if name.startswith("loop") and backing_file(name) == target:
            found.append(f"/dev/{name}")
    return sorted(found)


def _real_path(image: Path) -> str:
    return os.fspath(image.resolve())  # the kernel names the file by its real path


async def attach(image: Path, fresh: bool = False, readonly: bool = False) -> str:
    """A loop device for `image`: the one it has, or a new one (read-only with
    `readonly`). A `fresh` image (made in this very call chain) cannot have one, so
    nothing is searched."""
    devices = [] if fresh else loop_devices(image)
    if devices:
        return devices[0]
    return await _call(f"attach {image}", _loopdev.attach, _real_path(image), readonly)


async def refresh_size(device: str) -> None:
    """Make the loop device see the image's new size (`losetup -c`)."""
    await _call(f"refresh size of {device}", _loopdev.refresh_size, device)


async def detach(image: Path, device: str | None = None) -> None:
    """Frees the loop devices of `image`: `device` if the caller knows it, else any."""
    target = _real_path(image)
    for each in [device] if device else loop_devices(image):
        await _call(f"detach {each}", _loopdev.detach, each)  # a free one is no error
        # The kernel may free a device just unmounted a moment after the detach returns
        # (autoclear on its last close): done means free, so a stop leaves none behind.
        deadline = time.monotonic() + DETACH_WAIT_SECONDS
        while _reads(each, target) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if _reads(each, target):
            log.warning("%s of %s still in use; freed on its last close", each, image)


def _reads(device: str, image: str) -> bool:
    """Whether `device` still reads `image` (a real path), deleted or not. Not merely
    bound: once free, it may be bound at once to another image (by a create)."""
    return backing_file(device) in (image, f"{image} (deleted)")


# ---- mounts --------------------------------------------------------------------------------


def mounted_device(mountpoint: Path) -> str | None:
    """The block device mounted at `mountpoint` (from the mount's device number), or None."""
    if not os.path.ismount(mountpoint):
        return None
    number = os.stat(mountpoint).st_dev
    block = os.readlink(f"/sys/dev/block/{os.major(number)}:{os.minor(number)}")
    return f"/dev/{Path(block).name}"


# An exported snapshot's filesystem: read-only and never written to, without log
# recovery, which it needs none of (copied frozen) and cannot have (its log names the
# share's UUID, its superblock one of its own: `_reflink.read_only_copy`).
READ_ONLY = "ro,nouuid,norecovery"


async def mount(image: Path, mountpoint: Path, fresh: bool = False, options: str = "") -> str:
    """Mounts the image's filesystem at `mountpoint` through a loop device, unless it is
    mounted there already; returns the loop device. A read-only mount (`ro`, e.g.
    `READ_ONLY`) gets a read-only loop device."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    device = mounted_device(mountpoint)
    if device is not None:
        if backing_file(device) != _real_path(image):
            raise Internal(f"{mountpoint} has {device} mounted, not a device of {image}")
        return device
    device = await attach(image, fresh, readonly="ro" in options.split(","))
    what = f"mount {device} ({image.name}) at {mountpoint}"
    what += f" with {options}" if options else ""
    await _call(what, _loopdev.mount, device, str(mountpoint), "xfs", options)
    return device


async def unmount(mountpoint: Path, attempts: int = 20, lazy: bool = False) -> None:
    """Unmounts the filesystem at `mountpoint`, if one is; `lazy`: see `_loopdev.unmount`."""
    for attempt in range(attempts):
        if not os.path.ismount(mountpoint):
            return
        try:
            await _call(f"unmount {mountpoint}", _loopdev.unmount, str(mountpoint), lazy)
        except CommandError as error:
            # The NFS server may hold files open for a moment after its export went away.
            if error.returncode != errno.EBUSY or attempt == attempts - 1:
                raise
            log.info("%s busy; retrying unmount", mountpoint)
            await asyncio.sleep(0.25)


async def release(mountpoint: Path, image: Path) -> None:
    """Unmounts an image's filesystem and frees its loop device."""
    device = mounted_device(mountpoint)
    await unmount(mountpoint)
    if device is None and not image.exists():
        return  # a repeat: the image goes only after its device was freed
    await detach(image, device)


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
