"""Forensics of each failed attempt: request id, bytes and events received, last event, errno.

Real faults over loopback against the fake server, sync and async: what the notes, the
`RetryEvent`s, `StreamInterrupted.attempts` and the attempt spans carry is checked against
what the server recorded having written.

Definitions under test: `events_received` counts the SSE events of the message the attempt
received, pings not counted (the SDK drops them) and an `error` event counted;
`bytes_received` is the response body as the HTTP library read it (the server's SSE events,
pings included, without the chunked encoding's framing; an error status's JSON body).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sdkguard
from sdkguard import _sdk
from sdkguard._decide import AttemptRecord, errno_name
from sdkguard.testing import FakeAnthropic, SentResponse, faults
from sdkguard.testing._sse import dumps
from tests.conftest import FAST
from tests.helpers import API_KEY, MESSAGE_ARGS, WITHOUT_SDK_TRACING, use_global_providers

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("guard")]
FLAVOURS = ("sync", "async")


def sse_bytes(sent: SentResponse) -> int:
    """The body bytes of the SSE events the server wrote (what `num_bytes_downloaded` sees)."""
    return sum(
        len(b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n")
        for name, data in sent.events
    )


def install(events: list[sdkguard.RetryEvent], **policy: Any) -> None:
    sdkguard.uninstall()
    sdkguard.install(**{**FAST, **policy}, on_retry=[events.append])


def read_stream(flavour: str, server: FakeAnthropic, **client_args: Any) -> list[str]:
    """A `create(stream=True)` read to its end; the event types the consumer saw."""
    args = {"base_url": server.url, "api_key": API_KEY, **client_args}
    if flavour == "sync":
        with (
            anthropic.Anthropic(**args) as client,
            client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
        ):
            return [event.type for event in stream]

    async def run() -> list[str]:
        async with anthropic.AsyncAnthropic(**args) as client:
            stream = await client.messages.create(**MESSAGE_ARGS, stream=True)
            async with stream:
                return [event.type async for event in stream]

    return anyio.run(run)


def plain_call(flavour: str, server: FakeAnthropic) -> Any:
    args = {"base_url": server.url, "api_key": API_KEY}
    if flavour == "sync":
        with anthropic.Anthropic(**args) as client:
            return client.messages.create(**MESSAGE_ARGS)

    async def run() -> Any:
        async with anthropic.AsyncAnthropic(**args) as client:
            return await client.messages.create(**MESSAGE_ARGS)

    return anyio.run(run)


def content_events(sent: SentResponse) -> list[str]:
    return [name for name, _ in sent.content_events()]


def assert_matches(event: sdkguard.RetryEvent | AttemptRecord, sent: SentResponse) -> None:
    """A stream attempt broken after some of its events: the record matches what was sent."""
    names = content_events(sent)
    assert event.request_id == sent.request_id is not None
    assert event.events_received == len(names)
    assert event.last_event == (names[-1] if names else None)
    assert event.bytes_received == sse_bytes(sent)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_retry_events_carry_what_each_attempt_received(server: FakeAnthropic, flavour: str) -> None:
    events: list[sdkguard.RetryEvent] = []
    install(events)
    server.script(
        faults.reset_before_headers(),
        faults.status(529),
        faults.reset_after(2),
        faults.stall_after(3),
        faults.ok(),
    )
    seen = read_stream(flavour, server)
    assert seen[-1] == "message_stop"
    before_headers, overloaded, reset, stall = events
    sent = server.sent

    # No response: no request id, nothing received; the errno of whatever the client saw.
    assert before_headers.reason == "connection_reset"
    assert before_headers.request_id is None
    assert (before_headers.bytes_received, before_headers.events_received) == (0, None)
    assert before_headers.last_event is None
    assert before_headers.errno in (None, "ECONNRESET", "EPIPE")

    # An error status: its request id and body, no event stream, no errno.
    assert overloaded.reason == "status_529"
    assert overloaded.request_id == sent[1].request_id == "req_fake_2"
    assert sent[1].body is not None and overloaded.bytes_received == len(sent[1].body)
    assert overloaded.events_received is None
    assert (overloaded.last_event, overloaded.errno) == (None, None)

    # Reset after message_start and content_block_start (held back: restarted unseen).
    assert reset.reason == "connection_reset" and reset.errno == "ECONNRESET"
    assert_matches(reset, sent[2])
    assert (reset.events_received, reset.last_event) == (2, "content_block_start")

    # Stalled after three events, the third a ping: two events, a positive byte count.
    assert stall.reason == "stall_idle" and stall.errno is None
    assert_matches(stall, sent[3])
    assert stall.events_received == 2 and stall.bytes_received > 0


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_notes_of_an_interrupted_stream(server: FakeAnthropic, flavour: str) -> None:
    events: list[sdkguard.RetryEvent] = []
    install(events)
    server.script(faults.status(529), faults.reset_after(7))
    with pytest.raises(sdkguard.StreamInterrupted) as raised:
        read_stream(flavour, server)
    (overloaded,) = events
    first, second = raised.value.attempts
    sent = server.sent
    assert second.reason == "connection_reset" and second.errno == "ECONNRESET"
    assert_matches(second, sent[1])
    # Events 1 message_start, 2 content_block_start, 3 ping, 4-6 deltas, 7 content_block_stop.
    assert (second.events_received, second.last_event) == (6, "content_block_stop")
    assert (first.request_id, first.events_received) == ("req_fake_1", None)
    assert overloaded.request_id == first.request_id
    notes = raised.value.__notes__
    assert notes[0] == (
        f"attempt 1 of 5: status_529 after {first.duration:.2f} s "
        f"(request req_fake_1, {first.bytes_received:,} B); waited 10 ms"
    )
    assert notes[1] == (
        f"attempt 2 of 5: connection_reset after {second.duration:.2f} s "
        f"(request req_fake_2, {sse_bytes(sent[1]):,} B, 6 events, last content_block_stop, "
        "ECONNRESET)"
    )
    # Never content, keys or header values other than the request id.
    text = "\n".join(notes)
    for delta in (data for name, data in sent[1].events if name == "content_block_delta"):
        assert delta["delta"]["text"].strip() not in text
    assert API_KEY not in text and "claude-test" not in text


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_error_event_is_the_last_event(server: FakeAnthropic, flavour: str) -> None:
    events: list[sdkguard.RetryEvent] = []
    install(events)
    server.script(faults.sse_error_after(2), faults.ok())
    read_stream(flavour, server)
    (event,) = events
    assert event.reason == "overloaded_error"
    assert event.request_id == "req_fake_1"
    assert (event.events_received, event.last_event, event.errno) == (3, "error", None)
    assert event.bytes_received == sse_bytes(server.sent[0])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_plain_call_sent_as_a_stream(server: FakeAnthropic, flavour: str) -> None:
    events: list[sdkguard.RetryEvent] = []
    install(events)
    # Nothing reached the caller of a plain call: a reset after content restarts it.
    server.script(faults.reset_after(5), faults.status(529), faults.ok())
    message = plain_call(flavour, server)
    assert message.stop_reason == "end_turn"
    reset, overloaded = events
    assert reset.errno == "ECONNRESET"
    assert_matches(reset, server.sent[0])
    assert reset.events_received == 4 and reset.last_event == "content_block_delta"
    assert overloaded.request_id == "req_fake_2" and overloaded.events_received is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_plain_call_not_converted(server: FakeAnthropic, flavour: str) -> None:
    events: list[sdkguard.RetryEvent] = []
    install(events, stream_plain_calls=False)
    server.script(faults.status(529), faults.reset_before_headers(), faults.ok())
    plain_call(flavour, server)
    overloaded, reset = events
    assert overloaded.request_id == "req_fake_1"
    assert server.sent[0].body is not None
    assert overloaded.bytes_received == len(server.sent[0].body)
    # Not a stream: no events; a transport failure's bytes are not known.
    assert (overloaded.events_received, overloaded.last_event) == (None, None)
    assert (reset.request_id, reset.bytes_received, reset.events_received) == (None, None, None)


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def attempts(self) -> list[ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        return sorted(
            (s for s in spans if s.name == "sdkguard.attempt"),
            key=lambda s: dict(s.attributes or {})["http.request.resend_count"],
        )


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    recorded = Spans()
    use_global_providers(monkeypatch, recorded.tracer_provider)
    monkeypatch.setattr(_sdk.call, "client_tracing", lambda client: (True, None))
    yield recorded
    recorded.tracer_provider.shutdown()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_attempt_spans(server: FakeAnthropic, spans: Spans, flavour: str) -> None:
    server.script(faults.reset_before_headers(), faults.status(529), faults.reset_after(6))
    with pytest.raises(sdkguard.StreamInterrupted):
        read_stream(flavour, server, **WITHOUT_SDK_TRACING)
    before_headers, overloaded, reset = (dict(s.attributes or {}) for s in spans.attempts())
    assert "anthropic.request.id" not in before_headers
    assert before_headers["http.response.body.size"] == 0
    assert "sdkguard.attempt.events_received" not in before_headers
    assert "sdkguard.attempt.last_event" not in before_headers

    assert overloaded["anthropic.request.id"] == "req_fake_2"
    assert overloaded["http.response.body.size"] == len(server.sent[1].body or b"")
    assert "sdkguard.attempt.events_received" not in overloaded
    assert "sdkguard.attempt.errno" not in overloaded

    assert reset["sdkguard.outcome"] == "failed"
    assert reset["anthropic.request.id"] == "req_fake_3"
    assert reset["http.response.body.size"] == sse_bytes(server.sent[2])
    assert reset["sdkguard.attempt.events_received"] == 5
    assert reset["sdkguard.attempt.last_event"] == "content_block_delta"
    assert reset["sdkguard.attempt.errno"] == "ECONNRESET"
    assert reset["error.type"] == "connection_reset"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_successful_attempt_span_has_no_forensics(
    server: FakeAnthropic, spans: Spans, flavour: str
) -> None:
    server.script(faults.stall_after(3), faults.ok())
    read_stream(flavour, server, **WITHOUT_SDK_TRACING)
    stalled, success = (dict(s.attributes or {}) for s in spans.attempts())
    assert stalled["sdkguard.attempt.events_received"] == 2
    assert stalled["sdkguard.attempt.last_event"] == "content_block_start"
    assert success["sdkguard.outcome"] == "success"
    assert not any(key.startswith("sdkguard.attempt.") for key in success)


def test_the_note_says_only_what_is_known() -> None:
    bare = AttemptRecord(1, "stall_idle", "the stream went silent", 0.3, None)
    assert bare.note(5) == "attempt 1 of 5: stall_idle after 0.30 s"
    full = AttemptRecord(
        2, "connection_reset", "reset", 0.31, 2.0, "req_123", 1204, 7, "content_block_delta",
        "ECONNRESET",
    )  # fmt: skip
    assert full.note(5) == (
        "attempt 2 of 5: connection_reset after 0.31 s (request req_123, 1,204 B, 7 events, "
        "last content_block_delta, ECONNRESET); waited 2.0 s"
    )
    one = AttemptRecord(1, "status_529", "HTTP 529", 0.05, 0.5, bytes_received=0, events_received=1)
    assert one.note(3) == "attempt 1 of 3: status_529 after 0.05 s (0 B, 1 event); waited 500 ms"


def test_the_errno_is_found_in_the_chain() -> None:
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert errno_name(outer) == "ECONNRESET"
    assert errno_name(TimeoutError("timed out")) is None  # a socket's own timeout: no errno
    assert errno_name(ValueError("no")) is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_continued_stream(server: FakeAnthropic, flavour: str) -> None:
    events: list[sdkguard.RetryEvent] = []
    install(events, resume=True)
    reply = faults.continuable(
        faults.ok(faults.text("One two three four five six. " * 4, deltas=9))
    )
    server.script(faults.reset_after(6, reply=reply), faults.reset_after(6, reply=reply))
    server.default(reply)
    seen = read_stream(flavour, server)
    assert seen.count("message_start") == 1 and seen[-1] == "message_stop"
    first, continuation = events
    assert first.continued and continuation.continued
    assert_matches(first, server.sent[0])
    assert (first.events_received, first.last_event) == (5, "content_block_delta")
    # A continuation's own message_start is not passed on: it counts the events it added.
    sent = server.sent[1]
    assert continuation.request_id == sent.request_id == "req_fake_2"
    assert continuation.bytes_received == sse_bytes(sent)
    assert continuation.events_received is not None
    assert 0 < continuation.events_received < len(content_events(sent))
    assert continuation.last_event == "content_block_delta"
    assert (first.errno, continuation.errno) == ("ECONNRESET", "ECONNRESET")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_block_held_back_counts_and_names_its_events(server: FakeAnthropic, flavour: str) -> None:
    # With resume on, a tool call is held until the message goes past it: a reset inside it
    # received its start and deltas, none delivered yet, and the last of them is a delta.
    events: list[sdkguard.RetryEvent] = []
    install(events, resume=True)
    reply = faults.continuable(
        faults.ok(
            faults.text("Checking, one moment.", deltas=2),
            faults.tool_use("get_weather", {"city": "Paris"}, id="toolu_f", deltas=3),
        )
    )
    # message_start, ping, text start, 2 deltas, text stop, tool start, 2 of its 3 deltas
    server.script(faults.reset_after(8, reply=reply))
    server.default(reply)
    seen = read_stream(flavour, server)
    assert seen.count("message_start") == 1 and seen[-1] == "message_stop"
    (first,) = events
    assert first.continued
    assert (first.events_received, first.last_event) == (7, "content_block_delta")
