"""The local launcher behind `sharemesh up`: etcd and every service on one machine."""

from ._mesh import DEFAULT_API_PORT, LocalMesh

__all__ = ["DEFAULT_API_PORT", "LocalMesh"]
