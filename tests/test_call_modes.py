"""Callbacks, futures and timeouts: each call mode, its errors and its bookkeeping."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from rpc import CallbackState, RPCTimeout, Server

WAIT = 10  # seconds: the bound on every wait in this module


def services(server: Server) -> None:
    gates: dict[str, threading.Event] = {}

    server.register_function(lambda a, b: a + b, "add")

    @server.expose
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    @server.expose
    def fail(message):
        raise ValueError(message)

    @server.expose
    def hold(key):
        """Block until release(key): lets a test decide when a reply is sent."""
        gates.setdefault(key, threading.Event()).wait(WAIT)
        return key

    @server.expose
    def release(key):
        gates.setdefault(key, threading.Event()).set()


@pytest.fixture
def proxy(make_server, make_proxy):
    make_server(register=services, concurrency=4)
    return make_proxy()


class Recorder:
    """Collects callback invocations and the threads they ran on."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.errors: list[BaseException] = []
        self.threads: list[str] = []
        self.called = threading.Event()

    def ok(self, value: object) -> None:
        self.threads.append(threading.current_thread().name)
        self.results.append(value)
        self.called.set()

    def err(self, exc: BaseException) -> None:
        self.threads.append(threading.current_thread().name)
        self.errors.append(exc)
        self.called.set()


def wait_for_state(proxy, uid, state):
    deadline = time.monotonic() + WAIT
    while proxy.get_callback_state(uid) != state:
        assert time.monotonic() < deadline, f"{uid} never reached {state!r}"
        time.sleep(0.005)


# -- callbacks -----------------------------------------------------------------------------------

def test_callback_call_returns_a_uid_at_once_and_runs_on_success(proxy):
    rec = Recorder()
    uid = proxy.callback(rec.ok, rec.err).add(2, 4)
    assert isinstance(uid, str)
    assert rec.called.wait(WAIT)
    assert rec.results == [6] and rec.errors == []
    wait_for_state(proxy, uid, CallbackState.FINISHED)


def test_callback_runs_on_a_proxy_thread_not_the_caller_nor_the_io_thread(proxy):
    rec = Recorder()
    proxy.callback(rec.ok, rec.err).add(1, 1)
    assert rec.called.wait(WAIT)
    assert rec.threads[0].startswith("rpc-proxy-callbacks")


def test_remote_error_goes_to_on_error(proxy):
    rec = Recorder()
    proxy.callback(rec.ok, rec.err).fail("boom")
    assert rec.called.wait(WAIT)
    assert isinstance(rec.errors[0], ValueError) and rec.errors[0].args == ("boom",)
    assert rec.results == []


def test_callback_state_is_waiting_then_processing_then_finished(proxy):
    running = threading.Event()
    proceed = threading.Event()

    def slow_ok(value):
        running.set()
        proceed.wait(WAIT)

    uid = proxy.callback(slow_ok).hold("state")
    assert proxy.get_callback_state(uid) == CallbackState.WAITING
    proxy.release("state")
    assert running.wait(WAIT)
    assert proxy.get_callback_state(uid) == CallbackState.PROCESSING
    proceed.set()
    wait_for_state(proxy, uid, CallbackState.FINISHED)


def test_callback_states_are_int_enums_with_documented_values():
    assert [int(s) for s in CallbackState] == [0, 1, 2]


def test_unknown_uid_raises_key_error(proxy):
    with pytest.raises(KeyError):
        proxy.get_callback_state("never-issued")


def test_callback_timeout_calls_on_error_with_rpc_timeout_in_either_order(proxy):
    for view in (proxy.callback(Recorder().ok).set_timeout(0.2), None):
        rec = Recorder()
        view = proxy.callback(rec.ok, rec.err).set_timeout(0.2) if view is None else \
            proxy.set_timeout(0.2).callback(rec.ok, rec.err)
        uid = view.sleep(1)
        assert rec.called.wait(WAIT)
        assert isinstance(rec.errors[0], RPCTimeout) and rec.results == []
        wait_for_state(proxy, uid, CallbackState.FINISHED)


def test_each_callback_runs_once_even_when_the_reply_comes_after_the_timeout(proxy, monkeypatch):
    # A server that never hears the cancel a timeout sends (a v1.0 server, a cancel lost)
    # still replies, late; a v1.1 server that hears it sends no reply at all.
    monkeypatch.setattr(proxy, "_cancel_on_server", lambda pending: None)
    rec = Recorder()
    proxy.callback(rec.ok, rec.err).set_timeout(0.1).hold("late")
    assert rec.called.wait(WAIT)
    proxy.release("late")
    proxy.add(0, 0)  # the late reply has been read (and dropped) before this returns
    deadline = time.monotonic() + WAIT
    while proxy.replies_dropped < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(rec.errors) == 1 and rec.results == []


def test_a_raising_callback_does_not_stop_later_callbacks(proxy):
    def broken(value):
        raise RuntimeError("user bug")

    proxy.callback(broken).add(1, 1)
    rec = Recorder()
    proxy.callback(rec.ok).add(2, 2)
    assert rec.called.wait(WAIT)
    assert rec.results == [4]


def test_finished_uids_stay_readable(proxy):
    done = threading.Semaphore(0)
    uids = [proxy.callback(lambda v: done.release()).add(i, 1) for i in range(50)]
    for _ in uids:
        assert done.acquire(timeout=WAIT)
    for uid in uids:
        wait_for_state(proxy, uid, CallbackState.FINISHED)
    assert proxy.get_num_waiting_callbacks() == 0


