"""An access rule's state machine: each transition a function over its record.

    requested          (new)            -> CREATING
    update_requested   not deleting     -> UPDATING
    delete_requested   any              -> DELETING
    applied            any, not deleting -> ACTIVE (in force on the export)
    failed             any              -> ERROR (a delete that failed stays asked for)

A rule being deleted leaves through its record's removal, never ACTIVE. Each function
stamps `state`, `state_message` and `update_time`."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2

from ._stamp import now as _now
from ._stamp import require

AccessRule = access_rule_pb2.AccessRule
AccessRuleRecord = records_pb2.AccessRuleRecord
_STATES = (
    AccessRule.CREATING,
    AccessRule.ACTIVE,
    AccessRule.UPDATING,
    AccessRule.DELETING,
    AccessRule.ERROR,
)


def _check(record: AccessRuleRecord, doing: str, *, deleting_too: bool = False) -> None:
    state = record.rule.state
    allowed = _STATES if deleting_too or not record.delete_requested else ()
    name = AccessRule.State.Name(state) + (" (being deleted)" if record.delete_requested else "")
    require("access rule", record.rule.name, state, allowed, doing, name)


def _stamp(
    record: AccessRuleRecord, state: int, message: str, at: timestamp_pb2.Timestamp | None
) -> None:
    record.rule.state = state  # type: ignore[assignment]
    record.rule.state_message = message
    record.rule.update_time.CopyFrom(at or _now())


def requested(record: AccessRuleRecord, at: timestamp_pb2.Timestamp | None = None) -> None:
    require(
        "access rule",
        record.rule.name,
        record.rule.state,
        (AccessRule.STATE_UNSPECIFIED,),
        "requested",
        AccessRule.State.Name(record.rule.state),
    )
    _stamp(record, AccessRule.CREATING, "", at)
    record.rule.create_time.CopyFrom(record.rule.update_time)


def update_requested(
    record: AccessRuleRecord, access_level: int, at: timestamp_pb2.Timestamp | None = None
) -> None:
    _check(record, "updated")
    record.rule.access_level = access_level  # type: ignore[assignment]
    _stamp(record, AccessRule.UPDATING, record.rule.state_message, at)


def delete_requested(record: AccessRuleRecord, at: timestamp_pb2.Timestamp | None = None) -> None:
    _check(record, "deleted", deleting_too=True)
    record.delete_requested = True
    _stamp(record, AccessRule.DELETING, record.rule.state_message, at)


def applied(record: AccessRuleRecord, at: timestamp_pb2.Timestamp | None = None) -> None:
    _check(record, "applied")
    _stamp(record, AccessRule.ACTIVE, "", at)


def failed(
    record: AccessRuleRecord, message: str, at: timestamp_pb2.Timestamp | None = None
) -> None:
    """`message` must be tenant-safe (errors.for_tenant)."""
    _check(record, "failed", deleting_too=True)
    _stamp(record, AccessRule.ERROR, message, at)


def in_force(record: AccessRuleRecord) -> bool:
    """Whether the rule belongs in the export's client list: not being deleted, and
    not a change that failed for good (an ERROR rule with nothing waiting is not in
    force, and must not stop the share's other rules from being applied; the tenant
    deletes or recreates it)."""
    failed = record.rule.state == AccessRule.ERROR and not record.pending_operations
    return not record.delete_requested and not failed
