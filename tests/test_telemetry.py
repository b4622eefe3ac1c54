"""Telemetry against the fault kit: in-memory span exporter and metric reader."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sdkguard
from sdkguard import _sdk, _telemetry
from sdkguard.testing import FakeAnthropic, faults
from tests.conftest import FAST
from tests.helpers import (
    API_KEY,
    MESSAGE_ARGS,
    WITHOUT_SDK_TRACING,
    OverloadedError,
    needs_sdk_tracing,
    use_global_providers,
)

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("guard")]


class Recorded:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def calls(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name != "sdkguard.attempt"]

    def attempts(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == "sdkguard.attempt"]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    recorded = Recorded()
    # The global providers, as an application sets them (the API allows setting them once).
    use_global_providers(monkeypatch, recorded.tracer_provider, recorded.meter_provider)
    # As on an SDK without tracing of its own (before 1.14): sdkguard's call span is the
    # logical-call span. `_client` turns the SDK's own spans off to match.
    monkeypatch.setattr(_sdk.call, "client_tracing", lambda client: (True, None))
    yield recorded
    recorded.tracer_provider.shutdown()
    recorded.meter_provider.shutdown()


def _client(server: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, **WITHOUT_SDK_TRACING)


def test_no_provider_records_nothing(server: FakeAnthropic) -> None:
    assert _telemetry._current() is None
    with _client(server) as client:
        client.messages.create(**MESSAGE_ARGS)


@needs_sdk_tracing
def test_a_client_with_tracing_turned_off_gets_no_sdkguard_spans(
    server: FakeAnthropic, otel: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # the real switch of the installed SDK
    use_global_providers(monkeypatch, otel.tracer_provider)
    server.script(faults.status(529), faults.ok())
    with anthropic.Anthropic(base_url=server.url, api_key=API_KEY, **WITHOUT_SDK_TRACING) as c:
        c.messages.create(**MESSAGE_ARGS)
    assert otel.spans() == []


def test_a_clean_call(server: FakeAnthropic, otel: Recorded) -> None:
    with _client(server) as client:
        client.messages.create(**MESSAGE_ARGS, extra_body={"temperature": 0.5, "top_k": 5})
    (call,) = otel.calls()
    (attempt,) = otel.attempts()
    assert call.name == "chat claude-test" and call.kind == trace.SpanKind.CLIENT
    attrs = dict(call.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == "claude-test"
    assert attrs["gen_ai.request.max_tokens"] == 64 and attrs["gen_ai.request.top_k"] == 5
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == server.port
    assert attrs["gen_ai.response.id"].startswith("msg_fake_")
    assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attrs["gen_ai.usage.input_tokens"] == 10 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["sdkguard.attempts"] == 1
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert dict(attempt.attributes or {})["http.request.resend_count"] == 0
    assert [p.count for p in otel.metric_points("gen_ai.client.operation.duration")] == [1]
    tokens = otel.metric_points("gen_ai.client.token.usage")
    assert sorted(p.attributes["gen_ai.token.type"] for p in tokens) == ["input", "output"]
    assert all(p.count == 1 for p in tokens)


def test_a_reset_before_content_then_success(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(faults.reset_after(2), faults.ok())
    with _client(server) as client, client.messages.create(**MESSAGE_ARGS, stream=True) as s:
        list(s)
    (call,) = otel.calls()
    first, second = sorted(otel.attempts(), key=lambda s: s.start_time or 0)
    assert [dict(a.attributes or {})["http.request.resend_count"] for a in (first, second)] == [
        0,
        1,
    ]
    first_attrs = dict(first.attributes or {})
    assert first_attrs["sdkguard.reason"] == "connection_reset"
    assert first_attrs["sdkguard.outcome"] == "retry" and "sdkguard.retry.wait" in first_attrs
    assert [e.name for e in first.events] == ["sdkguard.retry_scheduled"]
    assert dict(second.attributes or {})["sdkguard.outcome"] == "success"
    assert dict(second.attributes or {})["anthropic.request.id"].startswith("req_fake_")
    attrs = dict(call.attributes or {})
    assert attrs["sdkguard.attempts"] == 2 and attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert len(otel.metric_points("gen_ai.client.operation.time_to_first_chunk")) == 1
    outcomes = {
        p.attributes["sdkguard.outcome"]: p.value for p in otel.metric_points("sdkguard.attempts")
    }
    assert outcomes == {"retry": 1, "success": 1}


def test_a_call_that_gives_up(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(*[faults.status(529)] * 3)
    with (
        sdkguard.policy(max_attempts=3),
        _client(server) as client,
        pytest.raises(OverloadedError),
    ):
        client.messages.create(**MESSAGE_ARGS)
    (call,) = otel.calls()
    assert dict(call.attributes or {})["error.type"] == "status_529"
    assert call.status.status_code == trace.StatusCode.ERROR
    attempts = otel.attempts()
    assert len(attempts) == 3
    assert all(dict(a.attributes or {})["http.response.status_code"] == 529 for a in attempts)
    waits = otel.metric_points("sdkguard.retry.wait")
    assert sum(p.count for p in waits) == 2


def test_the_retry_budget_level_is_a_metric(server: FakeAnthropic, otel: Recorded) -> None:
    # The guard fixture installs the budget off: no level to report.
    with _client(server) as client:
        client.messages.create(**MESSAGE_ARGS)
    assert otel.metric_points("sdkguard.retry_budget.available") == []
    sdkguard.install(**{**FAST, "retry_budget": True, "budget_capacity": 20})
    (full,) = otel.metric_points("sdkguard.retry_budget.available")
    assert full.value == 20
    server.script(faults.status(529), faults.status(529), faults.ok())
    with _client(server) as client:
        client.messages.create(**MESSAGE_ARGS)  # two retries of 5, then 5 back
    (level,) = otel.metric_points("sdkguard.retry_budget.available")
    assert level.value == 15


def test_a_stall_is_an_event_and_a_metric(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(faults.stall_after(2), faults.ok())
    with _client(server) as client, client.messages.create(**MESSAGE_ARGS, stream=True) as s:
        list(s)
    first = sorted(otel.attempts(), key=lambda s: s.start_time or 0)[0]
    assert [e.name for e in first.events] == ["sdkguard.stall", "sdkguard.retry_scheduled"]
    (stall,) = otel.metric_points("sdkguard.stalls")
    assert stall.attributes == {"sdkguard.limit": "idle_timeout"} and stall.value == 1


def test_a_closed_and_a_dropped_stream_end_their_spans(
    server: FakeAnthropic, otel: Recorded
) -> None:
    server.script(faults.ok(faults.text("a" * 50, deltas=25)), faults.ok())
    with _client(server) as client:
        with client.messages.create(**MESSAGE_ARGS, stream=True) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    break
        dropped = client.messages.create(**MESSAGE_ARGS, stream=True)
        del dropped
        gc.collect()
    assert len(otel.calls()) == 2 and len(otel.attempts()) == 2
    assert all(s.end_time is not None for s in otel.spans())


def test_async_call_spans(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(faults.status(529), faults.ok())

    async def main() -> None:
        async with anthropic.AsyncAnthropic(
            base_url=server.url, api_key=API_KEY, **WITHOUT_SDK_TRACING
        ) as client:
            stream = await client.messages.create(**MESSAGE_ARGS, stream=True)
            async with stream:
                async for _ in stream:
                    pass

    anyio.run(main)
    (call,) = otel.calls()
    assert dict(call.attributes or {})["sdkguard.attempts"] == 2
    assert len(otel.attempts()) == 2


def test_with_the_sdks_own_tracing_one_root_and_usage_once(
    server: FakeAnthropic, otel: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("anthropic._tracing")
    monkeypatch.undo()  # the installed SDK as it is, with its own tracing
    use_global_providers(monkeypatch, meter_provider=otel.meter_provider)
    server.script(faults.reset_before_headers(), faults.ok())
    with anthropic.Anthropic(
        base_url=server.url,
        api_key=API_KEY,
        open_telemetry={"tracer_provider": otel.tracer_provider},
    ) as client:
        client.messages.create(**MESSAGE_ARGS)
    spans = otel.spans()
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1, [s.name for s in spans]
    with_usage = [s for s in spans if "gen_ai.usage.input_tokens" in (s.attributes or {})]
    assert with_usage == roots
    assert dict(roots[0].attributes or {})["sdkguard.attempts"] == 2
    assert len(otel.attempts()) == 2
    assert all(a.parent and a.parent.span_id == roots[0].context.span_id for a in otel.attempts())
    assert sum(p.count for p in otel.metric_points("gen_ai.client.token.usage")) == 2


def test_nothing_of_the_prompt_completion_or_key_is_recorded(
    server: FakeAnthropic, otel: Recorded
) -> None:
    server.script(faults.reset_after(5), faults.ok())
    with (
        _client(server) as client,
        pytest.raises(sdkguard.StreamInterrupted),
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        list(stream)
    dump = repr(
        [
            (s.name, dict(s.attributes or {}), [(e.name, e.attributes) for e in s.events])
            for s in otel.spans()
        ]
    )
    for secret in (API_KEY, "secret prompt text", "Hello from"):
        assert secret not in dump


def test_telemetry_that_fails_never_breaks_a_call(server: FakeAnthropic, otel: Recorded) -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class Broken(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            raise RuntimeError("cannot start a span")

    otel.tracer_provider.add_span_processor(Broken())
    server.script(faults.reset_after(2), faults.ok())
    with _client(server) as client, client.messages.create(**MESSAGE_ARGS, stream=True) as s:
        types = [event.type for event in s]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert len(server.requests) == 2


def _sdk_traced_client(
    server: FakeAnthropic, otel: Recorded, monkeypatch: pytest.MonkeyPatch, **traces: Any
) -> anthropic.Anthropic:
    """A client with the installed SDK's own tracing on (skipped where the SDK has none)."""
    pytest.importorskip("anthropic._tracing")
    monkeypatch.undo()  # the installed SDK as it is, with its own tracing
    option: dict[str, Any] = {"tracer_provider": otel.tracer_provider}
    if traces:
        option["traces"] = traces
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, open_telemetry=option)


