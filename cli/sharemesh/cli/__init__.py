"""The `sharemesh` command."""

# Before anything imports grpc: the runtime turns off gRPC's fork handlers, which crash
# the children the launcher forks.
import sharemesh.runtime  # noqa: F401
