"""A share's state machine, all of it: each transition a function over its record.

    requested          (new)                  -> CREATING
    placed             CREATING               -> CREATING, on a pool with an export id
    realized           CREATING|UPDATING|ACTIVE -> ACTIVE at its size, with its locations
    resize_requested   ACTIVE                 -> UPDATING
    revert_requested   ACTIVE                 -> UPDATING, to its latest snapshot
    reverted           UPDATING               -> (same): the backend holds the snapshot's data
    resized            UPDATING|ACTIVE        -> (same): the backend has the new size
    failed             CREATING|UPDATING|ACTIVE -> ERROR
    retried_elsewhere  CREATING               -> CREATING, unplaced, for another pool
    resize_failed      UPDATING|ACTIVE        -> ACTIVE at the size it has
    delete_requested   any                    -> DELETING
    delete_refused     DELETING               -> ERROR
    released           DELETING               -> (record gone)
    reset (an admin)   any                    -> UPDATING (to be made ACTIVE) or ERROR

Each function checks that its transition is legal (FAILED_PRECONDITION naming the state
otherwise) and stamps `state`, `state_message` and `update_time`. Moving the counters
(pool allocation, quota, export ids) is the ledger's; writing the record is the caller's."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

from ..errors import FailedPrecondition
from ._stamp import now as _now
from ._stamp import require

Share = share_pb2.Share
ShareRecord = records_pb2.ShareRecord
CREATING, ACTIVE, UPDATING = Share.CREATING, Share.ACTIVE, Share.UPDATING
DELETING, ERROR = Share.DELETING, Share.ERROR
_LIVE = (CREATING, ACTIVE, UPDATING)  # what a change may still fail from
_ANY = (CREATING, ACTIVE, UPDATING, DELETING, ERROR)


def _check(
    record: ShareRecord, allowed: Sequence[int], doing: str, reason: str | None = None
) -> None:
    state = record.share.state
    require("share", record.share.name, state, allowed, doing, Share.State.Name(state), reason)


def _stamp(
    record: ShareRecord, state: int, message: str, at: timestamp_pb2.Timestamp | None
) -> None:
    record.share.state = state  # type: ignore[assignment]
    record.share.state_message = message
    record.share.update_time.CopyFrom(at or _now())


def requested(record: ShareRecord, at: timestamp_pb2.Timestamp | None = None) -> None:
    """A new share, waiting for placement."""
    _check(record, (Share.STATE_UNSPECIFIED,), "requested")
    _stamp(record, CREATING, "", at)
    record.share.create_time.CopyFrom(record.share.update_time)


def placed(
    record: ShareRecord,
    *,
    backend: str,
    pool: str,
    export_id: int,
    thick: bool,
    availability_zone: str,
    at: timestamp_pb2.Timestamp | None = None,
) -> None:
    """The scheduler chose a pool: the share holds its size there, under an export id.
    It stays CREATING (with any message of a pool that failed it) until it is realized."""
    _check(record, (CREATING,), "placed")
    if record.backend or record.delete_requested:
        raise ValueError(f"{record.share.name} is placed already, or being deleted")
    record.backend = backend
    record.pool = record.share.pool = pool
    record.export_id = export_id
    record.allocated_gib = record.share.size_gib
    record.thick_provisioned = thick
    if not record.share.availability_zone:  # the zone the scheduler chose for it
        record.share.availability_zone = availability_zone
        record.zone_chosen = True
    _stamp(record, CREATING, record.share.state_message, at)


def realized(
    record: ShareRecord,
    locations: Sequence[share_pb2.ExportLocation] = (),
    at: timestamp_pb2.Timestamp | None = None,
) -> None:
    """The backend made the share (created, resized, its rules applied) at its size; new
    `locations` replace the recorded ones (none given keeps them)."""
    _check(record, _LIVE, "realized")
    record.realized_size_gib = record.share.size_gib
    if locations:
        del record.share.export_locations[:]
        record.share.export_locations.extend(locations)
    _stamp(record, ACTIVE, "", at)


def resized(record: ShareRecord) -> None:
    """The backend grew (or shrank) the share to the asked size. It is the realized size
    even if the rest of the change fails (XFS cannot shrink back); the state waits."""
    _check(record, (UPDATING, ACTIVE), "resized")
    record.realized_size_gib = record.share.size_gib


def resize_requested(
    record: ShareRecord, size_gib: int, at: timestamp_pb2.Timestamp | None = None
) -> int:
    """A resize of an ACTIVE share: it asks for the new size at once (the caller moves
    its counters by the returned delta) and is UPDATING until the backend has it."""
    _check(record, (ACTIVE,), "resized", reason="SHARE_NOT_ACTIVE")
    delta = size_gib - record.share.size_gib
    record.share.size_gib = size_gib
    _stamp(record, UPDATING, record.share.state_message, at)
    return delta


def revert_requested(
    record: ShareRecord, snapshot: str, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """A revert of an ACTIVE share to `snapshot` (its latest, checked by the caller): it
    is UPDATING until the backend holds the snapshot's data again."""
    _check(record, (ACTIVE,), "reverted", reason="SHARE_NOT_ACTIVE")
    record.revert_to = snapshot
    _stamp(record, UPDATING, "", at)


