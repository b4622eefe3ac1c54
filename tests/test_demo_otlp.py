"""`sdkguard demo --otlp URL`: the guarded calls' spans reach an OTLP/HTTP endpoint.

The endpoint is a tiny HTTP server on 127.0.0.1 recording the POSTs; the demo runs in a
subprocess, since it sets the process's global OpenTelemetry providers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdkguard._cli import main

pytestmark = pytest.mark.timeout(60)

EXPORTER = "opentelemetry.exporter.otlp.proto.http"
MISSING = "the package opentelemetry-exporter-otlp-proto-http is not installed (sdkguard[otel])"


@dataclass(frozen=True)
class Post:
    path: str
    content_type: str
    body: bytes


class Collector:
    """An OTLP/HTTP endpoint that keeps every POST and answers it with `status`."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.status = 200
        posts = self.posts
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                posts.append(Post(self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(collector.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def traces(self) -> list[Post]:
        return [post for post in self.posts if post.path == "/v1/traces"]


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.server.shutdown()
        collector.server.server_close()
        thread.join(5)


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "sdkguard", "demo", "--fast", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def test_the_guarded_calls_spans_are_posted_as_protobuf(collector: Collector) -> None:
    pytest.importorskip(EXPORTER, reason=MISSING)
    result = demo("--only", "overloaded-529", "--otlp", collector.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"traces   the guarded calls, OTLP/HTTP to {collector.url}/v1/traces" in result.stdout
    assert f"OpenTelemetry: 3 spans sent to {collector.url}/v1/traces" in result.stdout
    assert "1 of 1 guarded calls ended as expected" in result.stdout

    traces = collector.traces()
    assert traces, f"no POST to /v1/traces: {collector.posts}"
    assert all(post.content_type == "application/x-protobuf" for post in traces)
    assert all(post.body for post in traces)
    # Metrics too (OTEL_METRICS_EXPORTER is not `none` here), at the latest on shutdown.
    assert any(post.path == "/v1/metrics" and post.body for post in collector.posts)

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    services: set[str] = set()
    spans = []
    for post in traces:
        request = ExportTraceServiceRequest()
        request.ParseFromString(post.body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    assert services == {"sdkguard-demo"}
    # The guarded call only (the plain one is not traced): its call span and two attempts.
    roots = [span for span in spans if not span.parent_span_id]
    assert len(roots) == 1, [span.name for span in spans]
    attempts = [span for span in spans if span.name == "sdkguard.attempt"]
    assert len(attempts) == 2
    assert {span.parent_span_id for span in attempts} == {roots[0].span_id}
    assert {span.trace_id for span in spans} == {roots[0].trace_id}
    reasons = [
        attribute.value.string_value
        for span in attempts
        for attribute in span.attributes
        if attribute.key == "sdkguard.reason"
    ]
    assert reasons == ["status_529"]


def test_spans_the_endpoint_refuses_fail_the_demo(collector: Collector) -> None:
    pytest.importorskip(EXPORTER, reason=MISSING)
    collector.status = 404  # not retried by the exporter
    result = demo("--only", "overloaded-529", "--otlp", collector.url + "/v1/traces")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"3 of 3 spans NOT sent to {collector.url}/v1/traces" in result.stdout
    assert "1 of 1 guarded calls ended as expected" in result.stdout
    assert collector.traces()


def test_a_missing_exporter_package_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("metric_exporter", "trace_exporter"):
        monkeypatch.setitem(sys.modules, f"{EXPORTER}.{module}", None)
    code = main(["demo", "--fast", "--only", "refused", "--otlp", "http://127.0.0.1:9"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "", "nothing runs"
    assert "--otlp needs the package opentelemetry-exporter-otlp-proto-http" in captured.err
    assert "pip install 'sdkguard[otel]'" in captured.err
