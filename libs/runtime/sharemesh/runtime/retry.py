"""Retrying what heals: a backoff with jitter, and the deadline of a waiting change.

A transient fault (a Ganesha that is restarting, a peer or an etcd that is down for
now, a backend that has not re-registered) makes the work wait and try again; only
when the oldest operation waiting on it has waited `retry_deadline_seconds` does it
fail, with UNAVAILABLE and the reason."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable

from sharemesh.state.v1 import records_pb2

from . import operations
from .coordination import Store

FIRST_DELAY = 0.2
MAX_DELAY = 5.0


class Backoff:
    """Delays of 0.2 s doubling to 5 s, each with up to ±25 % jitter so that many
    waiting changes do not retry in step."""

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self._next = first
        self._cap = cap

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay * random.uniform(0.75, 1.25)

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleeps the next delay; returns early once `stop` is set."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def waiting_since(store: Store, pending: Iterable[str]) -> float | None:
    """When the oldest of the `pending` operations that are not done yet was created
    (seconds since the epoch); None when none waits."""
    oldest: float | None = None
    for name in pending:
        found = await store.get(store.key_of(name), records_pb2.OperationRecord)
        if found is None or found.value.operation.done:
            continue
        created = operations.metadata_of(found.value).create_time.ToMicroseconds() / 1e6
        oldest = created if oldest is None else min(oldest, created)
    return oldest


def past_deadline(since: float | None, deadline_seconds: float) -> bool:
    """Whether work that has waited since `since` must stop retrying now."""
    return since is not None and time.time() - since >= deadline_seconds
