"""Micro-batching: concurrent requests share one forward pass.

A request awaits ``submit(pixels)``. The first request to arrive starts a drain task that
yields once to the event loop (so every request already read gets to join), then runs ``fn`` on
up to ``max_batch`` queued images at a time until the queue is empty, handing each request its
rows. Under light load a request runs alone with no added delay; under heavy load the batches
grow by themselves while a pass runs. ``wait_s`` optionally holds the first pass back for more.

``fn`` runs on the event loop thread by default: with one process per core that is cheapest
(no thread hand-offs, no fight for the GIL). With ``in_thread=True`` it runs in one worker
thread, so parsing the next requests overlaps the forward pass.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    """Gather concurrent ``submit`` calls into batched calls of ``fn`` (pixels [N, ...] -> rows [N, ...])."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 64, wait_s: float = 0.0,
                 in_thread: bool = False) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnistlab-forward") if in_thread else None
        self._queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._drain_task: asyncio.Task | None = None
        self.batches = 0  # forward passes run
        self.images = 0  # images predicted

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """``fn``'s rows [k, ...] for pixels [k, ...], computed together with concurrent submissions."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((pixels, future))
        if self._drain_task is None or self._drain_task.done() or self._drain_task.get_loop() is not loop:
            self._drain_task = loop.create_task(self._drain())
        return await future

    def close(self) -> None:
        """Release the worker thread (queued requests are still answered by the running drain)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def _drain(self) -> None:
        await asyncio.sleep(self.wait_s)  # sleep(0) still yields once: requests already read join the batch
        while self._queue:
            items, count = [], 0
            while self._queue and (not items or count + len(self._queue[0][0]) <= self.max_batch):
                px, fut = self._queue.popleft()
                if not fut.cancelled():  # its client went away
                    items.append((px, fut))
                    count += len(px)
            if items:
                await self._run(items)

    async def _run(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        batch = items[0][0] if len(items) == 1 else np.concatenate([px for px, _ in items])
        try:
            if self._executor is None:
                rows = self.fn(batch)
            else:
                rows = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, batch)
        except Exception as err:  # every waiting request learns of the failure
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(err)
            return
        self.batches += 1
        self.images += len(batch)
        start = 0
        for px, fut in items:
            if not fut.done():
                fut.set_result(rows[start:start + len(px)])
            start += len(px)
