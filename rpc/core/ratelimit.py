"""Rate-limiting repeated log records, so that a storm of one error does not flood the log (no I/O)."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

#: Records of one kind let through per window unless told otherwise.
DEFAULT_BURST = 5
#: Seconds of a window.
DEFAULT_WINDOW = 60.0
#: Kinds tracked at most; the table is cleared past this (a new window for every kind).
MAX_KEYS = 10_000


class RepeatLimiter:
    """Lets ``burst`` records of each kind through per ``window`` seconds and counts the rest.

    ``allow(key)`` returns None for a record to suppress, else how many of that kind were
    suppressed since the last one let through, for the line that is logged to say so.
    """

    def __init__(self, burst: int = DEFAULT_BURST, window: float = DEFAULT_WINDOW) -> None:
        if burst < 1 or window <= 0:
            raise ValueError("burst must be at least 1 and window positive")
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        # key -> [window start, records let through in it, suppressed since the last one]
        self._seen: dict[Hashable, list[float]] = {}

    def allow(self, key: Hashable, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen[0] >= self.window:
                if seen is None and len(self._seen) >= MAX_KEYS:
                    self._seen.clear()
                suppressed = 0 if seen is None else int(seen[2])
                self._seen[key] = [now, 1, 0]
                return suppressed
            if seen[1] < self.burst:
                seen[1] += 1
                suppressed, seen[2] = int(seen[2]), 0
                return suppressed
            seen[2] += 1
            return None
