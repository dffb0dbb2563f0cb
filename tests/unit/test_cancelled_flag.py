"""A handler's cancelled flag (``current_call().cancelled``): a threading.Event built lazily."""

from __future__ import annotations

import threading

from rpc.core.context import CallInfo, CancelledFlag


def test_the_flag_is_a_threading_event_and_starts_clear() -> None:
    flag = CancelledFlag()
    assert isinstance(flag, threading.Event)
    assert not flag.is_set()
    assert flag.wait(0) is False


def test_set_is_seen_by_is_set_and_wait_and_clear_undoes_it() -> None:
    flag = CancelledFlag()
    flag.set()
    assert flag.is_set() and flag.wait(0) is True
    flag.clear()
    assert not flag.is_set() and flag.wait(0.01) is False


def test_a_thread_waiting_on_the_flag_wakes_when_another_sets_it() -> None:
    flag, woke = CancelledFlag(), []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(10)))
    waiter.start()
    while flag._cond is None:  # the waiter has built the condition and waits on it
        threading.Event().wait(0.001)
    flag.set()
    waiter.join(5)
    assert woke == [True]


def test_a_call_info_made_without_one_gets_its_own_flag() -> None:
    info = CallInfo(server_id="s", method="m", correlation_id=None, message_id=None,
                    deadline=None, redelivered=False, user_id=None)
    assert isinstance(info.cancelled, CancelledFlag) and not info.cancelled.is_set()
