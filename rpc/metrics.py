"""Prometheus metrics of servers and proxies, and the HTTP endpoint that serves them with probes.

prometheus_client is optional (``pip install 'amqp-rpc[metrics]'``): importing this module never
needs it, recording metrics does, and :class:`MetricsServer` answers its probes without it, so a
deployment's health checks never depend on an extra.

prometheus_client refuses two metric families of one name in a registry, and its default registry
is process-global. So the families are created once per registry and shared; each Server or
Proxy records through children labelled with its ``server_id``, cached per (method, outcome), so
recording a call costs a dict lookup, a counter increment and a histogram observation.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar

from .core.errors import Cancelled, ConnectionError, Refused, RPCTimeout, UnknownServer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'amqp-rpc[metrics]'"

#: Latency buckets in seconds: a call on a local broker takes about 100 µs, and 30 s is beyond
#: any sensible RPC deadline (slower calls still count, in +Inf).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

#: Outcomes of a request on a server: ``ok``; ``error`` (the handler raised); ``expected_error``
#: (it raised an error it declares, a business answer); ``bad_request`` (undecodable, unknown
#: method, arguments that do not bind); ``expired`` (deadline passed before it ran);
#: ``rejected`` (refused unread, such as a reply sent to the request queue).
SERVER_OUTCOMES = frozenset({"ok", "error", "expected_error", "bad_request", "expired", "rejected"})

#: Outcomes of a call on a proxy; :func:`proxy_outcome` maps an exception to one. A call its
#: caller cancelled counts once, as ``cancelled``, whatever comes of it after (a late reply).
PROXY_OUTCOMES = frozenset({"ok", "error", "timeout", "unknown_server", "connection_error", "refused",
                            "cancelled"})

#: The method label of a request whose method is not a registered one, or was never decoded
#: (expired or refused before decoding): names off the wire must not become label values.
UNKNOWN_METHOD = "<unknown>"

#: Distinct method labels one instance keeps before counting further names as OTHER_METHOD: a
#: safety net should unchecked names reach call(), as every label value is a series kept for ever.
MAX_METHODS = 1000
OTHER_METHOD = "<other>"

_TEXT = "text/plain; charset=utf-8"


def available() -> bool:
    """Whether prometheus_client is importable (the ``metrics`` extra is installed)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def proxy_outcome(error: BaseException | None) -> str:
    """The outcome label of a proxy call that raised ``error`` (None: it succeeded)."""
    if error is None:
        return "ok"
    if isinstance(error, RPCTimeout):
        return "timeout"
    if isinstance(error, UnknownServer):
        return "unknown_server"
    if isinstance(error, ConnectionError):
        return "connection_error"
    if isinstance(error, Refused):
        return "refused"
    if isinstance(error, Cancelled):
        return "cancelled"
    return "error"


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise RuntimeError(f"metrics need prometheus_client: {INSTALL_HINT}") from None
    return prometheus_client


