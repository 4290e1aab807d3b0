"""Store: typed protobuf records in etcd with revision-compared, fenced transactions."""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aetcd
from aetcd import rpc
from google.protobuf.message import DecodeError, Message

from sharemesh.runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FencedOut,
    Internal,
    InvalidArgument,
    NotFound,
)

from . import _client, _keys, _layouts
from ._client import Compacted, Compare, FutureRevision

M = TypeVar("M", bound=Message)
log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sharemesh/"
CHILDREN = 1000  # records under one parent read in one go by `get_with`


@dataclass(frozen=True)
class Versioned(Generic[M]):
    """A record with its etcd revisions (the etag derives from `mod_revision`)."""

    value: M
    mod_revision: int
    create_revision: int
    key: str = ""


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix. `value` is the decoded record for a PUT when a
    message type was given (raw bytes otherwise); None for a DELETE."""

    kind: str  # "PUT" or "DELETE"
    key: str
    value: object
    mod_revision: int
    create_revision: int


def _as_fence(fence: object) -> Compare:
    """A Fence/Compare, or anything with a `fence()` method (Leadership, Mutex)."""
    if isinstance(fence, Compare):
        return fence
    method = getattr(fence, "fence", None)
    if callable(method):
        result = method()
        if isinstance(result, Compare):
            return result
    raise TypeError(f"not a fence: {fence!r}")


# Schema versions (records.proto): the version of each record type this code writes,
# by full proto name; a versioned type not named here is at 1. A type goes up only
# with the migration that brings its older records to it (sharemesh.runtime.migrations).
SCHEMA_VERSIONS: dict[str, int] = {
    "sharemesh.state.v1.ShareRecord": 4,
    "sharemesh.state.v1.ProjectUsage": 3,
}
SCHEMA_FIELD = "schema_version"
_NEWEST = max(SCHEMA_VERSIONS.values())


def schema_version(msg_type: type[Message]) -> int | None:
    """The version of `msg_type` this code writes; None for a type without versions
    (public messages such as ShareType, whose schema only grows compatibly)."""
    descriptor = msg_type.DESCRIPTOR
    if SCHEMA_FIELD not in descriptor.fields_by_name:
        return None
    return SCHEMA_VERSIONS.get(descriptor.full_name, 1)


def decode(key: bytes | str, data: bytes, msg_type: type[M]) -> M:
    """A record as stored, its schema version checked: one newer than this code knows is
    refused (never parsed into what it is not, so never written back); one without a
    version (written before versions) reads as 1; one of an older layout reads in
    today's (`_layouts`)."""
    message = msg_type()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise Internal(f"record {key!r} is not a {msg_type.__name__}: {error}") from error
    known = schema_version(msg_type)
    if known is not None:
        version = getattr(message, SCHEMA_FIELD) or 1
        if version > known:
            raw = key.decode() if isinstance(key, bytes) else key
            raise FailedPrecondition(
                f"the record was written by a newer sharemesh (schema version {version} of "
                f"{msg_type.__name__}; this service knows up to {known}); it is left as it "
                "is until this service is upgraded",
                metadata={"key": raw},
            )
        setattr(message, SCHEMA_FIELD, version)
        if version < _NEWEST:
            return _layouts.upgrade_on_read(message, data)  # type: ignore[return-value]
    return message


def encode(msg: Message) -> bytes:
    """A record to store: a new one (no version yet) gets this code's version of its
    type; one read keeps its own, so only a migration raises it, or its being written
    in a newer layout than its version had (`_layouts.version_written`)."""
    if not getattr(msg, SCHEMA_FIELD, 1):
        version = schema_version(type(msg))
        if version is not None:
            setattr(msg, SCHEMA_FIELD, version)
    elif (layout := _layouts.version_written(msg)) > getattr(msg, SCHEMA_FIELD, 0):
        setattr(msg, SCHEMA_FIELD, layout)
    return msg.SerializeToString()


def _versioned(kv: rpc.KeyValue, msg_type: type[M]) -> Versioned[M]:
    return Versioned(
        decode(kv.key, kv.value, msg_type), kv.mod_revision, kv.create_revision, kv.key.decode()
    )


