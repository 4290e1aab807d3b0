"""A share's state machine, all of it: each transition a function over its record.

The record keeps what is asked (`spec`, the api's), where the share is (`placement`,
the scheduler's) and what is true (`status`, the driver-host's), as Kubernetes objects
do. A share's state is derived from them (`state_of`), never stored: every change asked
of the backend raises the spec's generation, and the share is CREATING, UPDATING or
DELETING until the status has acted on that generation.

    asked by the api (spec):
    requested          (new)                    -> CREATING
    resize_requested   ACTIVE                   -> UPDATING
    revert_requested   ACTIVE                   -> UPDATING, to its latest snapshot
    delete_requested   any                      -> DELETING
    reset (an admin)   any                      -> UPDATING (to be made ACTIVE) or ERROR
    decided by the scheduler (placement):
    placed             CREATING                 -> CREATING, on a pool with an export id
    placement_failed   CREATING                 -> ERROR: no pool can hold it
    made true by the driver-host (status):
    realized           CREATING|UPDATING|ACTIVE -> ACTIVE at its size, with its locations
    reverted           UPDATING                 -> (same): the backend holds the snapshot's data
    resized            UPDATING|ACTIVE          -> (same): the backend has the new size
    failed             CREATING|UPDATING|ACTIVE -> ERROR
    retried_elsewhere  CREATING                 -> CREATING, unplaced, for another pool
    resize_failed      UPDATING|ACTIVE          -> ACTIVE at the size it has
    delete_refused     DELETING                 -> ERROR
    released           DELETING                 -> (record gone)

Each function checks that its transition is legal (FAILED_PRECONDITION naming the state
otherwise) and stamps the part it writes. Moving the counters (pool allocation, quota,
export ids) is the ledger's; writing the record is the caller's."""

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
HELD_MESSAGE = "reset to ERROR by an administrator"


# What the record says: the share's state, size and public view.


def _current(record: ShareRecord) -> bool:
    """Whether the driver-host has acted on the latest change asked."""
    return record.status.observed_generation == record.spec.generation


def state_of(record: ShareRecord) -> tuple[int, str]:
    """The share's state and its message, derived from the three parts of the record."""
    spec, status = record.spec, record.status
    if _current(record) and status.state == ERROR:
        return ERROR, status.message  # the latest change failed (a delete too)
    if spec.delete_requested:
        return DELETING, ""
    if spec.held_in_error:
        return ERROR, HELD_MESSAGE
    if record.placement.failure:
        return ERROR, record.placement.failure
    if not _current(record):
        if status.realized_size_gib:
            return UPDATING, ""
        return CREATING, status.message  # why it waits for another pool, if it does
    return status.state, status.message


def state(record: ShareRecord) -> int:
    return state_of(record)[0]


def size_of(record: ShareRecord) -> int:
    """The share's size: the one the backend has once it is ACTIVE (a failed resize
    left it there, its capacity given back), else the one asked."""
    if _current(record) and record.status.state == ACTIVE:
        return record.status.realized_size_gib
    return record.spec.share.size_gib


def pending_revert(record: ShareRecord) -> str:
    """The snapshot the backend is still to revert the share to; empty if none."""
    spec, status = record.spec, record.status
    if spec.revert_to and not _current(record) and status.reverted_generation < spec.generation:
        return spec.revert_to
    return ""


def public(record: ShareRecord) -> Share:
    """The share as the API shows it: the spec, with what the placement and the status
    say of it."""
    share = Share()
    share.CopyFrom(record.spec.share)
    share.state, share.state_message = state_of(record)  # type: ignore[assignment]
    share.size_gib = size_of(record)
    share.pool = record.placement.pool
    if not share.availability_zone:
        share.availability_zone = record.placement.availability_zone
    share.export_locations.extend(record.status.export_locations)
    share.update_time.CopyFrom(
        max(
            (share.update_time, record.placement.update_time, record.status.update_time),
            key=lambda t: (t.seconds, t.nanos),
        )
    )
    return share


def _check(
    record: ShareRecord, allowed: Sequence[int], doing: str, reason: str | None = None
) -> None:
    now = state(record)
    require("share", record.spec.share.name, now, allowed, doing, Share.State.Name(now), reason)


# Asked by the api: the spec, raising its generation.


def _ask(record: ShareRecord, at: timestamp_pb2.Timestamp | None) -> None:
    """A new change asked of the backend. It starts from the share as it is (a resize
    that failed is not asked again), with no revert and no hold."""
    spec = record.spec
    spec.share.size_gib = size_of(record)
    spec.revert_to = ""
    spec.held_in_error = False
    spec.generation += 1
    spec.share.update_time.CopyFrom(at or _now())


def requested(record: ShareRecord, at: timestamp_pb2.Timestamp | None = None) -> None:
    """A new share, waiting for placement."""
    if record.spec.generation:
        _check(record, (), "requested")
    _ask(record, at)
    record.spec.share.create_time.CopyFrom(record.spec.share.update_time)


def resize_requested(
    record: ShareRecord, size_gib: int, at: timestamp_pb2.Timestamp | None = None
) -> int:
    """A resize of an ACTIVE share: it asks for the new size at once (the caller moves
    its counters by the returned delta) and is UPDATING until the backend has it."""
    _check(record, (ACTIVE,), "resized", reason="SHARE_NOT_ACTIVE")
    _ask(record, at)
    delta = size_gib - record.spec.share.size_gib
    record.spec.share.size_gib = size_gib
    return delta


