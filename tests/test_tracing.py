"""OpenTelemetry: a call made inside a span continues its trace in the server's span."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the opentelemetry test dependencies")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans():
    EXPORTER.clear()
    return EXPORTER


def test_server_span_continues_the_callers_trace(make_server, make_proxy, spans, server_id):
    make_server(register=lambda s: s.register_function(lambda a, b: a + b, "add"))
    proxy = make_proxy()
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        assert proxy.add(1, 2) == 3
    server_span = next(s for s in spans.get_finished_spans() if s.name == f"{server_id}/add")
    assert server_span.kind == trace.SpanKind.SERVER
    assert server_span.context.trace_id == caller.get_span_context().trace_id
    assert server_span.parent.span_id == caller.get_span_context().span_id
    assert server_span.attributes["rpc.method"] == "add"


def test_a_call_outside_any_span_starts_a_new_trace(make_server, make_proxy, spans, server_id):
    make_server(register=lambda s: s.register_function(lambda: 1, "one"))
    assert make_proxy().one() == 1
    [span] = [s for s in spans.get_finished_spans() if s.name == f"{server_id}/one"]
    assert span.parent is None
