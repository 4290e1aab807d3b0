"""A share's and an access rule's state machines: every transition, and the illegal ones
refused with FAILED_PRECONDITION naming the state (records only, no I/O)."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from sharemesh.runtime.errors import FailedPrecondition
from sharemesh.runtime.lifecycle import access_rule, share
from sharemesh.runtime.lifecycle.share import public
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
NAME = "projects/p/shares/s"
ALL = (Share.CREATING, Share.ACTIVE, Share.UPDATING, Share.DELETING, Share.ERROR)


def new(size_gib: int = 2) -> records_pb2.ShareRecord:
    record = records_pb2.ShareRecord(project="p")
    record.spec.share.name = NAME
    record.spec.share.size_gib = size_gib
    share.requested(record)
    return record


def placed(size_gib: int = 2) -> records_pb2.ShareRecord:
    record = new(size_gib)
    share.placed(
        record,
        backend="backends/b",
        pool="backends/b/pools/p1",
        export_id=7,
        thick=False,
        availability_zone="az1",
    )
    return record


def active(size_gib: int = 2) -> records_pb2.ShareRecord:
    record = placed(size_gib)
    share.realized(record, [share_pb2.ExportLocation(path="/s", nfs_port=12049)])
    return record


def in_state(state: int) -> records_pb2.ShareRecord:
    """A share brought to `state` by the transitions that lead there."""
    if state == Share.CREATING:
        return placed()
    record = active()
    if state == Share.UPDATING:
        share.resize_requested(record, 3)
    elif state == Share.DELETING:
        share.delete_requested(record, force=False)
    elif state == Share.ERROR:
        share.resize_requested(record, 3)
        share.resized(record)
        share.failed(record, "export refused")
    assert share.state(record) == state
    return record


def test_a_new_share_is_creating_and_stamped() -> None:
    record = new()
    assert public(record).state == Share.CREATING
    assert record.spec.generation == 1 and record.status.observed_generation == 0
    assert record.spec.share.create_time == public(record).update_time
    assert public(record).update_time.seconds > 0
    with pytest.raises(FailedPrecondition, match="is CREATING"):
        share.requested(record)


def test_placement_holds_the_size_on_a_pool_and_keeps_creating() -> None:
    record = placed()
    assert public(record).state == Share.CREATING
    assert (record.placement.backend, record.placement.pool, public(record).pool) == (
        "backends/b",
        "backends/b/pools/p1",
        "backends/b/pools/p1",
    )
    assert (record.export_id, record.allocated_gib) == (7, 2)
    # The zone is the pool's: shown, but not asked for.
    assert (public(record).availability_zone, record.spec.share.availability_zone) == ("az1", "")
    for state in (Share.ACTIVE, Share.UPDATING, Share.DELETING, Share.ERROR):
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)):
            share.placed(
                in_state(state),
                backend="b",
                pool="p",
                export_id=1,
                thick=False,
                availability_zone="",
            )


def test_a_placement_that_fails_is_error_until_a_delete() -> None:
    record = new()
    share.placement_failed(record, "no pool can hold 2 GiB")
    assert (public(record).state, public(record).state_message) == (
        Share.ERROR,
        "no pool can hold 2 GiB",
    )
    with pytest.raises(FailedPrecondition, match="ERROR"):
        share.placement_failed(record, "again")
    share.delete_requested(record, force=False)
    assert public(record).state == Share.DELETING


def test_realized_is_active_at_its_size_with_its_locations() -> None:
    record = active()
    assert public(record).state == Share.ACTIVE and not public(record).state_message
    assert record.status.realized_size_gib == 2
    assert record.status.observed_generation == record.spec.generation
    assert [e.path for e in public(record).export_locations] == ["/s"]
    share.realized(record)  # a resync keeps the recorded locations
    assert [e.path for e in public(record).export_locations] == ["/s"]
    for state in (Share.DELETING, Share.ERROR):
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)):
            share.realized(in_state(state))


def test_a_resize_asks_for_the_size_then_the_backend_grows_it() -> None:
    record = active()
    assert share.resize_requested(record, 5) == 3
    assert (public(record).state, public(record).size_gib, record.status.realized_size_gib) == (
        Share.UPDATING,
        5,
        2,
    )
    share.resized(record)
    assert record.status.realized_size_gib == 5 and public(record).state == Share.UPDATING
    share.realized(record)
    assert public(record).state == Share.ACTIVE
    for state in (Share.CREATING, Share.UPDATING, Share.DELETING, Share.ERROR):
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)) as refused:
            share.resize_requested(in_state(state), 9)
        assert refused.value.reason == "SHARE_NOT_ACTIVE"
    with pytest.raises(FailedPrecondition, match="CREATING"):
        share.resized(placed())


def test_a_failed_shrink_leaves_the_share_active_at_its_size_holding_it_again() -> None:
    record = active(4)
    share.resize_requested(record, 1)
    assert share.resize_failed(record, "data would not fit") == -3
    assert (public(record).state, public(record).size_gib) == (Share.ACTIVE, 4)


def test_a_failed_grow_leaves_the_share_active_at_its_old_size() -> None:
    record = active()
    share.resize_requested(record, 5)
    assert share.resize_failed(record, "no space") == 3
    assert (public(record).state, public(record).size_gib) == (Share.ACTIVE, 2)
    assert public(record).state_message == "resize to 5 GiB failed: no space"
    with pytest.raises(FailedPrecondition, match="ERROR"):
        share.resize_failed(in_state(Share.ERROR), "x")


def test_a_change_after_a_failed_grow_does_not_ask_for_the_grow_again() -> None:
    """The grow's capacity was given back: a later change starts from the size it has."""
    record = active()
    share.resize_requested(record, 5)
    share.resize_failed(record, "no space")
    assert share.resize_requested(record, 3) == 1
    assert public(record).size_gib == 3
    record = active()
    share.resize_requested(record, 5)
    share.resize_failed(record, "no space")
    share.reset(record, Share.ACTIVE)
    assert (public(record).state, public(record).size_gib) == (Share.UPDATING, 2)


