"""A proxy's question whether a server consumes its queue: how it reads the broker's answers
(rpc.client.calling.CallMaker, no I/O)."""

from __future__ import annotations

import time

import pytest

from rpc import ServerUnavailable
from rpc.client.calling import AVAILABILITY_TTL, RECHECK_EVERY, UNAVAILABLE_AFTER, CallMaker
from rpc.transport.link import QueueInfo

SERVED = QueueInfo(messages=0, consumers=1)
UNSERVED = QueueInfo(messages=3, consumers=0)


def maker() -> CallMaker:
    return CallMaker("srv", serializer="msgpack", timeout=None, retries=0, wait_for_ready=False,
                     max_message_size=1 << 20, metrics=False)


def test_a_consumer_counted_lets_calls_skip_the_question_for_a_while() -> None:
    calls = maker()
    assert calls.checked(SERVED, None) is None
    assert calls.available_until > time.monotonic() + AVAILABILITY_TTL / 2


def test_no_consumer_counted_once_is_asked_again_soon_not_failed() -> None:
    # A quorum queue counts none for a moment while a new leader takes over.
    assert maker().checked(UNSERVED, None) == pytest.approx(RECHECK_EVERY)


def test_a_consumer_counted_again_ends_the_doubt() -> None:
    calls = maker()
    calls.checked(UNSERVED, None)
    assert calls.checked(SERVED, None) is None
    assert calls.unconsumed_since is None


def test_no_consumer_counted_for_the_whole_while_is_server_unavailable() -> None:
    calls = maker()
    calls.checked(UNSERVED, None)
    assert calls.unconsumed_since is not None
    calls.unconsumed_since -= UNAVAILABLE_AFTER
    with pytest.raises(ServerUnavailable, match=r"no server is consuming 'srv' \(3 requests waiting\)"):
        calls.checked(UNSERVED, None)


def test_once_found_unavailable_the_next_call_fails_at_once() -> None:
    calls = maker()
    calls.checked(UNSERVED, None)
    assert calls.unconsumed_since is not None
    calls.unconsumed_since -= UNAVAILABLE_AFTER
    for _ in range(2):
        with pytest.raises(ServerUnavailable):
            calls.checked(UNSERVED, None)


def test_a_deadline_before_the_next_question_fails_the_call_now() -> None:
    with pytest.raises(ServerUnavailable):
        maker().checked(UNSERVED, time.monotonic() + RECHECK_EVERY / 2)


def test_no_answer_lets_the_call_go() -> None:
    assert maker().checked(None, None) is None
