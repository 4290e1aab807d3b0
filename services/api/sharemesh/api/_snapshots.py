"""Snapshot methods of `sharemesh.v1.ShareService`, and the revert of a share to its
latest snapshot. The share's driver-host takes, exports, reverts to and deletes them
under the share's lock, so every change here is a nudge to sync the share; the rules
Manila has (no delete of a share with snapshots without `force`, a revert only to the
latest, what the backend offers) are checked here, in the transaction that records
the intent."""

from __future__ import annotations

import re
import uuid

import grpc
from google.longrunning import operations_pb2

from sharemesh.runtime import lifecycle, names, operations, quota, telemetry, validation
from sharemesh.runtime.coordination import Txn, Versioned
from sharemesh.runtime.errors import FailedPrecondition, InvalidArgument, ShareNotActive
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, share_service_pb2, snapshot_pb2

from . import _paging
from ._auth import Caller
from ._base import Base, check_etag, view

Share = share_pb2.Share
Snapshot = snapshot_pb2.Snapshot
SnapshotRecord = records_pb2.SnapshotRecord
_STATE_FILTER = re.compile(r"^\s*state\s*=\s*\"?([A-Z_]+)\"?\s*$")
_SHOWN_NAMES = 5  # snapshots or shares named in one refusal


def snapshot_view(caller: Caller, found: Versioned[SnapshotRecord]) -> Snapshot:
    return view(caller, found.value.snapshot, found.mod_revision)


def share_of(snapshot: str) -> str:
    """`projects/p/shares/s/snapshots/x` -> `projects/p/shares/s`."""
    return snapshot.rsplit("/snapshots/", 1)[0]


