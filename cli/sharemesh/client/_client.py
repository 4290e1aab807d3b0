from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TypeVar

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, message

from sharemesh.runtime.errors import ShareMeshError, from_status
from sharemesh.v1 import share_network_service_pb2_grpc, share_service_pb2_grpc

M = TypeVar("M", bound=message.Message)


class OperationFailed(Exception):
    """An Operation that finished with an error; `error` is the error it carries."""

    def __init__(self, operation: operations_pb2.Operation) -> None:
        self.operation = operation
        self.error: ShareMeshError = from_status(operation.error)
        self.code = next(
            (c for c in grpc.StatusCode if c.value[0] == operation.error.code),
            grpc.StatusCode.UNKNOWN,
        )
        super().__init__(f"{operation.name}: {self.code.name}: {operation.error.message}")


class Client:
    """`async with Client(endpoint, token) as c:`; endpoint, token and the CA file for
    TLS default to SHAREMESH_ENDPOINT, SHAREMESH_TOKEN and SHAREMESH_CA_FILE."""

    def __init__(
        self, endpoint: str | None = None, token: str | None = None, ca_file: str | None = None
    ) -> None:
        self.endpoint = endpoint or os.environ.get("SHAREMESH_ENDPOINT", "127.0.0.1:8470")
        token = token if token is not None else os.environ.get("SHAREMESH_TOKEN", "")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        ca_file = ca_file or os.environ.get("SHAREMESH_CA_FILE", "")
        if ca_file:  # TLS, trusting the CA (or self-signed certificate) in this file
            credentials = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
            self._channel = grpc.aio.secure_channel(self.endpoint, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(self.endpoint)
        self.shares = share_service_pb2_grpc.ShareServiceStub(self._channel)
        self.networks = share_network_service_pb2_grpc.ShareNetworkServiceStub(self._channel)
        self.operations = operations_pb2_grpc.OperationsStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, method, request, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        """Calls a stub method with this client's credentials."""
        return await method(request, metadata=self.metadata, timeout=timeout)

    async def wait(
        self,
        operation: operations_pb2.Operation,
        response_type: type[M] | None = None,
        timeout: float = 120.0,
    ) -> M | None:
        """Waits for the Operation; its response, or OperationFailed with its error."""
        deadline = time.monotonic() + timeout
        while not operation.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{operation.name} is not done after {timeout:.0f}s")
            request = operations_pb2.WaitOperationRequest(
                name=operation.name, timeout=duration_pb2.Duration(seconds=max(int(left), 1))
            )
            operation = await self.call(self.operations.WaitOperation, request, left + 5)
        if operation.HasField("error"):
            raise OperationFailed(operation)
        if response_type is None:
            return None
        response = response_type()
        operation.response.Unpack(response)
        return response
