"""An informer, as client-go's: list a prefix at a revision, watch from the next one,
keep what it saw in memory, and tell handlers what changed. A watch that breaks
resumes where it was; one whose revision etcd compacted away lists again, and the
difference to the cache reaches the handlers as if watched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from google.protobuf.message import Message

from sharemesh.runtime import retry
from sharemesh.runtime.coordination import Store, Versioned, _client
from sharemesh.runtime.coordination._store import _versioned  # noqa: PLC2701
from sharemesh.runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# (old, new): old None for an add, new None for a delete, both for an update.
Handler = Callable[[Versioned[M] | None, Versioned[M] | None], None]
# Lists what the informer keeps: the records and the revision they were read at.
Lister = Callable[[], Awaitable[tuple[Iterable[Versioned[M]], int]]]

PAGE = 500


async def list_prefix(
    store: Store,
    prefix: str,
    msg_type: type[M],
    keep: Callable[[M], bool] | None = None,
    page: int = PAGE,
) -> tuple[list[Versioned[M]], int]:
    """Every record below `prefix` (that `keep` accepts), read page by page at one
    revision, so that memory holds one page of what is not kept."""
    store.check_key(prefix)
    items: list[Versioned[M]] = []
    start, end, revision = prefix.encode(), _client.prefix_end(prefix), 0
    while True:
        response = await _client.range_(
            store.client, _client.range_request(start, end, limit=page, revision=revision)
        )
        # The header carries the current revision, not the one read at: keep the first.
        revision = revision or response.header.revision
        for kv in response.kvs:
            found = _versioned(kv, msg_type)
            if keep is None or keep(found.value):
                items.append(found)
        if not response.more or not response.kvs:
            return items, revision
        start = response.kvs[-1].key + b"\0"


class Informer(Generic[M]):
    """The records under `prefix` that `keep` accepts, in memory by key, kept current
    by a watch. Handlers run on every change, in the watch's order, and must not
    block: they map a change to work-queue keys.

    `lister` replaces the default full read of the prefix: say, the records an index
    names, so a process reads only its own. It must return records at or after the
    revision it returns (an event older than a cached record is then ignored).

    `index` names a group for each record (say, its share): `indexed(group)` is then
    that group's records without a scan of the cache."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        msg_type: type[M],
        *,
        keep: Callable[[M], bool] | None = None,
        lister: Lister[M] | None = None,
        name: str = "",
        index: Callable[[M], str] | None = None,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._msg_type = msg_type
        self._keep = keep or (lambda _: True)
        self._lister = lister or (lambda: list_prefix(store, prefix, msg_type, self._keep))
        self.name = name or prefix
        self._cache: dict[str, Versioned[M]] = {}
        self._index = index
        self._groups: dict[str, dict[str, Versioned[M]]] = {}
        self._handlers: list[Handler[M]] = []
        self.synced = asyncio.Event()  # set once the first list is in the cache
        self.revision = 0  # the last revision seen (listed or watched)
        self.relists = 0  # lists after the first (compactions, errors)

    def add_handler(self, handler: Handler[M]) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> Versioned[M] | None:
        return self._cache.get(key)

    def items(self) -> list[Versioned[M]]:
        return list(self._cache.values())

    def indexed(self, group: str) -> list[Versioned[M]]:
        """The cached records that `index` puts in `group`."""
        return list(self._groups.get(group, {}).values())

    def _put(self, found: Versioned[M]) -> None:
        self._pop(found.key)
        self._cache[found.key] = found
        if self._index is not None:
            self._groups.setdefault(self._index(found.value), {})[found.key] = found

    def _pop(self, key: str) -> Versioned[M] | None:
        old = self._cache.pop(key, None)
        if old is not None and self._index is not None:
            group = self._index(old.value)
            members = self._groups.get(group, {})
            members.pop(key, None)
            if not members:
                self._groups.pop(group, None)
        return old

    def __len__(self) -> int:
        return len(self._cache)

    def resync(self) -> None:
        """Every cached record to the handlers again as an unchanged update (old is
        new): a safety net for a handler that dropped work, costing O(cached)."""
        for found in list(self._cache.values()):
            self._tell(found, found)

    async def run(self) -> None:
        """Lists, then watches, until cancelled. etcd away makes it wait with backoff
        and resume; it never ends on a fault."""
        backoff = _Backoff()
        listed = False
        while True:
            try:
                if not listed:
                    await self._list()
                    listed = True
                await self._watch(backoff)
            except InvalidArgument as error:
                if not _compacted(error):
                    raise
                log.info("%s: watch compacted at %d; listing again", self.name, self.revision)
                listed = False
                continue
            except Exception as error:
                retry.unless_cancelled(error)
                if retry.transient(error):
                    log.warning("%s: %s; watching again", self.name, retry.reason(error))
                else:
                    log.exception("%s: watch failed; listing again", self.name)
                    listed = False
            await backoff.wait()

    async def _list(self) -> None:
        items, revision = await self._lister()
        fresh = {found.key: found for found in items}
        if self.synced.is_set():
            self.relists += 1
        for key in [k for k in self._cache if k not in fresh]:
            self._tell(self._pop(key), None)
        for key, found in fresh.items():
            old = self._cache.get(key)
            if old is not None and old.mod_revision >= found.mod_revision:
                continue
            self._put(found)
            self._tell(old, found)
        self.revision = max(self.revision, revision)
        self.synced.set()

    async def _watch(self, backoff: _Backoff) -> None:
        events = self._store.watch_prefix(self._prefix, self.revision + 1, self._msg_type)
        async for event in events:
            backoff.reset()  # a live watch starts the backoff over
            self.revision = max(self.revision, event.mod_revision)
            old = self._cache.get(event.key)
            if event.kind == "DELETE":
                if old is not None:
                    self._pop(event.key)
                    self._tell(old, None)
                continue
            if old is not None and old.mod_revision >= event.mod_revision:
                continue  # already listed at or after this change
            value = event.value
            assert isinstance(value, self._msg_type)
            if not self._keep(value):
                if old is not None:  # no longer ours: gone, as far as we are concerned
                    self._pop(event.key)
                    self._tell(old, None)
                continue
            new = Versioned(value, event.mod_revision, event.create_revision, event.key)
            self._put(new)
            self._tell(old, new)

    def _tell(self, old: Versioned[M] | None, new: Versioned[M] | None) -> None:
        for handler in self._handlers:
            try:
                handler(old, new)
            except Exception:
                log.exception("%s: a handler failed", self.name)


def _compacted(error: InvalidArgument) -> bool:
    """How `Store.watch_prefix` says its start revision was compacted away."""
    return any(field == "start_revision" for field, _ in error.field_violations)


class _Backoff:
    """`retry.Backoff` that a healthy watch resets."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._backoff = retry.Backoff()

    async def wait(self) -> None:
        await self._backoff.wait()
