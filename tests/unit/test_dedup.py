"""The table of completed calls: a repeat of a request is answered, not run again."""

from __future__ import annotations

import threading
import time

import pytest

from rpc.core.dedup import Completed, CompletedCalls


def test_a_new_request_is_claimed_for_running() -> None:
    assert CompletedCalls().begin("m1", 0) is None


def test_a_repeat_of_a_completed_request_gets_its_reply() -> None:
    calls = CompletedCalls()
    calls.begin("m1", 0)
    calls.finish("m1", Completed(b"reply", "application/json"))
    done = calls.begin("m1", 0)
    assert done is not None and done.body == b"reply" and done.content_type == "application/json"


def test_a_repeat_arriving_while_the_first_runs_waits_for_its_reply() -> None:
    calls = CompletedCalls()
    calls.begin("m1", 0)
    got: list[Completed | None] = []
    waiter = threading.Thread(target=lambda: got.append(calls.begin("m1", 5)))
    waiter.start()
    time.sleep(0.05)
    assert not got  # still waiting: it did not start a second run
    calls.finish("m1", Completed(b"reply", "application/msgpack"))
    waiter.join(5)
    assert got[0] is not None and got[0].body == b"reply"


def test_every_repeat_waiting_for_the_first_run_gets_its_reply() -> None:
    calls = CompletedCalls()
    calls.begin("m1", 0)
    got: list[Completed | None] = []
    waiters = [threading.Thread(target=lambda: got.append(calls.begin("m1", 5)))
               for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.05)
    assert not got
    calls.finish("m1", Completed(b"reply", "application/msgpack"))
    for waiter in waiters:
        waiter.join(5)
    assert [done.body if done else None for done in got] == [b"reply", b"reply"]


def test_a_repeat_runs_after_all_when_the_first_run_ends_without_a_reply() -> None:
    calls = CompletedCalls()
    calls.begin("m1", 0)
    got: list[Completed | None] = []
    waiter = threading.Thread(target=lambda: got.append(calls.begin("m1", 5)))
    waiter.start()
    time.sleep(0.05)
    calls.finish("m1", None)
    waiter.join(5)
    assert got == [None]


def test_a_repeat_stops_waiting_at_its_deadline() -> None:
    calls = CompletedCalls()
    calls.begin("m1", 0)
    started = time.monotonic()
    assert calls.begin("m1", 0.05) is None
    assert time.monotonic() - started < 1


def test_the_oldest_replies_are_forgotten_past_the_size() -> None:
    calls = CompletedCalls(size=2)
    for key in ("a", "b", "c"):
        calls.begin(key, 0)
        calls.finish(key, Completed(b"x", "t"))
    assert len(calls) == 2
    assert calls.begin("a", 0) is None


def test_replies_are_forgotten_past_the_byte_budget() -> None:
    calls = CompletedCalls(max_bytes=10)
    for key in ("a", "b"):
        calls.begin(key, 0)
        calls.finish(key, Completed(b"123456", "t"))
    assert len(calls) == 1


def test_replies_are_forgotten_after_the_ttl() -> None:
    calls = CompletedCalls(ttl=0.05)
    calls.begin("a", 0)
    calls.finish("a", Completed(b"x", "t"))
    time.sleep(0.1)
    assert calls.begin("a", 0) is None


def test_expired_replies_leave_the_table_as_later_calls_complete() -> None:
    calls = CompletedCalls(ttl=0.05)
    calls.begin("a", 0)
    calls.finish("a", Completed(b"x", "t"))
    time.sleep(0.1)
    calls.begin("b", 0)
    calls.finish("b", Completed(b"y", "t"))
    assert len(calls) == 1


def test_a_size_or_ttl_of_zero_turns_the_table_off() -> None:
    assert not CompletedCalls(size=0).enabled
    assert not CompletedCalls(ttl=0).enabled
    assert CompletedCalls().enabled


def test_negative_limits_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        CompletedCalls(size=-1)
