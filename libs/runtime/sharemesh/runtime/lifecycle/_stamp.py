"""What every transition shares: the legality check and the time stamp."""

from __future__ import annotations

from collections.abc import Collection

from google.protobuf import timestamp_pb2

from ..errors import FailedPrecondition


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def require(
    kind: str,
    name: str,
    state: int,
    allowed: Collection[int],
    doing: str,
    state_name: str,
    reason: str | None = None,
) -> None:
    """Raises FAILED_PRECONDITION naming the state unless `state` is one of `allowed`."""
    if state not in allowed:
        raise FailedPrecondition(
            f"{kind} {name} is {state_name}; it cannot be {doing} from that state",
            reason=reason,
        )
