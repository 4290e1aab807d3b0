"""Reflink copies of XFS images, and the freeze that makes a copy of a mounted one
consistent: the local driver's snapshot mechanics.

A reflink copy (FICLONE) shares every block with its source, so it takes milliseconds
and no space until one of the two is written. A mounted share is frozen for its copy;
the freeze, copy and thaw run in a detached helper so that a driver-host killed in the
middle cannot leave the share frozen, and `thaw` is what a restart runs for the case
where the helper itself died.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import subprocess
import time
import uuid
from pathlib import Path

from sharemesh.runtime.errors import Internal

from . import _loopfs
from ._loopfs import run

log = logging.getLogger("sharemesh.driver_host.reflink")

# linux/fs.h and xfs_fs.h; Python's fcntl has none of them.
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
XFS_IOC_FREE_EOFBLOCKS = 0x8080583A  # _IOR('X', 58, struct xfs_fs_eofblocks), 128 bytes
_EOFBLOCKS_V1 = struct.pack("=II", 1, 0) + bytes(120)

# XFS v5 lets the superblock name the filesystem by a UUID other than the one stamped in
# its metadata (`sb_meta_uuid`, with this incompatible feature bit set).
_META_UUID = 0x4

# Errors of a filesystem that cannot share blocks between files.
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL}

# Freeze, copy, thaw; the thaw runs whatever the copy did. `setsid` puts it in a session
# of its own, so a kill of the driver-host (or of its process group) does not reach it.
_FROZEN_COPY = (
    'fsfreeze -f "$1" || exit 90; '
    'cp --reflink=always "$2" "$3"; rc=$?; '
    'fsfreeze -u "$1" || exit 91; exit $rc'
)


def _clone(src: Path, dst: Path) -> None:
    with open(src, "rb") as source, open(dst, "wb") as target:
        fcntl.ioctl(target.fileno(), FICLONE, source.fileno())


async def clone(src: Path, dst: Path) -> None:
    """`dst` becomes a reflink copy of `src` (replaced if it exists)."""
    try:
        await asyncio.to_thread(_clone, src, dst)
    except OSError as error:
        if error.errno in _NO_REFLINK:
            raise Internal(f"the pool's filesystem cannot reflink {src.name}") from error
        raise


def supports_reflink(directory: Path) -> bool:
    """Whether files in `directory` can share blocks: tried, not guessed from the type."""
    probe = directory / ".reflink-probe"
    copy = directory / ".reflink-probe.copy"
    try:
        probe.write_bytes(b"reflink probe\n")
        _clone(probe, copy)
        return True
    except OSError as error:
        if error.errno in _NO_REFLINK:
            return False
        raise
    finally:
        probe.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)


async def frozen_copy(mountpoint: Path, image: Path, dst: Path) -> float:
    """`dst` becomes a reflink copy of `image`, taken while the filesystem mounted from it
    at `mountpoint` is frozen (so it is clean: its log needs no recovery). Returns the
    seconds the filesystem was frozen, about."""
    started = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.Popen,
        ["sh", "-c", _FROZEN_COPY, "sh", str(mountpoint), str(image), str(dst)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # Cancelled or not, the helper is waited for: the share must never be left frozen
    # by a caller that went away, and `dst` is not to be used before it is complete.
    waiting = asyncio.ensure_future(asyncio.to_thread(proc.communicate))
    _, stderr = await asyncio.shield(waiting)
    if proc.returncode != 0:
        if thaw(mountpoint):
            log.error("%s stayed frozen after a failed snapshot; thawed", mountpoint)
        raise Internal(
            f"snapshot of {image.name} failed ({proc.returncode}): {stderr.decode().strip()}"
        )
    return time.monotonic() - started


def thaw(mountpoint: Path) -> bool:
    """Thaws the filesystem at `mountpoint`; True if it was frozen."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as error:
        if error.errno == errno.EINVAL:  # not frozen
            return False
        raise
    finally:
        os.close(fd)
    return True