def revert_requested(
    record: ShareRecord, snapshot: str, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """A revert of an ACTIVE share to `snapshot` (its latest, checked by the caller): it
    is UPDATING until the backend holds the snapshot's data again."""
    _check(record, (ACTIVE,), "reverted", reason="SHARE_NOT_ACTIVE")
    _ask(record, at)
    record.spec.revert_to = snapshot


def delete_requested(
    record: ShareRecord, force: bool, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """A placed share is to go from its backend (an unplaced one's record just goes).
    Legal from any state: deleting is the way out of ERROR, and a delete may be asked
    again (say, with `force`)."""
    _check(record, _ANY, "deleted")
    _ask(record, at)
    record.spec.delete_requested = True
    record.spec.force_delete = force


def reset(record: ShareRecord, state: int, at: timestamp_pb2.Timestamp | None = None) -> None:
    """An administrator's reset, from any state; it stops a delete. ACTIVE has the
    driver-host make the share true again (UPDATING until then), so it needs a share
    that was made; ERROR stays until a delete."""
    _check(record, _ANY, "reset")
    if state == ACTIVE and record.status.realized_size_gib == 0:
        raise FailedPrecondition(
            f"{record.spec.share.name} was never made on a backend; delete it instead",
            reason="SHARE_NOT_REALIZED",
        )
    if state not in (ACTIVE, ERROR):
        raise ValueError(f"a share is reset to ACTIVE or ERROR, not {Share.State.Name(state)}")
    _ask(record, at)  # what waited on the share (a revert too) was stopped
    record.spec.delete_requested = record.spec.force_delete = False
    record.spec.held_in_error = state == ERROR


# Decided by the scheduler: the placement.


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
    if record.placement.backend:
        raise ValueError(f"{record.spec.share.name} is placed already")
    placement = record.placement
    placement.backend, placement.pool = backend, pool
    placement.availability_zone = availability_zone
    placement.thick_provisioned = thick
    placement.update_time.CopyFrom(at or _now())
    record.export_id = export_id
    record.allocated_gib = record.spec.share.size_gib


def placement_failed(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """No pool can hold the share, for a reason no retry fixes: ERROR with `message`
    (tenant-safe), until a delete."""
    _check(record, (CREATING,), "failed")
    record.placement.failure = message
    record.placement.update_time.CopyFrom(at or _now())


# Made true by the driver-host: the status, marking the generation it acted on.


def _observed(
    record: ShareRecord, state: int, message: str, at: timestamp_pb2.Timestamp | None
) -> None:
    status = record.status
    status.state = state  # type: ignore[assignment]
    status.message = message
    status.observed_generation = record.spec.generation
    status.update_time.CopyFrom(at or _now())


def realized(
    record: ShareRecord,
    locations: Sequence[share_pb2.ExportLocation] = (),
    at: timestamp_pb2.Timestamp | None = None,
) -> None:
    """The backend made the share (created, resized, its rules applied) at its size; new
    `locations` replace the recorded ones (none given keeps them)."""
    _check(record, _LIVE, "realized")
    record.status.realized_size_gib = size_of(record)
    if locations:
        del record.status.export_locations[:]
        record.status.export_locations.extend(locations)
    _observed(record, ACTIVE, "", at)


def resized(record: ShareRecord) -> None:
    """The backend grew (or shrank) the share to the asked size. It is the realized size
    even if the rest of the change fails (XFS cannot shrink back); the state waits."""
    _check(record, (UPDATING, ACTIVE), "resized")
    record.status.realized_size_gib = size_of(record)


def reverted(record: ShareRecord) -> None:
    """The backend put the snapshot's data back; `realized` then makes the share ACTIVE."""
    _check(record, (UPDATING,), "reverted")
    record.status.reverted_generation = record.spec.generation


def failed(record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None) -> None:
    """A change that no retry can fix: ERROR with `message`, which must be tenant-safe
    (errors.for_tenant). Only a delete or an admin's reset leaves ERROR."""
    _check(record, _LIVE, "failed")
    _observed(record, ERROR, message, at)


def retried_elsewhere(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> str:
    """A create that failed on its pool (and was undone there) waits for placement on
    another; returns the failed pool, which placement skips from now on. The pool is
    for admins (Share.pool is theirs): `message` does not name it. The caller gave
    back the share's capacity and export id on that pool first."""
    _check(record, (CREATING,), "placed again")
    failed_pool = record.placement.pool
    tried = [*record.placement.tried_pools, failed_pool]
    record.placement.Clear()  # its time too: the status's is the newer
    record.placement.tried_pools.extend(tried)
    record.export_id = 0
    record.status.host = ""
    record.status.ClearField("gateway_access")
    record.status.message = f"retrying on another pool: {message}"
    record.status.update_time.CopyFrom(at or _now())
    return failed_pool


def resize_failed(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> int:
    """A resize that failed leaves the share ACTIVE at the size it has, saying why;
    returns the GiB it no longer holds: what a grow took, given back by the caller, or
    (negative) what a shrink gave back early, which the caller takes again."""
    _check(record, (UPDATING, ACTIVE), "left at its size")
    wanted = size_of(record)
    given_back = wanted - record.status.realized_size_gib
    _observed(record, ACTIVE, f"resize to {wanted} GiB failed: {message}", at)
    return given_back


def delete_refused(
    record: ShareRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """The backend refused the delete: ERROR with the reason, to be deleted again (with
    `force` to drop the record whatever the backend says)."""
    _check(record, (DELETING,), "refused deletion")
    _observed(record, ERROR, f"delete failed: {message}", at)


def released(record: ShareRecord) -> None:
    """The share is gone from its backend (or forced out): its record goes, and the
    caller gives back its capacity, quota and export id in the same transaction."""
    _check(record, (DELETING,), "released")
