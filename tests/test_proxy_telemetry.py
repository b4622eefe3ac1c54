"""sdkguard proxy's OpenTelemetry: a SERVER span per request, the library's call and attempt
spans under it, and the library's metrics, once per call.

The proxy runs in this process (`RunningProxy`, a thread of its own) with the fake server as
its upstream; an in-memory span exporter and metric reader are the global providers, as an
application (or `sdkguard proxy --otlp`) sets them. The clients are the anthropic SDK with
sdkguard NOT installed and with its own tracing off, so every span is the proxy's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

import sdkguard
from sdkguard import _telemetry
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import WITHOUT_SDK_TRACING, use_global_providers
from tests.test_demo_otlp import EXPORTER, MISSING, Collector
from tests.test_telemetry import Recorded as LibraryRecorded

pytest.importorskip("aiohttp")

from sdkguard.proxy import RunningProxy
from tests.test_proxy import ARGS, HELLO, SECRET_KEY, start_proxy

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]

HEADER_SECRET = "x-team-secret-header-value-42"
PREFIX = "/team-secret-prefix"
PROMPT = ARGS["messages"][0]["content"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Recorded(LibraryRecorded):
    """The library tests' in-memory providers, with the proxy's SERVER spans apart."""

    def wait_for_servers(self, count: int) -> list[ReadableSpan]:
        """The SERVER spans, once `count` have ended (a handler ends after its client has
        read the last byte)."""
        deadline = time.monotonic() + 10
        while True:
            servers = [s for s in self.spans() if s.kind == trace.SpanKind.SERVER]
            if len(servers) >= count or time.monotonic() > deadline:
                return servers
            time.sleep(0.01)

    def calls(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind == trace.SpanKind.CLIENT]


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    recorded = Recorded()
    use_global_providers(monkeypatch, recorded.tracer_provider, recorded.meter_provider)
    yield recorded
    recorded.tracer_provider.shutdown()
    recorded.meter_provider.shutdown()


@pytest.fixture
def proxy(server: FakeAnthropic) -> Iterator[RunningProxy]:
    assert not sdkguard.is_installed(), "these clients must not be guarded by the library"
    BUDGET.reset()
    with start_proxy(server.url) as running:
        yield running


def client_of(url: str, **options: Any) -> anthropic.Anthropic:
    # max_retries=0: every attempt is the proxy's; no tracing of the SDK's own.
    return anthropic.Anthropic(
        base_url=url, api_key=SECRET_KEY, max_retries=0, **WITHOUT_SDK_TRACING, **options
    )


def read_stream(client: anthropic.Anthropic, **extra: Any) -> str:
    text = ""
    with client.messages.create(**ARGS, **extra, stream=True) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    return text


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def the_tree(otel: Recorded) -> tuple[ReadableSpan, ReadableSpan, list[ReadableSpan]]:
    """The one request's SERVER span, its call span and the call's attempts, in order."""
    (server_span,) = otel.wait_for_servers(1)
    (call,) = otel.calls()
    attempts = sorted(otel.attempts(), key=lambda s: s.start_time or 0)
    assert call.parent is not None and call.parent.span_id == server_span.context.span_id
    assert call.context.trace_id == server_span.context.trace_id
    for attempt in attempts:
        assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert len(otel.spans()) == 2 + len(attempts)
    return server_span, call, attempts


def test_a_retried_stream(server: FakeAnthropic, proxy: RunningProxy, otel: Recorded) -> None:
    server.script(faults.reset_after(2), faults.ok())
    with client_of(proxy.url) as client:
        assert read_stream(client, extra_body={"temperature": 0.5}) == HELLO
    server_span, call, attempts = the_tree(otel)

    assert server_span.name == "POST /v1/messages"
    assert server_span.kind == trace.SpanKind.SERVER and server_span.parent is None
    assert attrs(server_span) == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/v1/messages",
        "http.route": "/v1/messages",
        "network.protocol.version": "1.1",
        "server.address": "127.0.0.1",
        "server.port": proxy.port,
        "http.response.status_code": 200,
    }
    assert server_span.status.status_code == trace.StatusCode.UNSET

    assert call.name == "chat claude-test" and call.kind == trace.SpanKind.CLIENT
    call_attrs = attrs(call)
    assert call_attrs["gen_ai.operation.name"] == "chat"
    assert call_attrs["gen_ai.provider.name"] == "anthropic"
    assert call_attrs["gen_ai.request.model"] == "claude-test"
    assert call_attrs["gen_ai.request.max_tokens"] == 64
    assert call_attrs["gen_ai.request.temperature"] == 0.5
    assert call_attrs["gen_ai.request.stream"] is True
    assert call_attrs["server.address"] == "127.0.0.1"
    assert call_attrs["server.port"] == server.port  # the upstream's
    assert call_attrs["sdkguard.attempts"] == 2
    assert call_attrs["gen_ai.response.id"].startswith("msg_fake_")
    assert call_attrs["gen_ai.response.model"] == "claude-test"
    assert call_attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert call_attrs["gen_ai.usage.input_tokens"] == 10
    assert call_attrs["gen_ai.usage.output_tokens"] > 0
    assert "error.type" not in call_attrs
    assert call.status.status_code == trace.StatusCode.UNSET

    first, second = attempts
    assert attrs(first)["http.request.resend_count"] == 0
    assert attrs(first)["http.response.status_code"] == 200  # the stream had begun
    assert attrs(first)["sdkguard.outcome"] == "retry"
    assert attrs(first)["sdkguard.reason"] == "connection_reset"
    assert attrs(first)["error.type"] == "connection_reset"
    assert attrs(first)["sdkguard.retry.wait"] >= 0
    assert [e.name for e in first.events] == ["sdkguard.retry_scheduled"]
    assert first.status.status_code == trace.StatusCode.ERROR
    assert attrs(second)["http.request.resend_count"] == 1
    assert attrs(second)["sdkguard.outcome"] == "success"
    assert attrs(second)["anthropic.request.id"]  # the API's id for the request, for support

    # The metrics, counted once for the one call.
    (duration,) = otel.metric_points("gen_ai.client.operation.duration")
    assert duration.count == 1 and duration.attributes["gen_ai.request.model"] == "claude-test"
    tokens = {
        p.attributes["gen_ai.token.type"]: p
        for p in otel.metric_points("gen_ai.client.token.usage")
    }
    assert sorted(tokens) == ["input", "output"]
    assert tokens["input"].count == 1 and tokens["input"].sum == 10
    (first_chunk,) = otel.metric_points("gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.count == 1
    counted = {
        (p.attributes["sdkguard.outcome"], p.attributes.get("sdkguard.reason")): p.value
        for p in otel.metric_points("sdkguard.attempts")
    }
    assert counted == {("retry", "connection_reset"): 1, ("success", None): 1}
    (wait,) = otel.metric_points("sdkguard.retry.wait")
    assert wait.count == 1 and wait.attributes == {"sdkguard.reason": "connection_reset"}
    assert otel.metric_points("sdkguard.stalls") == []


def test_a_silent_stream_is_a_stall_event(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    server.script(faults.stall_after(2), faults.ok())
    with client_of(proxy.url) as client:
        assert read_stream(client) == HELLO
    _, call, (first, second) = the_tree(otel)
    assert attrs(first)["sdkguard.reason"] == "stall_idle"
    events = [(e.name, dict(e.attributes or {})) for e in first.events]
    assert events[:2] == [
        ("sdkguard.stall", {"sdkguard.limit": "idle_timeout"}),
        ("sdkguard.retry_scheduled", {"sdkguard.retry.wait": attrs(first)["sdkguard.retry.wait"]}),
    ]
    assert attrs(second)["sdkguard.outcome"] == "success"
    (stalls,) = otel.metric_points("sdkguard.stalls")
    assert stalls.value == 1 and stalls.attributes == {"sdkguard.limit": "idle_timeout"}
    assert attrs(call)["sdkguard.attempts"] == 2


def test_a_plain_call_with_a_529_first(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    server.script(faults.status(529), faults.ok())
    with client_of(proxy.url) as client:
        message = client.messages.create(**ARGS)
    assert message.content[0].type == "text" and message.content[0].text == HELLO
    _, call, (first, second) = the_tree(otel)
    call_attrs = attrs(call)
    # Sent as a stream: recorded as the stream it is, as the library records a converted call.
    assert call_attrs["gen_ai.request.stream"] is True
    assert call_attrs["gen_ai.usage.input_tokens"] == 10
    assert call_attrs["gen_ai.usage.output_tokens"] == message.usage.output_tokens
    assert call_attrs["gen_ai.response.id"] == message.id
    assert attrs(first)["http.response.status_code"] == 529
    assert (attrs(first)["sdkguard.outcome"], attrs(first)["sdkguard.reason"]) == (
        "retry",
        "status_529",
    )
    assert attrs(second)["sdkguard.outcome"] == "success"
    (first_chunk,) = otel.metric_points("gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.count == 1
    (duration,) = otel.metric_points("gen_ai.client.operation.duration")
    assert duration.count == 1


def test_count_tokens(server: FakeAnthropic, proxy: RunningProxy, otel: Recorded) -> None:
    with client_of(proxy.url) as client:
        client.messages.count_tokens(model="claude-test", messages=ARGS["messages"])
    server_span, call, (attempt,) = the_tree(otel)
    assert server_span.name == "POST /v1/messages/count_tokens"
    assert call.name == "count_tokens claude-test"
    assert attrs(call)["gen_ai.operation.name"] == "count_tokens"
    assert attrs(attempt)["sdkguard.outcome"] == "success"


def test_content_lost_after_it_reached_the_client(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    server.script(faults.reset_after(5))
    with client_of(proxy.url) as client, pytest.raises(anthropic.APIStatusError):
        read_stream(client)
    server_span, call, (attempt,) = the_tree(otel)
    assert attrs(server_span)["http.response.status_code"] == 200  # the stream had begun
    assert attrs(call)["error.type"] == "connection_reset"
    assert call.status.status_code == trace.StatusCode.ERROR
    assert (attrs(attempt)["sdkguard.outcome"], attrs(attempt)["sdkguard.reason"]) == (
        "failed",
        "connection_reset",
    )
    # Usage as far as the message went: message_start's input tokens.
    assert attrs(call)["gen_ai.usage.input_tokens"] == 10
    (duration,) = otel.metric_points("gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "connection_reset"


def test_giving_up_passes_the_status_on(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    server.script(*[faults.status(529)] * 5)
    with client_of(proxy.url) as client, pytest.raises(anthropic.APIStatusError):
        client.messages.create(**ARGS)
    server_span, call, attempts = the_tree(otel)
    assert attrs(server_span)["http.response.status_code"] == 529
    assert attrs(server_span)["error.type"] == "529"
    assert server_span.status.status_code == trace.StatusCode.ERROR
    assert [attrs(a)["http.request.resend_count"] for a in attempts] == list(range(len(attempts)))
    assert [attrs(a)["sdkguard.outcome"] for a in attempts][-1] == "failed"
    assert attrs(call)["error.type"] == "status_529"


def test_other_requests_get_a_server_span_only(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    with client_of(proxy.url) as client:
        client.models.list()
    (server_span,) = otel.wait_for_servers(1)
    assert server_span.name == "GET"  # no route of its own
    assert attrs(server_span)["url.path"] == "/v1/models"
    assert otel.calls() == [] and otel.attempts() == []


def test_an_incoming_trace_context_is_the_parent(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    with client_of(proxy.url, default_headers={"traceparent": parent}) as client:
        client.messages.create(**ARGS)
    server_span, call, _ = the_tree(otel)
    assert format(server_span.context.trace_id, "032x") == TRACE_ID
    assert server_span.parent is not None and server_span.parent.is_remote
    assert format(call.context.trace_id, "032x") == TRACE_ID


def test_no_content_key_header_value_or_path_prefix_is_recorded(
    server: FakeAnthropic, proxy: RunningProxy, otel: Recorded
) -> None:
    server.script(faults.reset_after(2), faults.ok())
    headers = {"x-team": HEADER_SECRET}
    with client_of(proxy.url + PREFIX, default_headers=headers) as client:
        assert read_stream(client) == HELLO
        client.messages.create(**ARGS)
        client.messages.count_tokens(model="claude-test", messages=ARGS["messages"])
    otel.wait_for_servers(3)
    recorded: list[str] = []
    for span in otel.spans():
        recorded += [span.name, *map(str, attrs(span).values())]
        for event in span.events:
            recorded += [event.name, *map(str, dict(event.attributes or {}).values())]
    data = otel.reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    recorded += map(str, dict(point.attributes or {}).values())
    everything = "\n".join(recorded)
    for secret in (SECRET_KEY, HEADER_SECRET, PROMPT, PREFIX.strip("/"), HELLO, "Hello"):
        assert secret not in everything
    assert [attrs(s)["url.path"] for s in otel.wait_for_servers(3)] == [
        "/v1/messages",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ]


def test_no_provider_no_telemetry(server: FakeAnthropic, proxy: RunningProxy) -> None:
    recorded = Recorded()  # not the global providers: nothing can reach it
    assert not _telemetry.may_record()
    server.script(faults.reset_after(2), faults.ok())
    with client_of(proxy.url) as client:
        assert read_stream(client) == HELLO
    assert recorded.spans() == [] and _telemetry._current() is None
    assert proxy.stats.retries == 1


# -- sdkguard proxy --otlp ------------------------------------------------------------------------

CLIENT = """
import json, os, urllib.request
body = json.dumps({"model": "claude-test", "max_tokens": 64, "stream": True,
                   "messages": [{"role": "user", "content": "secret prompt text"}]}).encode()
