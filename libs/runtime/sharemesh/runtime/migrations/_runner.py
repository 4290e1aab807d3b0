"""Runs the mesh's migrations in order, under leadership, one page per transaction.

Each page of a step is one transaction with the leader's fence, the records it changes
(each compared with its revision as read) and the mesh's `SchemaRecord`, which says
where the step has got to. So a page is done exactly once: a leader that dies between
pages is succeeded by one that resumes after the last committed page, one that lost
its leadership writes nothing, and a record changed meanwhile (the api, a driver-host)
only makes the page be read again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from sharemesh.runtime import retry
from sharemesh.runtime.coordination import Store, Txn, Versioned
from sharemesh.runtime.coordination import _client as etcd
from sharemesh.runtime.coordination._store import decode
from sharemesh.runtime.errors import Aborted, FencedOut, NotFound
from sharemesh.state.v1 import records_pb2

log = logging.getLogger(__name__)

SchemaRecord = records_pb2.SchemaRecord
# Records read and changed per transaction: etcd refuses a transaction of more than
# 128 operations (--max-txn-ops), and a step may write a few keys per record.
PAGE = 40
# How often a service waiting for the mesh's schema looks again.
POLL_SECONDS = 0.5

# A step's work on one page: add to `txn` what the records need (each write compared
# with the record's revision) and return how many records it changed.
Migrate = Callable[[Store, Txn, Sequence[Versioned[Message]]], Awaitable[int]]


@dataclass(frozen=True)
class Step:
    """One migration: the mesh is at `version` once every record under `{root}{prefix}`
    went through `migrate`. It must be idempotent: a page may be read twice."""

    version: int
    what: str
    prefix: str
    record_type: type[Message]
    migrate: Migrate


def schema_key(store: Store) -> str:
    return f"{store.root}schema"


async def mesh_version(store: Store) -> int:
    """The mesh's schema version: 1 for a mesh never migrated (or written before)."""
    found = await store.get(schema_key(store), SchemaRecord)
    return max(found.value.version, 1) if found is not None else 1


async def wait_for(store: Store, version: int) -> None:
    """Returns once the mesh's schema is at `version` or later (its migration is done)."""
    announced = False
    while True:
        try:
            if await mesh_version(store) >= version:
                return
        except Exception as error:
            retry.unless_cancelled(error)
            if not retry.transient(error):
                raise
        if not announced:
            log.info("waiting for the mesh's schema to reach version %d", version)
            announced = True
        await asyncio.sleep(POLL_SECONDS)


async def run(store: Store, steps: Sequence[Step], fence: object) -> int:
    """Every step the mesh has not done, in order; the mesh's version after. Faults
    that heal are retried with backoff; FencedOut (leadership lost) is raised."""
    found = await retry.persist("reading the mesh's schema", lambda: _read(store))
    schema, revision = found
    current = max(schema.version, 1)
    newest = steps[-1].version if steps else 1
    if current > newest:
        log.warning("the mesh's schema is at %d, newer than this code's %d", current, newest)
        return current
    for step in steps:
        if step.version <= current:
            continue
        if step.version != current + 1:
            raise ValueError(f"no migration from schema {current} to {step.version}")
        log.info("migrating the mesh to schema %d: %s", step.version, step.what)
        schema, revision = await _run_step(store, step, fence, schema, revision)
        current = step.version
        log.info("the mesh is at schema %d (%d records migrated)", current, schema.migrated)
    return current


async def _read(store: Store) -> tuple[records_pb2.SchemaRecord, int]:
    found = await store.get(schema_key(store), SchemaRecord)
    return (found.value, found.mod_revision) if found else (SchemaRecord(version=1), 0)


async def _run_step(
    store: Store, step: Step, fence: object, schema: records_pb2.SchemaRecord, revision: int
) -> tuple[records_pb2.SchemaRecord, int]:
    prefix = store.root + step.prefix
    backoff = retry.Backoff()
    if schema.resume_after:
        log.info("resuming after %s (%d migrated)", schema.resume_after, schema.migrated)
    reread = False
    while True:
        try:
            if reread:  # where the step is, as committed: it alone says what is done
                schema, revision = await _read(store)
                if schema.version >= step.version:
                    return schema, revision
                reread = False
            page, more = await _page(store, prefix, schema.resume_after, step.record_type)
            txn = store.txn().fence(fence)
            changed = await step.migrate(store, txn, page)
            done = not more
            after = SchemaRecord(
                version=step.version if done else schema.version,
                resume_after="" if done else page[-1].key,
                migrated=schema.migrated + changed,
            )
            txn.check(schema_key(store), revision)
            txn.put(schema_key(store), after)
            revision = await txn.commit()
        except FencedOut:
            raise
        except (Aborted, NotFound) as changed_meanwhile:
            # A record of the page changed (or went) after it was read: read it again.
            log.info("page after %r changed: %s", schema.resume_after, changed_meanwhile)
            reread = True
            await backoff.wait()
            continue
        except Exception as error:
            retry.unless_cancelled(error)
            if not retry.transient(error):
                raise
            log.warning("migration to schema %d: %s; retrying", step.version, retry.reason(error))
            reread = True
            await backoff.wait()
            continue
        schema, backoff = after, retry.Backoff()
        if done:
            return schema, revision


async def _page(
    store: Store, prefix: str, after: str, record_type: type[Message]
) -> tuple[list[Versioned[Message]], bool]:
    """Up to PAGE records under `prefix` after the key `after`, and whether more follow."""
    start = after + "\0" if after else prefix
    response = await etcd.range_(
        store.client, etcd.range_request(start, etcd.prefix_end(prefix), limit=PAGE)
    )
    page = [
        Versioned(
            decode(kv.key, kv.value, record_type),
            kv.mod_revision,
            kv.create_revision,
            kv.key.decode(),
        )
        for kv in response.kvs
    ]
    return page, bool(response.more)
