"""Schema 4's step: a share record of the layout before reads the same through the API
afterwards, and its driver-host carries on with what was in progress (records only)."""

from __future__ import annotations

import pytest

from sharemesh.runtime.coordination._layouts import from_legacy
from sharemesh.runtime.lifecycle import share
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

Share = share_pb2.Share
NAME = "projects/p/shares/s"
SNAPSHOT = f"{NAME}/snapshots/x"
POOL = "backends/b/pools/p1"


def legacy(
    state: int, message: str = "", *, size: int = 2, realized: int = 2, placed: bool = True
) -> records_pb2.LegacyShareRecord:
    old = records_pb2.LegacyShareRecord(
        project="p",
        allocated_gib=size if placed else 0,
        realized_size_gib=realized,
        export_id=7 if placed else 0,
        pending_operations=["projects/p/operations/o1"],
        schema_version=3,
    )
    old.share.name, old.share.uid, old.share.size_gib = NAME, "u1", size
    old.share.state, old.share.state_message = state, message  # type: ignore[assignment]
    old.share.labels["team"] = "a"
    old.share.create_time.GetCurrentTime()
    old.share.update_time.CopyFrom(old.share.create_time)
    if placed:
        old.backend, old.pool, old.share.pool = "backends/b", POOL, POOL
        old.share.availability_zone, old.zone_chosen = "az1", True
        old.host = "host-1"
    if realized:
        old.share.export_locations.add(path="/s", nfs_port=2049)
    return old


def shown(old: records_pb2.LegacyShareRecord) -> Share:
    """What the API showed of `old`."""
    expected = Share()
    expected.CopyFrom(old.share)
    expected.pool = old.pool
    return expected


CASES = {
    "creating, unplaced": legacy(Share.CREATING, realized=0, placed=False),
    "creating, waiting for another pool": legacy(
        Share.CREATING, "retrying on another pool: mkfs failed", realized=0, placed=False
    ),
    "creating, placed": legacy(Share.CREATING, realized=0),
    "active": legacy(Share.ACTIVE),
    "active after a failed grow": legacy(Share.ACTIVE, "resize to 5 GiB failed: no space"),
    "error on its pool": legacy(Share.ERROR, "export refused"),
    "error, no pool": legacy(Share.ERROR, "no pool can hold 2 GiB", realized=0, placed=False),
}


@pytest.mark.parametrize("case", CASES)
def test_a_settled_or_waiting_share_reads_as_it_did(case: str) -> None:
    old = CASES[case]
    new = from_legacy(old)
    assert share.public(new) == shown(old)
    assert new.schema_version == 4
    assert (new.allocated_gib, new.export_id, list(new.pending_operations)) == (
        old.allocated_gib,
        old.export_id,
        ["projects/p/operations/o1"],
    )
    assert new.status.host == old.host and new.placement.backend == old.backend
    # The zone was the scheduler's: a retry of the create may choose another.
    assert new.spec.share.availability_zone == ""


def test_a_grow_in_progress_is_still_asked_of_the_backend() -> None:
    old = legacy(Share.UPDATING, size=5, realized=2)
    new = from_legacy(old)
    assert share.public(new) == shown(old)
    assert share.size_of(new) == 5 and new.status.realized_size_gib == 2
    share.resized(new)
    share.realized(new)
    assert (share.state(new), share.size_of(new)) == (Share.ACTIVE, 5)


def test_a_revert_in_progress_is_still_pending() -> None:
    old = legacy(Share.UPDATING)
    old.revert_to = SNAPSHOT
    new = from_legacy(old)
    assert share.state(new) == Share.UPDATING and share.pending_revert(new) == SNAPSHOT


def test_a_delete_in_progress_is_still_asked_with_its_force() -> None:
    old = legacy(Share.DELETING)
    old.delete_requested = old.force_delete = True
    new = from_legacy(old)
    assert share.state(new) == Share.DELETING and new.spec.force_delete
    share.released(new)  # the driver-host may finish it
    never_made = legacy(Share.DELETING, realized=0)
    never_made.delete_requested = True
    assert share.state(from_legacy(never_made)) == Share.DELETING
