"""rpc.core.calls: callback states, waking a pending call, futures with dispatched callbacks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, as_completed, wait
from typing import Any

import pytest

import rpc
from rpc.core.calls import (
    BROADCAST,
    FUTURE,
    SYNC,
    CallbackState,
    CallbackStates,
    CallFuture,
    CallTable,
    Pending,
)

WAIT = 5.0  # the longest any test here waits for another thread


def run_in_thread(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# -- CallbackState ---------------------------------------------------------------------------------

def test_callback_state_values_are_those_of_the_api() -> None:
    assert (CallbackState.WAITING, CallbackState.PROCESSING, CallbackState.FINISHED) == (0, 1, 2)
    assert rpc.CallbackState is CallbackState


def test_callback_state_compares_as_an_int() -> None:
    assert CallbackState.FINISHED == 2
    assert CallbackState.WAITING < CallbackState.PROCESSING < CallbackState.FINISHED


# -- CallbackStates --------------------------------------------------------------------------------

def test_an_unknown_uid_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        CallbackStates().get("never-issued")


def test_a_started_call_is_waiting() -> None:
    states = CallbackStates()
    states.start("a")
    assert states.get("a") is CallbackState.WAITING


def test_a_call_whose_callback_runs_is_processing() -> None:
    states = CallbackStates()
    states.start("a")
    states.processing("a")
    assert states.get("a") is CallbackState.PROCESSING


def test_a_finished_call_is_finished() -> None:
    states = CallbackStates()
    states.start("a")
    states.processing("a")
    states.finish("a")
    assert states.get("a") is CallbackState.FINISHED


def test_a_call_can_finish_straight_from_waiting() -> None:
    states = CallbackStates()
    states.start("a")
    states.finish("a")
    assert states.get("a") is CallbackState.FINISHED


def test_states_of_different_uids_are_independent() -> None:
    states = CallbackStates()
    for uid in ("a", "b", "c"):
        states.start(uid)
    states.processing("b")
    states.finish("c")
    assert [states.get(u) for u in ("a", "b", "c")] == [
        CallbackState.WAITING, CallbackState.PROCESSING, CallbackState.FINISHED]


def test_waiting_counts_calls_not_yet_finished() -> None:
    states = CallbackStates()
    for uid in ("a", "b", "c"):
        states.start(uid)
    states.processing("b")
    assert states.waiting() == 3
    states.finish("a")
    states.finish("b")
    assert states.waiting() == 1


def test_the_most_recent_ten_thousand_finished_uids_stay_readable() -> None:
    states = CallbackStates()
    for i in range(10_000):
        states.start(f"u{i}")
        states.finish(f"u{i}")
    assert all(states.get(f"u{i}") is CallbackState.FINISHED for i in range(10_000))


def test_finished_uids_older_than_the_most_recent_ten_thousand_are_forgotten() -> None:
    states = CallbackStates()
    for i in range(25_000):
        states.start(f"u{i}")
        states.finish(f"u{i}")
    for i in (0, 1, 9_999, 14_999):
        with pytest.raises(KeyError):
            states.get(f"u{i}")
    assert all(states.get(f"u{i}") is CallbackState.FINISHED for i in range(15_000, 25_000))
    assert states.waiting() == 0


def test_forgetting_is_in_finishing_order_not_starting_order() -> None:
    states = CallbackStates(keep=2)
    for uid in ("first", "second", "third"):
        states.start(uid)
    states.finish("third")
    states.finish("first")
    states.finish("second")
    with pytest.raises(KeyError):
        states.get("third")
    assert states.get("first") is CallbackState.FINISHED


def test_live_calls_are_never_forgotten_however_many_finish() -> None:
    states = CallbackStates(keep=3)
    states.start("slow")
    for i in range(100):
        states.start(f"u{i}")
        states.finish(f"u{i}")
    assert states.get("slow") is CallbackState.WAITING


def test_the_number_kept_is_configurable() -> None:
    states = CallbackStates(keep=5)
    for i in range(6):
        states.start(f"u{i}")
        states.finish(f"u{i}")
    with pytest.raises(KeyError):
        states.get("u0")
    assert states.get("u1") is CallbackState.FINISHED


def test_states_stay_consistent_under_many_threads() -> None:
    states = CallbackStates()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(500):
                uid = f"t{n}-{i}"
                states.start(uid)
                states.processing(uid)
                states.get(uid)
                states.finish(uid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert states.waiting() == 0
    assert all(states.get(f"t{n}-499") is CallbackState.FINISHED for n in range(8))


# -- Pending: sleep and wake -----------------------------------------------------------------------

def armed() -> Pending:
    pending = Pending("cid", "add", SYNC, "application/x-msgpack", None)
    pending.arm()
    return pending


def test_a_new_pending_call_is_not_done() -> None:
    pending = Pending("cid", "add", SYNC, "application/json", 12.5)
    assert (pending.cid, pending.method, pending.kind, pending.content_type, pending.deadline) == (
        "cid", "add", SYNC, "application/json", 12.5)
    assert not pending.done
    assert pending.future is None and pending.on_success is None and pending.on_error is None


def test_sleep_without_a_wake_lasts_the_timeout() -> None:
    pending = armed()
    started = time.monotonic()
    pending.sleep(0.1)
    assert 0.09 <= time.monotonic() - started < WAIT


def test_a_wake_before_sleep_makes_sleep_return_at_once() -> None:
    pending = armed()
    pending.wake()
    started = time.monotonic()
    pending.sleep(WAIT)
    assert time.monotonic() - started < 1.0


def test_a_wake_from_another_thread_ends_the_sleep_early() -> None:
    pending = armed()
    timer = threading.Timer(0.05, pending.wake)
    timer.start()
    started = time.monotonic()
    pending.sleep(WAIT)
    elapsed = time.monotonic() - started
    timer.join(WAIT)
    assert 0.04 <= elapsed < WAIT - 1


def test_sleep_without_a_timeout_returns_when_woken() -> None:
    pending = armed()
    sleeper = run_in_thread(lambda: pending.sleep(None))
    time.sleep(0.05)
    assert sleeper.is_alive()
    pending.wake()
    sleeper.join(WAIT)
    assert not sleeper.is_alive()


def test_a_wake_is_consumed_by_one_sleep() -> None:
    pending = armed()
    pending.wake()
    pending.sleep(WAIT)  # consumes the wake and re-arms
    started = time.monotonic()
    pending.sleep(0.1)
    assert time.monotonic() - started >= 0.09


def test_two_wakes_before_a_sleep_count_once() -> None:
    pending = armed()
    pending.wake()
    pending.wake()
    pending.sleep(WAIT)
    started = time.monotonic()
    pending.sleep(0.1)
    assert time.monotonic() - started >= 0.09


def test_a_pending_call_can_be_woken_again_after_it_slept() -> None:
    pending = armed()
    for _ in range(3):
        timer = threading.Timer(0.02, pending.wake)
        timer.start()
        started = time.monotonic()
        pending.sleep(WAIT)
        assert time.monotonic() - started < WAIT - 1
        timer.join(WAIT)


def test_a_timed_out_sleep_can_still_be_woken_later() -> None:
    pending = armed()
    pending.sleep(0.01)
    pending.wake()
    started = time.monotonic()
    pending.sleep(WAIT)
    assert time.monotonic() - started < 1.0


def test_sleep_with_a_negative_timeout_returns_at_once() -> None:
    pending = armed()
    started = time.monotonic()
    pending.sleep(-3.0)
    assert time.monotonic() - started < 1.0


def test_waking_a_call_that_was_never_armed_does_nothing() -> None:
    pending = Pending("cid", "add", SYNC, "application/json", None)
    pending.wake()
    pending.wake()
    assert not pending.done


def test_sleep_accepts_a_timeout_beyond_the_platform_maximum() -> None:
    pending = armed()
    pending.wake()
    pending.sleep(threading.TIMEOUT_MAX * 2)  # woken already: returns at once


# -- CallFuture ------------------------------------------------------------------------------------

def collecting_future() -> tuple[CallFuture, list[Callable[[], None]]]:
    jobs: list[Callable[[], None]] = []
    return CallFuture(jobs.append), jobs


def test_a_call_future_is_a_concurrent_future() -> None:
    assert isinstance(CallFuture(lambda job: job()), Future)


def test_done_callbacks_are_handed_to_the_dispatch_function_not_run() -> None:
    future, jobs = collecting_future()
    seen: list[Any] = []
    future.add_done_callback(seen.append)
    future.set_result(5)
    assert seen == []
    assert len(jobs) == 1


def test_a_dispatched_done_callback_receives_the_future() -> None:
    future, jobs = collecting_future()
    seen: list[Any] = []
    future.add_done_callback(seen.append)
    future.set_result(5)
    jobs[0]()
    assert seen == [future]
    assert seen[0].result() == 5


def test_a_done_callback_added_after_completion_is_dispatched_too() -> None:
    future, jobs = collecting_future()
    future.set_result("done")
    seen: list[Any] = []
    future.add_done_callback(seen.append)
    assert seen == []
    assert len(jobs) == 1
    jobs[0]()
    assert seen == [future]


def test_a_failed_future_dispatches_its_callbacks_with_the_exception() -> None:
    future, jobs = collecting_future()
    seen: list[BaseException | None] = []
    future.add_done_callback(lambda fut: seen.append(fut.exception()))
    error = ValueError("remote")
    future.set_exception(error)
    jobs[0]()
    assert seen == [error]


def test_each_done_callback_is_dispatched_once_in_order() -> None:
    future, jobs = collecting_future()
    seen: list[str] = []
    future.add_done_callback(lambda _: seen.append("first"))
    future.add_done_callback(lambda _: seen.append("second"))
    future.set_result(None)
    for job in jobs:
        job()
    assert seen == ["first", "second"]


def test_result_wakes_without_the_dispatch_function() -> None:
    future, jobs = collecting_future()
    timer = threading.Timer(0.02, future.set_result, args=(42,))
    timer.start()
    assert future.result(timeout=WAIT) == 42
    timer.join(WAIT)
    assert jobs == []


def test_done_callbacks_run_on_the_dispatching_thread() -> None:
    work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    def run_jobs() -> None:
        while (job := work.get(timeout=WAIT)) is not None:
            job()

    runner = threading.Thread(target=run_jobs, name="callback-runner", daemon=True)
    runner.start()
    future = CallFuture(work.put)
    ran_on: list[str] = []
    done = threading.Event()
    future.add_done_callback(lambda _: (ran_on.append(threading.current_thread().name),
                                        done.set()))
    future.set_result(1)
    assert done.wait(WAIT)
    work.put(None)
    runner.join(WAIT)
    assert ran_on == ["callback-runner"]


def test_a_done_callback_may_block_without_blocking_the_completing_thread() -> None:
    work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
    future = CallFuture(work.put)
    release = threading.Event()
    future.add_done_callback(lambda _: release.wait(WAIT))
    started = time.monotonic()
    future.set_result(1)  # the callback is only queued: set_result does not wait for it
    assert time.monotonic() - started < 1.0
    release.set()
    work.get(timeout=WAIT)()


# -- CallTable -------------------------------------------------------------------------------------

def pending(cid: str, kind: int = SYNC, deadline: float | None = None) -> Pending:
    return Pending(cid, "add", kind, "application/json", deadline)


def test_a_reply_finds_its_call_by_correlation_id_once() -> None:
    table = CallTable()
    call = pending("c1")
    table.add(call)
    assert table.take("c1") is call
    assert table.take("c1") is None
    assert len(table) == 0


def test_a_correlation_id_that_is_not_a_string_matches_nothing() -> None:
    table = CallTable()
    table.add(pending("1"))
    assert table.take(1) is None and table.get(b"1") is None


def test_get_leaves_a_broadcast_in_the_table_for_more_replies() -> None:
    table = CallTable()
    table.add(pending("b", BROADCAST))
    assert table.get("b") is table.get("b") is not None


def test_a_reply_takes_its_call_but_leaves_a_broadcast() -> None:
    table = CallTable()
    call, fut, broadcast = pending("c"), pending("f", FUTURE, 10.0), pending("b", BROADCAST)
    table.add(call)
    table.add(fut, background=True)
    table.add(broadcast)
    assert table.take_answered("c") is call and table.take_answered("c") is None
    assert table.take_answered("f") is fut and table.background == 0
    assert table.take_answered("b") is table.take_answered("b") is broadcast
    assert table.take_answered(1) is None and len(table) == 1


def test_background_calls_are_counted_until_taken() -> None:
    table = CallTable()
    table.add(pending("f", FUTURE, 10.0), background=True)
    table.add(pending("s"))
    assert table.background == 1
    table.take("f")
    assert table.background == 0


def test_expired_returns_background_calls_past_their_deadline_in_order() -> None:
    table = CallTable()
    for cid, deadline in (("late", 20.0), ("early", 10.0), ("never", None)):
        table.add(pending(cid, FUTURE, deadline), background=True)
    assert table.next_deadline() == 10.0
    assert [c.cid for c in table.expired(15.0)] == ["early"]
    assert [c.cid for c in table.expired(25.0)] == ["late"]
    assert table.background == 1 and table.get("never") is not None


def test_a_call_taken_before_its_deadline_does_not_expire() -> None:
    table = CallTable()
    table.add(pending("f", FUTURE, 10.0), background=True)
    table.take("f")
    assert table.expired(11.0) == []


def test_drain_empties_the_table_and_its_timers() -> None:
    table = CallTable()
    table.add(pending("f", FUTURE, 10.0), background=True)
    table.add(pending("s"))
    assert {c.cid for c in table.drain()} == {"f", "s"}
    assert len(table) == 0 and table.background == 0 and table.next_deadline() is None


def test_next_deadline_skips_the_timers_of_answered_calls() -> None:
    table = CallTable()
    table.add(pending("answered", FUTURE, 10.0), background=True)
    table.add(pending("live", FUTURE, 20.0), background=True)
    table.take("answered")
    assert table.next_deadline() == 20.0


def test_timers_of_answered_calls_do_not_pile_up() -> None:
    table = CallTable()
    for n in range(10_000):
        table.add(pending(f"c{n}", FUTURE, 60.0 + n), background=True)
        table.take(f"c{n}")
    assert len(table._timers) < 300


def test_a_cancelled_call_future_is_done_for_concurrent_futures_wait() -> None:
    future, _ = collecting_future()
    done: list[Future[Any]] = []
    waiting = run_in_thread(lambda: done.extend(wait([future], timeout=WAIT).done))
    assert future.cancel()
    waiting.join(WAIT)
    assert done == [future]
    assert list(as_completed([future], timeout=0)) == [future]


def test_cancelling_a_call_future_twice_forgets_its_call_once() -> None:
    future, _ = collecting_future()
    forgotten: list[bool] = []
    future.forget = lambda: forgotten.append(True)
    assert future.cancel() and future.cancel()
    assert forgotten == [True]


def test_a_call_ending_after_its_future_was_cancelled_finds_it_cancelled() -> None:
    future, _ = collecting_future()
    assert future.cancel()
    assert not future.set_running_or_notify_cancel()


def test_a_call_future_set_running_can_no_longer_be_cancelled() -> None:
    future, _ = collecting_future()
    assert future.set_running_or_notify_cancel()
    assert not future.cancel()
    future.set_result(1)
    assert future.result() == 1
