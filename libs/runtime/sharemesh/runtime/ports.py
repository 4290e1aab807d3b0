"""Free TCP ports for children the mesh or a test starts (etcd, Ganesha, services).

A port is chosen, released, and bound later by another process. Two things could
take it in between: an outgoing connection (the kernel gives those ports from the
ephemeral range) and another pick. So ports come from below the ephemeral range,
and a process never hands out the same port twice.
"""

import os
import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
# "INDEX/COUNT": this process and its children pick from the INDEX-th of COUNT
# interleaved shares of the range, so that parallel test workers on one machine never
# pick the same port.
SHARE_ENV = "SHAREMESH_PORT_SHARE"
_handed_out: set[int] = set()


def _candidates() -> range:
    try:
        first_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    every = range(_LOWEST, max(first_ephemeral, _LOWEST + 1000))
    share = os.environ.get(SHARE_ENV, "")
    if not share:
        return every
    try:
        index, count = (int(part) for part in share.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        wanted = "INDEX/COUNT with 0 <= INDEX < COUNT"
        raise ValueError(f"{SHARE_ENV}={share!r}: expected {wanted}") from None
    return every[index::count]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on, outside the ephemeral range; bind it soon."""
    candidates = _candidates()
    for _ in range(1000):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port in {candidates.start}-{candidates.stop - 1} on {host}")


def reserve(port: int) -> None:
    """Never hand out `port`: it is promised to a child that may not have bound it yet
    (e.g. one kept from the last run)."""
    _handed_out.add(port)