def _listed(found: list[str]) -> str:
    more = len(found) - _SHOWN_NAMES
    return ", ".join(found[:_SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


def newer_than(
    snapshot: Versioned[SnapshotRecord], siblings: list[Versioned[SnapshotRecord]]
) -> list[str]:
    """The snapshots of the same share taken after `snapshot` (those being deleted do
    not count): a revert to it would lose them. Ordered by etcd's creation revision, not
    by the api processes' clocks, which may disagree."""
    return sorted(
        other.value.snapshot.name
        for other in siblings
        if not other.value.delete_requested and other.create_revision > snapshot.create_revision
    )


async def cloning(base: Base, record: SnapshotRecord) -> list[str]:
    """The shares still being created from the snapshot (its `clones` that exist and have
    not been made yet); a name that lingers after its share was made holds nothing."""
    busy = []
    for name in record.clones:
        found = await base.store.get(base.store.key_of(name), records_pb2.ShareRecord)
        if found is not None and lifecycle.share.state(found.value) == Share.CREATING:
            busy.append(name)
    return busy


class Snapshots(Base):
    async def GetSnapshot(  # noqa: N802
        self, request: share_service_pb2.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshot_pb2.Snapshot:
        validation.check_request(request)
        caller = self.caller(context)
        caller.check_resource(request.name)
        return snapshot_view(caller, await self.snapshot_record(request.name, "name"))

    async def ListSnapshots(  # noqa: N802
        self, request: share_service_pb2.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> share_service_pb2.ListSnapshotsResponse:
        validation.check_request(request)
        names.SHARE.parse("parent", request.parent)
        caller = self.caller(context)
        caller.check_resource(request.parent)
        if request.order_by not in ("", "name"):
            raise InvalidArgument("order_by", "snapshots list in name order only (`name`)")
        wanted = None
        if request.filter:
            match = _STATE_FILTER.match(request.filter)
            if not match or match.group(1) not in Snapshot.State.keys():
                raise InvalidArgument("filter", "only `state=STATE` is supported, e.g. state=READY")
            wanted = Snapshot.State.Value(match.group(1))
        await self.share_record(request.parent, "parent")
        items, token = await _paging.page(
            self.store,
            self.store.prefix_of(request.parent, "snapshots"),
            SnapshotRecord,
            request.page_token,
            request.page_size,
            scope=request.filter,
            cache=self.cache,
        )
        return share_service_pb2.ListSnapshotsResponse(
            snapshots=[
                snapshot_view(caller, i)
                for i in items
                if wanted is None or i.value.snapshot.state == wanted
            ],
            next_page_token=token,
        )

    async def CreateSnapshot(  # noqa: N802
        self, request: share_service_pb2.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request, "snapshot")
        parent = names.SHARE.parse("parent", request.parent)
        project = parent["project"]
        caller = self.caller(context)
        caller.check_resource(request.parent)
        names.check_id("snapshot_id", request.snapshot_id)
        name = names.SNAPSHOT.format(**parent, snapshot=request.snapshot_id)

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            share = await self.share_record(request.parent, "parent")
            if (now := lifecycle.share.state(share.value)) != Share.ACTIVE:
                shown = Share.State.Name(now)
                raise ShareNotActive(f"the share is {shown}; only an ACTIVE share is snapshotted")
            await self.require_capability(share.value, "snapshot_support", "cannot snapshot")
            size = lifecycle.share.size_of(share.value)
            await quota.reserve_snapshot(self.store, txn, self.quotas, project, size)
            record = SnapshotRecord(
                project=project,
                pending_operations=[op.operation.name],
                trace_parent=telemetry.traceparent(),
            )
            record.snapshot.CopyFrom(request.snapshot)
            record.snapshot.name = name
            record.snapshot.uid = uuid.uuid4().hex
            record.snapshot.ClearField("etag")
            lifecycle.snapshot.requested(record, size)
            operations.set_progress(op, "taking the snapshot", 10)
            txn.create(self.store.key_of(name), record)
            # The share is written, not just compared: a delete of the share or a revert
            # racing this snapshot conflicts with it, whichever commits first.
            txn.put(share.key, share.value, share.mod_revision)

        op = await self.mutate(caller, name, "create", request, write)
        await self.nudge_backend(request.parent)
        return op

    async def DeleteSnapshot(  # noqa: N802
        self, request: share_service_pb2.DeleteSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        names.SNAPSHOT.parse("name", request.name)
        caller = self.caller(context)
        caller.check_resource(request.name)

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.snapshot_record(request.name, "name")
            check_etag(request.etag, found, "etag")
            share = await self.share_record(share_of(request.name), "name")
            if lifecycle.share.pending_revert(share.value) == request.name:
                raise FailedPrecondition(
                    f"{share.value.spec.share.name} is being reverted to it; delete it after",
                    reason="SNAPSHOT_IN_USE",
                )
            if busy := await cloning(self, found.value):
                raise FailedPrecondition(
                    f"shares are being created from it: {_listed(busy)}; delete it after",
                    reason="SNAPSHOT_IN_USE",
                    metadata={"shares": ",".join(busy)},
                )
            # Compared, so a revert to this snapshot cannot slip in before this commits.
            txn.check(share.key, share.mod_revision)
            lifecycle.snapshot.delete_requested(found.value)
            self.wait_on(txn, found, op, "deleting on the backend")

        op = await self.mutate(caller, request.name, "delete", request, write)
        await self.nudge_backend(share_of(request.name))
        return op

    async def RevertShare(  # noqa: N802
        self, request: share_service_pb2.RevertShareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        names.SHARE.parse("name", request.name)
        names.SNAPSHOT.parse("snapshot", request.snapshot)
        caller = self.caller(context)
        caller.check_resource(request.name)
        if share_of(request.snapshot) != request.name:
            raise InvalidArgument("snapshot", f"must be a snapshot of {request.name}")

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share_record(request.name, "name")
            snapshot = await self.snapshot_record(request.snapshot, "snapshot")
            record = found.value
            if (now := lifecycle.share.state(record)) != Share.ACTIVE:
                shown = Share.State.Name(now)
                raise ShareNotActive(f"the share is {shown}; only an ACTIVE share is reverted")
            if snapshot.value.snapshot.state != Snapshot.READY:
                state = Snapshot.State.Name(snapshot.value.snapshot.state)
                raise FailedPrecondition(
                    f"{request.snapshot} is {state}; a share reverts to a READY snapshot",
                    reason="SNAPSHOT_NOT_READY",
                )
            if newer := newer_than(snapshot, await self.snapshot_records(request.name)):
                raise FailedPrecondition(
                    f"a share reverts only to its latest snapshot; {request.snapshot} has newer "
                    f"ones: {_listed(newer)} (delete them first)",
                    reason="SNAPSHOT_NOT_LATEST",
                    metadata={"newer": ",".join(newer)},
                )
            await self.require_capability(record, "revert_to_snapshot_support", "cannot revert")
            if record.spec.share.share_network:
                # Its gateway or share server would keep serving the filesystem the
                # revert replaces until their Ganesha restarts: refused until they follow.
                raise FailedPrecondition(
                    "a share on a share network cannot be reverted yet; make a share from "
                    "the snapshot instead",
                    reason="REVERT_TO_SNAPSHOT_NOT_SUPPORTED",
                    metadata={"capability": "revert_to_snapshot_support"},
                )
            # Compared, so the snapshot cannot be deleted meanwhile.
            txn.check(snapshot.key, snapshot.mod_revision)
            lifecycle.share.revert_requested(record, request.snapshot)
            self.wait_on(txn, found, op, f"reverting to {request.snapshot}")

        op = await self.mutate(caller, request.name, "revert", request, write)
        await self.nudge_backend(request.name)
        return op
