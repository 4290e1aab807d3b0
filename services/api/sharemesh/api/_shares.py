"""Share methods of `sharemesh.v1.ShareService`: validate, authorize, record the intent
with its Operation, and nudge the service that acts (DESIGN §2)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from sharemesh.runtime import (
    capacity,
    ledger,
    lifecycle,
    names,
    operations,
    quota,
    telemetry,
    validation,
)
from sharemesh.runtime.coordination import Txn, Versioned
from sharemesh.runtime.errors import (
    Aborted,
    CapabilityUnsupported,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PoolFull,
    ShareNotActive,
)
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import share_pb2, share_service_pb2, snapshot_pb2

from . import _paging, _share_types
from ._auth import Caller
from ._base import Base, check_etag, view
from ._snapshots import cloning

Share = share_pb2.Share
MAX_SHARE_GIB = 16 * 1024
DEFAULT_SHARE_TYPE = _share_types.DEFAULT
_STATE_FILTER = re.compile(r"^\s*state\s*=\s*\"?([A-Z_]+)\"?\s*$")


def share_view(caller: Caller, found: Versioned[records_pb2.ShareRecord]) -> Share:
    return view(caller, lifecycle.share.public(found.value), found.mod_revision)


def _plainly_deletable(
    read: tuple[Versioned[records_pb2.ShareRecord] | None, list[list[Versioned[Any]]]],
    etag: str,
) -> bool:
    """The share is there, without snapshots, and at the etag if one is given."""
    found, (snapshots,) = read
    return found is not None and not snapshots and etag in ("", str(found.mod_revision))


def _check_in_project(name: str, project: str, field: str) -> None:
    """A share refers to resources of its own project only. Another project's answers
    NOT_FOUND whether or not it exists, so a reference reveals nothing about it."""
    if names.project_of(name) != project:
        raise NotFound(
            f"{name} not found in project {project}",
            field_violations=[(field, f"no such resource in project {project}")],
        )


def _check_size(size_gib: int, field: str) -> None:
    if not 0 < size_gib <= MAX_SHARE_GIB:
        raise InvalidArgument(field, f"must be between 1 and {MAX_SHARE_GIB} GiB")


class Shares(Base):
    async def GetShare(  # noqa: N802
        self, request: share_service_pb2.GetShareRequest, context: grpc.aio.ServicerContext
    ) -> share_pb2.Share:
        validation.check_request(request)
        caller = self.caller(context)
        caller.check_resource(request.name)
        return share_view(caller, await self.share_record(request.name, "name"))

    async def ListShares(  # noqa: N802
        self, request: share_service_pb2.ListSharesRequest, context: grpc.aio.ServicerContext
    ) -> share_service_pb2.ListSharesResponse:
        validation.check_request(request)
        project = names.PROJECT.parse("parent", request.parent)["project"]
        caller = self.caller(context)
        caller.check_parent(project)
        if request.order_by not in ("", "name"):
            raise InvalidArgument("order_by", "shares list in name order only (`name`)")
        wanted = None
        if request.filter:
            match = _STATE_FILTER.match(request.filter)
            if not match or match.group(1) not in Share.State.keys():
                raise InvalidArgument(
                    "filter", "only `state=STATE` is supported, e.g. state=ACTIVE"
                )
            wanted = Share.State.Value(match.group(1))
        items, token = await _paging.page(
            self.store,
            self.store.prefix_of(request.parent, "shares"),
            records_pb2.ShareRecord,
            request.page_token,
            request.page_size,
            scope=request.filter,  # shares list in name order only
            cache=self.cache,
        )
        response = share_service_pb2.ListSharesResponse(
            shares=[
                share_view(caller, i)
                for i in items
                if wanted is None or lifecycle.share.state(i.value) == wanted
            ],
            next_page_token=token,
        )
        return response

    async def CreateShare(  # noqa: N802
        self, request: share_service_pb2.CreateShareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request, "share")
        project = names.PROJECT.parse("parent", request.parent)["project"]
        caller = self.caller(context)
        caller.check_parent(project)
        names.check_id("share_id", request.share_id)
        share = Share()
        share.CopyFrom(request.share)
        if share.protocol not in (Share.PROTOCOL_UNSPECIFIED, Share.NFS):
            raise InvalidArgument("share.protocol", "only NFS is supported")
        if share.share_network:
            names.SHARE_NETWORK.parse("share.share_network", share.share_network)
            _check_in_project(share.share_network, project, "share.share_network")
        if share.source_snapshot:
            await self._from_snapshot(share, project)
        _check_size(share.size_gib, "share.size_gib")
        share_type = share.share_type or DEFAULT_SHARE_TYPE
        name = names.SHARE.format(project=project, share=request.share_id)
        # Asked together, the reads go to etcd as one. The default type always exists,
        # and a project without a limit has no quota to look at: no reads for those.
        checks: list[Awaitable[object]] = []
        if share_type != DEFAULT_SHARE_TYPE:
            checks.append(_share_types.share_type(self.store, share_type, "share.share_type"))
        if self.quotas.limit_gib(project):
            checks.append(self._first_look_at_quota(project, share.size_gib))
        await asyncio.gather(*checks)

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            record = records_pb2.ShareRecord(
                project=project, pending_operations=[op.operation.name]
            )
            record.spec.share.CopyFrom(share)
            record.spec.share.name = name
            record.spec.share.uid = uuid.uuid4().hex
            record.spec.share.protocol = Share.NFS
            record.spec.share.share_type = share_type
            lifecycle.share.requested(record)
            record.trace_parent = telemetry.traceparent()
            operations.set_progress(op, "waiting for placement", 5)
            txn.create(self.store.key_of(name), record)
            if share.source_snapshot:
                # Written, so a delete of the snapshot and this create conflict; the
                # snapshot cannot go while the share is being made from it.
                source = await self._usable_snapshot(share.source_snapshot)
                source.value.clones.append(name)
                txn.put(source.key, source.value, source.mod_revision)
            if share.share_network:
                # Written, not just compared, so a concurrent delete of the network and
                # this create conflict whichever commits first.
                network = await self._usable_network(share.share_network, project)
                txn.put(network.key, network.value, network.mod_revision)

        op = await self.mutate(caller, name, "create", request, write)
        self.peers.nudge(f"place {name}", lambda: self.peers.place_share(name))
        return op

    async def _first_look_at_quota(self, project: str, size_gib: int) -> None:
        """A first look, for a clear answer now; the scheduler reserves the quota for
        real. Usage counts placed shares only, so shares waiting for placement are added."""
        used, unplaced = await asyncio.gather(
            quota.used_gib(self.store, project), self.cache.unplaced_gib(project)
        )
        quota.check(self.quotas, project, used + unplaced, size_gib)

    async def _usable_snapshot(self, name: str) -> Versioned[records_pb2.SnapshotRecord]:
        found = await self.snapshot_record(name, "share.source_snapshot")
        if found.value.snapshot.state != snapshot_pb2.Snapshot.READY:
            state = snapshot_pb2.Snapshot.State.Name(found.value.snapshot.state)
            raise FailedPrecondition(
                f"{name} is {state}; shares are made from READY snapshots",
                reason="SNAPSHOT_NOT_READY",
            )
        return found

    async def _from_snapshot(self, share: Share, project: str) -> None:
        """A share made from a snapshot: of at least the snapshot's size (its size by
        default), and of the source share's type unless it names one. It lands on the
        source's pool (the scheduler pins it there), which must offer the clone."""
        names.SNAPSHOT.parse("share.source_snapshot", share.source_snapshot)
        _check_in_project(share.source_snapshot, project, "share.source_snapshot")
        snapshot = (await self._usable_snapshot(share.source_snapshot)).value.snapshot
        if share.size_gib == 0:
            share.size_gib = snapshot.size_gib
        elif share.size_gib < snapshot.size_gib:
            raise InvalidArgument(
                "share.size_gib",
                f"must be at least the snapshot's size, {snapshot.size_gib} GiB",
            )
        source = await self.share_record(
            share.source_snapshot.rsplit("/snapshots/", 1)[0], "share.source_snapshot"
        )
        if not share.share_type:
            share.share_type = source.value.spec.share.share_type
        await self.require_capability(
            source.value,
            "create_share_from_snapshot_support",
            "cannot create a share from this snapshot",
        )

    async def _usable_network(
        self, name: str, project: str
    ) -> Versioned[records_pb2.ShareNetworkRecord]:
        network = await self.record(
            names.SHARE_NETWORK, name, "share.share_network", records_pb2.ShareNetworkRecord
        )
        if network.value.delete_requested:
            raise FailedPrecondition(
                f"{name} is being deleted and takes no new shares",
                reason="SHARE_NETWORK_UNUSABLE",
            )
        return network

    async def UpdateShare(  # noqa: N802
        self, request: share_service_pb2.UpdateShareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request, "share", update=True)
        name = request.share.name
        names.SHARE.parse("share.name", name)
        caller = self.caller(context)
        caller.check_resource(name)
        paths = validation.check_update_mask(Share.DESCRIPTOR, request.update_mask)
        if "size_gib" in paths:
            raise InvalidArgument("update_mask", "size_gib changes through ResizeShare")

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share_record(name, "share.name")
            check_etag(request.share.etag, found, "share.etag")
            record = found.value
            if "labels" in paths:
                record.spec.share.labels.clear()
                record.spec.share.labels.update(request.share.labels)
            record.spec.share.update_time.CopyFrom(operations.now())
            txn.put(found.key, record, found.mod_revision)
            operations.finish(op, response=lifecycle.share.public(record))

        return await self.mutate(caller, name, "update", request, write)

    async def DeleteShare(  # noqa: N802
        self, request: share_service_pb2.DeleteShareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        names.SHARE.parse("name", request.name)
        caller = self.caller(context)
        caller.check_resource(request.name)
        unplaced = False
        key, record_type = self.store.key_of(request.name), records_pb2.ShareRecord
        children = [(self.store.prefix_of(request.name, "snapshots"), records_pb2.SnapshotRecord)]
        cached = True  # the first try reads the watch cache; a lost race reads etcd

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            nonlocal unplaced, cached
            # The share and its snapshots at one revision. The first try takes the watch
            # cache's when it shows the share plainly deletable: the write compares the
            # share as read, and a snapshot made meanwhile changed it. A refusal, or a
            # lost race, is decided on etcd's.
            read = await self.cache.get_with(key, record_type, children) if cached else None
            cached = False
            if read is None or not _plainly_deletable(read, request.etag):
                read = await self.store.get_with(key, record_type, children)
            found, (snapshots,) = read
            if found is None:
                raise NotFound(f"{request.name} not found")
            check_etag(request.etag, found, "etag")
            record = found.value
            unplaced = not record.placement.backend
            if snapshots and not request.force:
                shown = [s.value.snapshot.name for s in snapshots]
                raise FailedPrecondition(
                    f"the share has {len(shown)} snapshot(s): {', '.join(shown[:5])}; "
                    "delete them first, or delete the share with force",
                    reason="SHARE_HAS_SNAPSHOTS",
                )
            for snapshot in snapshots:  # forced: they go first, on the backend too
                if busy := await cloning(self, snapshot.value):
                    raise FailedPrecondition(
                        f"shares are being created from {snapshot.value.snapshot.name}: "
                        f"{', '.join(busy[:5])}; delete the share after",
                        reason="SNAPSHOT_IN_USE",
                    )
                if not snapshot.value.delete_requested:
                    lifecycle.snapshot.delete_requested(snapshot.value)
                    txn.put(snapshot.key, snapshot.value, snapshot.mod_revision)
            if unplaced:
                # Nothing exists on any backend: the record and its rules just go.
                txn.delete(found.key, found.mod_revision)
                for rule in await self.rule_records(request.name):
                    txn.delete(rule.key, rule.mod_revision)
                    await operations.finish_for_deleted(
                        self.store, txn, rule.value.pending_operations
                    )
                await operations.finish_for_deleted(self.store, txn, record.pending_operations)
                operations.finish(op, response=empty_pb2.Empty())
                return
            lifecycle.share.delete_requested(record, request.force)
            self.wait_on(txn, found, op, "deleting on the backend")

        op = await self.mutate(caller, request.name, "delete", request, write)
        if not unplaced:
            await self.nudge_backend(request.name)
        return op

    async def ResizeShare(  # noqa: N802
        self, request: share_service_pb2.ResizeShareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        names.SHARE.parse("name", request.name)
        caller = self.caller(context)
        caller.check_resource(request.name)
        _check_size(request.size_gib, "size_gib")

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share_record(request.name, "name")
            record = found.value
            if (state := lifecycle.share.state(record)) != Share.ACTIVE:
                raise ShareNotActive(
                    f"the share is {Share.State.Name(state)}; only an ACTIVE share can be resized"
                )
            delta = request.size_gib - lifecycle.share.size_of(record)
            taking = [
                s.value.snapshot.name
                for s in await self.snapshot_records(request.name)
                if s.value.snapshot.state == snapshot_pb2.Snapshot.CREATING
            ]
            if delta and taking:
                # The snapshot is counted at the size the share had when it was asked.
                raise FailedPrecondition(
                    f"a snapshot of the share is being taken ({taking[0]}); resize it after",
                    reason="SNAPSHOT_IN_USE",
                )
            if delta == 0:
                # The share is not written, so the operation's revision is not its etag.
                share = lifecycle.share.public(record)
                share.etag = str(found.mod_revision)
                operations.finish(op, response=share)
                return
            pool = await self.pool_capacity(record)
            if delta < 0 and pool.capabilities.get("shrink_support", "false") != "true":
                raise CapabilityUnsupported(
                    "shrink_support",
                    f"pool {record.placement.pool} cannot shrink shares "
                    "(capability shrink_support is false)",
                )
            allocation = await ledger.read_pool(self.store, record.placement.pool)
            allocated = allocation.value
            limit = capacity.limit_gib(
                pool.total_gib, pool.capabilities, thin=not record.placement.thick_provisioned
            )
            if delta > 0 and allocated + delta > limit:
                raise PoolFull(
                    f"pool {record.placement.pool} may allocate {limit:g} GiB and has {allocated}; "
                    f"growing by {delta} GiB does not fit"
                )
            used = await quota.adjust(self.store, txn, record.project, delta)
            if delta > 0:
                quota.check(self.quotas, record.project, used - delta, delta)
            allocation.add(txn, delta)
            record.allocated_gib += lifecycle.share.resize_requested(record, request.size_gib)
            self.wait_on(txn, found, op, f"resizing to {request.size_gib} GiB")

        op = await self.mutate(caller, request.name, "resize", request, write)
        if not op.done:
            await self.nudge_backend(request.name)
        return op

    async def ResetShareState(  # noqa: N802
        self, request: share_service_pb2.ResetShareStateRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        validation.check_request(request)
        names.SHARE.parse("name", request.name)
        caller = self.caller(context)
        caller.check_admin()
        if request.state not in (Share.ACTIVE, Share.ERROR):
            raise InvalidArgument("state", "must be ACTIVE or ERROR")
        wanted = Share.State.Name(request.state)

        async def write(txn: Txn, op: records_pb2.OperationRecord) -> None:
            found = await self.share_record(request.name, "name")
            record = found.value
            lifecycle.share.reset(record, request.state)  # ACTIVE: made true again
            # Whatever waited on the share waits no more; a reset share is not deleting.
            stopped = Aborted(f"{request.name} was reset to {wanted} by an administrator")
            pending = list(record.pending_operations)
            del record.pending_operations[:]
            await operations.finish_pending(self.store, txn, pending, error=stopped)
            if request.state == Share.ACTIVE:
                self.wait_on(txn, found, op, "making it true again")
                return
            for rule in await self.rule_records(request.name):
                if rule.value.pending_operations:
                    await operations.finish_pending(
                        self.store, txn, rule.value.pending_operations, error=stopped
                    )
                    del rule.value.pending_operations[:]
                    if not rule.value.delete_requested:
                        lifecycle.access_rule.failed(rule.value, stopped.message)
                    txn.put(rule.key, rule.value, rule.mod_revision)
            txn.put(found.key, record, found.mod_revision)
            operations.finish(op, response=lifecycle.share.public(record))

        op = await self.mutate(caller, request.name, "reset", request, write)
        if not op.done:
            await self.nudge_backend(request.name)
        return op