def test_a_failure_is_error_with_the_message_from_any_live_state() -> None:
    for state in (Share.CREATING, Share.ACTIVE, Share.UPDATING):
        record = in_state(state)
        share.failed(record, "backend said no")
        assert (public(record).state, public(record).state_message) == (
            Share.ERROR,
            "backend said no",
        )
    for state in (Share.DELETING, Share.ERROR):
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)):
            share.failed(in_state(state), "x")


def test_a_create_that_failed_waits_for_another_pool() -> None:
    record = placed()
    record.status.host = "h1"
    record.status.gateway_access.path = "/x"
    assert share.retried_elsewhere(record, "mkfs failed") == "backends/b/pools/p1"
    assert public(record).state == Share.CREATING
    assert public(record).state_message == "retrying on another pool: mkfs failed"
    assert list(record.placement.tried_pools) == ["backends/b/pools/p1"]
    assert not (record.placement.backend or public(record).pool or record.status.host)
    assert record.export_id == 0 and not record.status.HasField("gateway_access")
    # The zone was the scheduler's choice, not the tenant's: another pool may have another.
    assert public(record).availability_zone == ""
    for state in (Share.ACTIVE, Share.UPDATING, Share.DELETING, Share.ERROR):
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)):
            share.retried_elsewhere(in_state(state), "x")


def test_a_zone_the_tenant_asked_for_stays_through_a_retry() -> None:
    record = new()
    record.spec.share.availability_zone = "az2"
    share.placed(
        record, backend="b", pool="b/pools/p", export_id=1, thick=False, availability_zone="az2"
    )
    share.retried_elsewhere(record, "mkfs failed")
    assert public(record).availability_zone == "az2"


def test_delete_from_any_state_then_released_or_refused() -> None:
    for state in ALL:
        record = in_state(state)
        share.delete_requested(record, force=state == Share.ERROR)
        assert public(record).state == Share.DELETING and record.spec.delete_requested
        assert record.spec.force_delete == (state == Share.ERROR)
        assert not public(record).state_message
    record = in_state(Share.ACTIVE)
    share.delete_requested(record, force=False)
    share.released(record)
    share.delete_refused(record, "busy")
    assert (public(record).state, public(record).state_message) == (
        Share.ERROR,
        "delete failed: busy",
    )
    share.delete_requested(record, force=True)  # asked again: deleting again
    assert public(record).state == Share.DELETING
    for state in (Share.CREATING, Share.ACTIVE, Share.UPDATING, Share.ERROR):
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)):
            share.delete_refused(in_state(state), "x")
        with pytest.raises(FailedPrecondition, match=Share.State.Name(state)):
            share.released(in_state(state))