def _sdk_call_span(otel: Recorded) -> ReadableSpan:
    (span,) = [s for s in otel.spans() if s.instrumentation_scope.name != "sdkguard"]  # type: ignore[union-attr]
    return span


@pytest.mark.parametrize("read", ["events", "final_message"])
def test_the_sdks_span_of_a_restarted_stream_helper_keeps_its_output_content(
    server: FakeAnthropic, otel: Recorded, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    # The helper shares its message snapshot with the first attempt's span observer; the
    # attempt that replaces it must report the same snapshot, or the span loses its output.
    server.script(faults.reset_after(2), faults.ok(faults.text("the answer")))
    client = _sdk_traced_client(server, otel, monkeypatch, content_mode="content")
    with client, client.messages.stream(**MESSAGE_ARGS) as helper:
        if read == "events":
            for _ in helper:
                pass
        text = helper.get_final_text()
    assert text == "the answer" and len(server.requests) == 2
    attributes = dict(_sdk_call_span(otel).attributes or {})
    assert attributes["sdkguard.attempts"] == 2
    assert "the answer" in str(attributes["gen_ai.output.messages"])


def test_the_sdks_span_of_a_guarded_stream_dropped_unread_ends(
    server: FakeAnthropic, otel: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _sdk_traced_client(server, otel, monkeypatch)
    with client:
        stream = client.messages.create(**MESSAGE_ARGS, stream=True)
        assert otel.spans() == []
        del stream
        gc.collect()
        span = _sdk_call_span(otel)
    assert span.status.status_code == trace.StatusCode.UNSET


def test_the_sdks_span_of_a_stream_whose_bytes_the_application_reads_ends(
    server: FakeAnthropic, otel: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _sdk_traced_client(server, otel, monkeypatch)
    with client:
        stream = client.messages.create(**MESSAGE_ARGS, stream=True)
        assert b"message_stop" in b"".join(stream.response.iter_bytes())
        span = _sdk_call_span(otel)
    assert span.status.status_code == trace.StatusCode.OK


@pytest.mark.skipif(
    "middleware" not in inspect.signature(anthropic.Anthropic.__init__).parameters,
    reason="this SDK has no middleware (anthropic < 0.108)",
)
def test_an_error_of_the_callers_own_code_marks_its_attempt(
    server: FakeAnthropic, otel: Recorded
) -> None:
    # Not a failure of the network or the API: raised as it is, never retried; the attempt's
    # span says what broke it (as OpenTelemetry's `use_span` does), the call its error type.
    def broken(request: Any, call_next: Any) -> Any:
        raise ValueError("the caller's middleware failed")

    with (
        anthropic.Anthropic(
            base_url=server.url, api_key=API_KEY, middleware=[broken], **WITHOUT_SDK_TRACING
        ) as client,
        pytest.raises(ValueError, match="middleware failed"),
    ):
        client.messages.create(**MESSAGE_ARGS)
    (attempt,) = otel.attempts()
    assert attempt.status.status_code == trace.StatusCode.ERROR
    assert attempt.status.description == "ValueError: the caller's middleware failed"
    (call,) = otel.calls()
    assert dict(call.attributes or {})["error.type"] == "ValueError"
    assert len(server.requests) == 0
