"""Mutex: the election's create-revision queue, used as a lock (etcd concurrency's Mutex)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from aetcd import rpc

from sharemesh.runtime.errors import Aborted, FailedPrecondition, ShareBusy

from . import _client
from ._client import Fence
from ._election import _dequeue, _enqueue, _queue_prefix, _wait_predecessors
from ._session import Session
from ._store import Txn


class _LocalSlots:
    """Per-session, in-process exclusion: the etcd key is per lease, so two tasks of one
    process sharing a session would otherwise both 'own' the same lock."""

    def __init__(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}
        self.users: dict[str, int] = {}

    def get(self, key: str) -> asyncio.Lock:
        self.users[key] = self.users.get(key, 0) + 1
        return self.locks.setdefault(key, asyncio.Lock())

    def put(self, key: str) -> None:
        self.users[key] -= 1
        if not self.users[key]:
            del self.users[key]
            del self.locks[key]


def _slots(session: Session) -> _LocalSlots:
    slots = getattr(session, "_mutex_slots", None)
    if slots is None:
        slots = _LocalSlots()
        session._mutex_slots = slots  # type: ignore[attr-defined]
    return slots


class Mutex:
    """A distributed lock under `prefix` (e.g. `keys.lock_prefix(root, share_name)`).

    `async with mutex.lock(): ...`, or `acquire()`/`release()`; `try_acquire()` raises
    `ShareBusy("busy")` (ABORTED) at once when someone else holds it. While held, `fence()` is the
    owner compare to put in every write made under the lock."""

    def __init__(self, session: Session, prefix: str) -> None:
        self.session = session
        self.prefix = prefix.rstrip("/")
        self.queue = _queue_prefix(prefix)
        self._rev = 0
        self._local: asyncio.Lock | None = None
        # The answers to `acquire`'s reads when they came with the lock (None else).
        self.reads: list[rpc.RangeResponse] | None = None

    @property
    def key(self) -> str:
        return f"{self.queue}{self.session.lease_hex}"

    @property
    def held(self) -> bool:
        return bool(self._rev) and not self.session.done.is_set()

    @property
    def revision(self) -> int:
        return self._rev

    def fence(self) -> Fence:
        if not self._rev:
            raise FailedPrecondition(f"lock {self.prefix} is not held")
        return Fence(self.key, self._rev)

    def _check_session(self) -> None:
        if self.session.done.is_set():
            raise Aborted(f"session lease lost; cannot lock {self.prefix}")
        if self._rev or self._local is not None:
            raise FailedPrecondition(f"lock {self.prefix} already held or pending by this Mutex")

    async def _take_local(self, wait: bool) -> None:
        slots = _slots(self.session)
        local = slots.get(self.key)
        if not wait and local.locked():
            slots.put(self.key)
            raise ShareBusy("busy", metadata={"lock": self.prefix})
        try:
            await local.acquire()
        except BaseException:
            slots.put(self.key)
            raise
        self._local = local

    def _drop_local(self) -> None:
        if self._local is not None:
            self._local.release()
            self._local = None
            _slots(self.session).put(self.key)

    async def try_acquire(self) -> None:
        """Take the lock now or raise `ShareBusy("busy")` without waiting."""
        self._check_session()
        await self._take_local(wait=False)
        key = self.key
        try:
            rev, owner, created, _ = await _enqueue(self.session, key, b"")
        except BaseException:
            self._drop_local()
            raise
        if owner is not None and owner.create_revision == rev:
            self._rev = rev
            return
        if created:
            await asyncio.shield(_dequeue(self.session, key, rev))
        self._drop_local()
        raise ShareBusy("busy", metadata={"lock": self.prefix})

    async def acquire(self, reads: Sequence[rpc.RangeRequest] = ()) -> None:
        """Wait for the lock (cancellable; a cancelled wait leaves the queue).

        `reads` are read in the transaction that queues for the lock: when that takes
        it at once, `self.reads` has their answers, read as the lock was taken (one round
        trip less than reading after); when it had to wait, None."""
        self._check_session()
        await self._take_local(wait=True)
        key = self.key
        rev = 0
        self.reads = None
        try:
            rev, owner, _created, read = await _enqueue(self.session, key, b"", reads)
            if owner is None or owner.create_revision != rev:
                await _wait_predecessors(self.session, self.queue, rev)
                mine, _ = await _client.get_kv(self.session.client, key)
                if mine is None or mine.create_revision != rev:
                    raise Aborted(f"lock key {key} vanished while waiting (lease lost?)")
            elif read:
                self.reads = read
        except BaseException:
            if rev:
                await asyncio.shield(_dequeue(self.session, key, rev))
            self._drop_local()
            raise
        self._rev = rev

    async def commit_releasing(self, txn: Txn) -> int:
        """Commits `txn`, the last write made under the lock, with the lock's release in
        it: one etcd write where a commit and a release took two. If the commit fails,
        the lock is still held. After it, `fence()` refuses: nothing more is written
        under this hold; `release()` (or the `lock()` block's end) lets go in-process."""
        txn.fence(self.fence()).delete(self.key)
        revision = await txn.commit()
        self._rev = 0  # its key went with the commit
        return revision

    async def release(self) -> None:
        """Release the lock (idempotent; a lost lease already released it)."""
        rev, self._rev = self._rev, 0
        try:
            if rev and not self.session._closed:  # noqa: SLF001 - a closed session revoked it
                await _dequeue(self.session, self.key, rev)
        finally:
            self._drop_local()

    @contextlib.asynccontextmanager
    async def lock(self, reads: Sequence[rpc.RangeRequest] = ()) -> AsyncIterator[Mutex]:
        await self.acquire(reads)
        try:
            yield self
        finally:
            await asyncio.shield(self.release())