class _ServerFamilies:
    def __init__(self, registry: CollectorRegistry) -> None:
        pc = _prometheus()
        sid = ["server_id"]
        self.calls = pc.Counter("rpc_server_calls_total", "Requests handled, by method and outcome.",
                                [*sid, "method", "outcome"], registry=registry)
        self.seconds = pc.Histogram("rpc_server_handler_seconds", "Time handlers ran, in seconds.",
                                    [*sid, "method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queued = pc.Histogram("rpc_server_queued_seconds",
                                   "Seconds from a request's timestamp to its handler's start.",
                                   sid, buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = pc.Gauge("rpc_server_calls_in_flight",
                                  "Requests taken in and not done: running or awaiting a worker.",
                                  sid, registry=registry)
        self.redeliveries = pc.Counter("rpc_server_redeliveries_total",
                                       "Requests the broker delivered again.", sid, registry=registry)
        self.duplicates = pc.Counter("rpc_server_duplicates_total",
                                     "Repeated requests (redeliveries, retries) answered from cache.",
                                     sid, registry=registry)
        self.cancelled = pc.Counter("rpc_server_cancelled_total",
                                    "Requests their callers cancelled, running or before they ran.",
                                    sid, registry=registry)
        self.reconnects = pc.Counter("rpc_server_reconnects_total",
                                     "Connections to the broker re-established.", sid, registry=registry)
        self.reply_failures = pc.Counter("rpc_server_reply_failures_total",
                                         "Replies that could not be published.", sid, registry=registry)


class _ProxyFamilies:
    def __init__(self, registry: CollectorRegistry) -> None:
        pc = _prometheus()
        sid = ["server_id"]
        self.calls = pc.Counter("rpc_client_calls_total", "Calls made, by method and outcome.",
                                [*sid, "method", "outcome"], registry=registry)
        self.seconds = pc.Histogram("rpc_client_call_seconds", "Seconds from request to reply.",
                                    [*sid, "method"], buckets=LATENCY_BUCKETS, registry=registry)
        self.timeouts = pc.Counter("rpc_client_timeouts_total", "Calls given up without a reply.",
                                   sid, registry=registry)
        self.dropped_replies = pc.Counter("rpc_client_dropped_replies_total",
                                          "Replies matching no pending call (late, duplicate).",
                                          sid, registry=registry)
        self.cancels = pc.Counter("rpc_client_cancels_total",
                                  "Cancels sent to servers (calls cancelled or timed out, streams left).",
                                  sid, registry=registry)
        self.reconnects = pc.Counter("rpc_client_reconnects_total",
                                     "Connections to the broker re-established.", sid, registry=registry)


_Families = TypeVar("_Families", _ServerFamilies, _ProxyFamilies)
_families_by_registry: weakref.WeakKeyDictionary[Any, dict[type, Any]] = weakref.WeakKeyDictionary()
_families_lock = threading.Lock()


def _families(kind: type[_Families], registry: CollectorRegistry | None) -> _Families:
    """The families of ``kind`` in ``registry`` (default: prometheus_client's), made once."""
    if registry is None:
        registry = _prometheus().REGISTRY
    with _families_lock:
        made = _families_by_registry.setdefault(registry, {})
        families: _Families | None = made.get(kind)
        if families is None:
            families = made[kind] = kind(registry)
    return families


class _CallMetrics:
    """Calls by method and outcome, and their durations: what servers and proxies share."""

    _outcomes: frozenset[str]

    def __init__(self, server_id: str, calls: Any, seconds: Any) -> None:
        self.server_id = server_id
        self._calls = calls
        self._seconds = seconds
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._methods: set[str] = set()

    def call(self, method: str, outcome: str, duration: float | None) -> None:
        """Count one call; observe ``duration`` (seconds) unless it is None (nothing ran).

        Raises:
            ValueError: ``outcome`` is not one of this side's outcomes.
        """
        children = self._children.get((method, outcome)) or self._labelled(method, outcome)
        children[0].inc()
        if duration is not None:
            children[1].observe(duration)

    def _labelled(self, method: str, outcome: str) -> tuple[Any, Any]:
        if outcome not in self._outcomes:
            raise ValueError(f"unknown outcome {outcome!r}: one of {', '.join(sorted(self._outcomes))}")
        label = method
        if method not in self._methods:
            if len(self._methods) < MAX_METHODS:
                self._methods.add(method)
            else:
                label = OTHER_METHOD
        children = (self._calls.labels(self.server_id, label, outcome),
                    self._seconds.labels(self.server_id, label))
        if label == method:  # names past the limit stay out of the cache, which stays bounded
            self._children[method, outcome] = children
        return children


class ServerMetrics(_CallMetrics):
    """Prometheus metrics of one Server; every series carries its ``server_id``.

    Raises:
        RuntimeError: prometheus_client is not installed.
    """

    _outcomes = SERVER_OUTCOMES

    def __init__(self, server_id: str, registry: CollectorRegistry | None = None) -> None:
        families = _families(_ServerFamilies, registry)
        super().__init__(server_id, families.calls, families.seconds)
        self._queued = families.queued.labels(server_id)
        self._in_flight = families.in_flight.labels(server_id)
        self._redeliveries = families.redeliveries.labels(server_id)
        self._duplicates = families.duplicates.labels(server_id)
        self._cancelled = families.cancelled.labels(server_id)
        self._reconnects = families.reconnects.labels(server_id)
        self._reply_failures = families.reply_failures.labels(server_id)

    def queued(self, seconds: float) -> None:
        """Observe how long a request waited between its timestamp and its handler's start."""
        # Clocks of two machines disagree a little; a negative value would corrupt the sum.
        self._queued.observe(max(seconds, 0.0))

    def in_flight(self, delta: int) -> None:
        """Add ``delta`` (+1 when a handler starts, -1 when it ends) to the calls in flight."""
        self._in_flight.inc(delta)

    def redelivered(self) -> None:
        self._redeliveries.inc()

    def duplicate(self) -> None:
        self._duplicates.inc()

    def cancelled(self) -> None:
        self._cancelled.inc()

    def reconnected(self) -> None:
        self._reconnects.inc()

    def reply_failed(self) -> None:
        self._reply_failures.inc()


class ProxyMetrics(_CallMetrics):
    """Prometheus metrics of one Proxy; ``server_id`` is the server it calls.

    Raises:
        RuntimeError: prometheus_client is not installed.
    """

    _outcomes = PROXY_OUTCOMES

    def __init__(self, server_id: str, registry: CollectorRegistry | None = None) -> None:
        families = _families(_ProxyFamilies, registry)
        super().__init__(server_id, families.calls, families.seconds)
        self._timeouts = families.timeouts.labels(server_id)
        self._dropped_replies = families.dropped_replies.labels(server_id)
        self._cancels = families.cancels.labels(server_id)
        self._reconnects = families.reconnects.labels(server_id)

    def timeout(self) -> None:
        self._timeouts.inc()

    def dropped_reply(self) -> None:
        self._dropped_replies.inc()

    def cancel_sent(self) -> None:
        self._cancels.inc()

    def reconnected(self) -> None:
        self._reconnects.inc()


class MetricsServer:
    """One process's HTTP endpoint: ``/metrics``, and the ``/healthz`` and ``/readyz`` probes.

    It serves from daemon threads from construction until :meth:`close`. A probe answers 200 when
    its callable returns true and 503 otherwise (also when it raises); ``/metrics`` answers 503
    without prometheus_client, while the probes keep working.

    Args:
        port: TCP port; 0 picks a free one (read it from :attr:`port`).
        healthy: liveness, for ``/healthz``.
        ready: readiness, for ``/readyz``.
        host: the address to bind.
        registry: the registry ``/metrics`` exposes; default prometheus_client's.

    Raises:
        OSError: the address cannot be bound (the port is taken, say).
    """

    def __init__(
        self,
        port: int,
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        host: str = "0.0.0.0",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.healthy = healthy
        self.ready = ready
        self.registry = registry
        try:
            self._httpd = _HTTPServer((host, port), self)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
        self.host = host
        #: The bound port.
        self.port: int = self._httpd.server_address[1]
        self._closed = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"rpc-metrics-{self.port}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) as bound."""
        return self.host, self.port

    def close(self) -> None:
        """Stop serving and free the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        """Status, content type and body of a GET of ``path``."""
        if path == "/metrics":
            return self._exposition(accept)
        probe = {"/healthz": self.healthy, "/readyz": self.ready}.get(path)
        if probe is None:
            return 404, _TEXT, b"not found: /metrics, /healthz and /readyz are served\n"
        try:
            up = bool(probe())
        except Exception:
            logger.exception("the %s probe raised", path)
            up = False
        return (200, _TEXT, b"ok\n") if up else (503, _TEXT, b"unavailable\n")

    def _exposition(self, accept: str) -> tuple[int, str, bytes]:
        try:
            pc = _prometheus()
        except RuntimeError as exc:
            return 503, _TEXT, f"{exc}\n".encode()
        encoder, content_type = pc.exposition.choose_encoder(accept)
        body: bytes = encoder(self.registry if self.registry is not None else pc.REGISTRY)
        return 200, content_type, body



class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], endpoint: MetricsServer) -> None:
        self.endpoint = endpoint
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "rpc-metrics"
    sys_version = ""  # no Python version in the Server header
    timeout = 10  # an idle client does not keep a thread for ever

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            status, content_type, body = self.server.endpoint._respond(path, self.headers.get("Accept", ""))
        except Exception:
            logger.exception("metrics endpoint failed on %s", path)
            status, content_type, body = 500, _TEXT, b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        logger.debug("metrics endpoint %s: " + format, self.address_string(), *args)