request = urllib.request.Request(
    os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", body,
    {"content-type": "application/json", "x-api-key": "sk-ant-otlp-test-key"},
)
with urllib.request.urlopen(request, timeout=20) as answer:
    print(answer.status, answer.read().count(b"event: content_block_delta"))
"""


@contextlib.contextmanager
def running_collector() -> Iterator[Collector]:
    collector = Collector()
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.server.shutdown()
        collector.server.server_close()
        thread.join(5)


def test_the_command_exports_over_otlp(server: FakeAnthropic, tmp_path: Any) -> None:
    pytest.importorskip(EXPORTER, reason=MISSING)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    server.script(faults.reset_before_headers(), faults.ok())
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    with running_collector() as collector:
        argv = [sys.executable, "-m", "sdkguard", "proxy", "--upstream", server.url]
        argv += ["--backoff-initial", "0.01", "--otlp", collector.url]
        argv += ["--log-file", str(tmp_path / "proxy.log"), "--", sys.executable, "-c", CLIENT]
        result = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=45,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("200 ")
        assert f"OpenTelemetry: 4 spans sent to {collector.url}/v1/traces" in result.stderr
        assert "(service.name sdkguard-proxy)" in result.stderr
        spans, services = [], set()
        for post in collector.traces():
            request = ExportTraceServiceRequest()
            request.ParseFromString(post.body)
            for resource_spans in request.resource_spans:
                services |= {
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                }
                for scope_spans in resource_spans.scope_spans:
                    spans.extend(scope_spans.spans)
        assert any(post.path == "/v1/metrics" for post in collector.posts)
    assert services == {"sdkguard-proxy"}
    assert sorted(span.name for span in spans) == [
        "POST /v1/messages",
        "chat claude-test",
        "sdkguard.attempt",
        "sdkguard.attempt",
    ]
