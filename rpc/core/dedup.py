"""Recently completed calls by ``message_id``: a retried or redelivered request runs once (no I/O).

A proxy that retries a call, and a broker that redelivers a request after a connection loss,
both send the same ``message_id`` again. The server remembers the encoded replies of the calls
it completed, for a bounded number of calls, bytes and seconds, and answers a repeat from here.
A repeat that arrives while the first copy still runs waits for that run instead of starting a
second one. The guarantee holds within one server process and the cache window.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

#: Calls remembered unless told otherwise: at 2,000 calls/s, the last 50 s of them.
DEFAULT_SIZE = 100_000
#: Seconds a completed call is remembered unless told otherwise: longer than any retry backoff.
DEFAULT_TTL = 300.0
#: Bytes of encoded replies kept at most; the oldest are forgotten first.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: The share of the TTL between two sweeps of the expired calls.
SWEEP_EVERY = 0.01


class Completed(NamedTuple):
    """The encoded reply of a completed call: enough to answer a repeat without running it.

    A tuple of atoms, which the cyclic garbage collector stops tracking: a table of 100,000 of
    them costs no collection time.
    """

    body: bytes
    content_type: str
    at: float = 0.0


@dataclass(slots=True)
class _Running:
    """A running call some repeat waits for; made by the first repeat that waits (a call
    nobody waits for is entered as None: most calls have no repeat, and this costs a lock)."""

    done: threading.Event
    result: Completed | None = None


#: What :meth:`CompletedCalls.begin` finds for a key that is not running.
_NOT_RUNNING = object()


class CompletedCalls:
    """The table of running and recently completed calls, keyed by ``message_id``."""

    def __init__(
        self, size: int = DEFAULT_SIZE, ttl: float = DEFAULT_TTL, max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if size < 0 or ttl < 0 or max_bytes < 0:
            raise ValueError("the duplicate cache's size, ttl and max_bytes cannot be negative")
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        #: Whether repeats are recognised at all (a size or TTL of 0 turns them off).
        self.enabled = size > 0 and ttl > 0
        self._lock = threading.Lock()
        self._done: OrderedDict[Hashable, Completed] = OrderedDict()
        self._running: dict[Hashable, _Running | None] = {}
        self._bytes = 0
        self._sweep_at = 0.0

    def begin(self, key: Hashable, wait: float | None) -> Completed | None:
        """Claim ``key`` (a request's message id) for running, or get the reply of its earlier run.

        Returns None when the caller should run the call (and then :meth:`finish` it). When
        another copy is running, waits up to ``wait`` seconds (None: for ever) for its reply; if
        that run ends without one, or the wait runs out, the caller runs it after all.
        """
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            with self._lock:
                entry = self._done.get(key)
                if entry is not None:
                    if time.monotonic() - entry.at <= self.ttl:
                        return entry
                    self._forget(key)
                running = self._running.get(key, _NOT_RUNNING)
                if running is _NOT_RUNNING:
                    self._running[key] = None
                    return None
                if running is None:
                    running = self._running[key] = _Running(threading.Event())
                assert isinstance(running, _Running)
                done = running.done
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            done.wait(remaining)
            if running.result is not None:
                return running.result

    def finish(self, key: Hashable, result: Completed | None) -> None:
        """End the run of ``key``: remember its reply (None: it produced none to keep)."""
        with self._lock:
            running = self._running.pop(key, None)
            if running is not None:
                running.result = result
            if result is not None and len(result.body) <= self.max_bytes:
                if not result.at:
                    result = result._replace(at=time.monotonic())
                self._done[key] = result
                self._bytes += len(result.body)
                if len(self._done) > self.size or self._bytes > self.max_bytes \
                        or result.at >= self._sweep_at:
                    self._trim(result.at)
        if running is not None:
            running.done.set()

    def __len__(self) -> int:
        return len(self._done)

    def _trim(self, now: float) -> None:
        """Forget the oldest calls beyond the size and bytes, and those older than the TTL at
        ``now`` (the monotonic time of the call just remembered). The sweep by age runs at most
        every :data:`SWEEP_EVERY` of the TTL: :meth:`begin` never answers from an expired call,
        so one kept a little longer only holds its memory a little longer."""
        done = self._done
        while done and (len(done) > self.size or self._bytes > self.max_bytes):
            _, old = done.popitem(last=False)
            self._bytes -= len(old.body)
        if now < self._sweep_at:
            return
        self._sweep_at = now + self.ttl * SWEEP_EVERY
        while done:
            key, oldest = next(iter(done.items()))
            if now - oldest.at <= self.ttl:
                break
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        old = self._done.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
