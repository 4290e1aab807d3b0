"""Recording a mutation: the intent, its Operation and its request id in one etcd
transaction, so a retry with the same request id returns the same Operation and the
change is made once (AIP-155)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from google.longrunning import operations_pb2
from google.protobuf import message

from sharemesh.runtime import operations
from sharemesh.runtime.coordination import Store, Txn, keys
from sharemesh.runtime.errors import Aborted, AlreadyExists, InvalidArgument
from sharemesh.state.v1 import records_pb2

Write = Callable[[Txn, records_pb2.OperationRecord], Awaitable[None]]

_ATTEMPTS = 24


class Recorder:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(
        self,
        project: str,
        target: str,
        verb: str,
        request: message.Message,
        request_id: str,
        write: Write,
    ) -> operations_pb2.Operation:
        """Runs `write(txn, op)` (which reads what it needs and adds its records) and
        commits it with the Operation; a lost race re-runs it on fresh reads."""
        fingerprint = operations.request_hash(request)
        rid_key = self._request_id_key(project, request_id)
        for attempt in range(_ATTEMPTS):
            if rid_key and (replayed := await self._replay(rid_key, fingerprint)):
                return replayed
            op = operations.new(project, target, verb, request_id, fingerprint)
            txn = self._store.txn()
            if rid_key:
                txn.create(
                    rid_key,
                    records_pb2.RequestIdRecord(
                        operation=op.operation.name, request_hash=fingerprint
                    ),
                )
            await write(txn, op)
            txn.create(self._store.key_of(op.operation.name), op)
            try:
                await txn.commit()
                return op.operation
            except AlreadyExists as race:
                if race.metadata.get("key") != rid_key:
                    raise
            except Aborted:
                # Many writers of one counter (a quota, a share's record) at once: spread
                # the retries so each round has a winner.
                await asyncio.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
                continue
        raise Aborted(f"{target} is changing too fast; try again")

    async def _replay(self, rid_key: str, fingerprint: str) -> operations_pb2.Operation | None:
        seen = await self._store.get(rid_key, records_pb2.RequestIdRecord)
        if seen is None:
            return None
        if seen.value.request_hash != fingerprint:
            raise InvalidArgument("request_id", "was already used for a different request")
        op = await self._store.get(
            self._store.key_of(seen.value.operation), records_pb2.OperationRecord
        )
        if op is None:
            raise InvalidArgument("request_id", "belongs to an operation that has expired")
        return op.value.operation

    def _request_id_key(self, project: str, request_id: str) -> str:
        if not request_id:
            return ""
        if len(request_id) > 128 or not request_id.isprintable() or "/" in request_id:
            raise InvalidArgument(
                "request_id",
                "must be at most 128 printable characters without '/' (a UUID is recommended)",
            )
        return keys.request_id_key(self._store.root, project or "-", request_id)
