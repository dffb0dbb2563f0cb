"""Latency recording in fixed memory: an HdrHistogram of microseconds (no I/O).

A load run records millions of latencies; keeping each sample would grow without bound, so they
go into an HdrHistogram (3 significant digits, 1 µs to 1 hour, a few tens of KiB whatever the
count). Histograms from several client processes merge losslessly through :meth:`encode`.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: Percentiles every report lists, in this order.
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)

_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000
_SIGNIFICANT_DIGITS = 3


def _hdr_class() -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as exc:
        raise ImportError(
            "latency recording needs the bench extra: pip install 'amqp-rpc[bench]'"
        ) from exc
    return HdrHistogram


class LatencyHistogram:
    """Latencies in seconds in, milliseconds out; fixed memory whatever the count."""

    def __init__(self, encoded: bytes | None = None) -> None:
        hdr = _hdr_class()
        if encoded is None:
            self._hdr = hdr(_LOWEST_US, _HIGHEST_US, _SIGNIFICANT_DIGITS)
        else:
            self._hdr = hdr.decode(encoded)

    def record(self, seconds: float) -> None:
        """Record one latency (clamped into the histogram's 1 µs .. 1 h range)."""
        micros = int(seconds * 1e6 + 0.5)
        self._hdr.record_value(min(max(micros, _LOWEST_US), _HIGHEST_US))

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this histogram."""
        self._hdr.add(other._hdr)

    def encode(self) -> bytes:
        """A compact text form, for sending between processes; see ``LatencyHistogram(encoded)``."""
        return bytes(self._hdr.encode())

    @property
    def count(self) -> int:
        return int(self._hdr.get_total_count())

    def summary_ms(self) -> dict[str, float]:
        """min, mean, stdev, the :data:`PERCENTILES` and max, in milliseconds (zeros if empty)."""
        keys = ["min", "mean", "stdev", *(percentile_key(p) for p in PERCENTILES), "max"]
        if self.count == 0:
            return dict.fromkeys(keys, 0.0)
        hdr = self._hdr
        values = [hdr.get_min_value(), hdr.get_mean_value(), hdr.get_stddev()]
        values += [hdr.get_value_at_percentile(p) for p in PERCENTILES]
        values.append(hdr.get_max_value())
        return {key: round(value / 1000, 4) for key, value in zip(keys, values, strict=True)}

    def recorded(self) -> list[tuple[float, int]]:
        """(latency in ms, count) for every distinct recorded value, ascending."""
        return [
            (item.value_iterated_to / 1000, int(item.count_added_in_this_iter_step))
            for item in self._hdr.get_recorded_iterator()
        ]


def percentile_key(p: float) -> str:
    """The report key of a percentile: ``p50``, ``p99``, ``p99.9``."""
    return f"p{p:g}"


def log_buckets(recorded: list[tuple[float, int]], buckets: int = 12) -> list[tuple[float, int]]:
    """Group (value, count) pairs into ``buckets`` log-spaced bins: (upper edge, count) each.

    A log axis keeps one slow outlier from squashing every other bar into the first one.
    """
    if not recorded:
        return []
    low, high = recorded[0][0], recorded[-1][0]
    if high <= low:
        return [(high, sum(count for _, count in recorded))]
    low = max(low, 1e-3)
    ratio = (high / low) ** (1 / buckets)
    edges = [low * ratio ** (i + 1) for i in range(buckets)]
    edges[-1] = high
    counts = [0] * buckets
    for value, count in recorded:
        counts[min(bisect_left(edges, value), buckets - 1)] += count
    return list(zip(edges, counts, strict=True))