def test_an_admin_reset_stops_a_delete() -> None:
    record = in_state(Share.DELETING)
    share.reset(record, Share.ACTIVE)
    assert (public(record).state, record.spec.delete_requested) == (Share.UPDATING, False)
    share.realized(record)
    assert public(record).state == Share.ACTIVE
    record = in_state(Share.DELETING)
    share.reset(record, Share.ERROR)
    assert public(record).state == Share.ERROR
    assert public(record).state_message == "reset to ERROR by an administrator"
    share.delete_requested(record, force=False)  # the way out of ERROR
    assert public(record).state == Share.DELETING
    with pytest.raises(FailedPrecondition, match="never made") as refused:
        share.reset(placed(), Share.ACTIVE)
    assert refused.value.reason == "SHARE_NOT_REALIZED"
    with pytest.raises(ValueError):
        share.reset(active(), Share.DELETING)


def test_a_revert_is_pending_until_the_backend_did_it_and_only_in_its_generation() -> None:
    record = active()
    share.revert_requested(record, f"{NAME}/snapshots/x")
    assert public(record).state == Share.UPDATING
    assert share.pending_revert(record) == f"{NAME}/snapshots/x"
    share.reverted(record)
    assert share.pending_revert(record) == ""  # a sync that runs again does not redo it
    share.realized(record)
    share.resize_requested(record, 3)
    assert share.pending_revert(record) == ""


def test_the_status_alone_is_written_by_what_the_driver_host_does() -> None:
    """realized, resized, failed and the rest leave the spec as the api wrote it."""
    record = active()
    share.resize_requested(record, 5)
    asked = record.spec.SerializeToString()
    share.resized(record)
    share.failed(record, "export refused")
    assert record.spec.SerializeToString() == asked


def rule() -> records_pb2.AccessRuleRecord:
    record = records_pb2.AccessRuleRecord()
    record.rule.name = f"{NAME}/accessRules/r"
    access_rule.requested(record)
    return record


def test_an_access_rule_is_requested_applied_updated_failed_and_deleted() -> None:
    record = rule()
    assert record.rule.state == AccessRule.CREATING
    assert record.rule.create_time == record.rule.update_time
    access_rule.applied(record)
    assert record.rule.state == AccessRule.ACTIVE
    access_rule.update_requested(record, AccessRule.READ_ONLY)
    assert (record.rule.state, record.rule.access_level) == (
        AccessRule.UPDATING,
        AccessRule.READ_ONLY,
    )
    access_rule.failed(record, "export refused")
    assert (record.rule.state, record.rule.state_message) == (AccessRule.ERROR, "export refused")
    access_rule.delete_requested(record)
    assert record.rule.state == AccessRule.DELETING and record.delete_requested
    access_rule.failed(record, "still exported")  # the delete stays asked for
    assert record.delete_requested
    with pytest.raises(FailedPrecondition, match="being deleted"):
        access_rule.applied(record)
    with pytest.raises(FailedPrecondition, match="being deleted"):
        access_rule.update_requested(record, AccessRule.READ_WRITE)
    with pytest.raises(FailedPrecondition, match="is ERROR"):
        access_rule.requested(record)


def test_the_shown_update_time_is_the_latest_of_the_three_writers() -> None:
    def stamp(seconds: int) -> timestamp_pb2.Timestamp:
        return timestamp_pb2.Timestamp(seconds=seconds)

    record = records_pb2.ShareRecord(project="p")
    record.spec.share.name = NAME
    share.requested(record, at=stamp(100))
    share.placement_failed(record, "no pool can hold 2 GiB", at=stamp(105))
    assert (public(record).create_time.seconds, public(record).update_time.seconds) == (100, 105)
    record = placed()
    share.realized(record, at=stamp(2**40))
    assert public(record).update_time.seconds == 2**40
