"""The test kit, sync side: every answer is real on the wire, as the plain SDK sees it.

Real sockets, the plain SDK (`max_retries=0`, tenths of a second timeouts), no mocks.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdkguard._sdk import http  # httpx2 from anthropic 1.0, httpx before
from sdkguard._wire import ERROR_STATUSES, ERROR_TYPES
from sdkguard.testing import FakeAnthropic, RecordedRequest, SentResponse, faults
from sdkguard.testing.__main__ import _FAULTS, parse_fault
from sdkguard.testing._answers import HANDLERS
from sdkguard.testing._sse import plan
from tests.helpers import (
    MESSAGE_ARGS,
    SDK_HANDS_ON_UNKNOWN_EVENTS,
    OverloadedError,
    as_the_sdk_hands_on,
    raw_answer,
)

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(10)]

KW: dict[str, Any] = {
    "model": "claude-kit",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}

CONTENT_TYPES = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def make_client(server: FakeAnthropic, read: float = 0.5) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.url,
        api_key="test",
        max_retries=0,
        timeout=anthropic.Timeout(read, connect=0.5),
    )


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with make_client(fake) as c:
        yield c


def chain(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it was caused by or raised during."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def done(server: FakeAnthropic, index: int = 0) -> SentResponse:
    """What the server sent for request `index`, once it finished with it.

    The client can see the end of an answer a moment before the server records it.
    """
    sent = server.sent[index]
    sent.wait()
    return sent


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(e, kind) for e in chain(exc))


def read_stream(
    client: anthropic.Anthropic, **extra: Any
) -> tuple[list[tuple[str, dict[str, Any]]], BaseException | None]:
    """Events a raw-stream consumer saw (as data dicts), and the error that ended it, if any."""
    seen: list[tuple[str, dict[str, Any]]] = []
    try:
        with client.messages.create(**KW, **extra, stream=True) as stream:
            for event in stream:
                seen.append((event.type, event.to_dict()))
    except Exception as e:
        return seen, e
    return seen, None


# --- ok: content kinds ----------------------------------------------------------------------

THINKING = "Let me think about this carefully."
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 20
TOOL_INPUT = {"city": "Paris", "units": "celsius", "days": [1, 2, 3], "note": "éü"}

KINDS: dict[str, tuple[faults.Block, ...]] = {
    "text": (faults.text(LONG_TEXT, deltas=7),),
    "thinking": (faults.thinking(THINKING, signature="sig-123", deltas=4), faults.text("Done.")),
    "tool_use": (
        faults.text("Checking.", deltas=2),
        faults.tool_use("get_weather", TOOL_INPUT, id="toolu_kit", deltas=5),
    ),
}


def check_content(kind: str, message: Any) -> None:
    """The SDK object holds exactly the blocks the answer was built from."""
    content = message.content
    if kind == "text":
        assert [b.type for b in content] == ["text"]
        assert content[0].text == LONG_TEXT
        assert message.stop_reason == "end_turn"
    elif kind == "thinking":
        assert [b.type for b in content] == ["thinking", "text"]
        assert isinstance(content[0], anthropic.types.ThinkingBlock)
        assert content[0].thinking == THINKING
        assert content[0].signature == "sig-123"
        assert content[1].text == "Done."
        assert message.stop_reason == "end_turn"
    else:
        assert [b.type for b in content] == ["text", "tool_use"]
        assert isinstance(content[1], anthropic.types.ToolUseBlock)
        assert content[1].name == "get_weather"
        assert content[1].id == "toolu_kit"
        assert content[1].input == TOOL_INPUT
        assert message.stop_reason == "tool_use"
    assert message.model == "claude-kit"
    assert message.role == "assistant"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ok_raw_stream_is_what_the_server_sent(
    fake: FakeAnthropic, client: anthropic.Anthropic, kind: str
) -> None:
    fake.script(faults.ok(*KINDS[kind]))
    seen, error = read_stream(client)
    assert error is None
    assert done(fake).completed
    assert seen == done(fake).content_events()
    types = [t for t, _ in seen]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert set(types) == set(CONTENT_TYPES)
    assert types.count("content_block_start") == len(KINDS[kind])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ok_message_parses(fake: FakeAnthropic, client: anthropic.Anthropic, kind: str) -> None:
    fake.script(faults.ok(*KINDS[kind]))
    message = client.messages.create(**KW)
    check_content(kind, message)
    assert message.id == "msg_fake_1"
    assert message._request_id == "req_fake_1"
    assert done(fake).headers["content-type"] == "application/json"
    assert json.loads(done(fake).body or b"")["id"] == "msg_fake_1"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ok_stream_helper_final_message(
    fake: FakeAnthropic, client: anthropic.Anthropic, kind: str
) -> None:
    fake.script(faults.ok(*KINDS[kind]))
    with client.messages.stream(**KW) as helper:
        message = helper.get_final_message()
    check_content(kind, message)
    assert message.id == "msg_fake_1"
    assert message.usage.output_tokens == done(fake).events[-2][1]["usage"]["output_tokens"]


def test_sent_is_never_behind_the_client(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    # No wait(): the write that ends an answer is recorded before it is made.
    for i in range(0, 40, 4):
        message = client.messages.create(**KW)
        assert fake.sent[i].completed and fake.sent[i].status == 200
        assert json.loads(fake.sent[i].body or b"")["id"] == message.id
        seen, _ = read_stream(client)
        assert fake.sent[i + 1].completed and seen == fake.sent[i + 1].content_events()
        fake.script(faults.sse_error_after(3), faults.status(529))
        seen, error = read_stream(client)
        assert isinstance(error, anthropic.APIStatusError)
        assert [n for n, _ in fake.sent[i + 2].events][-1] == "error"
        with pytest.raises(OverloadedError):
            client.messages.create(**KW)
        assert fake.sent[i + 3].status == 529


def test_default_stream_order_ids_and_cumulative_usage(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    read_stream(client)
    read_stream(client)
    for sent in fake.sent:
        sent.wait()
    names = [name for name, _ in done(fake).events]
    # n in a fault counts in this order: 1 message_start, 2 content_block_start, 3 ping
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert done(fake).text == faults.DEFAULT_TEXT
    events = dict(done(fake).events)
    assert events["message_start"]["message"]["usage"]["output_tokens"] == 1
    assert events["message_delta"]["usage"]["output_tokens"] == 3
    assert done(fake).headers["content-type"] == "text/event-stream; charset=utf-8"
    assert done(fake).headers["transfer-encoding"] == "chunked"
    ids = [dict(s.events)["message_start"]["message"]["id"] for s in fake.sent]
    assert ids == ["msg_fake_1", "msg_fake_2"]
    assert [s.request_id for s in fake.sent] == ["req_fake_1", "req_fake_2"]


def test_ok_options(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(
        faults.ok(
            faults.text("abcdefghij", deltas=3),
            model="claude-other",
            stop_reason="max_tokens",
            usage={"input_tokens": 42, "output_tokens": 7},
            ping_after_start=False,
            message_id="msg_custom",
        )
    )
    with client.messages.stream(**KW) as helper:
        message = helper.get_final_message()
    assert message.id == "msg_custom"
    assert message.model == "claude-other"
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 7)
    assert "ping" not in [name for name, _ in done(fake).events]
    pieces = [d["delta"]["text"] for n, d in done(fake).events if n == "content_block_delta"]
    assert pieces == ["abcd", "efg", "hij"]


def test_long_stream_through_the_sdk(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(5000))
    fake.script(faults.ok(faults.text(text, deltas=2000)))
    with client.messages.stream(**KW) as helper:
        message = helper.get_final_message()
    assert message.content[0].text == text
    assert len(done(fake).events) == 2000 + 6


def test_server_serves_a_20000_event_stream(fake: FakeAnthropic) -> None:
    # Its speed is measured in benchmarks/, not asserted here.
    answer = faults.ok(faults.text("x" * 20_000, deltas=20_000))
    body = json.dumps({**KW, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        fake.script(answer)
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        data = bytearray()
        while not data.endswith(b"\r\n0\r\n\r\n"):
            more = sock.recv(1 << 20)
            assert more
            data += more
    assert data.count(b"\nevent: content_block_delta\n") == 20_000


# --- faults on a stream ---------------------------------------------------------------------


def test_reset_before_headers(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.reset_before_headers())
    seen, error = read_stream(client)
    assert seen == []
    assert isinstance(error, anthropic.APIConnectionError)
    assert caused_by(error, ConnectionResetError)
    assert done(fake).status == 0 and done(fake).events == []
    assert done(fake).fault == "reset_before_headers"


def test_reset_after_is_a_read_error_from_a_real_reset(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.reset_after(3))
    seen, error = read_stream(client)
    assert isinstance(error, http.ReadError)
    assert caused_by(error, ConnectionResetError)
    # 3 events written (the ping among them); the consumer saw the two that are not pings
    assert [n for n, _ in done(fake).events] == ["message_start", "content_block_start", "ping"]
    assert seen == done(fake).content_events()
    assert not done(fake).completed


def test_stall_after_is_a_read_timeout(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_after(4))
    with make_client(fake, read=0.3) as client:
        start = time.monotonic()
        seen, error = read_stream(client)
        elapsed = time.monotonic() - start
    assert isinstance(error, http.ReadTimeout)
    assert elapsed >= 0.25
    assert [n for n, _ in seen] == ["message_start", "content_block_start", "content_block_delta"]
    assert seen == done(fake).content_events()


def test_stall_after_for_seconds_then_the_rest(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_after(4, seconds=0.2))
    with make_client(fake, read=1.0) as client:
        start = time.monotonic()
        seen, error = read_stream(client)
    assert error is None
    assert time.monotonic() - start >= 0.18
    assert seen[-1][0] == "message_stop"
    assert done(fake).completed and seen == done(fake).content_events()


def test_stall_before_headers_is_a_timeout(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_before_headers())
    with make_client(fake, read=0.2) as client:
        seen, error = read_stream(client)
    assert isinstance(error, anthropic.APITimeoutError)
    assert caused_by(error, http.ReadTimeout)
    assert seen == [] and done(fake).status == 0


def test_stall_before_headers_for_seconds_then_the_reply(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_before_headers(0.2))
    with make_client(fake, read=1.0) as client:
        start = time.monotonic()
        message = client.messages.create(**KW)
    assert time.monotonic() - start >= 0.18
    assert message.content[0].text == faults.DEFAULT_TEXT


def test_pings_only_keep_a_short_read_timeout_from_firing(fake: FakeAnthropic) -> None:
    fake.script(faults.pings_only_after(4, interval=0.04, seconds=0.6))
    with make_client(fake, read=0.3) as client:
        start = time.monotonic()
        seen, error = read_stream(client)
        elapsed = time.monotonic() - start
    assert error is None
    assert elapsed >= 0.55  # far past the read timeout, which never fired
    assert seen[-1][0] == "message_stop"
    names = [n for n, _ in done(fake).events]
    assert names.count("ping") >= 10
    assert seen == done(fake).content_events()  # the pings never reach the consumer


def test_status_529_is_overloaded_error(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.status(529))
    seen, error = read_stream(client)
    assert seen == []
    assert isinstance(error, OverloadedError)
    assert error.status_code == 529
    assert error.type == "overloaded_error"
    assert error.request_id == "req_fake_1"
    assert error.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_fake_1",
    }
    assert "x-should-retry" not in error.response.headers
    assert done(fake).status == 529 and done(fake).fault == "status"


def test_status_headers_pass_through(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    headers = {"retry-after": "2", "retry-after-ms": "1500", "x-should-retry": "true"}
    fake.script(faults.status(429, headers=headers))
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(**KW)
    for name, value in headers.items():
        assert info.value.response.headers[name] == value
    assert info.value.type == "rate_limit_error"


def api_message(error: anthropic.APIStatusError) -> Any:
    """The error body's message (`error.api_message` only from anthropic 0.94 on)."""
    assert isinstance(error.body, dict)
    return error.body["error"]["message"]


