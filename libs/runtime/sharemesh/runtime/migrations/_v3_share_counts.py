"""Schema 3: a project's usage record counts its shares.

The quota's share limit and GetQuota read the count of a project's shares that hold a
place from its usage record (`ProjectUsage.shares`), which placements and deletes keep
in the transactions that change its GiB. A record written before has no count: this
step counts the project's shares once. Any change of that count writes the record too,
so the record's revision, compared here, says the count is still true at commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.protobuf.message import Message

from sharemesh.runtime import quota
from sharemesh.runtime.coordination import Store, Txn, Versioned, keys
from sharemesh.state.v1 import records_pb2

VERSION = quota.SHARES_COUNTED
PREFIX = "usage/"


def project_of(store: Store, key: str) -> str:
    project = key[len(store.root + PREFIX) :]
    keys.check_segment(project, "project")
    return project


async def count_shares(store: Store, txn: Txn, page: Sequence[Versioned[Message]]) -> int:
    """Counts the shares of each project of the page whose usage record is older than
    schema 3 and brings the record to 3, compared with its revision as read.
    Idempotent: a record at 3 is left alone (it is counted, and kept counted)."""
    older = [
        found
        for found in page
        if isinstance(found.value, records_pb2.ProjectUsage)
        and found.value.schema_version < VERSION
    ]
    counts = await asyncio.gather(
        *(quota.count_shares(store, project_of(store, found.key)) for found in older)
    )
    for found, count in zip(older, counts):
        record = found.value
        assert isinstance(record, records_pb2.ProjectUsage)
        record.shares = count
        record.schema_version = VERSION
        txn.put(found.key, record, found.mod_revision)
    return len(older)
