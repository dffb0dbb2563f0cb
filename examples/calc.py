"""A calculator server: functions and instances, the README's and docker-compose's example.

Run it with ``rpc serve examples.calc:server`` (add ``--processes 2`` for two workers), then
``rpc call calc add 2 3`` or ``python examples/client.py``. It serves every call the README and
docs/ make (tests/test_docs_blocks.py runs them against it): ``add``, ``math.mul``, ``div`` and
``divide``, ``echo``, ``log_event`` (for casts) and ``reload`` (for broadcasts), among others.
"""

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from rpc import Server

server = Server(server_id="calc")


@server.expose
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@server.expose
def sub(a: float, b: float) -> float:
    """Subtract b from a."""
    return a - b


@server.expose
def mul(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@server.expose(expected=(ZeroDivisionError,))  # a caller's mistake: logged at INFO
def div(a: float, b: float) -> float:
    """Divide a by b; b=0 raises ZeroDivisionError on the caller's side."""
    return a / b


server.register_function(div, "divide", expected=(ZeroDivisionError,))


@server.expose
def echo(value: Any) -> Any:
    """Return value unchanged (rpc bench's payload target)."""
    return value


_events: deque[dict[str, Any]] = deque(maxlen=100)
_reloads = 0
_lock = threading.Lock()


@server.expose
def log_event(message: str, **fields: Any) -> None:
    """Log an event (a target for proxy.cast: nobody waits for a reply)."""
    logging.getLogger("examples.calc").info("event: %s %s", message, fields or "")
    _events.append({"message": message, "time": time.time(), **fields})


@server.expose
def events() -> list[dict[str, Any]]:
    """The last 100 events logged by this process, oldest first."""
    return list(_events)


@server.expose
def reload() -> dict[str, Any]:
    """Pretend to reload configuration (a target for proxy.broadcast): which process, how often."""
    global _reloads
    with _lock:
        _reloads += 1
        return {"pid": os.getpid(), "reloads": _reloads}


@server.expose
def primes(limit: int) -> Iterator[int]:
    """Yield the primes below limit, one by one (a stream: ``proxy.stream.primes(100)``)."""
    found: list[int] = []
    for n in range(2, limit):
        if all(n % p for p in found if p * p <= n):
            found.append(n)
            yield n


@server.expose
def power(base: float, exp: float = 2) -> float:
    """Raise base to exp (default: square it)."""
    result: float = base**exp
    return result


@server.expose
def slow_add(a: float, b: float, seconds: float = 1.0) -> float:
    """Add two numbers after sleeping, to watch timeouts and graceful shutdown."""
    time.sleep(seconds)
    return a + b


class Stats:
    """Statistics over lists of numbers, served as ``stats.<method>``."""

    def mean(self, values: list[float]) -> float:
        """Arithmetic mean."""
        return sum(values) / len(values)

    def stdev(self, values: list[float]) -> float:
        """Population standard deviation."""
        mu = self.mean(values)
        return math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))

    def describe(self, values: list[float]) -> dict[str, float]:
        """Count, min, max, mean and stdev, as a mapping."""
        return {
            "count": len(values), "min": min(values), "max": max(values),
            "mean": self.mean(values), "stdev": self.stdev(values),
        }


class Math:
    """Arithmetic as an instance, served as ``math.<method>`` (the README's example)."""

    def mul(self, a: float, b: float) -> float:
        """Multiply two numbers."""
        return a * b

    def hypot(self, a: float, b: float) -> float:
        """The length of the hypotenuse of a right triangle with sides a and b."""
        return math.hypot(a, b)


server.register_instance(Stats(), "stats")
server.register_instance(Math(), "math")
