"""Rate-limited log records: a storm of one error is logged a few times, with a count of the rest."""

from __future__ import annotations

import pytest

from rpc.core.ratelimit import RepeatLimiter


def test_the_first_records_of_a_kind_go_through() -> None:
    limiter = RepeatLimiter(burst=3, window=60)
    assert [limiter.allow("k", now=0) for _ in range(3)] == [0, 0, 0]


def test_records_past_the_burst_are_suppressed() -> None:
    limiter = RepeatLimiter(burst=2, window=60)
    limiter.allow("k", now=0)
    limiter.allow("k", now=0)
    assert limiter.allow("k", now=1) is None


def test_the_first_record_of_a_new_window_counts_the_suppressed_ones() -> None:
    limiter = RepeatLimiter(burst=1, window=10)
    limiter.allow("k", now=0)
    for _ in range(7):
        limiter.allow("k", now=1)
    assert limiter.allow("k", now=11) == 7


def test_kinds_are_limited_separately() -> None:
    limiter = RepeatLimiter(burst=1, window=60)
    limiter.allow(("div", ZeroDivisionError), now=0)
    assert limiter.allow(("div", ValueError), now=0) == 0


def test_a_burst_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        RepeatLimiter(burst=0)
