"""sdkguard side by side with third-party Anthropic instrumentations, each alone.

Each test runs with sdkguard installed (the `guard` fixture), one instrumentation active
(`instrument(tracer_provider=...)`, exporting to memory) and the same providers as the global
ones, against the fault kit. It checks that a call with a fault before any content still
completes, that every span is ended (an exporter only ever sees ended spans), and that
sdkguard adds nothing to the trace except its `sdkguard.attempt` spans under the call span.
Each call is compared with the same call made without a fault and with sdkguard bypassed
(`sdkguard.policy(enabled=False)`): the two forests of spans, attempt spans left out, must be
the same. So sdkguard opens no root of its own, and every root counted is the
instrumentation's doing (see ROOTS).

The instrumentations are in the `dev` extra; a test whose package is missing (installed
without them) is skipped. Two modes are tested:

- `sdk`: the installed SDK's own tracing is on (anthropic >= 1.14 with a provider): the SDK's
  span is the call span;
- `own`: as on an SDK without tracing (before 1.14): sdkguard opens the call span
  (`chat {model}`), which then sits exactly where the SDK's span would sit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import sdkguard
from sdkguard import _sdk
from sdkguard._sdk import http
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import (
    API_KEY,
    MESSAGE_ARGS,
    SDK_TRACING,
    WITHOUT_SDK_TRACING,
    use_global_providers,
)

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("guard")]

SDK_SCOPE = "com.anthropic.sdk.python"
ATTEMPT = "sdkguard.attempt"


@dataclass(frozen=True)
class Instrumentation:
    distribution: str
    module: str
    scope: str
    """The instrumentation scope of its spans."""


INSTRUMENTATIONS = {
    "traceloop": Instrumentation(
        "opentelemetry-instrumentation-anthropic",
        "opentelemetry.instrumentation.anthropic",
        "opentelemetry.instrumentation.anthropic",
    ),
    "openinference": Instrumentation(
        "openinference-instrumentation-anthropic",
        "openinference.instrumentation.anthropic",
        "openinference.instrumentation.anthropic",
    ),
    "otel-genai": Instrumentation(
        "opentelemetry-instrumentation-genai-anthropic",
        "opentelemetry.instrumentation.genai.anthropic",
        "opentelemetry.instrumentation.genai.anthropic",
    ),
}

# How a user reads a call: `create()`, `create(stream=True)` read to the end, or the
# `messages.stream()` helper read event by event.
STYLES = ("create", "create_stream", "stream_helper")

# Roots per call, with or without sdkguard (opentelemetry-instrumentation-anthropic 0.62.4,
# openinference-instrumentation-anthropic 3.1.0, opentelemetry-instrumentation-genai-anthropic
# 1.3b0): the instrumentation's span is the root when it is the current span while the SDK
# sends the request, and the call span (the SDK's, or sdkguard's in mode `own`) is its child;
# otherwise the call span is a second root, in a trace of its own.
# - traceloop starts its span without making it current: always two roots;
# - openinference makes its span current around `create()`, but `messages.stream()` only
#   returns a manager: the request is sent in `__enter__`, after its span stopped being
#   current, so two roots there;
# - otel-genai keeps its span current (for the helper too): one root.
ROOTS = {
    "traceloop": {"create": 2, "create_stream": 2, "stream_helper": 2},
    "openinference": {"create": 1, "create_stream": 1, "stream_helper": 2},
    "otel-genai": {"create": 1, "create_stream": 1, "stream_helper": 1},
}


class Recorded:
    def __init__(self, instrumentation: Instrumentation) -> None:
        self.instrumentation = instrumentation
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def take(self) -> list[ReadableSpan]:
        """The spans ended since the last call."""
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans

    def metric_points(self, name: str, scope: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope_metrics in resource.scope_metrics:
                if scope_metrics.scope.name != scope:
                    continue
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


Instrumented = tuple[str, Recorded]
"""The instrumentation's name (a key of INSTRUMENTATIONS) and what it records."""


@pytest.fixture(params=sorted(INSTRUMENTATIONS))
def instrumented(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Instrumented]:
    """One third-party instrumentation, instrumented, with the global providers set."""
    name: str = request.param
    instrumentation = INSTRUMENTATIONS[name]
    module = pytest.importorskip(
        instrumentation.module, reason=f"{instrumentation.distribution} is not installed"
    )
    recorded = Recorded(instrumentation)
    # The global providers, as an application sets them (the API sets them once per process).
    use_global_providers(monkeypatch, recorded.tracer_provider, recorded.meter_provider)
    instrumentor = module.AnthropicInstrumentor()
    instrumentor.instrument(
        tracer_provider=recorded.tracer_provider, meter_provider=recorded.meter_provider
    )
    if not instrumentor.is_instrumented_by_opentelemetry:  # e.g. a dependency conflict
        pytest.skip(f"{instrumentation.distribution} did not instrument anthropic")
    try:
        yield name, recorded
    finally:
        instrumentor.uninstrument()
        recorded.tracer_provider.shutdown()
        recorded.meter_provider.shutdown()


