"""sdkguard proxy: what each failed attempt received, as the library records it.

Real faults over loopback: the fake server is the proxy's upstream, the client is the plain
anthropic SDK (sdkguard not installed). The attempt spans carry the library's attributes
(`anthropic.request.id`, `http.response.body.size`, `sdkguard.attempt.events_received`,
`sdkguard.attempt.last_event`, `sdkguard.attempt.errno`), checked against what the server
recorded having written; the notes in the error the client gets when the proxy gives up carry
them too, as the library's exception notes do. The log lines say what the library's say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.trace import ReadableSpan

import sdkguard
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic, SentResponse, faults
from tests.helpers import WITHOUT_SDK_TRACING, use_global_providers
from tests.test_forensics import sse_bytes

pytest.importorskip("aiohttp")

from sdkguard.proxy import RunningProxy
from tests.test_proxy import ARGS, HELLO, SECRET_KEY, start_proxy
from tests.test_proxy_telemetry import PROMPT, Recorded

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]

FORENSICS = (
    "anthropic.request.id",
    "http.response.body.size",
    "sdkguard.attempt.events_received",
    "sdkguard.attempt.last_event",
    "sdkguard.attempt.errno",
)
CONTINUABLE = faults.continuable(
    faults.ok(faults.text("One two three four five six. " * 4, deltas=9))
)
WITH_TOOL = faults.continuable(
    faults.ok(
        faults.text("Checking the weather, one moment.", deltas=4),
        faults.tool_use("get_weather", {"city": "Paris", "days": [1, 2]}, id="toolu_r", deltas=3),
    )
)


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    assert not sdkguard.is_installed(), "these clients must not be guarded by the library"
    BUDGET.reset()
    recorded = Recorded()
    use_global_providers(monkeypatch, recorded.tracer_provider, recorded.meter_provider)
    yield recorded
    recorded.tracer_provider.shutdown()
    recorded.meter_provider.shutdown()


def client_of(proxy: RunningProxy) -> anthropic.Anthropic:
    # max_retries=0: every attempt is the proxy's; no tracing of the SDK's own.
    return anthropic.Anthropic(
        base_url=proxy.url, api_key=SECRET_KEY, max_retries=0, **WITHOUT_SDK_TRACING
    )


def read_stream(proxy: RunningProxy) -> list[str]:
    with client_of(proxy) as client, client.messages.create(**ARGS, stream=True) as stream:
        return [event.type for event in stream]


def attempts(otel: Recorded) -> list[dict[str, Any]]:
    """The attributes of the one call's attempt spans, in order (once its request is done)."""
    otel.wait_for_servers(1)
    spans: list[ReadableSpan] = otel.attempts()
    ordered = sorted(spans, key=lambda s: dict(s.attributes or {})["http.request.resend_count"])
    return [dict(s.attributes or {}) for s in ordered]


def assert_received(
    attempt: dict[str, Any], sent: SentResponse, events: int | None, last: str | None
) -> None:
    """A stream attempt: its request id, the bytes the server wrote, its events."""
    assert attempt["anthropic.request.id"] == sent.request_id is not None
    assert attempt["http.response.body.size"] == sse_bytes(sent)
    assert attempt.get("sdkguard.attempt.events_received") == events
    assert attempt.get("sdkguard.attempt.last_event") == last


