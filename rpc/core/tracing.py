"""OpenTelemetry trace context across calls, when ``opentelemetry-api`` is installed.

The proxy injects the caller's context into the request headers (W3C ``traceparent`` and
``baggage`` by default); the server extracts it and runs the handler in a ``SERVER`` span that is
its child. Without the package both steps are no-ops.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace

    AVAILABLE = True
except ImportError:  # the integration is optional
    AVAILABLE = False


def inject(headers: dict[str, Any]) -> None:
    """Add the current trace context to a request's headers."""
    if AVAILABLE and otel_context.get_current():  # an empty context has nothing to carry
        propagate.inject(headers)


#: Seconds between two questions to OpenTelemetry while no tracer provider is set.
RECHECK = 1.0
#: What :meth:`ServerSpans.span` returns while no span would be recorded (reusable): a caller
#: on a hot path may test for it and skip entering it.
NO_SPAN = contextlib.nullcontext()


class ServerSpans:
    """The spans a server runs its handlers in, continuing their callers' traces.

    A no-op without OpenTelemetry, or until the application sets a tracer provider: asking
    OpenTelemetry for its provider costs more than the rest of a no-op span, so while there is
    none it is asked at most once every :data:`RECHECK` seconds (a provider, once set, stays).
    """

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._on = False
        self._ask_at = 0.0

    def span(self, headers: dict[str, Any] | None, method: str) -> AbstractContextManager[None]:
        """Run a handler of ``method`` in a span continuing the trace in ``headers``."""
        if not self._on:
            if not AVAILABLE:
                return NO_SPAN
            now = time.monotonic()
            if now < self._ask_at:
                return NO_SPAN
            self._ask_at = now + RECHECK
            if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                return NO_SPAN
            self._on = True
        return _span(headers, self.server_id, method)


@contextlib.contextmanager
def _span(headers: dict[str, Any] | None, server_id: str, method: str) -> Iterator[None]:
    parent = propagate.extract(headers or {})
    token = otel_context.attach(parent)
    try:
        tracer = trace.get_tracer("rpc")
        with tracer.start_as_current_span(
            f"{server_id}/{method}", kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "amqp-rpc", "rpc.service": server_id, "rpc.method": method},
        ):
            yield
    finally:
        otel_context.detach(token)
