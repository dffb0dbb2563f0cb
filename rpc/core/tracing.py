"""OpenTelemetry trace context across calls, when ``opentelemetry-api`` is installed.

The proxy injects the caller's context into the request headers (W3C ``traceparent`` and
``baggage`` by default); the server extracts it and runs the handler in a ``SERVER`` span that is
its child. Without the package both steps are no-ops.
"""

from __future__ import annotations

import contextlib
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


#: What :func:`server_span` returns while no span would be recorded (reusable).
_NO_SPAN = contextlib.nullcontext()


def server_span(headers: dict[str, Any] | None, server_id: str,
                method: str) -> AbstractContextManager[None]:
    """Run a handler in a span continuing the caller's trace.

    A no-op without OpenTelemetry, or until the application sets a tracer provider.
    """
    if not AVAILABLE or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _NO_SPAN
    return _span(headers, server_id, method)


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