def test_status_custom_body_and_error(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(
        faults.status(400, body={"custom": True}),
        faults.status(503, error_type="api_error", message="down for a moment"),
        faults.status(502, body="<html>bad gateway</html>"),
    )
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(**KW)
    assert bad.value.body == {"custom": True}
    with pytest.raises(anthropic.InternalServerError) as down:
        client.messages.create(**KW)
    assert down.value.status_code == 503 and api_message(down.value) == "down for a moment"
    with pytest.raises(anthropic.InternalServerError) as gateway:
        client.messages.create(**KW)
    assert gateway.value.body == "<html>bad gateway</html>"


@pytest.mark.parametrize(
    ("code", "error_type", "exc"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "request_too_large", anthropic.APIStatusError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", OverloadedError),
    ],
)
def test_status_error_types_follow_the_code(
    fake: FakeAnthropic,
    client: anthropic.Anthropic,
    code: int,
    error_type: str,
    exc: type[anthropic.APIStatusError],
) -> None:
    fake.script(faults.status(code))
    with pytest.raises(exc) as info:
        client.messages.create(**KW)
    assert info.value.status_code == code
    assert info.value.type == error_type


def test_sse_error_after_is_an_api_status_error_under_200(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.sse_error_after(3))
    seen, error = read_stream(client)
    assert isinstance(error, anthropic.APIStatusError)
    assert not isinstance(error, OverloadedError)
    assert error.status_code == 200
    assert error.type == "overloaded_error"
    assert error.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_fake_1",
    }
    assert [n for n, _ in done(fake).events][-1] == "error"
    assert seen == done(fake).content_events()[:-1]


