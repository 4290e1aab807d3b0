"""Long-running operations (AIP-151): records kept in etcd, completed by whichever
service finishes the work, in the same transaction as the resource they change."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping

from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, message, timestamp_pb2

from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import operation_metadata_pb2

from . import names
from .coordination import Store, Txn, Versioned, keys
from .errors import Aborted, to_status

API_VERSION = "v1"


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def request_hash(request: message.Message) -> str:
    """Fingerprint of a request, so a reused request_id with another body is refused."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def new(
    project: str, target: str, verb: str, request_id: str = "", fingerprint: str = ""
) -> records_pb2.OperationRecord:
    name = names.OPERATION.format(project=project, operation=f"op-{uuid.uuid4().hex}")
    metadata = operation_metadata_pb2.OperationMetadata(
        create_time=now(),
        target=target,
        verb=verb,
        api_version=API_VERSION,
        request_id=request_id,
        status_detail="queued",
    )
    op = operations_pb2.Operation(name=name, done=False)
    op.metadata.Pack(metadata)
    return records_pb2.OperationRecord(
        operation=op, project=project, request_id=request_id, request_hash=fingerprint
    )


def metadata_of(record: records_pb2.OperationRecord) -> operation_metadata_pb2.OperationMetadata:
    metadata = operation_metadata_pb2.OperationMetadata()
    record.operation.metadata.Unpack(metadata)
    return metadata


def set_progress(record: records_pb2.OperationRecord, detail: str, percent: int) -> None:
    metadata = metadata_of(record)
    metadata.status_detail = detail
    metadata.progress_percent = percent
    record.operation.metadata.Pack(metadata)


def finish(
    record: records_pb2.OperationRecord,
    *,
    response: message.Message | None = None,
    error: BaseException | None = None,
) -> None:
    """Marks the operation done with its response or error; a done one is left as it is."""
    if record.operation.done:
        return
    metadata = metadata_of(record)
    metadata.end_time.CopyFrom(now())
    metadata.progress_percent = 100
    metadata.status_detail = "failed" if error else "done"
    record.operation.metadata.Pack(metadata)
    record.operation.done = True
    if error is not None:
        record.operation.error.CopyFrom(to_status(error))
    else:
        packed = any_pb2.Any()
        packed.Pack(response if response is not None else empty_pb2.Empty())
        record.operation.response.CopyFrom(packed)


Read = Mapping[str, "Versioned[records_pb2.OperationRecord] | None"]
"""Operation records read beforehand (with a share's lock), by key; None: absent."""


async def finish_pending(
    store: Store,
    txn: Txn,
    pending: Iterable[str],
    *,
    response: message.Message | None = None,
    error: BaseException | None = None,
    read: Read | None = None,
) -> None:
    """Adds to `txn` the completion of each pending operation, so operations finish in
    the same transaction as the change they report. One in `read` is not read again:
    the write compares it as read."""
    for name in pending:
        key = store.key_of(name)
        if read is not None and key in read:
            found = read[key]
        else:
            found = await store.get(key, records_pb2.OperationRecord)
        if found is not None and not found.value.operation.done:
            finish(found.value, response=response, error=error)
            txn.put(found.key, found.value, found.mod_revision)


async def expire(
    store: Store,
    retention_seconds: float,
    fence: object,
    finished: Iterable[Versioned[records_pb2.OperationRecord]],
) -> int:
    """Deletes the `finished` operations older than the retention period, with their
    request ids (a retry after that is a new request). Returns how many went. The
    caller keeps `finished` from a watch: no range over every operation per round."""
    cutoff = now().ToSeconds() - retention_seconds
    expired = 0
    for found in finished:
        record = found.value
        if not record.operation.done or metadata_of(record).end_time.ToSeconds() > cutoff:
            continue
        txn = store.txn().fence(fence).delete(found.key, found.mod_revision)
        if record.request_id:
            rid = keys.request_id_key(store.root, record.project or "-", record.request_id)
            rid_found = await store.get(rid, records_pb2.RequestIdRecord)
            if rid_found is not None and rid_found.value.operation == record.operation.name:
                txn.delete(rid, rid_found.mod_revision)
        try:
            await txn.commit()
            expired += 1
        except Aborted:
            continue  # it changed meanwhile; the next round looks again
    return expired


async def finish_for_deleted(store: Store, txn: Txn, pending: Iterable[str]) -> None:
    """A resource is gone: its delete operations succeed, and anything else that waited
    on it (a create, a resize, a rule change) fails, rather than seeming done."""
    gone = Aborted(
        "the resource was deleted before this change finished", reason="RESOURCE_DELETED"
    )
    for name in pending:
        found = await store.get(store.key_of(name), records_pb2.OperationRecord)
        if found is None or found.value.operation.done:
            continue
        if metadata_of(found.value).verb == "delete":
            finish(found.value)
        else:
            finish(found.value, error=gone)
        txn.put(found.key, found.value, found.mod_revision)
