"""A snapshot's state machine, and a share's revert: every transition, and the illegal
ones refused with FAILED_PRECONDITION naming the state (records only, no I/O)."""

from __future__ import annotations

import pytest

from sharemesh.runtime.errors import FailedPrecondition
from sharemesh.runtime.lifecycle import share, snapshot
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, snapshot_pb2

Snapshot = snapshot_pb2.Snapshot
Share = share_pb2.Share
NAME = "projects/p/shares/s/snapshots/x"
ALL = (Snapshot.CREATING, Snapshot.READY, Snapshot.DELETING, Snapshot.ERROR)


def new(size_gib: int = 3) -> records_pb2.SnapshotRecord:
    record = records_pb2.SnapshotRecord(project="p")
    record.snapshot.name = NAME
    snapshot.requested(record, size_gib)
    return record


def in_state(state: int) -> records_pb2.SnapshotRecord:
    record = new()
    record.snapshot.state = state  # type: ignore[assignment]
    record.delete_requested = state == Snapshot.DELETING
    return record


def test_a_new_snapshot_is_creating_at_its_shares_size() -> None:
    record = new(5)
    assert record.snapshot.state == Snapshot.CREATING
    assert record.snapshot.size_gib == 5 and record.snapshot.create_time.seconds > 0
    with pytest.raises(FailedPrecondition, match="CREATING"):
        snapshot.requested(record, 5)


def test_taken_makes_it_ready_with_its_locations() -> None:
    record = new()
    where = share_pb2.ExportLocation(path="h:/snapshots/u", nfs_port=1, mount_port=2)
    snapshot.taken(record, [where])
    assert record.snapshot.state == Snapshot.READY
    assert list(record.snapshot.export_locations) == [where]
    for state in (Snapshot.READY, Snapshot.DELETING, Snapshot.ERROR):
        with pytest.raises(FailedPrecondition, match=Snapshot.State.Name(state)):
            snapshot.taken(in_state(state))


def test_a_failed_take_is_error_with_why() -> None:
    record = new()
    snapshot.failed(record, "the pool is full")
    assert record.snapshot.state == Snapshot.ERROR
    assert record.snapshot.state_message == "the pool is full"
    with pytest.raises(FailedPrecondition):
        snapshot.failed(in_state(Snapshot.READY), "no")


@pytest.mark.parametrize("state", ALL)
def test_a_delete_is_legal_from_any_state(state: int) -> None:
    record = in_state(state)
    snapshot.delete_requested(record)
    assert record.snapshot.state == Snapshot.DELETING and record.delete_requested
    snapshot.released(record)


def test_a_refused_delete_is_error_and_can_be_asked_again() -> None:
    record = in_state(Snapshot.READY)
    snapshot.delete_requested(record)
    snapshot.delete_refused(record, "busy")
    assert record.snapshot.state == Snapshot.ERROR and not record.delete_requested
    assert "busy" in record.snapshot.state_message
    with pytest.raises(FailedPrecondition, match="ERROR"):
        snapshot.released(record)
    snapshot.delete_requested(record)
    snapshot.released(record)


def test_only_a_deleting_snapshot_is_released() -> None:
    for state in (Snapshot.CREATING, Snapshot.READY, Snapshot.ERROR):
        with pytest.raises(FailedPrecondition):
            snapshot.released(in_state(state))


def _active_share() -> records_pb2.ShareRecord:
    record = records_pb2.ShareRecord(project="p")
    record.spec.share.name = "projects/p/shares/s"
    record.spec.share.size_gib = 2
    share.requested(record)
    share.placed(
        record,
        backend="backends/b",
        pool="backends/b/pools/p",
        export_id=1,
        thick=False,
        availability_zone="",
    )
    share.realized(record)
    return record


def test_a_revert_holds_the_share_updating_until_the_backend_has_the_data() -> None:
    record = _active_share()
    share.revert_requested(record, NAME)
    assert share.public(record).state == Share.UPDATING and share.pending_revert(record) == NAME
    with pytest.raises(FailedPrecondition, match="UPDATING"):
        share.revert_requested(record, NAME)
    share.reverted(record)
    assert share.pending_revert(record) == ""
    share.realized(record)
    assert share.public(record).state == Share.ACTIVE


def test_a_failed_or_reset_revert_asks_for_nothing_more() -> None:
    record = _active_share()
    share.revert_requested(record, NAME)
    share.failed(record, "the snapshot is gone")
    assert share.public(record).state == Share.ERROR and share.pending_revert(record) == ""
    record = _active_share()
    share.revert_requested(record, NAME)
    share.reset(record, Share.ACTIVE)
    assert share.pending_revert(record) == ""
