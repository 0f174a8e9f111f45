"""`BackgroundTasks`: work that outlives the request that started it, bounded and cancelled at shutdown.

The page proxy answers at its deadline and lets the images still classifying finish, so the next request
for the page finds them cached. Unbounded, that would let a flood of slow pages pile up tasks; untracked,
shutdown would leave them dangling. Here they are counted, capped and cancelled with the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class BackgroundTasks(Generic[T]):
    """Tasks left running after the request that started them was answered: at most `limit` at once,
    and cancelled at shutdown."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[T]] = set()
        self._closed = False
        self.dropped = 0  # tasks cancelled because the limit was reached

    def __len__(self) -> int:
        return len(self._tasks)

    def adopt(self, tasks: Iterable[asyncio.Task[T]]) -> None:
        """Let unfinished `tasks` run on; those over the limit are cancelled (a later request retries)."""
        for task in tasks:
            if task.done():
                continue
            if self._closed or len(self._tasks) >= self.limit:
                task.cancel()
                self.dropped += 1
                continue
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until every task has finished (for tests, benchmarks and draining)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
