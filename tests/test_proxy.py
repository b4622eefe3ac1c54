"""sdkguard proxy in front of the fake server, with clients that know nothing of sdkguard.

The proxy runs in-process on a free port (`RunningProxy`), the fake server is its upstream, and
the clients are the anthropic SDK with sdkguard NOT installed (sync and async, every way of
reading a call) and curl. Before content every fault is invisible: one clean stream, and the
server saw the retry. After content the client's stream ends with an SSE error event.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults

pytest.importorskip("aiohttp")

from sdkguard.proxy import ProxyConfig, RunningProxy, proxy_policy
from tests.helpers import OverloadedError

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]

# Waits and limits in tenths of a second, as tests/conftest.py's FAST.
FAST_PROXY = {
    "backoff_initial": "0.01",
    "backoff_max": "0.02",
    "jitter": "0",
    "connect_timeout": "0.5",
    "response_timeout": "0.3",
    "idle_timeout": "0.3",
    "progress_timeout": "0.6",
    "retry_budget": "off",
}
SECRET_KEY = "sk-ant-proxy-test-secret-key-0123456789"
ARGS: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "secret prompt text"}],
}
HELLO = faults.DEFAULT_TEXT


def start_proxy(upstream: str, **changes: Any) -> RunningProxy:
    # resume off: these tests pin the relay without continuation (tests/test_proxy_resume.py
    # has it on, as the proxy's default).
    fields = {"resume": "off", **FAST_PROXY, **changes.pop("policy", {})}
    config = ProxyConfig(
        upstream=upstream,
        port=0,
        policy=proxy_policy(fields, environ={}),
        pre_content_deadline=changes.pop("pre_content_deadline", 10.0),
        **changes,
    )
    return RunningProxy(config)


@pytest.fixture
def proxy(server: FakeAnthropic) -> Iterator[RunningProxy]:
    assert not sdkguard.is_installed(), "these clients must not be guarded by the library"
    with start_proxy(server.url) as running:
        yield running


@pytest.fixture
def plain_client(proxy: RunningProxy) -> Iterator[anthropic.Anthropic]:
    # max_retries=0: every request the server sees is the proxy's doing.
    with anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client:
        yield client


# -- before content: invisible -------------------------------------------------------------------

BEFORE_CONTENT = {
    "reset_before_headers": faults.reset_before_headers(),
    "stall_before_headers": faults.stall_before_headers(),
    "reset_after_0": faults.reset_after(0),
    "reset_after_1": faults.reset_after(1),
    "reset_after_2": faults.reset_after(2),
    "stall_after_2": faults.stall_after(2),
    "pings_only_after_2": faults.pings_only_after(2, 0.05),
    "status_429": faults.status(429, headers={"retry-after": "0"}),
    "status_500": faults.status(500),
    "status_503": faults.status(503, headers={"retry-after-ms": "10"}),
    "status_529": faults.status(529, headers={"retry-after": "0"}),
    "sse_error_overloaded": faults.sse_error_after(2),
    "sse_error_api_error": faults.sse_error_after(3, "api_error"),
    "truncate_after_2": faults.truncate_after(2),
    "close_after_2": faults.close_after(2),
    "proxy_error_502": faults.proxy_error(502),
    "wrong_content_type": faults.wrong_content_type(),
    "reset_at_byte_250": faults.reset_at_byte(250),
}
if faults.VANISH_SUPPORTED:
    BEFORE_CONTENT["vanish_before_headers"] = faults.vanish_before_headers()


def read_sync(client: anthropic.Anthropic, mode: str) -> tuple[str, list[Any] | None]:
    """The text the application got, and (for raw streams) the events."""
    if mode == "create_stream":
        with client.messages.create(**ARGS, stream=True) as stream:
            events = list(stream)
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
        return text, events
    if mode == "stream_helper":
        with client.messages.stream(**ARGS) as helper:
            return helper.get_final_text(), None
    message = client.messages.create(**ARGS)
    return message.content[0].text, None


@pytest.mark.parametrize("mode", ["create_stream", "stream_helper", "create"])
@pytest.mark.parametrize("fault", list(BEFORE_CONTENT), ids=str)
def test_a_fault_before_content_is_invisible(
    server: FakeAnthropic, plain_client: anthropic.Anthropic, fault: str, mode: str
) -> None:
    server.script(BEFORE_CONTENT[fault], faults.ok())
    text, events = read_sync(plain_client, mode)
    assert text == HELLO
    # The fault's attempt, then the one that answered (a loaded machine can stall a healthy
    # stream past the short limits here: more attempts, as invisible)
    assert len(server.requests) >= 2 and server.sent[0].fault != "ok"
    if events is not None:  # one clean stream: exactly what the last attempt sent
        seen = [(e.type, e.to_dict()) for e in events]
        assert seen == server.sent[-1].content_events()
    if mode == "create":  # a plain call went upstream as a stream, answered as the message
        assert all(r.body["stream"] is True for r in server.requests)


@pytest.mark.parametrize(
    "fault", ["reset_before_headers", "reset_after_2", "stall_after_2", "status_529"]
)
def test_async_clients_see_one_clean_stream(
    server: FakeAnthropic, proxy: RunningProxy, fault: str
) -> None:
    async def main() -> tuple[list[Any], str, str]:
        async with anthropic.AsyncAnthropic(
            base_url=proxy.url, api_key=SECRET_KEY, max_retries=0
        ) as client:
            server.script(BEFORE_CONTENT[fault], faults.ok())
            stream = await client.messages.create(**ARGS, stream=True)
            events = [event async for event in stream]
            server.script(BEFORE_CONTENT[fault], faults.ok())
            async with client.messages.stream(**ARGS) as helper:
                final = await helper.get_final_text()
            server.script(BEFORE_CONTENT[fault], faults.ok())
            message = await client.messages.create(**ARGS)
            return events, final, message.content[0].text

    events, final, plain = asyncio.run(main())
    assert [(e.type, e.to_dict()) for e in events] == server.sent[1].content_events()
    assert final == plain == HELLO
    assert len(server.requests) == 6


def test_a_refused_upstream_port_is_retried(server: FakeAnthropic) -> None:
    with start_proxy(server.url, policy={"backoff_initial": "0.1", "backoff_max": "0.2"}) as p:
        server.refuse_connections()
        timer = threading.Timer(0.15, server.accept_connections)
        timer.start()
        try:
            with anthropic.Anthropic(base_url=p.url, api_key=SECRET_KEY, max_retries=0) as c:
                assert read_sync(c, "create_stream")[0] == HELLO
        finally:
            timer.join()
        assert p.stats.retries >= 1
    assert len(server.requests) == 1


def test_the_client_sees_the_last_attempts_headers(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.reset_after(2), faults.ok())
    response = plain_client.messages.with_raw_response.create(**ARGS, stream=True)
    assert response.headers["request-id"] == server.sent[1].request_id
    assert response.headers["x-sdkguard-attempts"] == "2"
    assert response.http_response.headers["content-type"].startswith("text/event-stream")
    list(response.parse())


# -- after content: an error event, a clean end ----------------------------------------------------

AFTER_CONTENT = {
    "reset_after_5": faults.reset_after(5),
    "stall_after_5": faults.stall_after(5),
    "truncate_after_5": faults.truncate_after(5),
    "close_after_5": faults.close_after(5),
    "pings_only_after_5": faults.pings_only_after(5, 0.05),
}


@pytest.mark.parametrize("fault", list(AFTER_CONTENT), ids=str)
def test_a_failure_after_content_ends_with_an_error_event(
    server: FakeAnthropic, plain_client: anthropic.Anthropic, fault: str
) -> None:
    server.script(AFTER_CONTENT[fault], faults.ok())
    seen: list[Any] = []
    started = time.monotonic()
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        plain_client.messages.create(**ARGS, stream=True) as stream,
    ):
        seen.extend(stream)
    assert time.monotonic() - started < 30  # no hang
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["error"]["type"] == "overloaded_error"
    assert "sdkguard proxy" in error["error"]["message"]
    assert [(e.type, e.to_dict()) for e in seen] == [
        event for event in server.sent[0].content_events()
    ][: len(seen)]
    assert any(e.type == "content_block_delta" for e in seen)
    assert len(server.requests) == 1  # no restart after content


def test_the_stream_helper_raises_after_content(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.reset_after(5))
    with pytest.raises(anthropic.APIStatusError), plain_client.messages.stream(**ARGS) as s:
        for _ in s.text_stream:
            pass


def test_the_apis_own_error_after_content_is_relayed(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.sse_error_after(5, "invalid_request_error", "bad thing"))
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        plain_client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["message"] == "bad thing"
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "fault", [faults.reset_after(8), faults.truncate_after(8), faults.stall_after(8)], ids=str
)
def test_a_whole_message_whose_stop_is_lost_ends_cleanly(
    server: FakeAnthropic, plain_client: anthropic.Anthropic, fault: faults.Answer
) -> None:
    server.script(fault)
    with plain_client.messages.create(**ARGS, stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "message_stop"
    assert events[-2].type == "message_delta"
    assert len(server.requests) == 1


# -- giving up before content --------------------------------------------------------------------


def test_giving_up_passes_the_upstreams_529_on(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(*[faults.status(529, headers={"retry-after": "0"})] * 5)
    with pytest.raises(OverloadedError) as raised:
        plain_client.messages.create(**ARGS, stream=True)
    assert raised.value.response.headers["x-sdkguard-attempts"] == "5"
    assert len(server.requests) == 5


def test_a_status_that_is_not_retried_passes_at_once(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.status(400, message="no such model"))
    with pytest.raises(anthropic.BadRequestError) as raised:
        plain_client.messages.create(**ARGS)
    assert "no such model" in str(raised.value)
    assert len(server.requests) == 1


def test_giving_up_with_no_http_answer_is_an_api_shaped_502(server: FakeAnthropic) -> None:
    with start_proxy(server.url) as p:
        server.refuse_connections()
        with (
            anthropic.Anthropic(base_url=p.url, api_key=SECRET_KEY, max_retries=0) as c,
            pytest.raises(anthropic.APIStatusError) as raised,
        ):
            c.messages.create(**ARGS, stream=True)
    assert raised.value.status_code == 502
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert "connection refused" in body["error"]["message"]
    assert "attempt 5 of 5" in body["error"]["message"]


def test_giving_up_after_stalls_is_a_504_timeout_error(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.default(faults.stall_before_headers())
    with pytest.raises(anthropic.APIStatusError) as raised:
        plain_client.messages.create(**ARGS, stream=True)
    assert raised.value.status_code == 504
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "timeout_error"
    assert len(server.requests) == 5


def test_the_pre_content_deadline_bounds_everything_before_content(server: FakeAnthropic) -> None:
    server.default(faults.pings_only_after(2, 0.05))
    with (
        start_proxy(server.url, pre_content_deadline=1.0, policy={"progress_timeout": "off"}) as p,
        anthropic.Anthropic(base_url=p.url, api_key=SECRET_KEY, max_retries=0) as c,
    ):
        started = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as raised:
            c.messages.create(**ARGS, stream=True)
        assert 0.9 < time.monotonic() - started < 20
    assert raised.value.status_code == 504
    assert len(server.requests) == 1


def test_an_sse_error_on_every_attempt_reaches_the_client_as_sent(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.default(faults.sse_error_after(2))
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        plain_client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"
    assert len(server.requests) == 5
    server.script(*[faults.sse_error_after(2)] * 5)
    with pytest.raises(OverloadedError):  # a plain call: the status a plain call gets
        plain_client.messages.create(**ARGS)


# -- forwarding ------------------------------------------------------------------------------------


def test_plain_calls_are_sent_as_streams_and_answered_as_json(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.ok(faults.thinking("hmm", deltas=2), faults.text("a b c", deltas=3)))
    response = plain_client.messages.with_raw_response.create(**ARGS)
    message = response.parse()
    assert response.http_response.headers["content-type"] == "application/json"
    assert response.headers["request-id"] == server.sent[0].request_id
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[1].text == "a b c"
    assert message.stop_reason == "end_turn"
    assert server.requests[0].body["stream"] is True
    assert message.usage.output_tokens == server.sent[0].events[-2][1]["usage"]["output_tokens"]


def test_an_upstream_answering_json_is_passed_as_it_is(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.ok(stream=False))
    message = plain_client.messages.create(**ARGS)
    assert message.content[0].text == HELLO


def test_count_tokens_is_guarded_and_not_converted(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    server.script(faults.status(529, headers={"retry-after": "0"}), faults.ok())
    count = plain_client.messages.count_tokens(model="claude-test", messages=ARGS["messages"])
    assert count.input_tokens > 0
    assert len(server.requests) == 2
    assert "stream" not in server.requests[1].body


def test_other_endpoints_are_passed_through_once(
    server: FakeAnthropic, plain_client: anthropic.Anthropic
) -> None:
    models = plain_client.models.list()
    assert [m.id for m in models.data] == ["claude-fake-1"]
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/models")]


def test_head_on_the_base_path_is_answered_locally(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    import httpx2

    for path in ("/", "/team-a"):
        assert httpx2.head(proxy.url + path).status_code == 200
        assert httpx2.get(proxy.url + path).status_code == 200
    assert server.requests == []


def test_a_path_prefix_and_the_query_are_kept(server: FakeAnthropic, proxy: RunningProxy) -> None:
    with anthropic.Anthropic(
        base_url=proxy.url + "/team-a", api_key=SECRET_KEY, max_retries=0
    ) as client:
        server.script(faults.reset_before_headers(), faults.ok())
        # Claude Code and the TypeScript SDK send `?beta=true`; the Python SDK does not.
        client.beta.messages.create(
            **ARGS, betas=["some-beta-2025-01-01"], extra_query={"beta": "true"}
        )
    assert [r.path for r in server.requests] == ["/v1/messages"] * 2
    assert server.requests[1].query == "beta=true"
    assert server.requests[1].headers["anthropic-beta"] == "some-beta-2025-01-01"


def test_the_upstreams_own_path_is_prepended(server: FakeAnthropic) -> None:
    with (
        start_proxy(server.url + "/gateway/") as p,
        anthropic.Anthropic(base_url=p.url, api_key=SECRET_KEY, max_retries=0) as client,
        pytest.raises(anthropic.NotFoundError),
    ):
        client.messages.create(**ARGS)
    assert server.requests[0].path == "/gateway/v1/messages"


def test_headers_pass_end_to_end_and_hop_by_hop_ones_do_not(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    body = json.dumps({**ARGS, "stream": True}).encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Authorization: Bearer " + SECRET_KEY.encode() + b"\r\n"
        b"anthropic-version: 2023-06-01\r\n"
        b"anthropic-beta: a-beta,another-beta\r\n"
        b"x-app: cli\r\n"
        b"Accept-Encoding: gzip, br\r\n"
        b"Connection: close, x-named-hop\r\n"
        b"x-named-hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic eDp5\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    answer = raw_exchange(proxy.port, request)
    assert answer.startswith(b"HTTP/1.1 200")
    headers = server.requests[0].headers
    assert headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "a-beta,another-beta"
    assert headers["x-app"] == "cli"
    assert headers["accept-encoding"] == "identity"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    for name in ("x-named-hop", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert name not in headers
    assert headers.get("connection", "keep-alive") != "close, x-named-hop"
    assert server.requests[0].raw_body == body


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_upstream_host_cannot_be_chosen_by_a_request(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    body = json.dumps(ARGS).encode()
    for target in (b"http://evil.invalid:1/v1/messages", b"/v1/messages"):
        request = (
            b"POST " + target + b" HTTP/1.1\r\nHost: evil.invalid:1\r\n"
            b"X-Forwarded-Host: evil.invalid\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        assert raw_exchange(proxy.port, request).startswith(b"HTTP/1.1 200")
    assert [r.headers["host"] for r in server.requests] == [f"127.0.0.1:{server.port}"] * 2


# -- the client leaving ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before_content", "after_content"])
def test_the_client_leaving_cancels_the_upstream_request(server: FakeAnthropic, where: str) -> None:
    fault = faults.stall_before_headers() if where == "before_content" else faults.stall_after(5)
    server.script(fault)
    with start_proxy(server.url, policy={"response_timeout": "30", "idle_timeout": "30"}) as p:
        body = json.dumps({**ARGS, "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", p.port))
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        server.wait_for_requests(1)
        if where == "after_content":
            received = b""
            while received.count(b"content_block_delta") < 1:
                received += sock.recv(65536)
        time.sleep(0.1)
        closed_at = time.monotonic()
        sock.close()
        server.sent[0].wait(timeout=10)
        assert time.monotonic() - closed_at < 5  # promptly, not at a 30 s limit
        assert p.stats.retries == 0


# -- curl ------------------------------------------------------------------------------------------

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(url: str, body: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl", "-sS", "-N", "-X", "POST", url,
            "-H", f"x-api-key: {SECRET_KEY}",
            "-H", "anthropic-version: 2023-06-01",
            "-H", "content-type: application/json",
            "-d", json.dumps(body), *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


@needs_curl
@pytest.mark.parametrize(
    "fault", ["reset_before_headers", "reset_after_2", "stall_after_2", "status_529"]
)
def test_curl_sees_one_clean_stream(server: FakeAnthropic, proxy: RunningProxy, fault: str) -> None:
    server.script(BEFORE_CONTENT[fault], faults.ok())
    result = curl(proxy.url + "/v1/messages", {**ARGS, "stream": True})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("event: message_start") == 1
    assert result.stdout.rstrip().endswith('data: {"type":"message_stop"}')
    assert len(server.requests) == 2


@needs_curl
def test_curl_gets_an_error_event_after_content(server: FakeAnthropic, proxy: RunningProxy) -> None:
    server.script(faults.reset_after(5))
    result = curl(proxy.url + "/v1/messages", {**ARGS, "stream": True})
    assert result.returncode == 0, result.stderr  # a clean end of body
    assert "event: content_block_delta" in result.stdout
    last = result.stdout.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "overloaded_error"


@needs_curl
def test_curl_gets_the_upstreams_status_when_giving_up(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    server.default(faults.status(529, headers={"retry-after": "0"}))
    result = curl(proxy.url + "/v1/messages", {**ARGS, "stream": True}, "-w", "\n%{http_code}")
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "529"
    assert json.loads(body)["error"]["type"] == "overloaded_error"
