"""Long calls on the server (protocol v1.1): the running calls' cancels, keep-alives, progress
throttle, and streams abandoned for lack of credit, without a broker."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import rpc
from rpc.core import protocol
from rpc.core.context import CallInfo
from rpc.server.longcalls import PROGRESS_INTERVAL, Running
from rpc.server.streams import Stream, StreamAbandoned, Streams


class FakeReplier:
    identity = "srv@host:1"

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

    def send_notice(self, msg: Any, payload: bytes, props: dict[str, Any]) -> None:
        self.sent.append((payload, props))


class FakeMsg:
    props = {"correlation_id": "c-1", "reply_to": "amq.gen-x"}


class FakeLink:
    closed = False


def running(interval: float | None = 1.0) -> tuple[Running, FakeReplier]:
    replier = FakeReplier()
    return Running("c-1", FakeMsg(), interval, "application/json", replier,  # type: ignore[arg-type]
                   lambda: "rpc.broadcast.srv.abc"), replier


def test_call_info_is_constructible_as_before_and_its_progress_is_a_no_op() -> None:
    info = CallInfo("srv", "m", "c", None, None, False, None)
    info.progress(1, 2)
    info.check_cancelled()
    info.cancelled.set()
    with pytest.raises(rpc.Cancelled):
        info.check_cancelled()


def test_a_keepalive_goes_once_the_interval_has_passed_then_every_interval() -> None:
    call, replier = running(1.0)
    now = time.monotonic()
    call.tick(now + 0.5)
    assert replier.sent == []
    call.tick(now + 1.01)
    call.tick(now + 1.5)
    assert len(replier.sent) == 1
    payload, props = replier.sent[0]
    assert payload == b"" and props["type"] == protocol.KEEPALIVE_TYPE
    assert props["headers"] == {protocol.CONTROL_HEADER: "rpc.broadcast.srv.abc"}
    call.tick(now + 2.1)
    assert len(replier.sent) == 2
    call.finish()
    call.tick(now + 10)
    assert len(replier.sent) == 2  # nothing after the reply


def test_progress_is_throttled_and_the_last_report_goes_before_the_reply() -> None:
    call, replier = running()
    for i in range(50):
        call.report(i, 50, "")
    assert len(replier.sent) == 1  # the first; the others wait for the throttle
    call.finish()
    bodies = [json.loads(p) for p, props in replier.sent if props["type"] == protocol.PROGRESS_TYPE]
    assert [b["done"] for b in bodies] == [0, 49]


def test_a_throttled_report_goes_from_the_keepalive_thread_once_allowed() -> None:
    call, replier = running()
    call.report(1, None, "a")
    call.report(2, None, "b")
    call.tick(time.monotonic() + PROGRESS_INTERVAL + 0.01)
    assert [json.loads(p)["done"] for p, _ in replier.sent] == [1, 2]


def test_a_cancel_reaches_a_running_call_and_is_remembered_for_one_not_yet_running() -> None:
    streams = Streams("srv")
    call, _ = running()
    assert streams.track(call)
    streams.cancel("c-1")
    assert call.cancelled.is_set()
    streams.untrack(call)
    assert streams.running() == []
    late, _ = running()
    assert not streams.track(late) and late.cancelled.is_set()


def test_a_stream_waiting_for_credit_longer_than_its_patience_is_abandoned() -> None:
    stream = Stream("c-1", 1, None, patience=0.2)
    stream.take(FakeLink())  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(StreamAbandoned):
        stream.take(FakeLink())  # type: ignore[arg-type]
    assert 0.15 < time.monotonic() - started < 2