async def copy_image(
    source: Path, tmp: Path, work: Path, mountpoint: Path | None = None, new_uuid: bool = True
) -> float:
    """`tmp` becomes a reflink copy of the XFS in `source`, with `new_uuid` a UUID of its
    own: the NFS server tells filesystems apart by UUID, and skips a second one with the
    same, so a share served beside its source needs one. It costs the log's size in new
    blocks (xfs_admin rewrites the log; 64 MiB for a 1 GiB share), which a read-only
    copy avoids (`read_only_copy`). With `mountpoint` (where `source` is mounted), the
    copy is taken frozen. Returns the seconds the source was frozen. The caller renames
    `tmp` into place."""
    scratch = work / tmp.name
    await _loopfs.release(scratch, tmp)  # a crash may have left it mounted there
    try:
        if mountpoint is not None and _loopfs.mounted_device(mountpoint) is not None:
            frozen = await frozen_copy(mountpoint, source, tmp)
        else:
            frozen = 0.0  # nothing writes an unmounted image
            await clone(source, tmp)
        if not new_uuid:
            return frozen
        # A frozen XFS is consistent, but its log is not marked clean and xfs_admin
        # needs a clean one: one mount replays it (nouuid: the source is mounted).
        device = await _loopfs.mount(tmp, scratch, fresh=True, options="nouuid")
        await _loopfs.unmount(scratch)
        await _loopfs.detach(tmp, device)
        out = await run("xfs_admin", "-U", "generate", str(tmp))
        if "new UUID" not in out:  # it exits 0 when it refuses
            raise Internal(f"xfs_admin did not change the UUID of {tmp.name}: {out.strip()}")
    except BaseException:
        await _loopfs.release(scratch, tmp)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _loopfs.remove_mountpoint(scratch)
    return frozen


async def read_only_copy(source: Path, tmp: Path) -> None:
    """`tmp` becomes a reflink copy of the XFS in `source` (not mounted) with a UUID of its
    own in its superblocks alone, to be served beside `source`'s filesystem. Its log
    still names the old UUID, so it mounts only read-only without log recovery
    (`_loopfs.READ_ONLY`), which a copy taken frozen needs none of. It costs a few KiB
    and ~10 ms, where a new UUID in the log costs the log's size (`copy_image`). The
    caller renames `tmp` into place."""
    try:
        await clone(source, tmp)
        await _relabel(tmp, uuid.uuid4())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def _relabel(image: Path, new: uuid.UUID) -> None:
    """Writes `new` as the UUID of every superblock of the XFS in `image`; its metadata
    keep naming the first UUID (`sb_meta_uuid`), so nothing else is written."""
    fields = "uuid meta_uuid features_incompat agcount versionnum"
    out = await run("xfs_db", "-r", "-c", "sb 0", "-c", f"print {fields}", str(image))
    sb = dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)
    if int(sb["versionnum"], 16) & 0xF != 5:
        raise Internal(f"{image.name} is not an XFS v5 filesystem: cannot relabel it")
    incompat = int(sb["features_incompat"], 16)
    writes = [f"write uuid {new}"]
    if not incompat & _META_UUID:
        meta = [
            f"write meta_uuid {sb['uuid']}",
            f"write features_incompat {incompat | _META_UUID:#x}",
        ]
        writes = meta + writes
    commands = []
    for ag in range(int(sb["agcount"])):  # the secondary superblocks too, as xfs_admin does
        for command in (f"sb {ag}", *writes):
            commands += ["-c", command]
    out = await run("xfs_db", "-x", *commands, str(image))
    if fs_uuid(image) != new.bytes:  # xfs_db exits 0 when a write fails
        raise Internal(f"xfs_db did not change the UUID of {image.name}: {out.strip()}")


def fs_uuid(image: Path) -> bytes:
    """The UUID in the XFS superblock at the start of `image` (`sb_uuid`, offset 32)."""
    with open(image, "rb") as f:
        f.seek(32)
        return f.read(16)


async def clear_work(work: Path) -> None:
    """Releases what a crash left mounted in `work` (copies being given a UUID)."""
    for scratch in sorted(work.iterdir()) if work.is_dir() else ():
        device = _loopfs.mounted_device(scratch)
        await _loopfs.unmount(scratch)
        if device is not None:
            await _loopfs.detach(scratch, device)
        _loopfs.remove_mountpoint(scratch)


def settle(directory: Path) -> None:
    """XFS frees a deleted file's blocks in the background; this waits for it (the
    blockgc ioctl flushes deferred inode inactivation) so free space reads true."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, XFS_IOC_FREE_EOFBLOCKS, bytearray(_EOFBLOCKS_V1))
    except OSError as error:
        if error.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)