# -- futures -------------------------------------------------------------------------------------

def test_future_returns_a_concurrent_future_with_the_result(proxy):
    fut = proxy.future.add(2, 3)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(WAIT) == 5


def test_future_carries_the_remote_exception(proxy):
    with pytest.raises(ValueError, match="bad"):
        proxy.future.fail("bad").result(WAIT)


def test_future_with_timeout_fails_with_rpc_timeout(proxy):
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.2).future.sleep(1).result(WAIT)
    with pytest.raises(RPCTimeout):
        proxy.future.set_timeout(0.2).sleep(1).result(WAIT)


def test_many_futures_are_in_flight_at_once(proxy):
    futures = [proxy.future.add(i, i) for i in range(200)]
    assert [f.result(WAIT) for f in futures] == [2 * i for i in range(200)]
    assert proxy.pending_calls == 0


def test_future_done_callbacks_run_off_the_io_thread_and_may_call_the_proxy(proxy):
    nested: concurrent.futures.Future = concurrent.futures.Future()

    def then(fut):
        try:
            nested.set_result(proxy.add(fut.result(), 1))  # a synchronous call from the callback
        except Exception as exc:
            nested.set_exception(exc)

    proxy.future.add(1, 1).add_done_callback(then)
    assert nested.result(WAIT) == 3


# -- timeouts ------------------------------------------------------------------------------------

def test_sync_timeout_raises_rpc_timeout_which_is_a_timeout_error(proxy):
    started = time.monotonic()
    with pytest.raises(RPCTimeout) as info:
        proxy.set_timeout(0.3).sleep(2)
    assert isinstance(info.value, TimeoutError)
    assert 0.25 < time.monotonic() - started < 1.5


def test_timeout_applies_to_one_call_only(proxy):
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.1).sleep(0.5)
    assert proxy.sleep(0.3) == 0.3  # no timeout leaked into this call


def test_default_timeout_from_the_constructor(make_server, make_proxy):
    make_server(register=services)
    proxy = make_proxy(timeout=0.2)
    with pytest.raises(RPCTimeout):
        proxy.sleep(1)
    assert proxy.set_timeout(None).sleep(0.3) == 0.3


def test_invalid_timeouts_are_refused(proxy):
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError):
            proxy.set_timeout(bad)


def test_late_reply_is_dropped_counted_and_never_delivered_to_the_next_call(proxy, monkeypatch):
    # A server that never hears the cancel a timeout sends (a v1.0 server, a cancel lost)
    # still replies, late; a v1.1 server that hears it sends no reply at all.
    monkeypatch.setattr(proxy, "_cancel_on_server", lambda pending: None)
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.1).hold("next")
    proxy.release("next")
    assert proxy.add(20, 22) == 42
    deadline = time.monotonic() + WAIT
    while proxy.replies_dropped < 1:
        assert time.monotonic() < deadline
        proxy.add(0, 0)
    assert proxy.pending_calls == 0


def test_timed_out_calls_leave_nothing_pending(proxy):
    for _ in range(20):
        with pytest.raises(RPCTimeout):
            proxy.set_timeout(0.01).sleep(0.05)
    futures = [proxy.set_timeout(0.01).future.sleep(0.05) for _ in range(20)]
    for fut in futures:
        with pytest.raises(RPCTimeout):
            fut.result(WAIT)
    assert proxy.pending_calls == 0


def test_expired_request_is_not_run_by_the_server(make_server, make_proxy, server_id):
    runs = []
    server = make_server(register=lambda s: s.register_function(
        lambda: (time.sleep(0.5), runs.append(1)), "slow"), concurrency=1)
    proxy = make_proxy()
    fut = proxy.future.slow()  # occupies the only worker for 0.5 s
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.1).slow()  # waits in the queue past its deadline
    fut.result(WAIT)
    proxy.system.ping()  # the server has seen every earlier request by now
    deadline = time.monotonic() + WAIT
    while server.stats["expired"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(runs) == 1


# -- every serializer in every mode --------------------------------------------------------------

@pytest.mark.parametrize("serializer", ["msgpack", "json", "pickle"])
def test_every_mode_works_in_every_serializer(make_server, make_proxy, serializer):
    make_server(register=services, serializer="pickle", concurrency=2)
    proxy = make_proxy(serializer=serializer)

    assert proxy.add(2, 3) == 5
    with pytest.raises(ValueError, match="sync"):
        proxy.fail("sync")

    assert proxy.future.add(3, 4).result(WAIT) == 7
    with pytest.raises(ValueError, match="future"):
        proxy.future.fail("future").result(WAIT)

    ok, bad = Recorder(), Recorder()
    proxy.callback(ok.ok, ok.err).add(4, 5)
    proxy.callback(bad.ok, bad.err).fail("callback")
    assert ok.called.wait(WAIT) and bad.called.wait(WAIT)
    assert ok.results == [9] and isinstance(bad.errors[0], ValueError)

    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.1).sleep(0.5)
    late = Recorder()
    proxy.callback(late.ok, late.err).set_timeout(0.1).sleep(0.5)
    assert late.called.wait(WAIT) and isinstance(late.errors[0], RPCTimeout)
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.1).future.sleep(0.5).result(WAIT)
