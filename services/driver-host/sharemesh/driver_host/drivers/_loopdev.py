"""Loop devices and mounts by system call: what `losetup -f --show`, `losetup -d`,
`losetup -c`, `mount` and `umount` do for `_loopfs`, without a program per step (each
spawn cost a fork and exec of a few ms of CPU; four per share created and deleted).

Blocking calls: `_loopfs` runs them in threads. Errors are `OSError`s with the kernel's
errno, which `_loopfs` reports as the tools' failures were.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
import time

# linux/loop.h and linux/mount.h; Python's fcntl and os have none of them.
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A  # Linux 5.8: binds the file and sets the flags in one call
LOOP_CLR_FD = 0x4C01
LOOP_SET_CAPACITY = 0x4C07
LO_FLAGS_READ_ONLY = 1
_LO_NAME_SIZE = 64
# struct loop_config: fd, block_size, struct loop_info64 (lo_device, lo_inode,
# lo_rdevice, lo_offset, lo_sizelimit, lo_number, lo_encrypt_type, lo_encrypt_key_size,
# lo_flags, lo_file_name, lo_crypt_name, lo_encrypt_key, lo_init[2]), __reserved[8].
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")

MS_RDONLY = 1
MNT_DETACH = 2
# The options mount(8) turns into mount(2) flags; the rest go to the filesystem.
_FLAGS = {
    "ro": MS_RDONLY,
    "rw": 0,
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "sync": 16,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# The kernel offers the same free device to every caller until one binds it: this
# process's threads take turns; another process's bind (or a device held open while it
# is freed) shows as EBUSY, and a retry a moment later, as losetup does.
_free = threading.Lock()
_ATTEMPTS = 50
_RETRY_SECONDS = 0.02


def attach(path: str, readonly: bool) -> str:
    """Binds the file at `path` (a real path: the kernel shows it as the backing file)
    to a free loop device, read-only with `readonly`; returns the device."""
    mode = os.O_RDONLY if readonly else os.O_RDWR
    backing = os.open(path, mode | os.O_CLOEXEC)
    try:
        name = os.fsencode(path)[: _LO_NAME_SIZE - 1]  # what LOOP_GET_STATUS shows, as losetup
        flags = LO_FLAGS_READ_ONLY if readonly else 0
        config = _LOOP_CONFIG.pack(backing, 0, *[0] * 8, flags, name, b"", b"", *[0] * 10)
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_ATTEMPTS):
                with _free:
                    device = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
                    fd = os.open(device, mode | os.O_CLOEXEC)
                    try:
                        fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                        return device
                    except OSError as error:
                        if error.errno != errno.EBUSY:
                            why = f"{device}: LOOP_CONFIGURE (Linux 5.8): {error.strerror}"
                            raise OSError(error.errno, why) from None
                    finally:
                        os.close(fd)
                time.sleep(_RETRY_SECONDS)
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, f"no loop device could be bound in {_ATTEMPTS} attempts")


def detach(device: str) -> bool:
    """Unbinds the loop device; False if it was free. A device still open elsewhere (a
    mount's last close yet to come) is freed by the kernel at its last close."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    except OSError as error:
        if error.errno == errno.ENXIO:  # not bound
            return False
        raise
    finally:
        os.close(fd)
    return True


def refresh_size(device: str) -> None:
    """Makes the loop device see its file's new size."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
    finally:
        os.close(fd)


def mount(device: str, target: str, fstype: str, options: str = "") -> None:
    """Mounts `device` at `target` with mount(8)-style `options` (e.g. "ro,nouuid")."""
    flags, data = 0, []
    for option in filter(None, options.split(",")):
        if option in _FLAGS:
            flags |= _FLAGS[option]
        else:
            data.append(option)
    joined = ",".join(data).encode() or None
    if _libc.mount(device.encode(), os.fsencode(target), fstype.encode(), flags, joined) != 0:
        _raise()


def unmount(target: str, lazy: bool = False) -> None:
    """Unmounts the filesystem at `target`; `lazy` detaches it now, the kernel frees it
    once its last user goes (`umount --lazy`)."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        _raise()


def _raise() -> None:
    number = ctypes.get_errno()
    raise OSError(number, os.strerror(number))
