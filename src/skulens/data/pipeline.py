"""Decoding overlapped with inference: photos are decoded and preprocessed by a few threads while
the engine runs the previous batch, so a 2-core machine is not left idle on one side or the other.

Threads, not processes: Pillow's JPEG decoder and resampling release the GIL, the inputs are small
NumPy arrays (no pickling between processes), and the first photo is ready without starting a
worker pool of interpreters. We keep this small function rather than torch's DataLoader so the
ONNX path never imports torch (one-photo start-up, issue 22).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from skulens.errors import SkulensError

T = TypeVar("T")
R = TypeVar("R")


def default_decode_workers() -> int:
    """One decode thread per two cores (at least one): the engine's own threads use the rest."""
    return max(1, (os.cpu_count() or 1) // 2)


def threads_beside(workers: int) -> int:
    """The model's threads when ``workers`` threads decode beside it: the cores left (at least one).
    Measured on 2 cores (BENCHMARKS.md, end to end): 1 + 1 threads run 179 photos/s where the
    model's default of one thread per core plus a decoder, oversubscribed, runs 139."""
    return max(1, (os.cpu_count() or 1) - workers)


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, ahead: int = 32
) -> Iterator[tuple[T, R | None, str | None]]:
    """``(item, fn(item), None)`` in the order of ``items``, computed by ``workers`` threads with at
    most ``ahead`` items in flight; an item whose ``fn`` raises a SkulensError (an unusable image)
    comes back as ``(item, None, message)`` and the rest go on. ``workers=0``: in this thread."""
    workers = default_decode_workers() if workers is None else workers
    if workers <= 0:
        for item in items:
            yield item, *_call(fn, item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="skulens-decode") as pool:
        in_flight: deque[tuple[T, Future]] = deque()
        for item in items:
            in_flight.append((item, pool.submit(_call, fn, item)))
            if len(in_flight) >= max(1, ahead):
                done, future = in_flight.popleft()
                yield done, *future.result()
        while in_flight:
            done, future = in_flight.popleft()
            yield done, *future.result()


def _call(fn: Callable[[T], R], item: T) -> tuple[R | None, str | None]:
    try:
        return fn(item), None
    except SkulensError as exc:
        return None, str(exc)
