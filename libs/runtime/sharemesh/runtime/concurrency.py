"""Running many awaitables at once, but not too many."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def bounded(calls: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """The results of `calls`, in order, with at most `limit` of them in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