def test_a_stream_restarted_before_content(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(
        faults.reset_before_headers(),
        faults.status(529),
        faults.reset_after(2),
        faults.stall_after(3),
        faults.ok(),
    )
    with start_proxy(server.url) as proxy:
        assert read_stream(proxy)[-1] == "message_stop"
    before_headers, overloaded, reset, stall, success = attempts(otel)
    sent = server.sent

    # No response: no request id, nothing received (the proxy knows it), the socket's errno.
    assert before_headers["sdkguard.reason"] == "connection_reset"
    assert before_headers["http.response.body.size"] == 0
    assert before_headers["sdkguard.attempt.errno"] == "ECONNRESET"
    for absent in ("anthropic.request.id", "sdkguard.attempt.events_received"):
        assert absent not in before_headers

    # An error status: its request id and body, no event stream, no errno.
    assert overloaded["anthropic.request.id"] == sent[1].request_id == "req_fake_2"
    assert overloaded["http.response.body.size"] == len(sent[1].body or b"") > 0
    for absent in FORENSICS[2:]:
        assert absent not in overloaded

    # message_start and content_block_start, held: restarted unseen.
    assert reset["sdkguard.outcome"] == "retry"
    assert_received(reset, sent[2], 2, "content_block_start")
    assert reset["sdkguard.attempt.errno"] == "ECONNRESET"

    # Silent after three events, the third a ping: two events, no errno.
    assert stall["sdkguard.reason"] == "stall_idle"
    assert_received(stall, sent[3], 2, "content_block_start")
    assert "sdkguard.attempt.errno" not in stall

    assert success["sdkguard.outcome"] == "success"
    assert not any(key in success for key in FORENSICS[1:])


def test_an_error_event_is_the_last_event_and_a_close_has_no_errno(
    server: FakeAnthropic, otel: Recorded
) -> None:
    server.script(faults.sse_error_after(2), faults.truncate_after(2), faults.ok())
    with start_proxy(server.url) as proxy:
        read_stream(proxy)
    overloaded, truncated, _ = attempts(otel)
    assert overloaded["sdkguard.reason"] == "overloaded_error"
    assert_received(overloaded, server.sent[0], 3, "error")
    assert "sdkguard.attempt.errno" not in overloaded
    assert truncated["sdkguard.reason"] == "connection_closed"
    assert truncated["anthropic.request.id"] == "req_fake_2"
    assert truncated["sdkguard.attempt.events_received"] == 2
    assert "sdkguard.attempt.errno" not in truncated


def test_a_reset_after_content_without_resume(
    server: FakeAnthropic, otel: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(faults.reset_before_headers(), faults.reset_after(6))
    with (
        caplog.at_level(logging.INFO, logger="sdkguard.proxy"),
        start_proxy(server.url) as proxy,
        pytest.raises(anthropic.APIStatusError) as raised,
    ):
        read_stream(proxy)
    before_headers, reset = attempts(otel)
    sent = server.sent[1]
    assert before_headers["http.response.body.size"] == 0
    assert reset["sdkguard.outcome"] == "failed"
    assert reset["anthropic.request.id"] == sent.request_id == "req_fake_2"
    assert reset["http.response.body.size"] == sse_bytes(sent)
    assert reset["sdkguard.attempt.errno"] == "ECONNRESET"
    # Relayed as bytes after the commit point: its events are not counted (not per event).
    assert "sdkguard.attempt.events_received" not in reset
    assert "sdkguard.attempt.last_event" not in reset

    # The client's error carries the notes, as the library's exception does.
    body = raised.value.body
    assert isinstance(body, dict)
    message = body["error"]["message"]
    assert "(0 B, ECONNRESET); waited 10 ms" in message
    assert f"(request req_fake_2, {sse_bytes(sent):,} B, ECONNRESET)" in message
    for secret in (SECRET_KEY, PROMPT, HELLO[:12]):
        assert secret not in message

    # The log lines are the library's: the reason and the wait, the forensics left to the
    # notes and the spans.
    assert [r.getMessage() for r in caplog.records if r.name == "sdkguard.proxy"] == [
        "POST /v1/messages: connection reset or closed before the answer arrived; retrying "
        "in 10 ms (attempt 2 of 5)",
        "POST /v1/messages: stream interrupted after content was relayed: connection reset "
        "by peer (ECONNRESET); the client gets an error event",
    ]


def test_a_continued_stream(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(
        faults.reset_after(6, reply=CONTINUABLE), faults.reset_after(6, reply=CONTINUABLE)
    )
    server.default(CONTINUABLE)
    with start_proxy(server.url, policy={"resume": "on"}) as proxy:
        seen = read_stream(proxy)
    assert seen.count("message_start") == 1 and seen[-1] == "message_stop"
    first, continuation, success = attempts(otel)
    assert (first["sdkguard.outcome"], continuation["sdkguard.outcome"]) == ("continued",) * 2
    # message_start, content_block_start, a ping, three deltas.
    assert_received(first, server.sent[0], 5, "content_block_delta")
    # A continuation counts the events it added to the message (its own message_start and
    # the repeated tail are not passed on), as the library counts them.
    sent = server.sent[1]
    assert continuation["anthropic.request.id"] == sent.request_id == "req_fake_2"
    assert continuation["http.response.body.size"] == sse_bytes(sent)
    added = continuation["sdkguard.attempt.events_received"]
    assert 0 < added < len(sent.content_events())
    assert continuation["sdkguard.attempt.last_event"] == "content_block_delta"
    assert first["sdkguard.attempt.errno"] == continuation["sdkguard.attempt.errno"] == "ECONNRESET"
    assert not any(key in success for key in FORENSICS[1:])


def test_the_events_of_a_block_held_back_are_counted(server: FakeAnthropic, otel: Recorded) -> None:
    # Cut inside the tool_use block, which `resume` holds until the message goes past it.
    server.script(faults.reset_after(11, reply=WITH_TOOL))
    server.default(WITH_TOOL)
    with start_proxy(server.url, policy={"resume": "on"}) as proxy:
        read_stream(proxy)
    cut, _ = attempts(otel)
    sent = server.sent[0]
    assert [name for name, _ in sent.content_events()][-3:] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    assert_received(cut, sent, len(sent.content_events()), "content_block_delta")


@pytest.mark.parametrize("resume", ["off", "on"])
def test_a_plain_call_sent_as_a_stream(server: FakeAnthropic, otel: Recorded, resume: str) -> None:
    reply = CONTINUABLE if resume == "on" else faults.ok()
    server.script(faults.reset_after(5, reply=reply), faults.status(529))
    server.default(reply)
    with start_proxy(server.url, policy={"resume": resume}) as proxy, client_of(proxy) as client:
        assert client.messages.create(**ARGS).stop_reason == "end_turn"
    cut, overloaded, _ = attempts(otel)
    # Restarted (resume off) or continued (on): the same four events received.
    assert cut["sdkguard.outcome"] == ("continued" if resume == "on" else "retry")
    assert_received(cut, server.sent[0], 4, "content_block_delta")
    assert cut["sdkguard.attempt.errno"] == "ECONNRESET"
    assert overloaded["anthropic.request.id"] == "req_fake_2"
    assert "sdkguard.attempt.events_received" not in overloaded


def test_a_plain_call_sent_as_it_is(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(faults.status(529), faults.reset_before_headers(), faults.ok())
    policy = {"stream_plain_calls": "off"}
    with start_proxy(server.url, policy=policy) as proxy, client_of(proxy) as client:
        client.messages.create(**ARGS)
    overloaded, reset, _ = attempts(otel)
    assert overloaded["anthropic.request.id"] == "req_fake_1"
    assert overloaded["http.response.body.size"] == len(server.sent[0].body or b"")
    # The proxy reads the answer itself: no headers, no bytes (the library cannot tell).
    assert reset["http.response.body.size"] == 0
    assert "anthropic.request.id" not in reset
    assert "sdkguard.attempt.events_received" not in reset


def test_the_apis_own_error_after_content(server: FakeAnthropic, otel: Recorded) -> None:
    server.script(faults.sse_error_after(5, "invalid_request_error", reply=CONTINUABLE))
    with (
        start_proxy(server.url, policy={"resume": "on"}) as proxy,
        pytest.raises(anthropic.APIStatusError),
    ):
        read_stream(proxy)
    (failed,) = attempts(otel)
    assert failed["sdkguard.outcome"] == "failed"
    assert failed["sdkguard.reason"] == "invalid_request_error"
    assert_received(failed, server.sent[0], 5, "error")


def test_giving_up_without_an_http_answer(server: FakeAnthropic) -> None:
    with start_proxy(server.url) as proxy:
        server.refuse_connections()
        with client_of(proxy) as client, pytest.raises(anthropic.APIStatusError) as raised:
            client.messages.create(**ARGS, stream=True)
    body = raised.value.body
    assert isinstance(body, dict)
    assert "attempt 5 of 5: connect_refused after " in body["error"]["message"]
    assert "(0 B, ECONNREFUSED)" in body["error"]["message"]
