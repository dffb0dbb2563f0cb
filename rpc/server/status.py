"""A server's counters, handler durations and calls in flight, and the status built from them (no I/O)."""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from typing import Any

#: Handler durations kept for the p50/p99 of ``status()``.
LATENCY_SAMPLES = 1024

#: The counters of :attr:`Stats.counts`, as ``Server.stats`` shows them.
COUNTERS = (
    "calls", "errors", "expected_errors", "expired", "bad_requests", "requeued", "duplicates",
    "redelivered", "reconnects", "reply_failures", "gone_callers", "streams", "items",
    "cancelled",
)


class Stats:
    """What a server has done, kept across restarts.

    ``counts`` is ``Server.stats``: calls answered, failed (unexpected, expected), expired,
    refused, requeued; repeats answered from the table of completed calls; requests
    redelivered; reconnections; replies the broker refused (the caller was gone), and requests
    acknowledged unanswered because their caller is known to be gone; streams started, the
    items they sent, and streams their callers cancelled (running, or before they ran).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: The latest handler durations, in seconds.
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def percentiles(self) -> tuple[float | None, float | None]:
        """The p50 and p99 of the latest handler durations, in milliseconds."""
        samples = sorted(self.latencies)
        return percentile(samples, 0.50), percentile(samples, 0.99)


class InFlight:
    """The requests of one run of a server taken from the broker and not yet done with.

    Args:
        counts: the server's counters, where each request is counted once done with.
    """

    def __init__(self, counts: dict[str, int]) -> None:
        self._counts = counts
        #: The requests in flight (read without the lock: one read of an int).
        self.count = 0
        # Entered as the plain lock it is, per request; the condition only for a wait.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # threads in wait_idle: notifying none costs a request three calls

    def add(self) -> None:
        """A request was taken in (on the I/O thread, before a worker has it)."""
        with self._lock:
            self.count += 1

    def settle(self, outcome: str) -> None:
        """A request taken in is done with: count it under ``outcome``."""
        with self._lock:
            self.count -= 1
            self._counts[outcome] += 1
            if not self.count and self._waiting:  # what wait_idle waits for
                self._changed.notify_all()

    def wait_idle(self, timeout: float | None) -> int:
        """Wait up to ``timeout`` s (None: for ever) until no request is in flight; returns how
        many still are."""
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: self.count == 0, timeout)
            finally:
                self._waiting -= 1
            return self.count


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of sorted durations, in milliseconds (None without any)."""
    if not ordered:
        return None
    return round(ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] * 1000, 3)


def status_report(
    stats: Stats, *, server_id: str, queue_type: str, uptime: float, node: str | None,
    in_flight: int, queue_depth: int | None,
) -> dict[str, Any]:
    """The figures of ``Server.status()`` (``system.stats``, ``rpc status``)."""
    counts = stats.counts
    p50, p99 = stats.percentiles()
    return {
        "server_id": server_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "uptime": round(uptime, 3),
        "node": node,
        "queue_type": queue_type,
        "calls": counts["calls"] + counts["errors"] + counts["expected_errors"],
        "errors": counts["errors"],
        "expected_errors": counts["expected_errors"],
        "bad_requests": counts["bad_requests"],
        "duplicates": counts["duplicates"],
        "streams": counts["streams"],
        "items": counts["items"],
        "cancelled": counts["cancelled"],
        "reconnects": counts["reconnects"],
        "in_flight": in_flight,
        "p50_ms": p50,
        "p99_ms": p99,
        "queue_depth": queue_depth,
    }
