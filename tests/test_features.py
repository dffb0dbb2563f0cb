"""Beyond plain calls: cast, broadcast, gather and map, context, hooks, async handlers, limits."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from support import started_servers

import rpc
from rpc import AsyncProxy, CallInfo, Proxy, Server, current_call
from rpc.core.protocol import MAX_SERVER_ID

WAIT = 10


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- cast ----------------------------------------------------------------------------------------

def test_cast_returns_none_at_once_and_the_server_runs_it(make_server, make_proxy):
    seen = []
    make_server(register=lambda s: s.register_function(lambda x: seen.append(x) or x, "note"))
    assert make_proxy().cast.note("hello") is None
    wait_until(lambda: seen == ["hello"], "the cast to run")


def test_a_failing_cast_is_logged_on_the_server(make_server, make_proxy, caplog):
    server = make_server(register=lambda s: s.register_function(lambda: 1 / 0, "bad"))
    make_proxy().cast.bad()
    wait_until(lambda: server.stats["errors"] == 1, "the cast to fail")
    assert "cast bad failed" in caplog.text


def test_cast_takes_no_callbacks_or_future(make_proxy):
    proxy = make_proxy()
    with pytest.raises(TypeError):
        proxy.cast.future.anything()
    with pytest.raises(TypeError):
        proxy.cast.callback(print).anything()


# -- broadcast -----------------------------------------------------------------------------------

def test_broadcast_reaches_every_server_and_lists_tagged_replies(make_server, make_proxy):
    for name in ("a", "b", "c"):
        make_server(register=lambda s, name=name: s.register_function(lambda: name, "whoami"))
    replies = make_proxy().broadcast(timeout=1).whoami()
    assert sorted(r.result for r in replies) == ["a", "b", "c"]
    assert len({r.server for r in replies}) in (1, 3)  # one process here: same host and pid
    assert all(r.error is None for r in replies)


def test_a_server_with_the_longest_server_id_answers_calls_and_broadcasts(make_server, make_proxy):
    server_id = "q" * MAX_SERVER_ID
    make_server(server_id=server_id, register=lambda s: s.register_function(lambda: "here", "hi"))
    proxy = make_proxy(server_id=server_id)
    assert proxy.hi() == "here"
    assert [reply.result for reply in proxy.broadcast(timeout=1).hi()] == ["here"]


@pytest.mark.parametrize("server_id", ["", "q" * (MAX_SERVER_ID + 1)])
def test_a_proxy_refuses_a_server_id_no_server_can_have_before_connecting(server_id):
    with pytest.raises(ValueError, match="server_id must be"):
        Proxy("amqp://user:s3cret@127.0.0.1:1//", server_id=server_id)
    with pytest.raises(ValueError, match="server_id must be"):
        AsyncProxy("amqp://user:s3cret@127.0.0.1:1//", server_id=server_id)


def test_broadcast_carries_each_servers_error_in_place(make_server, make_proxy):
    make_server(register=lambda s: s.register_function(lambda: 1 / 0, "crash"))
    [reply] = make_proxy().broadcast(timeout=0.5).crash()
    assert isinstance(reply.error, ZeroDivisionError) and reply.result is None


def test_broadcast_cast_reaches_every_server_without_replies(make_server, make_proxy):
    hits = []
    for _ in range(2):
        make_server(register=lambda s: s.register_function(lambda: hits.append(1), "reload"))
    assert make_proxy().broadcast.cast.reload() is None
    wait_until(lambda: len(hits) == 2, "both servers to run the cast")


def test_broadcast_to_no_server_returns_an_empty_list(make_proxy):
    assert make_proxy(server_id="nobody-listens-here").broadcast(timeout=0.3).x() == []


def test_a_work_request_still_reaches_only_one_server(make_server, make_proxy):
    hits = []
    for _ in range(2):
        make_server(register=lambda s: s.register_function(lambda: hits.append(1), "once"))
    make_proxy().once()
    time.sleep(0.2)
    assert hits == [1]


# -- gather and map ------------------------------------------------------------------------------

def calc(server: Server) -> None:
    server.register_function(lambda a, b: a + b, "add")

    class Math:
        def mul(self, a, b):
            return a * b

    server.register_instance(Math(), "math")

    @server.expose
    def fail(message):
        raise ValueError(message)


def test_gather_returns_results_in_order_with_exceptions_in_place(make_server, make_proxy):
    make_server(register=calc)
    results = make_proxy().gather(
        [("add", (1, 2)), ("math.mul", (3, 4), {}), ("fail", ("x",)), ("add", (), {"a": 1, "b": 1})],
        concurrency=2, timeout=WAIT,
    )
    assert results[:2] == [3, 12] and results[3] == 2
    assert isinstance(results[2], ValueError)


def test_gather_keeps_at_most_concurrency_calls_in_flight(make_server, make_proxy):
    active = []
    peak = []
    lock = threading.Lock()

    def tracked(n):
        with lock:
            active.append(n)
            peak.append(len(active))
        time.sleep(0.02)
        with lock:
            active.remove(n)
        return n

    make_server(register=lambda s: s.register_function(tracked, "tracked"), concurrency=8)
    results = make_proxy().gather([("tracked", (n,)) for n in range(20)], concurrency=3)
    assert results == list(range(20))
    assert max(peak) <= 3


def test_map_streams_results_in_order(make_server, make_proxy):
    make_server(register=calc)
    stream = make_proxy().map("add", ((n, n) for n in range(50)), concurrency=10)
    assert next(stream) == 0
    assert list(stream) == [2 * n for n in range(1, 50)]


def test_map_raises_the_first_failure_where_it_occurs(make_server, make_proxy):
    make_server(register=calc)
    stream = make_proxy().map("fail", ["a", "b"])
    with pytest.raises(ValueError, match="a"):
        next(stream)


# -- context and current_call --------------------------------------------------------------------

def test_handler_sees_its_call_through_current_call(make_server, make_proxy):
    seen: list[CallInfo] = []
    make_server(register=lambda s: s.register_function(lambda: seen.append(current_call()), "look"))
    make_proxy().with_context(request_id="r-1", user="ann").set_timeout(5).look()
    [info] = seen
    assert info.method == "look" and info.context == {"request_id": "r-1", "user": "ann"}
    assert info.deadline is not None and info.deadline > time.time()
    assert info.redelivered is False and info.correlation_id


def test_current_call_is_none_outside_a_handler():
    assert current_call() is None


def test_nested_calls_propagate_context_and_extend_the_call_stack(make_server, make_proxy, url):
    seen: list[CallInfo] = []
    inner_id = f"inner-{time.monotonic_ns()}"
    inner = Server(url, server_id=inner_id)
    inner.register_function(lambda: seen.append(current_call()), "leaf")
    inner.start()
    try:
        inner_proxy = rpc.Proxy(url, server_id=inner_id)

        def outer():
            inner_proxy.leaf()

        make_server(register=lambda s: s.register_function(outer, "outer"))
        make_proxy().with_context(trace="t-9").outer()
        inner_proxy.close()
    finally:
        inner.stop()
    [leaf] = seen
    assert leaf.context == {"trace": "t-9"}
    assert len(leaf.call_stack) == 1 and ".outer." in leaf.call_stack[0]


# -- lifecycle hooks and the error hook ----------------------------------------------------------

def test_instance_hooks_run_once_around_serving_and_are_not_remote(make_server, make_proxy, url, server_id):
    events = []

    class Component:
        def on_init(self):
            events.append("init")

        def on_tear_down(self):
            events.append("tear_down")

        def work(self):
            return events.copy()

    server = Server(url, server_id=server_id)
    server.register_instance(Component(), "comp")
    server.start()
    try:
        proxy = make_proxy()
        assert proxy.comp.work() == ["init"]
        with pytest.raises(rpc.MethodNotFound):
            proxy.comp.on_init()
    finally:
        server.stop()
    assert events == ["init", "tear_down"]


def test_on_error_hook_sees_every_handler_exception(make_server, make_proxy):
    reported = []
    make_server(register=calc, on_error=lambda exc, call: reported.append((exc, call.method)))
    proxy = make_proxy()
    with pytest.raises(ValueError):
        proxy.fail("reported")
    assert proxy.add(1, 1) == 2
    [(exc, method)] = reported
    assert isinstance(exc, ValueError) and method == "fail"


# -- async handlers ------------------------------------------------------------------------------

def test_async_def_handlers_run_on_the_servers_event_loop(make_server, make_proxy):
    async def slow_double(x):
        await asyncio.sleep(0.01)
        assert current_call().method == "slow_double"
        return 2 * x

    make_server(register=lambda s: s.register_function(slow_double))
    assert make_proxy().slow_double(21) == 42


# -- delivery semantics --------------------------------------------------------------------------

def test_at_most_once_method_is_acknowledged_before_it_runs(broker_url, server_id):
    runs = []

    def fragile():
        runs.append(1)
        server._link.close()  # the connection dies mid-call, as if the process had crashed
        return "unreachable"

    server = Server(broker_url, server_id=server_id)
    server.register_function(fragile, at_most_once=True)
    server.start()
    try:
        with rpc.Proxy(broker_url, server_id=server_id) as proxy:
            with pytest.raises(rpc.RPCTimeout):
                proxy.set_timeout(1).fragile()
            proxy.set_timeout(WAIT).system.ping()  # reconnected by now
    finally:
        server.stop()
    assert runs == [1]  # acknowledged first: not redelivered after the crash


def test_default_delivery_redelivers_a_request_whose_server_crashed(broker_url, server_id):
    runs: list[bool] = []

    def fragile():
        runs.append(current_call().redelivered)
        if len(runs) == 1:
            server._link.close()
        return "second time lucky"

    # No table of completed calls: as after a crash, which takes the process's table with it.
    server = Server(broker_url, server_id=server_id, dedup_size=0)
    server.register_function(fragile)
    server.start()
    try:
        with rpc.Proxy(broker_url, server_id=server_id) as proxy:
            fut = proxy.set_timeout(WAIT).future.fragile()
            wait_until(lambda: len(runs) == 2, "the redelivery")
            fut.cancel()
    finally:
        server.stop()
    assert runs == [False, True]


def test_a_redelivered_request_that_already_ran_is_answered_without_running_again(
    broker_url, server_id,
):
    runs: list[bool] = []

    def fragile():
        runs.append(current_call().redelivered)
        if len(runs) == 1:
            server._link.close()  # the reply is lost with the connection; the result is kept
        return "once"

    server = Server(broker_url, server_id=server_id)
    server.register_function(fragile)
    server.start()
    try:
        wait_until(lambda: server.stats["reconnects"] == 0 and server.running, "the server")
        with rpc.Proxy(broker_url, server_id=server_id) as proxy:
            fut = proxy.set_timeout(WAIT).future.fragile()
            wait_until(lambda: server.stats["duplicates"] == 1, "the redelivery")
            fut.cancel()
    finally:
        server.stop()
    assert runs == [False]


# -- limits and cancellation ---------------------------------------------------------------------

def test_request_over_the_servers_size_limit_is_refused(make_server, make_proxy):
    make_server(register=lambda s: s.register_function(len, "size"), max_message_size=1000)
    proxy = make_proxy()
    assert proxy.size("x" * 100) == 100
    with pytest.raises(rpc.BadRequest, match="exceeds"):
        proxy.size("x" * 5000)


def test_reply_over_the_proxys_size_limit_fails_the_call(make_server, make_proxy):
    make_server(register=lambda s: s.register_function(lambda n: "x" * n, "make"))
    proxy = make_proxy(max_message_size=1000)
    assert len(proxy.make(10)) == 10
    with pytest.raises(rpc.RPCError, match="exceeds"):
        proxy.make(100_000)
    assert proxy.make(5) == "xxxxx"


def test_cancelling_a_future_forgets_the_call(make_server, make_proxy, monkeypatch):
    gate = threading.Event()
    make_server(register=lambda s: s.register_function(lambda: gate.wait(WAIT), "hold"))
    proxy = make_proxy()
    # A server that never hears the cancel (a v1.0 server, a cancel lost) still replies, late;
    # a v1.1 server that hears it sends no reply at all.
    monkeypatch.setattr(proxy, "_cancel_on_server", lambda pending: None)
    fut = proxy.future.hold()
    assert fut.cancel()
    assert proxy.pending_calls == 0
    gate.set()
    wait_until(lambda: proxy.replies_dropped == 1, "the late reply")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), {"a": [1.0, float("inf")]}])
def test_a_context_value_rabbitmq_cannot_carry_is_refused_before_sending(make_proxy, value):
    proxy = make_proxy()
    with pytest.raises(ValueError, match="infinite or NaN"):
        proxy.with_context(limit=value)


@pytest.mark.parametrize("value, error", [
    ({1, 2}, TypeError), (object(), TypeError), ({"a": [object()]}, TypeError),
    ({5: "five"}, TypeError), (2**70, ValueError),
])
def test_a_context_value_an_amqp_header_has_no_encoding_for_is_refused_before_sending(
        make_proxy, value, error):
    proxy = make_proxy()
    with pytest.raises(error, match="context value 'limit'"):
        proxy.with_context(limit=value)


def test_a_context_too_large_for_one_frame_fails_its_call_alone_and_the_connection_lives_on(
        broker_url, server_id):
    # RabbitMQ closes a connection that sends a content header over frame_max (501 FRAME_ERROR),
    # failing every other call on it; memory:// has no frames.
    gate = threading.Event()
    with started_servers(stop_grace=5) as start, \
            rpc.Proxy(broker_url, server_id=server_id) as proxy:
        start(broker_url, server_id=server_id,
              register=lambda s: (s.register_function(lambda a, b: a + b, "add"),
                                  s.register_function(lambda: gate.wait(5), "hold")))
        held = proxy.future.hold()
        with pytest.raises(ValueError, match="do not fit in one AMQP frame"):
            proxy.with_context(blob="x" * 200_000).add(1, 2)
        gate.set()
        assert held.result(timeout=5) is True
        assert proxy.add(2, 3) == 5
        assert proxy.pending_calls == 0
