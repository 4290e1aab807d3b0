"""Schema 4: a share record keeps what is asked (spec), where the share is (placement)
and what is true (status) apart, each with one writer (records.proto).

A record written before kept the public Share with its state, and the placement and
progress beside it. Every process reads such a record in the new layout already, and
writes it back in it at schema 4 (`coordination._layouts`); this step rewrites those
nobody wrote since (schema 2's step rewrites every share it indexes)."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from sharemesh.runtime.coordination import Store, Txn, Versioned
from sharemesh.runtime.coordination._layouts import SPEC_STATUS
from sharemesh.state.v1 import records_pb2

VERSION = SPEC_STATUS


async def split_share_records(store: Store, txn: Txn, page: Sequence[Versioned[Message]]) -> int:
    """Writes the page's share records older than schema 4 back in the new layout (as
    they were read), each compared with its revision as read. Idempotent: a record at 4
    is left alone."""
    changed = 0
    for found in page:
        record = found.value
        if not isinstance(record, records_pb2.ShareRecord) or record.schema_version >= VERSION:
            continue
        record.schema_version = VERSION
        txn.put(found.key, record, found.mod_revision)
        changed += 1
    return changed
