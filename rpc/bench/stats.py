"""The arithmetic of a load run: send schedules, outcome tallies and the report (no I/O).

Everything here works on plain numbers and dicts so that it can be tested on synthetic input
and merged across client processes; :mod:`rpc.loadgen` does the calling and the timing.
"""

from __future__ import annotations

import threading
from typing import Any

from ..core.histogram import LatencyHistogram, log_buckets

#: Version tag of the report layout; bump it when a key changes meaning.
REPORT_SCHEMA = "rpc-bench/1"
#: Width of the throughput-over-time bins, in seconds.
THROUGHPUT_INTERVAL = 0.1
#: Distinct result values a tally keeps apart before lumping the rest into "other".
MAX_DISTINCT_RESULTS = 32
#: The error type name a call that got no reply in time is counted under.
TIMEOUT_ERROR = "RPCTimeout"


def scheduled_time(start: float, rate: float, n: int) -> float:
    """When call ``n`` (from 0) of an open-loop run at ``rate`` calls/s is due.

    Latency is measured from this time, not from the actual send, so a client that falls
    behind the schedule shows the queueing delay instead of hiding it (coordinated omission).
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, not {rate!r}")
    return start + n / rate


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` shares that differ by at most one, larger ones first."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def error_name(exc: BaseException) -> str:
    """The name an error is counted under: the bare class name, as a user would search for it."""
    return type(exc).__name__


class Tally:
    """Outcomes of calls: latencies of successes, errors by type, completions over time.

    Thread-safe: several caller threads (threads mode) record into one tally.
    """

    def __init__(self, start: float = 0.0, *, count_results: bool = False) -> None:
        self.start = start
        self.latency = LatencyHistogram()
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.error_count = 0
        self.throughput: list[int] = []
        self.results: dict[str, int] | None = {} if count_results else None
        self.first_sent: float | None = None
        self.last_done: float | None = None
        self._lock = threading.Lock()

    @property
    def completed(self) -> int:
        return self.ok + self.error_count

    def record_ok(self, sent: float, done: float, result: Any = None) -> None:
        """A call sent (or due) at ``sent`` that returned at ``done`` (perf_counter seconds)."""
        with self._lock:
            self.latency.record(done - sent)
            self.ok += 1
            self._mark(sent, done)
            if self.results is not None:
                key = repr(result)
                if key not in self.results and len(self.results) >= MAX_DISTINCT_RESULTS:
                    key = "other"
                self.results[key] = self.results.get(key, 0) + 1

    def record_error(self, name: str, sent: float, done: float) -> None:
        """A call that failed with the error type ``name`` (see :func:`error_name`)."""
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + 1
            self.error_count += 1
            self._mark(sent, done)

    def _mark(self, sent: float, done: float) -> None:
        if self.first_sent is None or sent < self.first_sent:
            self.first_sent = sent
        if self.last_done is None or done > self.last_done:
            self.last_done = done
        index = max(int((done - self.start) / THROUGHPUT_INTERVAL), 0)
        bins = self.throughput
        if index >= len(bins):
            bins.extend([0] * (index + 1 - len(bins)))
        bins[index] += 1

    def snapshot(self) -> dict[str, Any]:
        """A picklable, JSON-able copy, with times relative to ``start`` (see :meth:`merge`)."""
        with self._lock:
            return {
                "latency": self.latency.encode().decode("ascii"),
                "ok": self.ok,
                "errors": dict(self.errors),
                "throughput": list(self.throughput),
                "results": None if self.results is None else dict(self.results),
                "first_sent": None if self.first_sent is None else self.first_sent - self.start,
                "last_done": None if self.last_done is None else self.last_done - self.start,
            }

    def merge(self, snap: dict[str, Any]) -> None:
        """Add another tally's :meth:`snapshot`, taken against the same start time."""
        with self._lock:
            self.latency.merge(LatencyHistogram(snap["latency"].encode("ascii")))
            self.ok += snap["ok"]
            for name, count in snap["errors"].items():
                self.errors[name] = self.errors.get(name, 0) + count
                self.error_count += count
            bins = snap["throughput"]
            if len(bins) > len(self.throughput):
                self.throughput.extend([0] * (len(bins) - len(self.throughput)))
            for i, count in enumerate(bins):
                self.throughput[i] += count
            if snap["results"] is not None:
                if self.results is None:
                    self.results = {}
                for key, count in snap["results"].items():
                    self.results[key] = self.results.get(key, 0) + count
            for key, pick in (("first_sent", min), ("last_done", max)):
                value = snap[key]
                if value is None:
                    continue
                mine = getattr(self, key)
                absolute = self.start + value
                setattr(self, key, absolute if mine is None else pick(mine, absolute))