def test_sse_error_type_and_message(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.sse_error_after(5, "api_error", "Internal server error!"))
    _, error = read_stream(client)
    assert isinstance(error, anthropic.APIStatusError)
    assert (error.type, api_message(error)) == ("api_error", "Internal server error!")


def test_truncate_after_is_a_protocol_error(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.truncate_after(4))
    seen, error = read_stream(client)
    assert isinstance(error, http.RemoteProtocolError)
    assert len(seen) == 3 and seen == done(fake).content_events()


def test_close_after_ends_without_message_stop(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.close_after(5))
    seen, error = read_stream(client)
    assert error is None  # the SDK ends the stream silently
    assert [n for n, _ in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    assert not done(fake).completed
    assert seen == done(fake).content_events()


def test_malformed_after_is_a_json_error(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.malformed_after(3))
    seen, error = read_stream(client)
    assert isinstance(error, json.JSONDecodeError)
    assert [n for n, _ in seen] == ["message_start", "content_block_start"]


def test_trickle_sends_a_correct_stream_slowly(fake: FakeAnthropic) -> None:
    reply = faults.ok(faults.text("y" * 2000, deltas=4))
    fake.script(faults.trickle(10_000, reply=reply))
    with make_client(fake, read=1.0) as client:
        start = time.monotonic()
        seen, error = read_stream(client)
        elapsed = time.monotonic() - start
    assert error is None
    assert 0.2 <= elapsed < 2.0  # a little over 2,000 bytes at 10,000 bytes/s
    assert done(fake).completed and done(fake).text == "y" * 2000
    assert seen == done(fake).content_events()


def test_faults_cut_the_reply_they_are_given(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    reply = faults.ok(faults.thinking("hmm", deltas=3), faults.text("answer"))
    fake.script(faults.reset_after(6, reply=reply))
    seen, error = read_stream(client)
    assert isinstance(error, http.ReadError)
    # 6 events: message_start, content_block_start, ping, then 3 of the 4 deltas
    deltas = [d["delta"] for n, d in seen if n == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": t} for t in "hmm"]


# --- hostile answers ------------------------------------------------------------------------


def test_unknown_event_reaches_the_consumer(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(
        faults.unknown_event_after(3, "content_block_future"), faults.unknown_event_after(2)
    )
    seen, error = read_stream(client)
    assert error is None and done(fake).completed
    assert done(fake).content_events()[2] == (
        "content_block_future",
        {"type": "content_block_future"},
    )
    assert seen == as_the_sdk_hands_on(done(fake).content_events())
    assert (seen[2][0] == "content_block_future") is SDK_HANDS_ON_UNKNOWN_EVENTS
    with client.messages.stream(**KW) as helper:
        types = [event.type for event in helper]
        message = helper.get_final_message()
    assert ("future_event" in types) is SDK_HANDS_ON_UNKNOWN_EVENTS
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [n for n, _ in done(fake, 1).events][2] == "future_event"


def test_unknown_event_leaves_a_non_streaming_reply_alone(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.unknown_event_after(1))
    assert client.messages.create(**KW).content[0].text == faults.DEFAULT_TEXT
    assert done(fake).fault == "unknown_event_after" and done(fake).completed


def test_huge_line_is_one_sse_line_of_ten_megabytes(fake: FakeAnthropic) -> None:
    fake.script(faults.huge_line())
    data = raw_answer(fake)
    longest = max(data.split(b"\n"), key=len)
    assert longest.startswith(b"data: {") and len(longest) > 10_000_000
    text = json.loads(longest[len(b"data: ") :])["delta"]["text"]
    assert len(text.encode()) >= 10_000_000
    assert {len(c.encode()) for c in set(text)} == {1, 2, 3}  # ASCII, é, → and 日本


def test_huge_line_through_the_sdk(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    answer = faults.huge_line(200_000, reply=faults.ok(faults.text("after", deltas=2)))
    fake.script(answer, answer)
    seen, error = read_stream(client)
    assert error is None and done(fake).completed
    assert seen == done(fake).content_events()
    texts = [d["delta"]["text"] for n, d in seen if n == "content_block_delta"]
    assert len(texts[0].encode()) >= 200_000 and texts[1:] == ["aft", "er"]
    message = client.messages.create(**KW)
    assert [len(b.text.encode()) >= 200_000 for b in message.content] == [True, False]
    assert len(done(fake, 1).body or b"") > 200_000


def test_invalid_utf8_after_fails_decoding(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.invalid_utf8_after(3), faults.invalid_utf8_after(3))
    seen, error = read_stream(client)
    assert isinstance(error, UnicodeDecodeError)
    assert seen == done(fake).content_events() and len(seen) == 2
    assert not done(fake).completed
    with pytest.raises(UnicodeDecodeError):
        client.messages.create(**KW)
    assert b"\xff" in (done(fake, 1).body or b"") and not done(fake, 1).completed


@pytest.mark.parametrize("stream", [True, False])
def test_proxy_error_is_an_html_page_without_request_id(
    fake: FakeAnthropic, client: anthropic.Anthropic, stream: bool
) -> None:
    fake.script(faults.proxy_error(), faults.proxy_error(504))
    with pytest.raises(anthropic.InternalServerError) as bad_gateway:
        client.messages.create(**KW, stream=stream)
    error = bad_gateway.value
    assert error.status_code == 502 and error.response.headers["content-type"] == "text/html"
    assert isinstance(error.body, str) and "<title>502 Bad Gateway</title>" in error.body
    assert error.request_id is None and "request-id" not in done(fake).headers
    with pytest.raises(anthropic.InternalServerError) as timeout:
        client.messages.create(**KW, stream=stream)
    assert timeout.value.status_code == 504 and "Gateway Timeout" in str(timeout.value.body)
    assert not done(fake, 1).completed


def test_wrong_content_type_is_an_html_page_under_200(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.wrong_content_type(), faults.wrong_content_type("text/plain"))
    seen, error = read_stream(client)
    assert (seen, error) == ([], None)  # the SDK finds no event in it and ends silently
    assert done(fake).status == 200 and done(fake).headers["content-type"].startswith("text/html")
    # A plain call returns the page as a `str` where a `Message` was expected.
    page = client.messages.create(**KW)
    assert isinstance(page, str) and page.startswith("<!DOCTYPE html>")
    assert done(fake, 1).headers["content-type"] == "text/plain" and not done(fake, 1).completed


@pytest.mark.parametrize("offset", [0, 5, 40, 200, 260])
def test_reset_at_byte_sends_exactly_that_many_bytes(fake: FakeAnthropic, offset: int) -> None:
    fake.script(faults.ok(), faults.reset_at_byte(offset))
    whole = raw_answer(fake)
    cut = raw_answer(fake)
    assert len(cut) == offset
    # the same bytes as the whole answer, but for the message and request ids
    assert cut == whole.replace(b"_fake_1", b"_fake_2")[:offset]
    assert not done(fake, 1).completed


def test_reset_at_byte_through_the_sdk(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.reset_at_byte(10), faults.reset_at_byte(700), faults.reset_at_byte(10**6))
    seen, error = read_stream(client)
    assert isinstance(error, anthropic.APIConnectionError) and seen == []
    assert caused_by(error, ConnectionResetError) and done(fake).status == 0
    seen, error = read_stream(client)
    assert isinstance(error, http.ReadError) and caused_by(error, ConnectionResetError)
    assert seen == done(fake, 1).content_events() and 0 < len(seen) < 8
    seen, error = read_stream(client)  # past the end: the whole answer, then the reset
    assert error is None and done(fake, 2).completed and seen == done(fake, 2).content_events()
    assert [s.fault for s in fake.sent] == ["reset_at_byte"] * 3


def test_what_was_sent_is_never_behind_a_cut(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    # Cut at every byte of an answer: the record holds exactly the events the consumer got,
    # also when the cut falls in an event's closing CRLF or in the terminating chunk.
    whole = len(raw_answer(fake))
    for offset in sorted({*range(0, whole, 7), *range(whole - 80, whole + 1)}):
        fake.script(faults.reset_at_byte(offset))
        seen, _ = read_stream(client)
        assert seen == done(fake, len(fake.sent) - 1).content_events(), offset
        # A cut past the end of this answer (the client's answer is a few bytes shorter than
        # the raw one) gives the client all of it and a pooled connection that the server
        # resets: that must happen before the next request, not under it (a race under load).
        deadline = time.monotonic() + 5
        while fake.open_connections and time.monotonic() < deadline:
            time.sleep(0.001)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_fragmented_answer_is_the_same_stream(
    fake: FakeAnthropic, client: anthropic.Anthropic, ending: str
) -> None:
    cuts = list(range(1, 1200, 7))  # inside the status line, headers, chunk sizes, events
    reply = faults.ok(faults.text("naïve café → 日本", deltas=5))
    fake.script(reply, faults.fragmented(reply, cuts, line_ending=ending, pause=0))
    whole = raw_answer(fake)
    pieces = raw_answer(fake)
    if ending == "\n":
        assert pieces == whole.replace(b"_fake_1", b"_fake_2")
    else:
        assert ending.encode() + ending.encode() in pieces and b"\n\n" not in pieces
    fake.script(faults.fragmented(reply, cuts, line_ending=ending, pause=0))
    seen, error = read_stream(client)
    assert error is None and done(fake, 2).completed
    assert seen == done(fake, 2).content_events()
    assert "".join(d["delta"]["text"] for n, d in seen if n == "content_block_delta") == (
        "naïve café → 日本"
    )
    assert done(fake, 2).fault == "ok"


def test_fragmented_pieces_arrive_apart(fake: FakeAnthropic) -> None:
    fake.script(faults.fragmented(faults.ok(), [3], pause=0.2))
    body = json.dumps(KW).encode()
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        # Timed from before the request: the pause cannot start earlier (timed from the first
        # piece, a test thread that ran late ate into it).
        start = time.monotonic()
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        first = sock.recv(1 << 16)
        rest = sock.recv(1 << 16)
        elapsed = time.monotonic() - start
    assert first == b"HTT" and rest.startswith(b"P/1.1 200 OK")
    assert elapsed >= 0.18  # the 0.2 s pause


def test_fragmented_carries_any_answer(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.fragmented(faults.reset_after(3), [50, 51, 52]))
    seen, error = read_stream(client)
    assert isinstance(error, http.ReadError)
    assert seen == done(fake).content_events() and done(fake).fault == "reset_after"
    fake.script(faults.fragmented(faults.status(529), [1, 2, 100]))
    with pytest.raises(OverloadedError):
        client.messages.create(**KW)


# --- faults on a non-streaming call --------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "exc", "cause"),
    [
        (faults.reset_after(3), anthropic.APIConnectionError, ConnectionResetError),
        (faults.stall_after(3), anthropic.APITimeoutError, http.ReadTimeout),
        (faults.pings_only_after(1, 0.05), anthropic.APITimeoutError, http.ReadTimeout),
        (faults.truncate_after(3), anthropic.APIConnectionError, http.RemoteProtocolError),
        (faults.close_after(3), anthropic.APIConnectionError, http.RemoteProtocolError),
        (faults.sse_error_after(3), OverloadedError, None),
        (faults.sse_error_after(3, "rate_limit_error"), anthropic.RateLimitError, None),
        (faults.malformed_after(3), json.JSONDecodeError, None),
    ],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", "")),
)
def test_faults_on_a_non_streaming_call(
    fake: FakeAnthropic,
    answer: faults.Answer,
    exc: type[BaseException],
    cause: type[BaseException] | None,
) -> None:
    fake.script(answer)
    with make_client(fake, read=0.3) as client, pytest.raises(exc) as info:
        client.messages.create(**KW)
    if cause is not None:
        assert caused_by(info.value, cause)
    assert not done(fake).completed


@pytest.mark.parametrize(
    "answer",
    [faults.trickle(20_000), faults.stall_after(3, 0.1), faults.pings_only_after(1, 0.05, 0.1)],
    ids=lambda a: a.name,
)
def test_slow_answers_on_a_non_streaming_call(fake: FakeAnthropic, answer: faults.Answer) -> None:
    fake.script(answer)
    with make_client(fake, read=1.0) as client:
        message = client.messages.create(**KW)
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert done(fake).completed and done(fake).events == []


# --- requests, script, connections ----------------------------------------------------------


def test_requests_are_recorded(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    before = time.monotonic()
    client.messages.create(**KW)
    read_stream(client)
    after = time.monotonic()
    first, second = fake.requests
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.query) == ("POST", "/v1/messages", "")
    assert first.body == KW and not first.stream
    assert second.body == {**KW, "stream": True} and second.stream
    # 2.x sends the key as a bearer token, earlier versions as x-api-key
    assert "Bearer test" in (
        first.headers.get("authorization"),
        f"Bearer {first.headers.get('x-api-key')}",
    )
    assert first.headers["content-type"] == "application/json"
    assert "anthropic-version" in first.headers
    assert first.headers["x-stainless-retry-count"] == "0"
    assert before <= first.received_at <= second.received_at <= after
    assert len(fake.sent) == 2 and all(isinstance(s, SentResponse) for s in fake.sent)


def test_query_is_split_from_the_path(fake: FakeAnthropic) -> None:
    with http.Client() as raw:
        response = raw.post(fake.url + "/v1/messages?beta=true", json=KW)
    assert response.json()["content"][0]["text"] == faults.DEFAULT_TEXT
    assert fake.requests[0].path == "/v1/messages"
    assert fake.requests[0].query == "beta=true"
    assert done(fake).fault == "ok"


def test_keep_alive_reuses_one_connection(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    client.messages.create(**KW)
    read_stream(client)
    client.messages.create(**KW)
    assert [r.connection for r in fake.requests] == [0, 0, 0]
    assert fake.connections_accepted == 1
    assert fake.open_connections == 1


def test_a_reset_connection_is_not_reused(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.reset_after(3), faults.truncate_after(2))
    read_stream(client)
    read_stream(client)
    client.messages.create(**KW)
    assert [r.connection for r in fake.requests] == [0, 1, 2]


def test_connection_close_is_honoured(fake: FakeAnthropic) -> None:
    with http.Client() as raw:
        response = raw.post(fake.url + "/v1/messages", json=KW, headers={"connection": "close"})
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    deadline = time.monotonic() + 2
    while fake.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_connections == 0


def test_chunked_request_body(fake: FakeAnthropic) -> None:
    body = json.dumps(KW).encode()
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.sendall(
            b"POST /v1/messages?x=1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        fake.wait_for_requests(1)
        assert fake.requests[0].body == KW and fake.requests[0].query == "x=1"
    assert done(fake).status == 200 and done(fake).completed


def test_script_is_replaced_then_default(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.script(faults.status(500), faults.status(501))
    fake.script(faults.status(529))
    assert fake.pending_answers == 1
    with pytest.raises(OverloadedError):
        client.messages.create(**KW)
    assert fake.pending_answers == 0
    client.messages.create(**KW)  # empty script: ok
    fake.default(faults.status(503))
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**KW)
    assert [s.fault for s in fake.sent] == ["status", "ok", "status"]


def test_count_tokens(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    assert (
        client.messages.count_tokens(**{k: KW[k] for k in ("model", "messages")}).input_tokens > 0
    )
    fake.script(faults.status(529), faults.reset_after(1))
    with pytest.raises(OverloadedError):
        client.messages.count_tokens(model="m", messages=KW["messages"])
    # event faults do not apply to count_tokens: it is answered, taking the answer
    assert client.messages.count_tokens(model="m", messages=KW["messages"]).input_tokens > 0
    assert fake.pending_answers == 0
    assert fake.requests[1].path == "/v1/messages/count_tokens"
    assert [s.fault for s in fake.sent] == ["ok", "status", "ok"]


def test_other_paths_do_not_take_scripted_answers(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(faults.status(529))
    models = client.models.list()
    assert [m.id for m in models.data] == ["claude-fake-1"]
    with http.Client() as raw:
        missing = raw.get(fake.url + "/v1/nothing")
        not_json = raw.post(fake.url + "/v1/messages", content=b"{nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert fake.pending_answers == 1
    assert [s.fault for s in fake.sent] == ["models", "not_found", "bad_request"]


def test_wait_for_requests(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    with pytest.raises(TimeoutError):
        fake.wait_for_requests(1, timeout=0.05)
    thread = threading.Thread(target=client.messages.create, kwargs=KW)
    thread.start()
    fake.wait_for_requests(1, timeout=2)
    thread.join()
    assert len(fake.requests) == 1


def test_refusing_gives_connection_refused(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    client.messages.create(**KW)  # leaves a pooled keep-alive connection
    port = fake.port
    with fake.refusing():
        with pytest.raises(anthropic.APIConnectionError) as info:
            client.messages.create(**KW)
        assert caused_by(info.value, ConnectionRefusedError)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert fake.port == port
    assert client.messages.create(**KW).content[0].text == faults.DEFAULT_TEXT
    assert len(fake.requests) == 2


def test_refuse_without_closing_idle_connections(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    client.messages.create(**KW)
    fake.refuse_connections(close_idle=False)
    try:
        client.messages.create(**KW)  # the pooled connection still works
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", fake.port), timeout=1).close()
    finally:
        fake.accept_connections()
    assert [r.connection for r in fake.requests] == [0, 0]


def _fake_threads(port: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"sdkguard-fake-conn-{port}-")]


def test_forever_stall_ends_when_the_client_gives_up(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_after(3), faults.stall_before_headers())
    with make_client(fake, read=0.2) as client:
        _, error = read_stream(client)
        assert isinstance(error, http.ReadTimeout)
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.create(**KW)
    deadline = time.monotonic() + 2
    while (fake.open_connections or _fake_threads(fake.port)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.open_connections == 0
    assert _fake_threads(fake.port) == []
    assert all(s.done for s in fake.sent)


def test_stop_is_prompt_with_a_forever_stall() -> None:
    server = FakeAnthropic().start()
    server.script(faults.stall_before_headers(), faults.pings_only_after(3, 0.05))
    errors: list[BaseException] = []

    def call(stream: bool) -> None:
        with make_client(server, read=5.0) as client:
            try:
                if stream:
                    for _ in client.messages.create(**KW, stream=True):
                        pass
                else:
                    client.messages.create(**KW)
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=call, args=(s,)) for s in (False, True)]
    for t in threads:
        t.start()
    server.wait_for_requests(2)
    port = server.port
    server.stop()
    # Prompt: stop() joined every connection thread (it gives up on those still running
    # after 2 s), nothing left to wait for.
    assert _fake_threads(port) == []
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert server.open_connections == 0
    # the server reset both connections
    assert len(errors) == 2
    assert all(caused_by(e, ConnectionResetError) for e in errors), errors


def test_250_concurrent_connections(fake: FakeAnthropic) -> None:
    body = json.dumps({**KW, "stream": True}).encode()
    request = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    socks = [socket.create_connection(("127.0.0.1", fake.port)) for _ in range(250)]
    try:
        deadline = time.monotonic() + 5
        while fake.open_connections < 250 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.open_connections == 250
        for sock in socks:
            sock.sendall(request)
        for sock in socks:
            data = bytearray()
            while not data.endswith(b"\r\n0\r\n\r\n"):
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"event: message_stop" in data
    finally:
        for sock in socks:
            sock.close()
    assert fake.connections_accepted == 250
    assert len({r.connection for r in fake.requests}) == 250


def test_server_lifecycle() -> None:
    server = FakeAnthropic()
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
    with pytest.raises(RuntimeError):
        server.start()
    server.stop()  # idempotent


# --- answers --------------------------------------------------------------------------------


def test_answer_validation() -> None:
    with pytest.raises(ValueError):
        faults.text("x", deltas=0)
    with pytest.raises(ValueError):
        faults.reset_after(-1)
    with pytest.raises(ValueError):
        faults.pings_only_after(1, interval=0)
    with pytest.raises(ValueError):
        faults.trickle(0)
    with pytest.raises(ValueError):
        faults.status(99)
    with pytest.raises(ValueError):
        faults.stall_after(1, seconds=-1)
    with pytest.raises(TypeError):
        faults.ok("not a block")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        faults.tool_use("f", {"x": object()})
    for bad_call in (
        lambda: faults.unknown_event_after(1, "two\nlines"),
        lambda: faults.huge_line(0),
        lambda: faults.proxy_error(200),
        lambda: faults.wrong_content_type("text/html\r\nx-injected: 1"),
        lambda: faults.reset_at_byte(-1),
        lambda: faults.fragmented(faults.ok(), [0]),
        lambda: faults.fragmented(faults.ok(), line_ending="\n\n"),
    ):
        with pytest.raises(ValueError):
            bad_call()
    with pytest.raises(TypeError):
        faults.fragmented(faults.fragmented(faults.ok()))
    with FakeAnthropic() as server, pytest.raises(TypeError):
        server.script(faults.text("a"))  # type: ignore[arg-type]


@given(text=st.text(max_size=300), deltas=st.integers(1, 40))
def test_text_splits_into_even_deltas(text: str, deltas: int) -> None:
    events = plan(faults.ok(faults.text(text, deltas=deltas))).after_start
    pieces = [d["delta"]["text"] for n, d, _ in events if n == "content_block_delta"]
    assert len(pieces) == deltas
    assert "".join(pieces) == text
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    for name, data, chunk in events:  # the prebuilt wire bytes say what the data says
        payload = chunk.split(b"\r\n", 1)[1][:-2]
        assert payload == b"event: %s\ndata: %s\n\n" % (name.encode(), json_bytes(data))


@given(
    tool_input=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20)),
    deltas=st.integers(1, 20),
)
def test_tool_input_splits_into_json_pieces(tool_input: dict[str, Any], deltas: int) -> None:
    events = plan(faults.ok(faults.tool_use("f", tool_input, deltas=deltas))).after_start
    pieces = [d["delta"]["partial_json"] for n, d, _ in events if n == "content_block_delta"]
    assert len(pieces) == deltas
    assert json.loads("".join(pieces)) == tool_input


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def test_answers_are_frozen_and_tool_ids_unique() -> None:
    a, b = faults.tool_use("f", {}), faults.tool_use("f", {})
    assert a.id != b.id and a.id.startswith("toolu_fake_")
    answer = faults.stall_after(2, 5)
    assert (answer.n, answer.seconds, answer.reply) == (2, 5, None)
    with pytest.raises(AttributeError):
        answer.n = 3  # type: ignore[misc]
    assert faults.ok() == faults.ok()
    assert faults.ok(faults.tool_use("f", {}, id="t")).blocks[0] == faults.tool_use("f", {}, id="t")


def test_fault_names_parse_from_the_command_line() -> None:
    assert parse_fault("ok") == faults.ok()
    assert parse_fault("reset_after:3") == faults.reset_after(3)
    assert parse_fault("stall_after:2,5") == faults.stall_after(2, 5.0)
    assert parse_fault("stall_before_headers") == faults.stall_before_headers()
    assert parse_fault("pings_only_after:1,0.5") == faults.pings_only_after(1, 0.5)
    assert parse_fault("status:529") == faults.status(529)
    assert parse_fault("sse_error_after:2,api_error") == faults.sse_error_after(2, "api_error")
    for bad in ("nope", "reset_after", "reset_after:x", "status:529,1"):
        with pytest.raises(ValueError):
            parse_fault(bad)
    # every fault is reachable from the command line
    public = {
        n for n in faults.__all__ if n.islower() and n not in ("text", "thinking", "tool_use")
    }
    public -= {"default_error_message", "default_error_type", "status_for_error_type"}
    public -= {"fragmented", "continuable"}  # wrappers of answers, for code
    assert public == set(_FAULTS)
    assert parse_fault("huge_line:1000") == faults.huge_line(1000)
    assert parse_fault("proxy_error") == faults.proxy_error(502)
    assert parse_fault("wrong_content_type:text/plain") == faults.wrong_content_type("text/plain")
    assert parse_fault("unknown_event_after:2,x") == faults.unknown_event_after(2, "x")


def test_serve_cli() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "sdkguard.testing", "serve", "--port", "0"),
            *("--fault", "status:529", "--fault", "ok"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with anthropic.Anthropic(base_url=url, api_key="test", max_retries=0) as client:
            with pytest.raises(OverloadedError):
                client.messages.create(**KW)
            assert client.messages.create(**KW).content[0].text == faults.DEFAULT_TEXT
    finally:
        process.terminate()
        assert process.wait(5) == 0


def test_fixture(fake_anthropic: FakeAnthropic) -> None:
    assert isinstance(fake_anthropic, FakeAnthropic)
    with make_client(fake_anthropic) as client:
        client.messages.create(**KW)
    assert len(fake_anthropic.requests) == 1


pytest_plugins = ["pytester"]


def test_fixture_stops_the_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket
        import pytest

        seen = []

        def test_one(fake_anthropic):
            seen.append(fake_anthropic)
            socket.create_connection(("127.0.0.1", fake_anthropic.port)).close()

        def test_after():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", seen[0].port))
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=2)


# -- a peer that vanishes, a server that ignores "stream" ------------------------------------

needs_vanish = pytest.mark.skipif(
    not faults.VANISH_SUPPORTED,
    reason=f"a vanishing peer needs Linux socket filters (this is {sys.platform})",
)


@needs_vanish
def test_vanish_before_headers_is_silence_without_fin_or_rst(fake: FakeAnthropic) -> None:
    fake.script(faults.vanish_before_headers())
    with make_client(fake, read=0.3) as client:
        seen, error = read_stream(client)
    # The connection was neither closed nor reset: the client only sees its own timeout.
    assert isinstance(error, anthropic.APITimeoutError) and caused_by(error, http.ReadTimeout)
    assert seen == [] and fake.sent[0].status == 0 and fake.open_connections == 1


@needs_vanish
def test_vanish_after_n_events(fake: FakeAnthropic) -> None:
    fake.script(faults.vanish_after(3))
    with make_client(fake, read=0.3) as client:
        seen, error = read_stream(client)
    assert isinstance(error, http.ReadTimeout)
    assert [t for t, _ in seen] == ["message_start", "content_block_start"]


@needs_vanish
def test_vanish_connections_swallows_the_next_request(fake: FakeAnthropic) -> None:
    with make_client(fake, read=0.3) as client:
        client.messages.create(**KW)
        fake.vanish_connections()
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.create(**KW)  # sent on the pooled connection: never arrives
    assert len(fake.requests) == 1
    with make_client(fake) as client:  # a new connection is answered
        assert client.messages.create(**KW).content[0].text == faults.DEFAULT_TEXT
    assert [r.connection for r in fake.requests] == [0, 1]


def test_ok_can_ignore_what_the_request_asked(fake: FakeAnthropic) -> None:
    fake.script(faults.ok(stream=False), faults.ok(stream=True))
    with make_client(fake) as client:
        with client.messages.with_streaming_response.create(**KW, stream=True) as response:
            assert response.headers["content-type"] == "application/json"
            assert json.loads(response.read())["content"][0]["text"] == faults.DEFAULT_TEXT
        with client.messages.with_streaming_response.create(**KW) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert b"event: message_stop" in response.read()
    assert [r.stream for r in fake.requests] == [True, False]


def test_vanish_faults_parse_from_the_command_line() -> None:
    if not faults.VANISH_SUPPORTED:
        pytest.skip(f"a vanishing peer needs Linux socket filters (this is {sys.platform})")
    assert parse_fault("vanish_after:2") == faults.vanish_after(2)
    assert parse_fault("vanish_before_headers") == faults.vanish_before_headers()


# -- a proxy that buffers whole answers ------------------------------------------------------

BUFFERED_SECONDS = 0.4


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_buffered_sends_nothing_then_the_whole_answer_in_one_write(
    fake: FakeAnthropic, stream: bool
) -> None:
    fake.script(faults.buffered(BUFFERED_SECONDS))
    body = json.dumps({**MESSAGE_ARGS, "stream": stream}).encode()  # as raw_answer's
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.settimeout(5)
        start = time.monotonic()
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        first = sock.recv(1 << 20)  # the first bytes of the answer, the status line's
        waited = time.monotonic() - start
        # The server records its last write just before making it: all of it, already.
        assert fake.sent[0].completed
        rest = b"".join(iter(lambda: sock.recv(1 << 20), b""))
    assert waited >= BUFFERED_SECONDS
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    # One write of a few kilobytes crosses the loopback whole: the first read holds it all.
    assert rest == b""
    # the answer as it is without a proxy, but for the message and request ids
    assert first == raw_answer(fake, stream).replace(b"_fake_2", b"_fake_1")
    sent = done(fake)
    assert sent.fault == "buffered" and sent.status == 200
    assert [name for name, _ in sent.events][-1:] == (["message_stop"] if stream else [])


def test_buffered_holds_back_the_headers_until_a_long_stream_is_done(fake: FakeAnthropic) -> None:
    # 20,000 events: written one by one, a stream's headers would arrive well before its end.
    long_reply = faults.ok(faults.text("x" * 20_000, deltas=20_000))
    fake.script(faults.buffered(0.1, reply=long_reply))
    body = json.dumps({**KW, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        first = sock.recv(1 << 20)
        # When the status line arrives, the whole stream has been made and given to the socket.
        assert fake.sent[0].completed and len(fake.sent[0].events) == 20_006
        answer = first + b"".join(iter(lambda: sock.recv(1 << 20), b""))
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"event: content_block_delta") == 20_000
    assert answer.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n\r\n0\r\n\r\n')


def test_buffered_through_the_sdk(fake: FakeAnthropic) -> None:
    reply = faults.ok(faults.text("late but whole", deltas=5))
    fake.script(faults.buffered(BUFFERED_SECONDS, reply=reply), faults.buffered(0))
    with make_client(fake, read=5.0) as client:
        start = time.monotonic()
        seen, error = read_stream(client)
        assert time.monotonic() - start >= BUFFERED_SECONDS
        assert client.messages.create(**KW).content[0].text == faults.DEFAULT_TEXT
    assert error is None
    assert seen == done(fake).content_events() and done(fake).text == "late but whole"
    assert done(fake).completed and done(fake, 1).completed


def test_buffered_as_the_default_delays_every_request_past_a_short_read_timeout(
    fake: FakeAnthropic,
) -> None:
    # What a client behind a buffering proxy meets: no headers within its read timeout.
    fake.default(faults.buffered(5.0))
    with make_client(fake, read=0.2) as client:
        _, error = read_stream(client)
        assert isinstance(error, anthropic.APITimeoutError)
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.create(**KW)
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.count_tokens(model="m", messages=KW["messages"])
    assert [s.fault for s in fake.sent] == ["buffered"] * 3
    for index in range(3):  # each ends when its client gives up, before its 5 s
        assert done(fake, index).status == 0 and done(fake, index).events == []


def test_buffered_count_tokens_is_late_too(fake: FakeAnthropic) -> None:
    fake.default(faults.buffered(BUFFERED_SECONDS))
    with make_client(fake, read=5.0) as client:
        start = time.monotonic()
        counted = client.messages.count_tokens(model="m", messages=KW["messages"])
        assert time.monotonic() - start >= BUFFERED_SECONDS
    assert counted.input_tokens > 0 and done(fake).fault == "buffered"


def test_buffered_from_the_command_line_and_its_validation() -> None:
    assert parse_fault("buffered:2") == faults.buffered(2.0)
    assert parse_fault("buffered:forever") == faults.buffered(None)
    with pytest.raises(ValueError):
        faults.buffered(-1)


def test_every_answer_kind_has_its_handler() -> None:
    kinds = {
        kind
        for kind in vars(faults).values()
        if isinstance(kind, type) and issubclass(kind, faults.Answer) and kind is not faults.Answer
    }
    assert set(HANDLERS) == kinds - {faults.Fragmented}  # which wraps any of them


def test_the_kit_s_error_types_are_the_wire_s() -> None:
    for error_type, status in ERROR_STATUSES.items():
        assert faults.status_for_error_type(error_type) == status
        assert faults.default_error_type(status) == error_type
        assert faults.default_error_message(error_type) == ERROR_TYPES[error_type].message
    # what the guard can import before anthropic is: pure data
    code = "import sys, sdkguard._wire; assert 'anthropic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
