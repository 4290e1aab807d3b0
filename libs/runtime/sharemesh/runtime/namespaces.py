"""Entering Linux namespaces between fork and exec (as `preexec_fn`): a child that runs
in a named network namespace, or with a hostname of its own, without `ip netns exec`,
which would also give it a private copy of the mount table."""

from __future__ import annotations

import ctypes
import os

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUTS = 0x04000000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter_netns(netns: str | None) -> None:
    """Moves the calling process into the named network namespace (`/run/netns/NAME`);
    it keeps the machine's files and mounts."""
    if not netns:
        return
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


def own_hostname(name: str) -> None:
    """A UTS namespace of its own, with `name` as its hostname."""
    libc, encoded = _libc(), name.encode()
    if libc.unshare(_CLONE_NEWUTS) != 0 or libc.sethostname(encoded, len(encoded)) != 0:
        raise OSError(ctypes.get_errno(), f"cannot take the hostname {name}")