@pytest.fixture(params=["sdk", "own"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "sdk" and not SDK_TRACING:
        pytest.skip("this SDK has no tracing of its own: mode `own` is how it runs")
    if request.param == "own":
        # As on an SDK without tracing of its own: sdkguard's span is the call span. The
        # guarded client turns the SDK's spans off to match (see `_guarded_client`).
        monkeypatch.setattr(_sdk.call, "client_tracing", lambda client: (True, None))
    return str(request.param)


def _client(server: FakeAnthropic, *, sdk_tracing: bool = True) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.url, api_key=API_KEY, **({} if sdk_tracing else WITHOUT_SDK_TRACING)
    )


def _read(client: anthropic.Anthropic, style: str) -> tuple[list[str], str]:
    """Make one call the way `style` says; the event types seen and the final text."""
    if style == "create":
        message = client.messages.create(**MESSAGE_ARGS)
        return [], "".join(b.text for b in message.content if b.type == "text")
    if style == "create_stream":
        # Iterated as returned: traceloop's proxy ends its span when the iteration ends, but
        # its `__enter__` returns the SDK's stream, which would bypass it (with or without
        # sdkguard).
        stream = client.messages.create(**MESSAGE_ARGS, stream=True)
        try:
            events = list(stream)
        finally:
            stream.close()
        text = "".join(
            e.delta.text
            for e in events
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
        return [e.type for e in events], text
    with client.messages.stream(**MESSAGE_ARGS) as helper:
        types: list[str] = [e.type for e in helper]
        return types, helper.get_final_text()


def _scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def _is_call_span(span: ReadableSpan) -> bool:
    """The logical-call span: the SDK's own, or sdkguard's when the SDK has none."""
    scope = _scope(span)
    return scope == SDK_SCOPE or (scope == "sdkguard" and span.name != ATTEMPT)


def _forest(spans: list[ReadableSpan], *, keep_call: bool = True) -> list[tuple[Any, ...]]:
    """The trees of spans, as (label, children), attempt spans left out and the call span
    labelled `call` whoever opened it. Without `keep_call` the call span is left out too, its
    children taking its place."""
    dropped = {
        s.context.span_id
        for s in spans
        if s.name == ATTEMPT or (not keep_call and _is_call_span(s))
    }
    by_id = {s.context.span_id: s for s in spans}

    def parent_of(span: ReadableSpan) -> int | None:
        parent = span.parent
        while parent is not None and parent.span_id in dropped:
            parent = by_id[parent.span_id].parent
        return parent.span_id if parent is not None and parent.span_id in by_id else None

    kept = [s for s in spans if s.context.span_id not in dropped]

    def node(span: ReadableSpan) -> tuple[Any, ...]:
        label = "call" if _is_call_span(span) else f"{_scope(span)}: {span.name}"
        children = sorted(node(s) for s in kept if parent_of(s) == span.context.span_id)
        return (label, tuple(children))

    return sorted(node(s) for s in kept if parent_of(s) is None)


def _roots(spans: list[ReadableSpan]) -> list[str]:
    return sorted(s.name for s in spans if s.parent is None)


def _check_side_by_side(
    server: FakeAnthropic,
    instrumented: Instrumented,
    mode: str,
    style: str,
    fault: faults.Answer,
) -> list[ReadableSpan]:
    name, recorded = instrumented
    # The reference: the same call without a fault, sdkguard bypassed, the SDK's tracing on.
    with sdkguard.policy(enabled=False), _client(server) as client:
        expected = _read(client, style)
    reference = recorded.take()
    # The call under test: a fault before any content, then success.
    server.script(fault, faults.ok())
    with _client(server, sdk_tracing=mode == "sdk") as client:
        seen = _read(client, style)
    spans = recorded.take()

    assert seen == expected  # the call completed, with nothing duplicated or missing
    if style != "create":
        assert seen[0].count("message_start") == 1 and seen[0][-1] == "message_stop"
    assert len(server.requests) == 3  # the reference call, then the fault and the retry

    # sdkguard adds its attempt spans under the call span, and nothing else: the forest is the
    # reference's (so no second root), the call span sitting where the SDK's span sits. An SDK
    # without tracing of its own has no call span in the reference: sdkguard's takes the place
    # the SDK's would have, so the trace has the same shape as on newer SDKs.
    sdk_span = any(_is_call_span(s) for s in reference)
    assert _forest(spans, keep_call=sdk_span) == _forest(reference), _forest(spans)
    assert len(_roots(spans)) == ROOTS[name][style], _roots(spans)
    if sdk_span:
        assert len(_roots(reference)) == ROOTS[name][style], _roots(reference)
    (call,) = [s for s in spans if _is_call_span(s)]
    attempts = sorted((s for s in spans if s.name == ATTEMPT), key=lambda s: s.start_time or 0)
    assert len(attempts) == 2
    assert all(a.parent is not None and a.parent.span_id == call.context.span_id for a in attempts)
    assert [dict(a.attributes or {})["sdkguard.outcome"] for a in attempts] == ["retry", "success"]
    assert {s.context.trace_id for s in attempts} == {call.context.trace_id}

    # The instrumentation's own span is ended (exported) and saw a success: the retry is
    # invisible above the SDK's `request`.
    (own,) = [s for s in spans if _scope(s) == recorded.instrumentation.scope]
    assert own.status.status_code != StatusCode.ERROR
    # sdkguard records the usage metric once per logical call (input and output).
    tokens = recorded.metric_points("gen_ai.client.token.usage", "sdkguard")
    assert sorted(p.attributes["gen_ai.token.type"] for p in tokens) == ["input", "output"]
    assert all(p.count == 1 for p in tokens)
    return spans


@pytest.mark.parametrize("style", ["create_stream", "stream_helper"])
def test_a_stream_reset_before_content_then_success(
    server: FakeAnthropic, instrumented: Instrumented, mode: str, style: str
) -> None:
    spans = _check_side_by_side(server, instrumented, mode, style, faults.reset_after(2))
    first = min((s for s in spans if s.name == ATTEMPT), key=lambda s: s.start_time or 0)
    assert dict(first.attributes or {})["sdkguard.reason"] == "connection_reset"


def test_a_529_then_success(server: FakeAnthropic, instrumented: Instrumented, mode: str) -> None:
    spans = _check_side_by_side(server, instrumented, mode, "create", faults.status(529))
    (call,) = [s for s in spans if _is_call_span(s)]
    assert call.status.status_code != StatusCode.ERROR
    assert dict(call.attributes or {})["sdkguard.attempts"] == 2
    first = min((s for s in spans if s.name == ATTEMPT), key=lambda s: s.start_time or 0)
    assert dict(first.attributes or {})["http.response.status_code"] == 529


def test_the_sdks_call_span_of_a_stream_restarted_after_its_headers(
    server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = Recorded(INSTRUMENTATIONS["otel-genai"])  # no instrumentation is instrumented
    use_global_providers(monkeypatch, recorded.tracer_provider)
    server.script(faults.reset_after(2), faults.ok())
    with _client(server) as client:
        types, _ = _read(client, "create_stream")
    assert types[-1] == "message_stop"
    (call,) = [s for s in recorded.take() if _is_call_span(s)]
    attributes = dict(call.attributes or {})
    assert call.status.status_code != StatusCode.ERROR
    assert attributes["sdkguard.attempts"] == 2
    assert "gen_ai.usage.output_tokens" in attributes


@pytest.mark.parametrize("style", ["create_stream", "stream_helper"])
def test_a_stream_failing_after_content_ends_its_spans_as_without_sdkguard(
    server: FakeAnthropic, instrumented: Instrumented, mode: str, style: str
) -> None:
    # The instrumentation sees sdkguard's StreamInterrupted where it would see the SDK's raw
    # transport error: it ends its span exactly when it does without sdkguard (traceloop
    # leaves a failed stream's span open either way). sdkguard's own spans end, failed.
    recorded = instrumented[1]
    scope = recorded.instrumentation.scope
    server.script(faults.reset_after(6))
    with sdkguard.policy(enabled=False), _client(server) as client, pytest.raises(http.ReadError):
        _read(client, style)
    reference = [s for s in recorded.take() if _scope(s) == scope]
    server.script(faults.reset_after(6))
    with (
        _client(server, sdk_tracing=mode == "sdk") as client,
        pytest.raises(sdkguard.StreamInterrupted),
    ):
        _read(client, style)
    spans = recorded.take()
    assert len(server.requests) == 2
    own = [s for s in spans if _scope(s) == scope]
    assert [s.name for s in own] == [s.name for s in reference]
    assert [s.status.status_code for s in own] == [s.status.status_code for s in reference]
    (call,) = [s for s in spans if _is_call_span(s)]
    (attempt,) = [s for s in spans if s.name == ATTEMPT]
    assert call.status.status_code == StatusCode.ERROR
    assert dict(attempt.attributes or {})["sdkguard.outcome"] == "failed"
