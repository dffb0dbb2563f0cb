"""A calculator server: functions and an instance, the README's and docker-compose's example.

Run it with ``rpc serve examples.calc:server`` (add ``--processes 2`` for two workers), then
``rpc call calc add 2 3`` or ``python examples/client.py``.
"""

import math
import time

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


@server.expose
def div(a: float, b: float) -> float:
    """Divide a by b; b=0 raises ZeroDivisionError on the caller's side."""
    return a / b


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


server.register_instance(Stats(), "stats")
