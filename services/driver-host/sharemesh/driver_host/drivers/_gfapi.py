"""A small libgfapi binding (ctypes): what the glusterfs driver does to a volume without
a FUSE mount. Debian ships no Python binding for it, and the calls needed are few.

Every call blocks (it is a network round trip to the bricks): async code runs them in a
thread. A `Volume` is one client of the volume, thread-safe, meant to live long: its
`glfs_fini` takes seconds (the client's timers wind down), so it is made once per driver.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()

_VOID_P = ctypes.c_void_p
_STR = ctypes.c_char_p
_DT_DIR = 4


class _Stat(ctypes.Structure):
    """`struct stat` on x86_64 and aarch64 glibc (the machines this runs on)."""

    _fields_ = [
        ("st_dev", ctypes.c_uint64),
        ("st_ino", ctypes.c_uint64),
        ("st_nlink", ctypes.c_uint64),
        ("st_mode", ctypes.c_uint32),
        ("st_uid", ctypes.c_uint32),
        ("st_gid", ctypes.c_uint32),
        ("_pad0", ctypes.c_int32),
        ("st_rdev", ctypes.c_uint64),
        ("st_size", ctypes.c_int64),
        ("st_blksize", ctypes.c_int64),
        ("st_blocks", ctypes.c_int64),
        ("_times", ctypes.c_int64 * 6),
        ("_reserved", ctypes.c_int64 * 3),
    ]


class _StatVfs(ctypes.Structure):
    _fields_ = [
        ("f_bsize", ctypes.c_ulong),
        ("f_frsize", ctypes.c_ulong),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_favail", ctypes.c_uint64),
        ("f_fsid", ctypes.c_ulong),
        ("f_flag", ctypes.c_ulong),
        ("f_namemax", ctypes.c_ulong),
        ("_spare", ctypes.c_int * 6),
    ]


class _Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = ctypes.CDLL("libgfapi.so.0", use_errno=True)
            signatures: dict[str, tuple[list[object], object]] = {
                "glfs_new": ([_STR], _VOID_P),
                "glfs_set_volfile_server": ([_VOID_P, _STR, _STR, ctypes.c_int], ctypes.c_int),
                "glfs_set_logging": ([_VOID_P, _STR, ctypes.c_int], ctypes.c_int),
                "glfs_init": ([_VOID_P], ctypes.c_int),
                "glfs_fini": ([_VOID_P], ctypes.c_int),
                "glfs_mkdir": ([_VOID_P, _STR, ctypes.c_uint], ctypes.c_int),
                "glfs_rmdir": ([_VOID_P, _STR], ctypes.c_int),
                "glfs_unlink": ([_VOID_P, _STR], ctypes.c_int),
                "glfs_chmod": ([_VOID_P, _STR, ctypes.c_uint], ctypes.c_int),
                "glfs_lstat": ([_VOID_P, _STR, ctypes.POINTER(_Stat)], ctypes.c_int),
                "glfs_statvfs": ([_VOID_P, _STR, ctypes.POINTER(_StatVfs)], ctypes.c_int),
                "glfs_opendir": ([_VOID_P, _STR], _VOID_P),
                "glfs_readdir": ([_VOID_P], ctypes.POINTER(_Dirent)),
                "glfs_closedir": ([_VOID_P], ctypes.c_int),
                "glfs_creat": ([_VOID_P, _STR, ctypes.c_int, ctypes.c_uint], _VOID_P),
                "glfs_open": ([_VOID_P, _STR, ctypes.c_int], _VOID_P),
                "glfs_write": ([_VOID_P, _STR, ctypes.c_size_t, ctypes.c_int], ctypes.c_ssize_t),
                "glfs_fallocate": (
                    [_VOID_P, ctypes.c_int, ctypes.c_int64, ctypes.c_size_t],
                    ctypes.c_int,
                ),
                "glfs_fsync": ([_VOID_P, _VOID_P, _VOID_P], ctypes.c_int),
                "glfs_close": ([_VOID_P], ctypes.c_int),
            }
            for name, (argtypes, restype) in signatures.items():
                function = getattr(lib, name)
                function.argtypes = argtypes
                function.restype = restype
            _lib = lib
        return _lib


def _raise(what: str, path: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what} {path}: {os.strerror(code)}", path)


@dataclass(frozen=True)
class VolumeSpace:
    total_bytes: int
    free_bytes: int


class Volume:
    """One libgfapi client of a volume. Paths are absolute, inside the volume."""

    def __init__(self, server: str, volume: str, log_file: Path, port: int = 24007) -> None:
        lib = _library()
        self.name = volume
        self._lib = lib
        fs = lib.glfs_new(volume.encode())
        if not fs:
            _raise("glfs_new", volume)
        self._fs: int | None = fs
        try:
            if lib.glfs_set_volfile_server(fs, b"tcp", server.encode(), port) != 0:
                _raise("glfs_set_volfile_server", server)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            lib.glfs_set_logging(fs, str(log_file).encode(), 3)  # errors and worse
            if lib.glfs_init(fs) != 0:
                _raise("glfs_init", volume)
        except BaseException:
            self.close()
            raise

    def _handle(self) -> int:
        if self._fs is None:
            raise OSError(errno.EBADF, f"volume {self.name} client is closed")
        return self._fs

    def close(self) -> None:
        """Release the client (slow: see the module docstring); idempotent."""
        fs, self._fs = self._fs, None
        if fs is not None:
            self._lib.glfs_fini(fs)

    def mkdir(self, path: str, mode: int = 0o777) -> bool:
        """Creates a directory; False if it exists already."""
        if self._lib.glfs_mkdir(self._handle(), path.encode(), mode) != 0:
            if ctypes.get_errno() == errno.EEXIST:
                return False
            _raise("mkdir", path)
        # Not subject to a umask, whatever the client library's default is.
        if self._lib.glfs_chmod(self._handle(), path.encode(), mode) != 0:
            _raise("chmod", path)
        return True

    def lstat(self, path: str) -> os.stat_result | None:
        """Mode, size and blocks of `path`, or None if it does not exist."""
        buf = _Stat()
        if self._lib.glfs_lstat(self._handle(), path.encode(), ctypes.byref(buf)) != 0:
            if ctypes.get_errno() == errno.ENOENT:
                return None
            _raise("lstat", path)
        return os.stat_result(
            (buf.st_mode, buf.st_ino, buf.st_dev, buf.st_nlink, buf.st_uid, buf.st_gid)
            + (buf.st_size, 0, 0, 0)
        )

    def is_dir(self, path: str) -> bool:
        found = self.lstat(path)
        return found is not None and stat.S_ISDIR(found.st_mode)

    def space(self, path: str = "/") -> VolumeSpace:
        buf = _StatVfs()
        if self._lib.glfs_statvfs(self._handle(), path.encode(), ctypes.byref(buf)) != 0:
            _raise("statvfs", path)
        return VolumeSpace(buf.f_blocks * buf.f_frsize, buf.f_bavail * buf.f_frsize)

    def listdir(self, path: str) -> list[tuple[str, bool]]:
        """(name, is a directory) of each entry but `.` and `..`."""
        fd = self._lib.glfs_opendir(self._handle(), path.encode())
        if not fd:
            _raise("opendir", path)
        entries: list[tuple[str, bool]] = []
        try:
            while True:
                ctypes.set_errno(0)
                entry = self._lib.glfs_readdir(fd)
                if not entry:
                    if ctypes.get_errno():
                        _raise("readdir", path)
                    return entries
                name = entry.contents.d_name.decode(errors="surrogateescape")
                if name not in (".", ".."):
                    entries.append((name, entry.contents.d_type == _DT_DIR))
        finally:
            self._lib.glfs_closedir(fd)

    def remove_tree(self, path: str) -> bool:
        """Removes `path` and everything below it; False if it did not exist."""
        if self.lstat(path) is None:
            return False
        for name, is_dir in self.listdir(path):
            child = f"{path.rstrip('/')}/{name}"
            if is_dir:
                self.remove_tree(child)
            elif self._lib.glfs_unlink(self._handle(), child.encode()) != 0:
                if ctypes.get_errno() != errno.ENOENT:
                    _raise("unlink", child)
        if self._lib.glfs_rmdir(self._handle(), path.encode()) != 0:
            if ctypes.get_errno() != errno.ENOENT:
                _raise("rmdir", path)
        return True

    def allocate(self, path: str, size_bytes: int) -> None:
        """Creates `path` holding `size_bytes` of allocated blocks (what quotas count)."""
        fd = self._lib.glfs_creat(self._handle(), path.encode(), os.O_WRONLY | os.O_TRUNC, 0o644)
        if not fd:
            _raise("creat", path)
        try:
            if size_bytes and self._lib.glfs_fallocate(fd, 0, 0, size_bytes) != 0:
                _raise("fallocate", path)
            if self._lib.glfs_fsync(fd, None, None) != 0:
                _raise("fsync", path)
        finally:
            self._lib.glfs_close(fd)

    def write_file(self, path: str, data: bytes) -> None:
        fd = self._lib.glfs_creat(self._handle(), path.encode(), os.O_WRONLY | os.O_TRUNC, 0o644)
        if not fd:
            _raise("creat", path)
        try:
            written = self._lib.glfs_write(fd, data, len(data), 0)
            if written != len(data):
                _raise("write", path)
            if self._lib.glfs_fsync(fd, None, None) != 0:
                _raise("fsync", path)
        finally:
            self._lib.glfs_close(fd)
