"""A small asyncio client for the public API: stubs with credentials, and waiting on
Operations that turns a failed one back into the error it carries."""

from ._client import Client, OperationFailed

__all__ = ["Client", "OperationFailed"]
