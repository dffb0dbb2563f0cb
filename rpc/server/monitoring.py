"""A running server's Prometheus metrics and its ``/healthz`` and ``/readyz`` endpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .failures import LOGGER_NAME

if TYPE_CHECKING:
    from ..metrics import MetricsServer, ServerMetrics

logger = logging.getLogger(LOGGER_NAME)

#: Seconds a server keeps trying to bind a metrics port that another process holds.
METRICS_BIND_RETRY = 120.0


def server_metrics(server_id: str) -> ServerMetrics | None:
    """The server's Prometheus metrics, or None without prometheus_client."""
    from .. import metrics

    return metrics.ServerMetrics(server_id) if metrics.available() else None


class Endpoint:
    """The HTTP endpoint of one running server, bound now or, when another process still holds
    the port (a reload's predecessor), in the background for up to METRICS_BIND_RETRY s.

    Args:
        port: the TCP port (0 picks a free one).
        host: the address to listen on.
        healthy: liveness, for ``/healthz``.
        ready: readiness, for ``/readyz``.
        stopping: set when the server stops; binding in the background gives up.

    Raises:
        OSError: port 0 could not be bound.
    """

    def __init__(self, port: int, host: str, *, healthy: Callable[[], bool],
                 ready: Callable[[], bool], stopping: threading.Event, name: str) -> None:
        self.port = port
        self.host = host
        self.healthy = healthy
        self.ready = ready
        self.stopping = stopping
        self.served: MetricsServer | None = None
        try:
            self.served = self.bind()
        except OSError as exc:
            if not port:
                raise
            logger.warning("%s; retrying in the background", exc)
            threading.Thread(target=self.bind_later, daemon=True,
                             name=f"rpc-metrics-bind-{name}").start()

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` as bound, or None while not bound."""
        served = self.served
        return None if served is None else (served.host, served.port)

    def bind(self) -> MetricsServer:
        from .. import metrics

        return metrics.MetricsServer(self.port, host=self.host, healthy=self.healthy,
                                     ready=self.ready)

    def bind_later(self) -> None:
        deadline = time.monotonic() + METRICS_BIND_RETRY
        while not self.stopping.wait(0.25) and time.monotonic() < deadline:
            try:
                served = self.bind()
            except OSError:
                continue
            if self.stopping.is_set():
                served.close()
            else:
                self.served = served
                logger.info("serving metrics on %s:%d", served.host, served.port)
            return
        if not self.stopping.is_set():
            logger.error("gave up serving metrics on port %s", self.port)

    def close(self) -> None:
        served, self.served = self.served, None
        if served is not None:
            served.close()
