"""How a proxy takes a stream's items and keeps its cancels (rpc.client.calling.CallMaker, no
I/O): the control address each run of the stream names, a run that starts the stream again,
and the cancels a lost connection kept from the broker."""

from __future__ import annotations

from typing import Any

import pytest

from rpc import ConnectionLost, ServerLost
from rpc.client.calling import CallMaker
from rpc.core import protocol, serialization
from rpc.core.calls import STREAM, Pending, StreamState
from rpc.core.session import Incoming

JSON = serialization.JSON


def stream_call() -> tuple[CallMaker, Pending]:
    calls = CallMaker("srv", serializer="json", timeout=None, retries=0, wait_for_ready=False,
                      max_message_size=1 << 20, metrics=False)
    pending = Pending("c-1", "numbers", STREAM, JSON, None)
    pending.stream = StreamState(window=10, item_timeout=None)
    return calls, pending


def item(value: Any, control: str | None = None) -> Incoming[Any]:
    props = protocol.item_properties("c-1", JSON, "srv@host:1", control)
    return Incoming(serialization.encode(protocol.item_body(value), JSON), props, None, False,
                    "amq.rabbitmq.reply-to.x", None)


def test_the_first_item_names_the_control_address_its_credit_goes_to() -> None:
    calls, pending = stream_call()
    assert calls.item(item(0, "rpc.broadcast.srv.a"), pending) == (True, 0)
    assert calls.item(item(1), pending) == (True, 1)
    assert pending.control == "rpc.broadcast.srv.a"


def test_a_first_item_after_items_of_another_run_fails_the_stream_with_server_lost() -> None:
    calls, pending = stream_call()
    calls.item(item(0, "rpc.broadcast.srv.a"), pending)
    calls.item(item(1), pending)
    ok, error = calls.item(item(0, "rpc.broadcast.srv.b"), pending)  # started again elsewhere
    assert not ok and isinstance(error, ServerLost)
    assert "after 2 items" in str(error)
    assert pending.control == "rpc.broadcast.srv.b"  # the stream's cancel stops the new run


def test_a_run_lost_before_its_first_item_leaves_the_credit_to_the_run_that_answers() -> None:
    calls, pending = stream_call()
    pending.control = "rpc.broadcast.srv.a"  # named by the lost run's keep-alives
    assert calls.item(item(0, "rpc.broadcast.srv.b"), pending) == (True, 0)
    assert pending.control == "rpc.broadcast.srv.b"


@pytest.mark.parametrize("headers", [None, {}, {protocol.CONTROL_HEADER: ""}])
def test_an_item_naming_no_control_address_keeps_the_one_known(headers: Any) -> None:
    calls, pending = stream_call()
    calls.item(item(0, "rpc.broadcast.srv.a"), pending)
    msg = item(1)
    msg.props["headers"] = headers
    assert calls.item(msg, pending) == (True, 1)
    assert pending.control == "rpc.broadcast.srv.a"


# -- cancels a lost connection kept from the broker --------------------------------------------------

def test_cancels_owed_go_out_in_order_on_the_next_connection() -> None:
    calls, _ = stream_call()
    for name in ("a", "b"):
        calls.owe_cancel(("", f"rpc.broadcast.srv.{name}", b"{}", {}))
    sent: list[str] = []
    calls.send_owed(lambda message: sent.append(message[1]))
    assert sent == ["rpc.broadcast.srv.a", "rpc.broadcast.srv.b"]
    calls.send_owed(lambda message: sent.append(message[1]))
    assert len(sent) == 2  # sent once


def test_a_cancel_owed_that_cannot_go_out_stays_owed_with_the_rest() -> None:
    calls, _ = stream_call()
    for name in ("a", "b"):
        calls.owe_cancel(("", f"rpc.broadcast.srv.{name}", b"{}", {}))

    def lost(message: Any) -> None:
        raise ConnectionLost("the connection is closed")

    calls.send_owed(lost)
    sent: list[str] = []
    calls.send_owed(lambda message: sent.append(message[1]))
    assert sent == ["rpc.broadcast.srv.a", "rpc.broadcast.srv.b"]


def test_a_forked_child_sends_none_of_its_parents_owed_cancels() -> None:
    calls, _ = stream_call()
    calls.owe_cancel(("", "rpc.broadcast.srv.a", b"{}", {}))
    calls.forked()
    sent: list[Any] = []
    calls.send_owed(sent.append)
    assert sent == []
