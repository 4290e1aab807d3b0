"""The keyed work queue and its workers, in pure asyncio: de-duplication, one worker
per key at a time, retries with per-key backoff, and a clean shutdown."""

from __future__ import annotations

import asyncio

import pytest

from sharemesh.runtime.controllers import Controller, WorkQueue


async def test_a_key_queued_twice_is_handed_out_once() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert len(queue) == 2
    assert await queue.get() == "a"
    assert await queue.get() == "b"
    queue.done("a")
    queue.done("b")
    assert len(queue) == 0


async def test_a_key_added_while_processed_comes_back_once_after_done() -> None:
    queue = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0  # not handed to a second worker while the first has it
    queue.done(key)  # type: ignore[arg-type]
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_holds_a_key_while_queued_or_processed() -> None:
    queue = WorkQueue()
    assert not queue.holds("a")
    queue.add("a")
    assert queue.holds("a")
    key = await queue.get()
    assert queue.holds("a")
    queue.done(key or "")
    assert not queue.holds("a")


async def test_get_waits_for_an_add() -> None:
    queue = WorkQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.add("x")
    assert await asyncio.wait_for(waiting, 1) == "x"


async def test_rate_limited_delays_double_per_key_and_forget_resets() -> None:
    queue = WorkQueue(first_retry=0.005, max_retry=0.04)
    delays = [queue.add_rate_limited("a") for _ in range(6)]
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.04, 0.04]
    assert queue.add_rate_limited("b") == 0.005  # each key has its own backoff
    queue.forget("a")
    assert queue.failures("a") == 0
    assert queue.add_rate_limited("a") == 0.005


async def test_add_after_delivers_later_and_the_earliest_stands() -> None:
    queue = WorkQueue()
    queue.add_after("a", 0.2)
    queue.add_after("a", 0.05)
    queue.add_after("a", 0.3)
    assert len(queue) == 0
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    assert 0.04 <= asyncio.get_running_loop().time() - started < 0.15
    queue.done("a")
    await asyncio.sleep(0.3)
    assert len(queue) == 0  # the later timers were folded into the first


async def test_workers_never_run_one_key_twice_at_once() -> None:
    running: set[str] = set()
    overlaps: list[str] = []
    runs: dict[str, int] = {}

    async def reconcile(key: str) -> None:
        if key in running:
            overlaps.append(key)
        running.add(key)
        await asyncio.sleep(0.02)
        running.discard(key)
        runs[key] = runs.get(key, 0) + 1

    controller = Controller("test", reconcile, workers=4)
    task = asyncio.create_task(controller.run())
    for _ in range(5):
        for key in ("a", "b", "c"):
            controller.queue.add(key)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)
    await controller.stop()
    await task
    assert not overlaps
    # Each key ran at least once, and at most once per round of adds (de-duplicated).
    assert all(1 <= runs[key] <= 5 for key in ("a", "b", "c")), runs
    assert sum(runs.values()) < 15


async def test_a_failing_key_retries_with_backoff_then_is_forgotten() -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def reconcile(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 4:
            raise RuntimeError("not yet")

    controller = Controller("test", reconcile, queue=WorkQueue(first_retry=0.02))
    task = asyncio.create_task(controller.run())
    controller.queue.add("k")
    for _ in range(100):
        if len(attempts) >= 4:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    assert len(attempts) == 4  # stopped retrying once it succeeded
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.018 and gaps[1] >= 0.038 and gaps[2] >= 0.078, gaps
    assert controller.queue.failures("k") == 0
    await controller.stop()
    await task


async def test_stop_lets_running_work_finish_and_takes_no_more() -> None:
    finished: list[str] = []
    started = asyncio.Event()

    async def reconcile(key: str) -> None:
        started.set()
        await asyncio.sleep(0.1)
        finished.append(key)

    controller = Controller("test", reconcile, workers=1)
    task = asyncio.create_task(controller.run())
    controller.queue.add("first")
    controller.queue.add("second")
    await started.wait()
    await controller.stop(timeout=5)
    await asyncio.wait_for(task, 1)
    assert finished == ["first"]  # "second" waits for the next process, through etcd
    left = len(controller.queue)
    controller.queue.add("late")
    assert len(controller.queue) == left
    assert await controller.queue.get() is None


async def test_stop_cancels_work_past_its_timeout() -> None:
    async def reconcile(key: str) -> None:
        await asyncio.sleep(60)

    controller = Controller("test", reconcile, workers=1)
    task = asyncio.create_task(controller.run())
    controller.queue.add("stuck")
    await asyncio.sleep(0.01)
    await controller.stop(timeout=0.05)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
