"""Waiting for an Operation, showing its progress on a terminal.

The line comes from the Operation's `OperationMetadata` (`progress_percent` and
`status_detail`) and is drawn on stderr only when stderr is a TTY, so pipes and
scripts see nothing but the result.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import TextIO, TypeVar

from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, message

from sharemesh.client import Client, OperationFailed
from sharemesh.v1 import operation_metadata_pb2

M = TypeVar("M", bound=message.Message)

SPINNER = "|/-\\"
# Short server-side waits while drawing, so the spinner turns and the step is fresh.
POLL_SECONDS = 1


class StillRunning(Exception):
    """The Operation is not done after the wait's timeout; it goes on in the mesh."""

    def __init__(self, operation: operations_pb2.Operation, timeout: float) -> None:
        self.operation = operation
        super().__init__(
            f"{operation.name} is still running after {timeout:.0f}s; "
            f"follow it with `sharemesh operations wait {operation.name}`"
        )


def status_line(op: operations_pb2.Operation, spin: str) -> str:
    meta = operation_metadata_pb2.OperationMetadata()
    if op.metadata.Is(meta.DESCRIPTOR):
        op.metadata.Unpack(meta)
    target = meta.target.rsplit("/", 1)[-1] or op.name
    step = meta.status_detail or ("done" if op.done else "waiting")
    bar = "#" * (meta.progress_percent // 5)
    return (
        f"{spin} {meta.verb or 'operation'} {target} [{bar:20}] {meta.progress_percent:3d}% {step}"
    )


async def wait(
    client: Client,
    op: operations_pb2.Operation,
    response_type: type[M] | None = None,
    timeout: float = 600.0,
    stream: TextIO | None = None,
) -> M | None:
    """The Operation's response once it is done (OperationFailed if it failed),
    drawing a progress line on `stream` (stderr by default) if it is a terminal."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    deadline = time.monotonic() + timeout
    spinner = itertools.cycle(SPINNER)
    try:
        while not op.done:
            if tty:
                stream.write("\r\033[K" + status_line(op, next(spinner)))
                stream.flush()
            left = deadline - time.monotonic()
            if left <= 0:
                raise StillRunning(op, timeout)
            seconds = min(POLL_SECONDS, max(int(left), 1)) if tty else max(int(left), 1)
            request = operations_pb2.WaitOperationRequest(
                name=op.name, timeout=duration_pb2.Duration(seconds=seconds)
            )
            op = await client.call(client.operations.WaitOperation, request, seconds + 10)
        if tty:
            stream.write("\r\033[K" + status_line(op, "*") + "\n")
            stream.flush()
    except BaseException:
        if tty:
            stream.write("\n")
        raise
    if op.HasField("error"):
        raise OperationFailed(op)
    if response_type is None:
        return None
    response = response_type()
    op.response.Unpack(response)
    return response
