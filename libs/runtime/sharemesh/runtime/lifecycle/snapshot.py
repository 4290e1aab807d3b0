"""A snapshot's state machine, all of it: each transition a function over its record.

    requested          (new)                  -> CREATING, of its share's size
    taken              CREATING               -> READY, with its export locations (if any)
    failed             CREATING               -> ERROR
    delete_requested   any                    -> DELETING
    delete_refused     DELETING               -> ERROR
    released           DELETING               -> (record gone)

A snapshot is taken, exported, reverted to and deleted by its share's driver-host,
under its share's lock. Each function checks that its transition is legal
(FAILED_PRECONDITION naming the state otherwise) and stamps `state` and
`state_message`. Moving the quota is the ledger's; writing the record is the caller's."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, snapshot_pb2

from ._stamp import now as _now
from ._stamp import require

Snapshot = snapshot_pb2.Snapshot
SnapshotRecord = records_pb2.SnapshotRecord
CREATING, READY, DELETING, ERROR = (
    Snapshot.CREATING,
    Snapshot.READY,
    Snapshot.DELETING,
    Snapshot.ERROR,
)
_ANY = (CREATING, READY, DELETING, ERROR)


def _check(record: SnapshotRecord, allowed: Sequence[int], doing: str) -> None:
    state = record.snapshot.state
    require("snapshot", record.snapshot.name, state, allowed, doing, Snapshot.State.Name(state))


def _stamp(record: SnapshotRecord, state: int, message: str) -> None:
    record.snapshot.state = state  # type: ignore[assignment]
    record.snapshot.state_message = message


def requested(
    record: SnapshotRecord, size_gib: int, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """A new snapshot of a share that is `size_gib` now: what it holds in quota."""
    _check(record, (Snapshot.STATE_UNSPECIFIED,), "requested")
    record.snapshot.size_gib = size_gib
    record.snapshot.create_time.CopyFrom(at or _now())
    _stamp(record, CREATING, "")


def taken(record: SnapshotRecord, locations: Sequence[share_pb2.ExportLocation] = ()) -> None:
    """The backend holds the copy (and serves it read-only at `locations`, if any)."""
    _check(record, (CREATING,), "taken")
    del record.snapshot.export_locations[:]
    record.snapshot.export_locations.extend(locations)
    _stamp(record, READY, "")


def failed(record: SnapshotRecord, message: str) -> None:
    """Taking it failed for good; `message` must be tenant-safe (errors.for_tenant).
    It keeps its quota until it is deleted."""
    _check(record, (CREATING,), "failed")
    _stamp(record, ERROR, message)


def delete_requested(record: SnapshotRecord) -> None:
    """Legal from any state: deleting is the way out of ERROR, and of a snapshot whose
    taking never finished (the driver's delete is idempotent)."""
    _check(record, _ANY, "deleted")
    record.delete_requested = True
    _stamp(record, DELETING, "")


def delete_refused(record: SnapshotRecord, message: str) -> None:
    """The backend refused the delete: ERROR with the reason, to be deleted again."""
    _check(record, (DELETING,), "refused deletion")
    record.delete_requested = False
    _stamp(record, ERROR, f"delete failed: {message}")


def released(record: SnapshotRecord) -> None:
    """The copy is gone from the backend: the record goes, and the caller gives back its
    quota and export id in the same transaction."""
    _check(record, (DELETING,), "released")
    if not record.delete_requested:
        raise ValueError(f"{record.snapshot.name} is DELETING without a delete requested")
