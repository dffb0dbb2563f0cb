"""When a server runs its handlers in OpenTelemetry spans, without a broker."""

from __future__ import annotations

import pytest

from rpc.core import tracing

pytestmark = pytest.mark.skipif(not tracing.AVAILABLE, reason="needs opentelemetry-api")


class SetProvider:
    """Stands for a tracer provider an application has set (anything but the proxy one)."""


def test_no_span_is_made_while_no_tracer_provider_is_set(monkeypatch) -> None:
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", tracing.trace.ProxyTracerProvider)
    spans = tracing.ServerSpans("calc")
    assert spans.span({}, "add") is spans.span({}, "add")  # the one shared no-op


def test_a_provider_set_later_is_seen_at_the_next_recheck(monkeypatch) -> None:
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", tracing.trace.ProxyTracerProvider)
    spans = tracing.ServerSpans("calc")
    no_span = spans.span({}, "add")
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", SetProvider)
    assert spans.span({}, "add") is no_span  # not asked again within RECHECK
    monkeypatch.setattr(spans, "_ask_at", 0.0)  # RECHECK has passed
    assert spans.span({}, "add") is not no_span
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", tracing.trace.ProxyTracerProvider)
    assert spans.span({}, "add") is not no_span  # a provider, once set, stays
