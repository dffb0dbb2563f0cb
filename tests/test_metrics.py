"""rpc.metrics on its own: recorders against fresh registries, and the HTTP endpoint over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from email.message import Message

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rpc import metrics
from rpc.core.errors import (
    BrokerBlocked,
    ConnectionLost,
    MethodNotFound,
    Refused,
    RemoteError,
    RPCTimeout,
    UnknownServer,
)
from rpc.metrics import MetricsServer, ProxyMetrics, ServerMetrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- ServerMetrics ---------------------------------------------------------------------------------


def test_server_calls_count_by_method_and_outcome_and_time_only_handlers_that_ran(registry):
    m = ServerMetrics("calc", registry)
    m.call("add", "ok", 0.0002)
    m.call("add", "ok", 0.004)
    m.call("add", "error", 0.5)
    m.call("add", "expired", None)
    m.call("div", "bad_request", None)

    assert value(registry, "rpc_server_calls_total", server_id="calc", method="add", outcome="ok") == 2
    assert value(registry, "rpc_server_calls_total", server_id="calc", method="add", outcome="error") == 1
    assert value(registry, "rpc_server_calls_total", server_id="calc", method="add", outcome="expired") == 1
    assert value(registry, "rpc_server_calls_total", server_id="calc", method="div",
                 outcome="bad_request") == 1
    hist = "rpc_server_handler_seconds"
    assert value(registry, f"{hist}_count", server_id="calc", method="add") == 3
    assert value(registry, f"{hist}_sum", server_id="calc", method="add") == pytest.approx(0.5042)
    assert value(registry, f"{hist}_bucket", server_id="calc", method="add", le="0.00025") == 1
    assert value(registry, f"{hist}_bucket", server_id="calc", method="add", le="0.005") == 2
    assert value(registry, f"{hist}_count", server_id="calc", method="div") == 0


def test_server_gauges_and_event_counters_move(registry):
    m = ServerMetrics("calc", registry)
    m.in_flight(1)
    m.in_flight(1)
    m.in_flight(-1)
    m.queued(0.003)
    m.queued(-0.002)  # a client clock ahead of ours: counted as no wait, the sum stays honest
    m.redelivered()
    m.duplicate()
    m.duplicate()
    m.reconnected()
    m.reply_failed()

    assert value(registry, "rpc_server_calls_in_flight", server_id="calc") == 1
    assert value(registry, "rpc_server_queued_seconds_count", server_id="calc") == 2
    assert value(registry, "rpc_server_queued_seconds_sum", server_id="calc") == pytest.approx(0.003)
    assert value(registry, "rpc_server_redeliveries_total", server_id="calc") == 1
    assert value(registry, "rpc_server_duplicates_total", server_id="calc") == 2
    assert value(registry, "rpc_server_reconnects_total", server_id="calc") == 1
    assert value(registry, "rpc_server_reply_failures_total", server_id="calc") == 1


def test_histogram_buckets_span_100_microseconds_to_30_seconds(registry):
    ServerMetrics("calc", registry).call("add", "ok", 45.0)
    bounds = sorted(float(sample.labels["le"]) for family in registry.collect()
                    for sample in family.samples if sample.name == "rpc_server_handler_seconds_bucket")
    assert (bounds[0], bounds[-2], bounds[-1]) == (0.0001, 30.0, float("inf"))
    assert value(registry, "rpc_server_handler_seconds_bucket", server_id="calc", method="add",
                 le="30.0") == 0
    assert value(registry, "rpc_server_handler_seconds_bucket", server_id="calc", method="add",
                 le="+Inf") == 1


def test_an_unknown_outcome_is_refused_and_records_nothing(registry):
    m = ServerMetrics("calc", registry)
    with pytest.raises(ValueError, match="unknown outcome 'okay'"):
        m.call("add", "okay", 0.1)
    with pytest.raises(ValueError, match="unknown outcome 'timeout'"):  # a proxy's outcome
        m.call("add", "timeout", 0.1)
    assert value(registry, "rpc_server_calls_total", server_id="calc", method="add", outcome="okay") is None
    assert value(registry, "rpc_server_handler_seconds_count", server_id="calc", method="add") is None


def test_servers_of_different_ids_in_one_registry_keep_their_own_series(registry):
    a, b = ServerMetrics("a", registry), ServerMetrics("b", registry)
    a.call("add", "ok", 0.001)
    b.call("add", "ok", 0.001)
    b.call("add", "ok", 0.001)
    b.in_flight(1)

    assert value(registry, "rpc_server_calls_total", server_id="a", method="add", outcome="ok") == 1
    assert value(registry, "rpc_server_calls_total", server_id="b", method="add", outcome="ok") == 2
    assert value(registry, "rpc_server_calls_in_flight", server_id="a") == 0
    assert value(registry, "rpc_server_calls_in_flight", server_id="b") == 1


def test_two_recorders_of_one_server_id_share_its_series(registry):
    first, second = ServerMetrics("calc", registry), ServerMetrics("calc", registry)
    first.call("add", "ok", 0.001)
    second.call("add", "ok", 0.001)
    first.in_flight(1)
    second.in_flight(-1)

    assert value(registry, "rpc_server_calls_total", server_id="calc", method="add", outcome="ok") == 2
    assert value(registry, "rpc_server_handler_seconds_count", server_id="calc", method="add") == 2
    assert value(registry, "rpc_server_calls_in_flight", server_id="calc") == 0


def test_recorders_in_the_default_registry_never_collide():
    sid = f"test-{uuid.uuid4().hex[:12]}"
    recorders = [ServerMetrics(sid), ServerMetrics(sid), ServerMetrics(f"{sid}-2"), ProxyMetrics(sid)]
    for m in recorders:
        m.call("add", "ok", 0.001)
    assert REGISTRY.get_sample_value("rpc_server_calls_total",
                                     {"server_id": sid, "method": "add", "outcome": "ok"}) == 2
    assert REGISTRY.get_sample_value("rpc_client_calls_total",
                                     {"server_id": sid, "method": "add", "outcome": "ok"}) == 1


def test_method_names_past_the_limit_are_counted_as_other(registry, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_METHODS", 2)
    m = ServerMetrics("calc", registry)
    for method in ("add", "sub", "forged-1", "forged-2", "add"):
        m.call(method, "bad_request", None)

    def calls(method: str) -> float | None:
        return value(registry, "rpc_server_calls_total", server_id="calc", method=method,
                     outcome="bad_request")

    assert (calls("add"), calls("sub"), calls("<other>")) == (2, 1, 2)
    assert calls("forged-1") is None


# -- ProxyMetrics ----------------------------------------------------------------------------------


def test_proxy_calls_and_events_are_recorded(registry):
    m = ProxyMetrics("calc", registry)
    m.call("add", "ok", 0.0004)
    m.call("add", "timeout", None)
    m.call("div", "error", 0.002)
    m.timeout()
    m.dropped_reply()
    m.dropped_reply()
    m.reconnected()

    assert value(registry, "rpc_client_calls_total", server_id="calc", method="add", outcome="ok") == 1
    assert value(registry, "rpc_client_calls_total", server_id="calc", method="add", outcome="timeout") == 1
    assert value(registry, "rpc_client_calls_total", server_id="calc", method="div", outcome="error") == 1
    assert value(registry, "rpc_client_call_seconds_count", server_id="calc", method="add") == 1
    assert value(registry, "rpc_client_call_seconds_sum", server_id="calc", method="div") == 0.002
    assert value(registry, "rpc_client_timeouts_total", server_id="calc") == 1
    assert value(registry, "rpc_client_dropped_replies_total", server_id="calc") == 2
    assert value(registry, "rpc_client_reconnects_total", server_id="calc") == 1
    with pytest.raises(ValueError, match="unknown outcome 'expired'"):  # a server's outcome
        m.call("add", "expired", None)


def test_server_and_proxy_families_live_in_one_registry_side_by_side(registry):
    ServerMetrics("calc", registry).call("add", "ok", 0.001)
    ProxyMetrics("calc", registry).call("add", "ok", 0.002)
    assert value(registry, "rpc_server_handler_seconds_sum", server_id="calc", method="add") == 0.001
    assert value(registry, "rpc_client_call_seconds_sum", server_id="calc", method="add") == 0.002


@pytest.mark.parametrize(("error", "outcome"), [
    (None, "ok"),
    (RPCTimeout("late"), "timeout"),
    (UnknownServer("none"), "unknown_server"),
    (ConnectionLost("gone"), "connection_error"),
    (BrokerBlocked("alarm"), "connection_error"),
    (Refused("nack"), "refused"),
    (ZeroDivisionError("remote"), "error"),
    (MethodNotFound("nope"), "error"),
    (RemoteError("Custom", "boom"), "error"),
])
def test_proxy_outcome_maps_what_a_call_raised(error, outcome):
    assert metrics.proxy_outcome(error) == outcome
    assert outcome in metrics.PROXY_OUTCOMES


# -- without prometheus_client ---------------------------------------------------------------------


def test_the_module_imports_without_prometheus_client_and_says_how_to_install_it():
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from rpc import metrics\n"
        "assert not metrics.available()\n"
        "for cls in (metrics.ServerMetrics, metrics.ProxyMetrics):\n"
        "    try:\n"
        "        cls('calc')\n"
        "    except RuntimeError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.splitlines() == ["metrics need prometheus_client: pip install 'amqp-rpc[metrics]'"] * 2


def test_available_with_prometheus_client_installed():
    assert metrics.available()


# -- MetricsServer over HTTP -----------------------------------------------------------------------


def get(port: int, path: str, accept: str | None = None) -> tuple[int, Message, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read().decode()


class Flags:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = True


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def endpoint(flags, registry):
    with MetricsServer(0, healthy=lambda: flags.healthy, ready=lambda: flags.ready,
                       host="127.0.0.1", registry=registry) as server:
        yield server


def test_metrics_serves_the_registry_in_prometheus_text(endpoint, registry):
    m = ServerMetrics("calc", registry)
    m.call("add", "ok", 0.001)
    m.call("add", "ok", 0.001)
    m.call("div", "error", 0.001)

    status, headers, body = get(endpoint.port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, s.labels.get("method"), s.labels.get("outcome")): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples["rpc_server_calls_total", "add", "ok"] == 2
    assert samples["rpc_server_calls_total", "div", "error"] == 1

    m.call("add", "ok", 0.001)
    assert 'rpc_server_calls_total{method="add",outcome="ok",server_id="calc"} 3.0' in \
        get(endpoint.port, "/metrics")[2]


def test_metrics_speaks_openmetrics_to_a_scraper_that_asks(endpoint, registry):
    ServerMetrics("calc", registry).reconnected()
    status, headers, body = get(endpoint.port, "/metrics", accept="application/openmetrics-text")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_probes_follow_their_callables(endpoint, flags):
    status, _, body = get(endpoint.port, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert get(endpoint.port, "/readyz")[0] == 200

    flags.ready = False
    assert get(endpoint.port, "/readyz")[0] == 503
    assert get(endpoint.port, "/healthz")[0] == 200

    flags.healthy = False
    assert get(endpoint.port, "/healthz")[0] == 503

    flags.healthy = flags.ready = True
    assert get(endpoint.port, "/healthz?verbose=1")[0] == 200
    assert get(endpoint.port, "/readyz")[0] == 200


def test_a_probe_that_raises_answers_503():
    def broken() -> bool:
        raise RuntimeError("probe bug")

    with MetricsServer(0, healthy=broken, ready=lambda: True, host="127.0.0.1") as server:
        assert get(server.port, "/healthz")[0] == 503
        assert get(server.port, "/readyz")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metric", "/healthz/extra", "/../metrics"])
def test_other_paths_are_404(endpoint, path):
    assert get(endpoint.port, path)[0] == 404


def test_the_server_header_hides_the_python_version(endpoint):
    _, headers, _ = get(endpoint.port, "/healthz")
    assert headers["Server"].strip() == "rpc-metrics"


def test_the_default_registry_is_served_without_one_given():
    sid = f"test-{uuid.uuid4().hex[:12]}"
    ServerMetrics(sid).reconnected()
    with MetricsServer(0, healthy=lambda: True, ready=lambda: True, host="127.0.0.1") as server:
        assert f'rpc_server_reconnects_total{{server_id="{sid}"}} 1.0' in get(server.port, "/metrics")[2]


def test_close_frees_the_port_for_the_next_endpoint():
    server = MetricsServer(0, healthy=lambda: True, ready=lambda: True, host="127.0.0.1")
    port = server.port
    assert port != 0
    assert server.address == ("127.0.0.1", port)
    assert get(port, "/healthz")[0] == 200
    server.close()
    server.close()  # idempotent

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with MetricsServer(port, healthy=lambda: False, ready=lambda: True, host="127.0.0.1") as again:
        assert again.port == port
        assert get(port, "/healthz")[0] == 503


def test_a_taken_port_fails_with_the_address_in_the_message(endpoint):
    with pytest.raises(OSError, match=rf"cannot serve metrics on 127\.0\.0\.1:{endpoint.port}"):
        MetricsServer(endpoint.port, healthy=lambda: True, ready=lambda: True, host="127.0.0.1")


def test_probes_answer_without_prometheus_client_and_metrics_says_why_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with MetricsServer(0, healthy=lambda: True, ready=lambda: False, host="127.0.0.1") as server:
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/readyz")[0] == 503
        status, _, body = get(server.port, "/metrics")
    assert status == 503
    assert "pip install 'amqp-rpc[metrics]'" in body
