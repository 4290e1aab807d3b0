"""Retrying what heals: a backoff with jitter, loops that ride out a fault, and the
deadline of a waiting change.

A transient fault (a Ganesha that is restarting, a peer or an etcd that is down for
now, a backend that has not re-registered) makes the work wait and try again; only
when the oldest operation waiting on it has waited `retry_deadline_seconds` does it
fail, with UNAVAILABLE and the reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from sharemesh.state.v1 import records_pb2

from . import operations
from .coordination import Store
from .errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def transient(error: BaseException) -> bool:
    """Whether `error` heals by itself: etcd or a peer that is away for now (as the
    coordination layer and gRPC report it), or a group of only such faults."""
    if isinstance(error, BaseExceptionGroup):
        return all(transient(e) for e in error.exceptions)
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(error, (Unavailable, ConnectionError))


def reason(error: BaseException) -> str:
    """One line saying why, for the log: no traceback for what heals."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(reason(e) for e in error.exceptions)
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(getattr(error, "message", error))


def unless_cancelled(error: BaseException) -> None:
    """Raises CancelledError if this task is being cancelled: a client library may turn a
    cancellation into an error of its own (aetcd reports a cancelled call as a closed
    client), and a loop that retries faults must still end when it is cancelled, or
    the process that cancels it never exits."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from error


async def persist(what: str, step: Callable[[], Awaitable[T]]) -> T:
    """`step()` again, with backoff, for as long as it fails with a transient fault;
    each failure is one WARNING line. Any other error is raised."""
    backoff = Backoff()
    while True:
        try:
            return await step()
        except Exception as error:
            unless_cancelled(error)
            if not transient(error):
                raise
            log.warning("%s: %s; retrying", what, reason(error))
        await backoff.wait()


async def every(
    interval: float,
    what: str,
    step: Callable[[], Awaitable[object]],
    first: float | None = None,
) -> None:
    """Runs `step()` every `interval` seconds (the first time after `first`, by default
    `interval`) until cancelled. A transient fault makes it try again sooner, with
    backoff, in one WARNING line; any other failure is logged with its traceback and
    waits for the next round: a background loop never ends on a fault."""
    backoff: Backoff | None = None
    delay = interval if first is None else first
    while True:
        await asyncio.sleep(delay)
        try:
            await step()
        except Exception as error:
            unless_cancelled(error)
            if transient(error):
                backoff = backoff or Backoff()
                delay = min(backoff.next_delay(), interval)
                log.warning("%s: %s; retrying in %.1fs", what, reason(error), delay)
                continue
            log.exception("%s failed; trying again next round", what)
        backoff, delay = None, interval


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