def build_report(
    params: dict[str, Any],
    tally: Tally,
    *,
    client_cpu_s: float | None = None,
    environment: dict[str, str] | None = None,
    histogram_buckets: int = 12,
) -> dict[str, Any]:
    """The final report of a run, as a JSON-able dict (layout :data:`REPORT_SCHEMA`).

    The run lasts from the first call's send (or due) time to the last completion; calls/s
    counts every completed call, ``ok_per_s`` only the successful ones.
    """
    if tally.first_sent is not None and tally.last_done is not None:
        elapsed = max(tally.last_done - tally.first_sent, 1e-9)
    else:
        elapsed = 0.0
    count = tally.completed
    latency = tally.latency.summary_ms()
    return {
        "schema": REPORT_SCHEMA,
        "params": params,
        "environment": environment or {},
        "count": count,
        "ok": tally.ok,
        "errors": tally.error_count,
        "errors_by_type": dict(sorted(tally.errors.items())),
        "timeouts": tally.errors.get(TIMEOUT_ERROR, 0),
        "elapsed_s": round(elapsed, 6),
        "calls_per_s": round(count / elapsed, 2) if elapsed else 0.0,
        "ok_per_s": round(tally.ok / elapsed, 2) if elapsed else 0.0,
        "latency_ms": latency,
        "histogram": [
            {"le_ms": round(edge, 4), "count": n}
            for edge, n in log_buckets(tally.latency.recorded(), histogram_buckets)
        ],
        "throughput": {"interval_s": THROUGHPUT_INTERVAL, "counts": list(tally.throughput)},
        "results": tally.results,
        "client_cpu_s": None if client_cpu_s is None else round(client_cpu_s, 4),
        "client_cpu_us_per_call": (
            round(client_cpu_s / count * 1e6, 1) if client_cpu_s is not None and count else None
        ),
    }


#: Keys of a report and their JSON types, for checking a report's shape.
REPORT_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "params": dict,
    "environment": dict,
    "count": int,
    "ok": int,
    "errors": int,
    "errors_by_type": dict,
    "timeouts": int,
    "elapsed_s": (int, float),
    "calls_per_s": (int, float),
    "ok_per_s": (int, float),
    "latency_ms": dict,
    "histogram": list,
    "throughput": dict,
    "results": (dict, type(None)),
    "client_cpu_s": (int, float, type(None)),
    "client_cpu_us_per_call": (int, float, type(None)),
}


def schema_problems(report: dict[str, Any]) -> list[str]:
    """What is wrong with a report's shape (an empty list when it matches the schema)."""
    problems = [f"missing key {key!r}" for key in REPORT_KEYS if key not in report]
    problems += [
        f"{key!r} is {type(report[key]).__name__}"
        for key, kind in REPORT_KEYS.items()
        if key in report and not isinstance(report[key], kind)
    ]
    if report.get("schema") not in (None, REPORT_SCHEMA):
        problems.append(f"schema {report['schema']!r} is not {REPORT_SCHEMA!r}")
    latency = report.get("latency_ms")
    if isinstance(latency, dict):
        for key in ("min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"):
            if not isinstance(latency.get(key), (int, float)):
                problems.append(f"latency_ms has no number {key!r}")
    if isinstance(report.get("count"), int) and isinstance(report.get("ok"), int):
        if report["count"] != report["ok"] + report.get("errors", 0):
            problems.append("count is not ok + errors")
    return problems