class Txn:
    """One atomic write of several records, built then `await commit()`ed.

    Every compare is evaluated in the same transaction; on failure its else-branch reads
    each compared key, so the error says exactly which key failed, at that revision:
    a fence -> FencedOut, a create -> AlreadyExists, a missing record -> NotFound,
    a stale mod_revision -> Aborted."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._compares: list[tuple[str, Compare]] = []  # (role, compare)
        # Operations are built at commit: a record is written as it is then, so a change
        # made to it after `put` (say, finishing the Operation a mutation waits on) is
        # never lost.
        self._ops: list[Callable[[], rpc.RequestOp]] = []
        self._keys: set[str] = set()
        self._committed = False

    def _key(self, key: str) -> str:
        key = self._store.check_key(key)
        if key in self._keys:
            raise InvalidArgument("key", f"{key} appears twice in one transaction")
        self._keys.add(key)
        return key

    def create(self, key: str, msg: Message, *, lease: int = 0) -> Txn:
        key = self._key(key)
        self._compares.append(("create", Compare(key.encode(), "create", "==", 0)))
        self._ops.append(lambda: _client.op_put(key, encode(msg), lease))
        return self

    def put(
        self, key: str, msg: Message, expected_mod_revision: int | None = None, *, lease: int = 0
    ) -> Txn:
        """Write a record; with `expected_mod_revision` only if it is unchanged."""
        key = self._key(key)
        if expected_mod_revision is not None:
            self._compares.append(
                ("mod", Compare(key.encode(), "mod", "==", expected_mod_revision))
            )
        self._ops.append(lambda: _client.op_put(key, encode(msg), lease))
        return self

    def delete(self, key: str, expected_mod_revision: int | None = None) -> Txn:
        key = self._key(key)
        if expected_mod_revision is not None:
            self._compares.append(
                ("mod", Compare(key.encode(), "mod", "==", expected_mod_revision))
            )
        self._ops.append(lambda: _client.op_delete(key))
        return self

    def check(self, key: str, mod_revision: int) -> Txn:
        """Compare only: the record at `key` still has `mod_revision` (0: absent)."""
        key = self._store.check_key(key)
        self._compares.append(("check", Compare(key.encode(), "mod", "==", mod_revision)))
        return self

    def fence(self, compare: object) -> Txn:
        """Add a lock/leadership owner compare (a Fence, Leadership or Mutex)."""
        self._compares.append(("fence", _as_fence(compare)))
        return self

    async def commit(self) -> int:
        """Apply atomically; the revision of the write, or raise naming the failed key."""
        if self._committed:
            raise InvalidArgument("txn", "already committed")
        self._committed = True
        compares = [c for _, c in self._compares]
        compared_keys = list(dict.fromkeys(c.key for c in compares))
        failure = [_client.op_range(_client.range_request(k)) for k in compared_keys]
        ops = [build() for build in self._ops]
        response = await _client.txn(self._store.client, compares, ops, failure)
        if response.succeeded:
            revision = int(response.header.revision)
            if ops:
                self._store.written_revision = max(self._store.written_revision, revision)
            return revision
        read: dict[bytes, rpc.KeyValue | None] = {}
        for key, resp in zip(compared_keys, response.responses):
            kvs = resp.response_range.kvs
            read[key] = kvs[0] if kvs else None
        raise self._explain(read)

    def _explain(self, read: dict[bytes, rpc.KeyValue | None]) -> Exception:
        failed = [(role, c) for role, c in self._compares if not c.holds(read.get(c.key))]
        order = {"fence": 0, "create": 1, "mod": 2, "check": 3}
        failed.sort(key=lambda item: order[item[0]])
        if not failed:  # cannot happen: etcd failed a compare we evaluate as holding
            return Aborted("transaction compare failed")
        role, cmp = failed[0]
        key = cmp.key.decode()
        kv = read.get(cmp.key)
        meta = {"key": key}
        if role == "fence":
            return FencedOut(
                f"lock or leadership {key} (revision {cmp.value}) is no longer held", metadata=meta
            )
        if role == "create":
            return AlreadyExists(f"{key} already exists", metadata=meta)
        if kv is None and role == "mod":
            return NotFound(f"{key} not found", metadata=meta)
        actual = kv.mod_revision if kv is not None else 0
        return Aborted(
            f"{key} changed: expected revision {cmp.value}, found {actual}", metadata=meta
        )


class Store:
    """Typed protobuf records under `root` (keys are full keys, see `key_of`/`prefix_of`)."""

    def __init__(self, client: aetcd.Client, root: str = DEFAULT_ROOT) -> None:
        _keys._check_root(root)  # noqa: SLF001
        self.client = client
        self.root = root
        # The newest revision a transaction of this Store wrote: a watch of this process
        # shows the process's own writes once it has applied it.
        self.written_revision = 0

    # key helpers bound to this root
    def key_of(self, name: str) -> str:
        return _keys.key_of(self.root, name)

    def prefix_of(self, parent: str, collection: str) -> str:
        return _keys.prefix_of(self.root, parent, collection)

    def name_of(self, key: str | bytes) -> str:
        return _keys.name_of(self.root, key)

    def check_key(self, key: str) -> str:
        if not isinstance(key, str) or not key.startswith(self.root) or key == self.root:
            raise InvalidArgument("key", f"{key!r} is not a key under {self.root!r}")
        return key

    async def get(self, key: str, msg_type: type[M]) -> Versioned[M] | None:
        kv, _ = await _client.get_kv(self.client, self.check_key(key))
        return None if kv is None else _versioned(kv, msg_type)

    async def get_with(
        self, key: str, msg_type: type[M], children: Sequence[tuple[str, type[Message]]]
    ) -> tuple[Versioned[M] | None, builtins.list[builtins.list[Versioned[Any]]]]:
        """A record and, for each (prefix, type) of `children`, the records directly under
        that prefix (a share, its rules, its snapshots), read at one revision in one round
        trip (a read-only transaction) instead of one range each."""
        ranges = self.ranges_with(key, children)
        response = await _client.txn(self.client, [], [_client.op_range(r) for r in ranges])
        reads = [r.response_range for r in response.responses]
        return await self.decode_with(reads, msg_type, children)

    def key_range(self, key: str) -> rpc.RangeRequest:
        """The read of one record, to read it in another transaction (a lock's)."""
        return _client.range_request(self.check_key(key))

    def ranges_with(
        self, key: str, children: Sequence[tuple[str, type[Message]]]
    ) -> builtins.list[rpc.RangeRequest]:
        """The ranges `get_with` reads, to read them in another transaction (a lock's)."""
        ranges = [self.key_range(key)]
        for prefix, _ in children:
            self.check_key(prefix)
            ranges.append(_client.range_request(prefix, _client.prefix_end(prefix), limit=CHILDREN))
        return ranges

    async def decode_with(
        self,
        reads: Sequence[rpc.RangeResponse],
        msg_type: type[M],
        children: Sequence[tuple[str, type[Message]]],
    ) -> tuple[Versioned[M] | None, builtins.list[builtins.list[Versioned[Any]]]]:
        """`get_with`'s answer from the responses to the ranges of `ranges_with`."""
        found = _versioned(reads[0].kvs[0], msg_type) if reads[0].kvs else None
        listed: builtins.list[builtins.list[Versioned[Any]]] = []
        for (prefix, child_type), read in zip(children, reads[1:]):
            if read.more:  # more than a share ever has: page through
                listed.append((await self.list_all(prefix, child_type))[0])
                continue
            plen = len(prefix.encode())
            kept = (kv for kv in read.kvs if b"/" not in kv.key[plen:])
            listed.append([_versioned(kv, child_type) for kv in kept])
        return found, listed

    def txn(self) -> Txn:
        return Txn(self)

    async def create(
        self, key: str, msg: Message, fences: Iterable[object] = (), *, lease: int = 0
    ) -> int:
        """Create a record; AlreadyExists if present. Returns its (create) revision."""
        txn = self.txn().create(key, msg, lease=lease)
        for fence in fences:
            txn.fence(fence)
        return await txn.commit()

    async def update(
        self, key: str, msg: Message, expected_mod_revision: int, fences: Iterable[object] = ()
    ) -> int:
        """Replace a record if unchanged since `expected_mod_revision`: Aborted if stale,
        NotFound if gone, FencedOut if a fence failed. Returns the new mod_revision."""
        txn = self.txn().put(key, msg, expected_mod_revision)
        for fence in fences:
            txn.fence(fence)
        return await txn.commit()

    async def put(
        self, key: str, msg: Message, fences: Iterable[object] = (), *, lease: int = 0
    ) -> int:
        """Write unconditionally (registrations, stats); still fenced if asked."""
        txn = self.txn().put(key, msg, lease=lease)
        for fence in fences:
            txn.fence(fence)
        return await txn.commit()

    async def delete(
        self, key: str, expected_mod_revision: int | None = None, fences: Iterable[object] = ()
    ) -> bool:
        """Delete a record; with `expected_mod_revision` only if unchanged (Aborted /
        NotFound otherwise). Returns whether a key was deleted."""
        key = self.check_key(key)
        compares: list[Compare] = [_as_fence(f) for f in fences]
        if expected_mod_revision is not None:
            compares.append(Compare(key.encode(), "mod", "==", expected_mod_revision))
        if not compares:
            response = await _client.txn(self.client, [], [_client.op_delete(key)])
            return response.responses[0].response_delete_range.deleted > 0
        txn = self.txn().delete(key, expected_mod_revision)
        for fence in fences:
            txn.fence(fence)
        await txn.commit()
        return True

    async def list(
        self,
        prefix: str,
        msg_type: type[M],
        start_after: str | None = None,
        limit: int = 100,
        revision: int | None = None,
    ) -> tuple[list[Versioned[M]], int, bool]:
        """One page of the records directly under `prefix`, in key order.

        Reads at `revision` (the first page's read revision, carried in the page token)
        or now; returns (items, read_revision, more). A compacted revision raises
        InvalidArgument("page_token", "expired; list again")."""
        if not prefix.endswith("/"):
            raise InvalidArgument("prefix", f"{prefix!r} must end with '/'")
        self.check_key(prefix)
        if limit < 1:
            raise InvalidArgument("page_size", "must be positive")
        start = prefix
        if start_after is not None:
            if not start_after.startswith(prefix):
                raise InvalidArgument("page_token", "does not belong to this list")
            start = start_after + "\0"
        request = _client.range_request(
            start, _client.prefix_end(prefix), limit=limit, revision=revision or 0
        )
        try:
            response = await _client.range_(self.client, request)
        except Compacted as error:
            raise InvalidArgument("page_token", "expired; list again") from error
        except FutureRevision as error:
            raise InvalidArgument("page_token", "invalid revision") from error
        plen = len(prefix.encode())
        items = [_versioned(kv, msg_type) for kv in response.kvs if b"/" not in kv.key[plen:]]
        # The header carries the store's current revision; the read was at `revision`.
        return items, revision or response.header.revision, bool(response.more)

    async def list_all(
        self, prefix: str, msg_type: type[M], page: int = 500
    ) -> tuple[builtins.list[Versioned[M]], int]:
        """Every record under `prefix` at one revision (for reconcilers)."""
        items: builtins.list[Versioned[M]] = []
        start_after, revision = None, None
        while True:
            batch, revision, more = await self.list(prefix, msg_type, start_after, page, revision)
            items.extend(batch)
            if not more:
                return items, revision
            start_after = batch[-1].key if batch else None
            if start_after is None:  # a page of only nested keys: continue after the raw last key
                raw = await _client.range_(
                    self.client,
                    _client.range_request(
                        prefix,
                        _client.prefix_end(prefix),
                        limit=page,
                        revision=revision,
                        keys_only=True,
                    ),
                )
                start_after = raw.kvs[-1].key.decode()

    async def scan(
        self, prefix: str, msg_type: type[M], page: int = 500
    ) -> builtins.list[Versioned[M]]:
        """Every record anywhere below `prefix` (e.g. all projects' shares), in key
        order at one revision; for reconcilers, not for public listings."""
        self.check_key(prefix)
        items: builtins.list[Versioned[M]] = []
        start, end, revision = prefix.encode(), _client.prefix_end(prefix), 0
        while True:
            response = await _client.range_(
                self.client, _client.range_request(start, end, limit=page, revision=revision)
            )
            # The header carries the current revision, not the one read at: keep the first.
            revision = revision or response.header.revision
            items.extend(_versioned(kv, msg_type) for kv in response.kvs)
            if not response.more or not response.kvs:
                return items
            start = response.kvs[-1].key + b"\0"

    async def watch_prefix(
        self, prefix: str, start_revision: int | None = None, msg_type: type[M] | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Events under `prefix` from `start_revision` (inclusive; default: from now).

        A compacted start revision raises InvalidArgument("start_revision", ...): list
        again and watch from the list's read revision + 1. A broken stream raises
        Unavailable; resume from the last event's mod_revision + 1."""
        self.check_key(prefix)
        try:
            stream = _client.WatchStream(
                self.client, prefix.encode(), _client.prefix_end(prefix), start_revision or 0
            )
            async with contextlib.aclosing(stream.batches()) as batches:
                async for batch in batches:
                    for event in batch:
                        kv = event.kv
                        kind = "PUT" if event.type == rpc.Event.PUT else "DELETE"
                        value: object = None
                        if kind == "PUT" and msg_type is not None:
                            try:
                                value = decode(kv.key, kv.value, msg_type)
                            except FailedPrecondition as newer:
                                # Written by a newer sharemesh (a rolling upgrade): invisible
                                # to this process, rather than stopping its whole watch.
                                log.warning("skipping %s: %s", kv.key.decode(), newer.message)
                                continue
                        elif kind == "PUT":
                            value = kv.value
                        yield WatchEvent(
                            kind, kv.key.decode(), value, kv.mod_revision, kv.create_revision
                        )
        except Compacted as error:
            raise InvalidArgument("start_revision", "compacted; list again") from error
