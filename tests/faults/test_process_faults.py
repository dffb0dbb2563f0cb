"""Process faults on real server processes: SIGKILL, crash after reply, SIGSTOP, SIGTERM.

Rows B1, B2 (with C6), B3 and B6 of docs/reliability.md. Servers run ``serverproc.py`` in child
processes (killed in the fixture's ``finally``); every handler run is recorded in a file, so the
tests count executions per request and per process.
"""

from __future__ import annotations

import signal
import time

import pytest

import rpc

from .conftest import HB, WAIT, runs, wait_for

LONG = 30.0


@pytest.mark.slow
def test_server_killed_mid_request_is_answered_by_another_server_and_the_client_gets_one_reply(
        spawn_server, runs_file, proxies, broker_url, server_id):
    first = spawn_server(broker_url, server_id)
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(LONG).future.work("job", LONG)
    wait_for(lambda: runs(runs_file) == [("job", first.pid)], message="the first server to run it")

    second = spawn_server(broker_url, server_id)
    first.signal(signal.SIGKILL)

    assert future.result(WAIT) == ["job", second.pid]
    assert runs(runs_file) == [("job", first.pid), ("job", second.pid)]
    time.sleep(0.5)
    assert proxy.replies_dropped == 0
    assert proxy.pending_calls == 0


@pytest.mark.slow
def test_crash_after_the_reply_before_the_ack_reruns_the_call_and_drops_the_duplicate_reply(
        spawn_server, runs_file, proxies, broker_url, server_id):
    first = spawn_server(broker_url, server_id)
    proxy = proxies(broker_url, server_id)
    assert proxy.set_timeout(WAIT).crash_after_reply("job") == ["job", first.pid]
    assert first.popen.wait(WAIT) == 1

    second = spawn_server(broker_url, server_id)  # gets the unacked request again
    wait_for(lambda: proxy.replies_dropped == 1, message="the duplicate reply")
    assert runs(runs_file) == [("job", first.pid), ("job", second.pid)]
    assert proxy.pending_calls == 0
    assert proxy.set_timeout(WAIT).whoami() == second.pid  # the proxy is unharmed


@pytest.mark.slow
def test_duplicate_reply_runs_the_callback_once(
        spawn_server, runs_file, proxies, broker_url, server_id):
    first = spawn_server(broker_url, server_id)
    proxy = proxies(broker_url, server_id)
    results: list[object] = []
    proxy.set_timeout(WAIT).callback(results.append, results.append).crash_after_reply("job")
    wait_for(lambda: results, message="the first reply")
    assert first.popen.wait(WAIT) == 1
    spawn_server(broker_url, server_id)
    wait_for(lambda: proxy.replies_dropped == 1, message="the duplicate reply")
    time.sleep(0.2)
    assert results == [["job", first.pid]]


@pytest.mark.slow
def test_frozen_server_loses_its_request_to_another_server_and_sends_no_second_reply_when_it_resumes(
        spawn_server, runs_file, proxies, broker_url, server_id):
    first = spawn_server(broker_url, server_id, heartbeat=HB)
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(LONG).future.work("job", 0.5)
    wait_for(lambda: runs(runs_file) == [("job", first.pid)], message="the first server to run it")

    first.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    second = spawn_server(broker_url, server_id, heartbeat=HB)
    assert future.result(WAIT) == ["job", second.pid]
    assert time.monotonic() - frozen_at < 6 * HB + 3  # the broker's heartbeat timeout, then redelivery

    first.signal(signal.SIGCONT)
    # The resumed server finds its connection gone, reconnects and serves again ...
    wait_for(lambda: proxy.set_timeout(WAIT).whoami() == first.pid, timeout=WAIT,
             message="the resumed server to serve again")
    # ... and its late reply to the request it held never reached the client.
    assert proxy.replies_dropped == 0


@pytest.mark.slow
def test_sigterm_finishes_calls_in_flight_requeues_prefetched_ones_and_exits_zero(
        spawn_server, runs_file, proxies, broker_url, server_id):
    first = spawn_server(broker_url, server_id, concurrency=3, prefetch=5)
    proxy = proxies(broker_url, server_id)
    futures = [proxy.set_timeout(LONG).future.work(f"job{n}", 1.0) for n in range(5)]
    wait_for(lambda: len(runs(runs_file)) == 3, message="three calls in flight")

    first.signal(signal.SIGTERM)
    in_flight = {tag for tag, _ in runs(runs_file)}
    second = spawn_server(broker_url, server_id)
    results = {tag: pid for tag, pid in (f.result(WAIT) for f in futures)}

    assert first.popen.wait(WAIT) == 0
    assert {tag for tag, pid in results.items() if pid == first.pid} == in_flight
    assert {tag for tag, pid in results.items() if pid == second.pid} == set(results) - in_flight
    assert sorted(tag for tag, _ in runs(runs_file)) == sorted(results)  # each ran exactly once


@pytest.mark.slow
def test_at_most_once_method_killed_mid_request_is_not_run_again(
        spawn_server, runs_file, proxies, broker_url, server_id):
    first = spawn_server(broker_url, server_id)
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(3).future.work_once("job", LONG)
    wait_for(lambda: runs(runs_file) == [("job", first.pid)], message="the first server to run it")

    spawn_server(broker_url, server_id)
    first.signal(signal.SIGKILL)

    assert isinstance(future.exception(WAIT), rpc.RPCTimeout)  # lost, as documented
    assert runs(runs_file) == [("job", first.pid)]


@pytest.mark.slow
def test_request_that_keeps_killing_its_server_is_dropped_after_the_quorum_delivery_limit(
        spawn_server, runs_file, proxies, node, broker_url, server_id):
    limit = 2
    first = spawn_server(broker_url, server_id, delivery_limit=limit)
    proxy = proxies(broker_url, server_id)
    proxy.set_timeout(LONG).future.die("poison")
    deaths = 0
    for _ in range(limit + 3):
        child = first if deaths == 0 else spawn_server(broker_url, server_id, wait=False,
                                                       delivery_limit=limit)
        wait_for(lambda c=child: c.popen.poll() is not None or c.serving, message="a server")
        time.sleep(1.0)  # long enough for a waiting poison request to arrive and kill it
        if child.popen.poll() is None:
            break
        deaths += 1
    assert deaths == limit + 1
    assert [tag for tag, _ in runs(runs_file)] == ["poison"] * (limit + 1)
    assert proxy.set_timeout(WAIT).whoami() == child.pid
    queue = node.queues()[server_id]
    assert (queue["type"], queue["messages_ready"], queue["messages_unacknowledged"]) == \
        ("quorum", 0, 0)
