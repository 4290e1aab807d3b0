"""A small asyncio client for the public API: stubs with credentials, and waiting on
Operations that turns a failed one back into the error it carries."""

# The runtime first: it turns gRPC's fork handlers off before gRPC loads, so a program
# that starts with the client (a launcher, a benchmark) can spawn children safely.
import sharemesh.runtime  # noqa: F401

from ._client import Client, OperationFailed

__all__ = ["Client", "OperationFailed"]