def reverted(record: ShareRecord) -> None:
    """The backend put the snapshot's data back; `realized` then makes the share ACTIVE."""
    _check(record, (UPDATING,), "reverted")
    record.revert_to = ""


def failed(record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None) -> None:
    """A change that no retry can fix: ERROR with `message`, which must be tenant-safe
    (errors.for_tenant). Only a delete or an admin's reset leaves ERROR."""
    _check(record, _LIVE, "failed")
    record.revert_to = ""
    _stamp(record, ERROR, message, at)


def retried_elsewhere(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> str:
    """A create that failed on its pool (and was undone there) waits for placement on
    another; returns the failed pool, which placement skips from now on. The pool is
    for admins (Share.pool is theirs): `message` does not name it. The caller gave
    back the share's capacity and export id on that pool first."""
    _check(record, (CREATING,), "placed again")
    failed_pool = record.pool
    record.tried_pools.append(failed_pool)
    record.backend = record.pool = record.share.pool = record.host = ""
    record.export_id = 0
    record.ClearField("gateway_access")
    if record.zone_chosen:  # the tenant asked for no zone: any pool's may do
        record.share.availability_zone = ""
        record.zone_chosen = False
    _stamp(record, CREATING, f"retrying on another pool: {message}", at)
    return failed_pool


def resize_failed(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> int:
    """A resize that failed leaves the share ACTIVE at the size it has, saying why;
    returns the GiB it no longer holds: what a grow took, given back by the caller, or
    (negative) what a shrink gave back early, which the caller takes again."""
    _check(record, (UPDATING, ACTIVE), "left at its size")
    wanted = record.share.size_gib
    given_back = wanted - record.realized_size_gib
    record.share.size_gib = record.realized_size_gib
    _stamp(record, ACTIVE, f"resize to {wanted} GiB failed: {message}", at)
    return given_back


def delete_requested(
    record: ShareRecord, force: bool, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """A placed share is to go from its backend (an unplaced one's record just goes).
    Legal from any state: deleting is the way out of ERROR, and a delete may be asked
    again (say, with `force`)."""
    _check(record, _ANY, "deleted")
    record.delete_requested = True
    record.force_delete = force
    _stamp(record, DELETING, "", at)


def delete_refused(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """The backend refused the delete: ERROR with the reason, to be deleted again (with
    `force` to drop the record whatever the backend says)."""
    _check(record, (DELETING,), "refused deletion")
    record.delete_requested = record.force_delete = False
    _stamp(record, ERROR, f"delete failed: {message}", at)


def reset(record: ShareRecord, state: int, at: timestamp_pb2.Timestamp | None = None) -> None:
    """An administrator's reset, from any state; it stops a delete. ACTIVE has the
    driver-host make the share true again (UPDATING until then), so it needs a share
    that was made; ERROR stays until a delete."""
    _check(record, _ANY, "reset")
    record.delete_requested = record.force_delete = False
    record.revert_to = ""  # what waited on it was stopped
    if state == ACTIVE:
        if record.realized_size_gib == 0:
            raise FailedPrecondition(
                f"{record.share.name} was never made on a backend; delete it instead",
                reason="SHARE_NOT_REALIZED",
            )
        _stamp(record, UPDATING, "", at)
    elif state == ERROR:
        _stamp(record, ERROR, "reset to ERROR by an administrator", at)
    else:
        raise ValueError(f"a share is reset to ACTIVE or ERROR, not {Share.State.Name(state)}")


def released(record: ShareRecord) -> None:
    """The share is gone from its backend (or forced out): its record goes, and the
    caller gives back its capacity, quota and export id in the same transaction."""
    _check(record, (DELETING,), "released")
    if not record.delete_requested:
        raise ValueError(f"{record.share.name} is DELETING without a delete requested")
