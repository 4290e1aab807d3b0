"""Record layouts of older schemas, read into today's: a record written before its
type's layout changed is brought to the current layout as it is read, whichever
process reads it, so the mesh shows and acts on it the same before and after the
migration step that rewrites it in etcd. Its schema version stays as read, and is
raised when the record is written back (`version_written`)."""

from __future__ import annotations

from google.protobuf.message import Message

from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2

Share = share_pb2.Share
SPEC_STATUS = 4  # the schema that split the share record into spec and status
_DERIVED = ("state", "state_message", "export_locations", "pool")  # composed on read


def version_written(message: Message) -> int:
    """The schema version to write `message` at: its own, unless it is in a layout newer
    than that version had. A record read at an older version and written back in
    today's layout is at today's version: a process of that older code refuses it
    rather than misread it."""
    version: int = getattr(message, "schema_version", 0)
    if isinstance(message, records_pb2.ShareRecord) and message.HasField("spec"):
        return max(version, SPEC_STATUS)
    return version


def upgrade_on_read(message: Message, data: bytes) -> Message:
    """`message`, parsed from `data`, in today's layout of its type."""
    if (
        isinstance(message, records_pb2.ShareRecord)
        and message.schema_version < SPEC_STATUS
        and not message.HasField("spec")  # one rewritten by today's code has its spec
    ):
        upgraded = from_legacy(records_pb2.LegacyShareRecord.FromString(data))
        upgraded.schema_version = message.schema_version
        return upgraded
    return message


def from_legacy(old: records_pb2.LegacyShareRecord) -> records_pb2.ShareRecord:
    """The share record of schema 4 that says what `old` said."""
    new = records_pb2.ShareRecord(
        project=old.project,
        allocated_gib=old.allocated_gib,
        export_id=old.export_id,
        pending_operations=old.pending_operations,
        trace_parent=old.trace_parent,
        schema_version=SPEC_STATUS,
    )
    spec, placement, status = new.spec, new.placement, new.status
    spec.share.CopyFrom(old.share)
    for field in _DERIVED:
        spec.share.ClearField(field)  # type: ignore[arg-type]
    if old.zone_chosen:  # the scheduler's choice, not the tenant's
        spec.share.ClearField("availability_zone")
    if old.backend:
        placement.backend, placement.pool = old.backend, old.pool
        placement.availability_zone = old.share.availability_zone
        placement.thick_provisioned = old.thick_provisioned
    placement.tried_pools.extend(old.tried_pools)
    status.realized_size_gib = old.realized_size_gib
    status.export_locations.extend(old.share.export_locations)
    status.host = old.host
    if old.HasField("gateway_access"):
        status.gateway_access.CopyFrom(old.gateway_access)
    status.update_time.CopyFrom(old.share.update_time)

    state, message = old.share.state, old.share.state_message
    spec.generation = 1
    if state == Share.CREATING:
        status.message = message  # why it waits for another pool, if it does
    elif state == Share.ERROR and not old.backend:
        placement.failure = message or "no pool can hold the share"
    elif state == Share.ERROR:
        status.state, status.message, status.observed_generation = Share.ERROR, message, 1
    else:  # ACTIVE, or ACTIVE before a change still in progress (UPDATING, DELETING)
        status.state, status.observed_generation = Share.ACTIVE, 1
        status.message = message if state == Share.ACTIVE else ""
        if state != Share.ACTIVE:
            spec.generation = 2
            spec.revert_to = old.revert_to
            spec.delete_requested = old.delete_requested
            spec.force_delete = old.force_delete
        if not old.realized_size_gib:  # a create being deleted: never made
            status.state, status.observed_generation = Share.STATE_UNSPECIFIED, 0
    return new
