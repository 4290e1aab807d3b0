"""A keyed work queue and the workers that drain it, as client-go's `workqueue` and
controller-runtime's controller: a key queued many times is worked on once, never by
two workers at once, and a key that failed comes back after a per-key backoff."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from sharemesh.runtime import metrics, retry

log = logging.getLogger(__name__)

FIRST_RETRY = 0.005
MAX_RETRY = 30.0


class WorkQueue:
    """Keys waiting to be worked on, each at most once in the queue.

    A key added while a worker holds it is queued again only when that worker is done
    (`done`), so one key is never processed twice at once, yet a change seen meanwhile
    is never lost. Failures come back with `add_rate_limited` after 5 ms doubling to
    30 s, per key, until `forget` (after a success) starts the key afresh."""

    def __init__(self, first_retry: float = FIRST_RETRY, max_retry: float = MAX_RETRY) -> None:
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._order: deque[str] = deque()
        self._dirty: set[str] = set()  # queued, not yet handed to a worker
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._waiters: list[asyncio.Future[None]] = []  # workers waiting for a key
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._order)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def holds(self, key: str) -> bool:
        """Whether `key` is queued or being worked on."""
        return key in self._dirty or key in self._processing

    def add(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._order.append(key)
            self._notify()

    def add_after(self, key: str, delay: float) -> None:
        """Adds `key` in `delay` seconds; an earlier pending add of it stands."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        """Adds `key` again after its next backoff delay; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self._first_retry * 2**failures, self._max_retry)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts from the first delay again."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> str | None:
        """The next key to work on (call `done` with it after); None once shut down."""
        while not self._order and not self._shutting_down:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if self._shutting_down:
            return None
        key = self._order.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:  # added again while it was being worked on
            self._order.append(key)
            self._notify()

    def shutdown(self) -> None:
        """No more keys are handed out or taken; waiting workers return None."""
        self._shutting_down = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._notify()

    def _notify(self) -> None:
        # Every waiter wakes and looks: one woken but cancelled must not strand a key.
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Controller:
    """`workers` tasks that take keys from `queue` and `reconcile` them: level-based, a
    key says only what to look at. A reconcile that raises comes back with backoff
    (one WARNING line for a fault that heals); one that returns is forgotten."""

    def __init__(
        self,
        name: str,
        reconcile: Callable[[str], Awaitable[None]],
        workers: int = 2,
        queue: WorkQueue | None = None,
    ) -> None:
        self.name = name
        self.queue = queue if queue is not None else WorkQueue()
        self._reconcile = reconcile
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        metrics.observe_queue(self)

    def depth(self) -> int:
        return len(self.queue)

    async def run(self) -> None:
        """Works until `stop` (or cancellation)."""
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name} worker {i}")
            for i in range(self._workers)
        ]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    async def _work(self) -> None:
        while (key := await self.queue.get()) is not None:
            try:
                await self._reconcile(key)
            except Exception as error:
                retry.unless_cancelled(error)
                delay = self.queue.add_rate_limited(key)
                metrics.queue_retried(self.name)
                if retry.transient(error):
                    log.warning(
                        "%s %s: %s; again in %.2fs", self.name, key, retry.reason(error), delay
                    )
                else:
                    log.exception("%s %s failed; again in %.2fs", self.name, key, delay)
            else:
                self.queue.forget(key)
            finally:
                self.queue.done(key)

    async def stop(self, timeout: float = 30.0) -> None:
        """Takes no more keys and lets the keys being worked on finish (up to
        `timeout`, then they are cancelled)."""
        self.queue.shutdown()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
