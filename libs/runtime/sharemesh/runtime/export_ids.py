"""Which Export_Id a share gets on a Ganesha: the oldest released id whose quarantine has
passed, else the next never-used one. Clients keep file handles that name the export,
so an id comes back only after its quarantine; and Ganesha's ids are 16-bit, so without
reuse a server would run out after 65,535 shares in its life. Pure logic: the callers
read and write the records in their own transactions."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from sharemesh.state.v1.records_pb2 import ReleasedExportId

from .errors import ResourceExhausted

MAX_EXPORT_ID = 0xFFFE  # Ganesha's Export_Id is a uint16; 0 is its pseudo root
RESERVED_EXPORT_ID = 0xFFFF
"""Never handed to a share or snapshot: a driver's own export (the glusterfs driver's
anchor, which keeps the volume's client alive in Ganesha) may use it."""


@dataclass(frozen=True)
class Choice:
    export_id: int
    reused: bool
    """True if the id is the oldest released one (the caller removes that record)."""


def choose(
    last_export_id: int,
    oldest_released: ReleasedExportId | None,
    now: timestamp_pb2.Timestamp,
    quarantine_seconds: float,
) -> Choice:
    if oldest_released is not None:
        free_at = oldest_released.release_time.ToNanoseconds() + int(quarantine_seconds * 1e9)
        if free_at <= now.ToNanoseconds():
            return Choice(oldest_released.export_id, reused=True)
    if last_export_id < MAX_EXPORT_ID:
        return Choice(last_export_id + 1, reused=False)
    waiting = (
        f"; the oldest released one is free after {oldest_released.release_time.ToJsonString()}"
        f" plus {quarantine_seconds:g}s"
        if oldest_released is not None
        else ""
    )
    raise ResourceExhausted(
        f"all {MAX_EXPORT_ID} export ids of this Ganesha are in use or in quarantine{waiting}",
        reason="EXPORT_IDS_EXHAUSTED",
    )


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def released(export_id: int, now: timestamp_pb2.Timestamp) -> ReleasedExportId:
    stamp = timestamp_pb2.Timestamp()
    stamp.CopyFrom(now)
    return ReleasedExportId(export_id=export_id, release_time=stamp)
