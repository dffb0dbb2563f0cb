"""The functions every benchmark server serves, whatever its framework."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

#: Iterations of :func:`burn` that make one CPU-bound call (a few milliseconds of pure Python).
BURN_N = 150_000


def add(a: int, b: int) -> int:
    return a + b


def echo(value: Any) -> Any:
    return value


def burn(n: int) -> int:
    """CPU-bound: holds the GIL for the whole call, so only more processes serve more calls."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def count(n: int) -> Iterator[int]:
    """A stream (rpc only): the integers 0 to ``n - 1``, small items as fast as credit allows."""
    yield from range(n)


async def sleep_async(seconds: float) -> None:
    """Awaits without holding a thread: a server runs up to ``async_concurrency`` of these at
    once on its event loop, so 100 concurrent calls take about one sleep, not 100."""
    await asyncio.sleep(seconds)


def task_for(label: str, delay_ms: float) -> Any:
    """A ``task()`` that takes ``delay_ms`` without using CPU and returns this server's label.

    Two servers with different delays on one queue show how prefetch shares work between them.
    """

    def task() -> str:
        time.sleep(delay_ms / 1000)
        return label

    return task
