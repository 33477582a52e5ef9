"""Micro-batching: concurrent requests share one model call.

A batch leaves when it holds ``max_batch_size`` items or its oldest item has waited ``max_wait_ms``.
While the model is busy, new requests pile up and leave together as the next batch, so a loaded
server batches more without any extra delay. The model runs on one worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from skulens.errors import SkulensError


class Overloaded(SkulensError):
    """The queue is full: the client should retry later."""


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        lock: threading.Lock | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        # Shared with bulk jobs, which run the same model from their own thread.
        self.lock = lock or threading.Lock()
        self.on_batch = on_batch
        self.on_queue = on_queue
        self._pending: deque[tuple[Any, asyncio.Future, float]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skulens-infer")
        self._task = asyncio.create_task(self._loop(), name="skulens-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, future, _ in self._pending:
            if not future.done():
                future.set_exception(Overloaded("the server is shutting down"))
        self._pending.clear()
        if self._executor:
            self._executor.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and wait for its result; cancelling the caller drops it from its batch."""
        if self._task is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._pending) >= self.max_queue:
            raise Overloaded(f"server busy: {len(self._pending)} images are waiting; retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, time.monotonic()))
        self._report_queue()
        self._wakeup.set()
        return await future

    def _report_queue(self) -> None:
        if self.on_queue:
            self.on_queue(len(self._pending))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._pending[0][2] + self.max_wait
            while len(self._pending) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = []
            while self._pending and len(batch) < self.max_batch_size:
                entry = self._pending.popleft()
                if not entry[1].done():  # a request that timed out or disconnected is skipped
                    batch.append(entry)
            self._report_queue()
            if not batch:
                continue
            items = [item for item, _, _ in batch]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_locked, items)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request, which answers it
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(len(items), time.perf_counter() - started)
            for (_, future, _), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _run_locked(self, items: list[Any]) -> Sequence[Any]:
        with self.lock:
            results = self.run_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results
