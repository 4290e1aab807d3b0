"""What every public servicer shares: the caller, records, and nudges."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.longrunning import operations_pb2
from google.protobuf.message import Message

from sharemesh.runtime import names, operations
from sharemesh.runtime.config import QuotaConfig
from sharemesh.runtime.coordination import Store, Txn, Versioned
from sharemesh.runtime.errors import Aborted, NotFound
from sharemesh.runtime.peers import Peers
from sharemesh.state.v1 import records_pb2

from ._auth import Authenticator, Caller
from ._mutations import Recorder, Write

M = TypeVar("M", bound=Message)


def check_etag(etag: str, found: Versioned, field: str) -> None:  # type: ignore[type-arg]
    """An etag, when given, must match the record's current revision (AIP-154)."""
    if etag and etag != str(found.mod_revision):
        raise Aborted(
            f"{field} is stale: the resource changed since it was read", reason="ETAG_MISMATCH"
        )


class Base:
    def __init__(
        self, store: Store, peers: Peers, auth: Authenticator, quotas: QuotaConfig | None = None
    ) -> None:
        self.store = store
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

    def queue(
        self,
        txn: Txn,
        found: Versioned,
        resource: Message,
        state: int,  # type: ignore[type-arg]
        op: records_pb2.OperationRecord,
        detail: str,
    ) -> None:
        """Puts `resource` (the record's Share or AccessRule) into `state` and makes `op`
        wait for the driver-host, in `txn`, compared with the record as it was read."""
        resource.state = state  # type: ignore[attr-defined]
        if "update_time" in resource.DESCRIPTOR.fields_by_name:
            resource.update_time.CopyFrom(operations.now())  # type: ignore[attr-defined]
        found.value.pending_operations.append(op.operation.name)
        operations.set_progress(op, detail, 10)
        txn.put(found.key, found.value, found.mod_revision)

    async def mutate(
        self, name: str, verb: str, request: Message, write: Write
    ) -> operations_pb2.Operation:
        """Records a mutation of `name` with its Operation and the request's id."""
        return await self.recorder.record(
            names.project_of(name), name, verb, request, request.request_id, write
        )  # type: ignore[attr-defined]

    async def nudge_backend(self, share: str) -> None:
        found = await self.store.get(self.store.key_of(share), records_pb2.ShareRecord)
        if found and found.value.backend:
            backend = found.value.backend
            self.peers.nudge(f"sync {share}", lambda: self.peers.sync_share(backend, share))
