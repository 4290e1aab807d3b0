"""The local launcher behind `sharemesh up`: etcd and every service on one machine,
as one host (`LocalMesh`) or as several, each a network namespace (`HostsMesh`)."""

from ._hosts import HostsMesh
from ._mesh import DEFAULT_API_PORT, STORAGE_RANGE_ENV, LocalMesh

__all__ = ["DEFAULT_API_PORT", "STORAGE_RANGE_ENV", "HostsMesh", "LocalMesh"]
