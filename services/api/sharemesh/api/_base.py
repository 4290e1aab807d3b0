"""What every public servicer shares: the caller, what the caller may see of a
resource, records, and nudges."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.longrunning import operations_pb2
from google.protobuf.message import Message

from sharemesh.runtime import errors, names, operations, telemetry
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Store, Txn, Versioned
from sharemesh.runtime.errors import (
    AlreadyExists,
    BackendUnavailable,
    CapabilityUnsupported,
    EtagMismatch,
    NotFound,
)
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import (
    access_rule_pb2,
    operation_metadata_pb2,
    share_network_pb2,
    share_pb2,
    snapshot_pb2,
)

from ._auth import Authenticator, Caller
from ._cache import WatchCache, decode
from ._mutations import Recorder, Write

M = TypeVar("M", bound=Message)

# Fields the protos mark "shown to admins only", by message.
_ADMIN_ONLY: dict[str, tuple[str, ...]] = {share_pb2.Share.DESCRIPTOR.full_name: ("pool",)}
# What an Operation's response may hold: each is shown as when it is read directly.
_RESOURCES: tuple[type[Message], ...] = (
    share_pb2.Share,
    access_rule_pb2.AccessRule,
    share_network_pb2.ShareNetwork,
    share_network_pb2.Attachment,
    snapshot_pb2.Snapshot,
)


def view(caller: Caller, resource: M, revision: int = 0) -> M:
    """`resource` as `caller` may read it: with its etag (its record's revision) unless it
    has one, and for a tenant without admin-only fields, and without host paths or keys
    in its `state_message`. Every resource the api returns passes through here."""
    shown = type(resource)()
    shown.CopyFrom(resource)
    fields = shown.DESCRIPTOR.fields_by_name
    if revision and "etag" in fields and not shown.etag:  # type: ignore[attr-defined]
        shown.etag = str(revision)  # type: ignore[attr-defined]
    if not caller.admin:
        for field in _ADMIN_ONLY.get(shown.DESCRIPTOR.full_name, ()):
            shown.ClearField(field)
        if "state_message" in fields:
            shown.state_message = errors.redact(shown.state_message)  # type: ignore[attr-defined]
    return shown


def operation_view(
    caller: Caller, operation: operations_pb2.Operation, revision: int = 0
) -> operations_pb2.Operation:
    """`operation` as `caller` may read it: its response as `view` shows it, and for a
    tenant an error and progress without host paths or keys. Whoever finishes an
    operation writes it in the transaction that writes its resource, so the revision of
    a done operation's record (`revision`) is the etag of the resource in its response."""
    shown = operations_pb2.Operation()
    shown.CopyFrom(operation)
    for kind in _RESOURCES:
        if shown.HasField("response") and shown.response.Is(kind.DESCRIPTOR):
            resource = kind()
            shown.response.Unpack(resource)
            shown.response.Pack(view(caller, resource, revision if shown.done else 0))
    if caller.admin:
        return shown
    metadata = operation_metadata_pb2.OperationMetadata()
    if shown.metadata.Unpack(metadata):
        metadata.status_detail = errors.redact(metadata.status_detail)
        shown.metadata.Pack(metadata)
    if shown.HasField("error"):
        # The services that fail an operation log the detail under its target's name.
        reference = metadata.target or shown.name
        shown.error.CopyFrom(errors.public_status(shown.error, reference))
    return shown


def check_etag(etag: str, found: Versioned, field: str) -> None:  # type: ignore[type-arg]
    """An etag, when given, must match the record's current revision (AIP-154)."""
    if etag and etag != str(found.mod_revision):
        raise EtagMismatch(f"{field} is stale: the resource changed since it was read")


class Base:
    def __init__(
        self,
        store: Store,
        peers: Peers,
        auth: Authenticator,
        cache: WatchCache,
        quotas: QuotaConfig | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.quotas = quotas or QuotaConfig()
        self.peers = peers
        self.auth = auth
        self.recorder = Recorder(store)

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return self.auth.caller(context)

    async def record(
        self, pattern: names.Pattern, name: str, field: str, record_type: type[M]
    ) -> Versioned[M]:
        """The record a resource name points at, or NOT_FOUND."""
        pattern.parse(field, name)
        found = await self.store.get(self.store.key_of(name), record_type)
        if found is None:
            raise NotFound(f"{name} not found")
        return found

    async def share_record(self, name: str, field: str) -> Versioned[records_pb2.ShareRecord]:
        return await self.record(names.SHARE, name, field, records_pb2.ShareRecord)

    async def rule_records(self, share: str) -> list[Versioned[records_pb2.AccessRuleRecord]]:
        found, _ = await self.store.list_all(
            self.store.prefix_of(share, "accessRules"), records_pb2.AccessRuleRecord
        )
        return found

    async def snapshot_record(self, name: str, field: str) -> Versioned[records_pb2.SnapshotRecord]:
        return await self.record(names.SNAPSHOT, name, field, records_pb2.SnapshotRecord)

    async def snapshot_records(self, share: str) -> list[Versioned[records_pb2.SnapshotRecord]]:
        found, _ = await self.store.list_all(
            self.store.prefix_of(share, "snapshots"), records_pb2.SnapshotRecord
        )
        return found

    async def pool_capacity(self, record: records_pb2.ShareRecord) -> records_pb2.PoolCapacity:
        """The share's pool as its backend registered it; UNAVAILABLE while it is away."""
        backend = await self.peers.backend(record.placement.backend)
        for pool in backend.pools if backend else ():
            if pool.name == record.placement.pool:
                return pool
        # Which pool it is is for admins (Share.pool is theirs): the message names none.
        raise BackendUnavailable("the share's backend is not reachable now; retry later")

    async def require_capability(
        self, record: records_pb2.ShareRecord, capability: str, action: str
    ) -> None:
        """FAILED_PRECONDITION naming `capability` unless the share's pool offers it."""
        pool = await self.pool_capacity(record)
        if pool.capabilities.get(capability, "false") != "true":
            raise CapabilityUnsupported(
                capability, f"{action}: the share's backend does not offer {capability}"
            )

    def queue(
        self,
        txn: Txn,
        found: Versioned,
        resource: Message,
        state: int,  # type: ignore[type-arg]
        op: records_pb2.OperationRecord,
        detail: str,
    ) -> None:
        """Puts `resource` (the record's ShareNetwork or Attachment) into `state` and
        makes `op` wait, as `wait_on` does. Shares and access rules move through their
        lifecycle (sharemesh.runtime.lifecycle) instead."""
        resource.state = state  # type: ignore[attr-defined]
        if "update_time" in resource.DESCRIPTOR.fields_by_name:
            resource.update_time.CopyFrom(operations.now())  # type: ignore[attr-defined]
        self.wait_on(txn, found, op, detail)

    def wait_on(
        self,
        txn: Txn,
        found: Versioned,  # type: ignore[type-arg]
        op: records_pb2.OperationRecord,
        detail: str,
    ) -> None:
        """Makes `op` wait for the service that acts on the record (already moved to its
        new state), in `txn`, compared with the record as it was read."""
        found.value.pending_operations.append(op.operation.name)
        if "trace_parent" in found.value.DESCRIPTOR.fields_by_name:
            found.value.trace_parent = telemetry.traceparent()
        operations.set_progress(op, detail, 10)
        txn.put(found.key, found.value, found.mod_revision)

    async def mutate(
        self, caller: Caller, name: str, verb: str, request: Message, write: Write
    ) -> operations_pb2.Operation:
        """Records a mutation of `name` with its Operation and the request's id; the
        Operation as `caller` may see it."""
        try:
            op = await self.recorder.record(
                names.project_of(name),
                name,
                verb,
                request,
                request.request_id,  # type: ignore[attr-defined]
                write,
            )
        except AlreadyExists as taken:
            if taken.metadata.get("key") != self.store.key_of(name):
                raise
            raise AlreadyExists(f"{name} already exists") from None
        if not op.done:
            return operation_view(caller, op)
        # Done at once, or a replay: its record's revision is its response's etag.
        found = await self.store.get(self.store.key_of(op.name), records_pb2.OperationRecord)
        return operation_view(caller, op, found.mod_revision if found else 0)

    async def nudge_backend(self, share: str) -> None:
        """Nudges the share's driver-host (its watch would find the change anyway). The
        backend is looked up in the watch cache: a share the cache does not hold yet is
        read from etcd; one it holds as it was before a re-placement nudges the old
        backend, to no harm."""
        key = self.store.key_of(share)
        entry = self.cache.snapshot.get(key) if self.cache.ready else None
        if entry is not None:
            found: Versioned[records_pb2.ShareRecord] | None = decode(
                key, entry, records_pb2.ShareRecord
            )
        else:
            found = await self.store.get(key, records_pb2.ShareRecord)
        if found and found.value.placement.backend:
            backend = found.value.placement.backend
            self.peers.nudge(f"sync {share}", lambda: self.peers.sync_share(backend, share))
