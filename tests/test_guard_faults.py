"""Every fault of the kit, sync and async, in every way of reading a call: the contract holds.

Real HTTP over loopback against the fake server; faults happen at the socket level.
"""

from __future__ import annotations

import logging

import anthropic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from sdkguard.testing.faults import Answer
from tests.helpers import (
    MODES,
    OverloadedError,
    assert_one_clean_message,
    consume,
    message_text,
)

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("guard")]
FLAVOURS = ("sync", "async")  # plus "trio" where the scenario is worth a third run
# The client's own read limit is short so that a plain call stalled before its answer ends
# in tenths of a second (sent as a stream it has the stream limits; not converted, it keeps
# the SDK's read timeout).
CLIENT = {"timeout": anthropic.Timeout(0.4, connect=0.5)}

# Each fails its attempt before any content (events: 1 message_start, 2 content_block_start,
# 3 ping, 4 first delta), so every way of reading the call recovers transparently.
BEFORE_CONTENT: dict[str, Answer] = {
    "reset_before_headers": faults.reset_before_headers(),
    "reset_after_message_start": faults.reset_after(1),
    "reset_after_block_start": faults.reset_after(2),
    "reset_after_ping": faults.reset_after(3),
    "stall_before_headers": faults.stall_before_headers(),
    "stall_after_block_start": faults.stall_after(2),
    "status_529": faults.status(529),
    "status_500": faults.status(500),
    "status_429_retry_after_ms": faults.status(429, headers={"retry-after-ms": "20"}),
    "status_503_retry_after": faults.status(503, headers={"retry-after": "0.05"}),
    "status_400_should_retry_true": faults.status(400, headers={"x-should-retry": "true"}),
    "sse_overloaded": faults.sse_error_after(2),
    "sse_api_error": faults.sse_error_after(1, error_type="api_error"),
    "sse_rate_limit": faults.sse_error_after(2, error_type="rate_limit_error"),
    "truncate": faults.truncate_after(2),
    "close_without_stop": faults.close_after(2),
    "malformed_event": faults.malformed_after(2),
    "invalid_utf8": faults.invalid_utf8_after(3),
    "proxy_html_502": faults.proxy_error(),
    "html_page_under_200": faults.wrong_content_type(),
    "reset_inside_message_start": faults.reset_at_byte(250),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(BEFORE_CONTENT.values()), ids=list(BEFORE_CONTENT))
def test_fault_before_content_is_recovered(
    server: FakeAnthropic, flavour: str, mode: str, fault: Answer
) -> None:
    server.script(fault, faults.ok())
    seen = consume(flavour, server, mode, **CLIENT)
    assert len(server.requests) == 2
    assert_one_clean_message(seen, server.sent[-1])
    counts = [r.headers["x-stainless-retry-count"] for r in server.requests]
    assert counts == ["0", "1"]


@pytest.mark.parametrize("flavour", [*FLAVOURS, "trio"])
@pytest.mark.parametrize("mode", MODES)
def test_several_faults_in_a_row_are_recovered(
    server: FakeAnthropic, flavour: str, mode: str
) -> None:
    server.script(
        faults.reset_before_headers(),
        faults.status(529),
        faults.stall_after(1),
        faults.sse_error_after(2),
        faults.ok(),
    )
    seen = consume(flavour, server, mode, **CLIENT)
    assert len(server.requests) == 5
    assert_one_clean_message(seen, server.sent[-1])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_refused_connection_is_retried(server: FakeAnthropic, flavour: str) -> None:
    reopened: list[sdkguard.RetryEvent] = []

    def reopen(event: sdkguard.RetryEvent) -> None:
        reopened.append(event)
        server.accept_connections()

    server.refuse_connections()
    with sdkguard.policy(on_retry=reopen):
        seen = consume(flavour, server, "create_stream", **CLIENT)
    assert [e.reason for e in reopened] == ["connect_refused"]
    assert len(server.requests) == 1
    assert_one_clean_message(seen, server.sent[-1])


AFTER_CONTENT: dict[str, Answer] = {
    "reset": faults.reset_after(5),
    "stall": faults.stall_after(5),
    "truncate": faults.truncate_after(5),
    "close_without_stop": faults.close_after(5),
    "malformed_event": faults.malformed_after(5),
    "invalid_utf8": faults.invalid_utf8_after(5),
    "reset_inside_a_delta": faults.reset_at_byte(760),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", ["create_stream", "stream_events"])
@pytest.mark.parametrize("fault", list(AFTER_CONTENT.values()), ids=list(AFTER_CONTENT))
def test_failure_after_content_raises_stream_interrupted(
    server: FakeAnthropic, flavour: str, mode: str, fault: Answer
) -> None:
    server.script(fault, faults.ok())
    with pytest.raises(sdkguard.StreamInterrupted) as caught:
        consume(flavour, server, mode, **CLIENT)
    err = caught.value
    assert isinstance(err, anthropic.APIConnectionError)
    assert len(server.requests) == 1, "content had reached the consumer: no restart"
    assert err.partial_message is not None
    assert err.partial_message.content[0].text == server.sent[0].text != ""
    assert [a.reason for a in err.attempts] == [err.reason]
    assert err.__cause__ is not None


@pytest.mark.parametrize("flavour", [*FLAVOURS, "trio"])
@pytest.mark.parametrize("fault", list(AFTER_CONTENT.values()), ids=list(AFTER_CONTENT))
def test_final_message_only_restarts_after_content(
    server: FakeAnthropic, flavour: str, fault: Answer
) -> None:
    server.script(fault, faults.ok())
    seen = consume(flavour, server, "stream_final", **CLIENT)
    assert len(server.requests) == 2
    assert_one_clean_message(seen, server.sent[-1])


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", ["create_stream", "stream_events"])
def test_sse_error_after_content_is_the_sdk_error(
    server: FakeAnthropic, flavour: str, mode: str
) -> None:
    server.script(faults.sse_error_after(5), faults.ok())
    with pytest.raises(anthropic.APIStatusError) as caught:
        consume(flavour, server, mode, **CLIENT)
    assert not isinstance(caught.value, sdkguard.StreamInterrupted)
    assert caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"
    assert len(server.requests) == 1


NOT_RETRIED: dict[str, tuple[Answer, type[Exception]]] = {
    "status_400": (faults.status(400), anthropic.BadRequestError),
    "status_401": (faults.status(401), anthropic.AuthenticationError),
    "status_403": (faults.status(403), anthropic.PermissionDeniedError),
    "status_404": (faults.status(404), anthropic.NotFoundError),
    "status_529_should_retry_false": (
        faults.status(529, headers={"x-should-retry": "false"}),
        OverloadedError,
    ),
    "sse_invalid_request": (
        faults.sse_error_after(2, error_type="invalid_request_error"),
        anthropic.APIStatusError,
    ),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", ["create_stream", "create"])
@pytest.mark.parametrize("case", list(NOT_RETRIED.values()), ids=list(NOT_RETRIED))
def test_final_failures_are_raised_at_once(
    server: FakeAnthropic,
    flavour: str,
    mode: str,
    case: tuple[Answer, type[Exception]],
    records: pytest.LogCaptureFixture,
) -> None:
    fault, error_type = case
    if mode == "create" and isinstance(fault, type(faults.sse_error_after(1))):
        error_type = anthropic.BadRequestError  # a plain call gets the error as a status
    server.script(fault, faults.ok())
    with pytest.raises(error_type) as caught:
        consume(flavour, server, mode, **CLIENT)
    assert len(server.requests) == 1
    assert not getattr(caught.value, "__notes__", None), "nothing was retried: no history"
    assert records.records == []


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", MODES)
def test_giving_up_raises_the_sdk_error_with_the_history(
    server: FakeAnthropic, flavour: str, mode: str, records: pytest.LogCaptureFixture
) -> None:
    server.script(*[faults.reset_before_headers()] * 5, faults.ok())
    with pytest.raises(anthropic.APIConnectionError) as caught:
        consume(flavour, server, mode, **CLIENT)
    assert len(server.requests) == 5
    notes = caught.value.__notes__
    assert [n.split(":")[0] for n in notes[:5]] == [f"attempt {i} of 5" for i in range(1, 6)]
    assert "connection_reset" in notes[0] and "waited" in notes[0] and "waited" not in notes[4]
    assert "all 5 attempts failed" in notes[5]
    warnings = [r for r in records.records if r.levelno == logging.WARNING]
    errors = [r for r in records.records if r.levelno == logging.ERROR]
    assert len(warnings) == 4 and len(errors) == 1
    assert (
        "connection reset or closed before the answer arrived; retrying in"
        in warnings[0].getMessage()
    )
    assert "(attempt 2 of 5)" in warnings[0].getMessage()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", ["create_stream", "stream_final"])
def test_stalls_that_exhaust_the_attempts_raise_stream_stalled(
    server: FakeAnthropic, flavour: str, mode: str
) -> None:
    server.script(*[faults.stall_after(2)] * 3)
    with sdkguard.policy(max_attempts=3), pytest.raises(sdkguard.StreamStalled) as caught:
        consume(flavour, server, mode, **CLIENT)
    assert isinstance(caught.value, anthropic.APITimeoutError)
    assert caught.value.reason == "stall_idle"
    assert len(server.requests) == 3


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pings_without_progress_are_a_stall_when_limited(
    server: FakeAnthropic, flavour: str
) -> None:
    server.script(faults.pings_only_after(3, 0.02), faults.ok())
    with sdkguard.policy(progress_timeout=0.15):
        seen = consume(flavour, server, "create_stream", **CLIENT)
    assert len(server.requests) == 2
    assert_one_clean_message(seen, server.sent[-1])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pings_keep_a_slow_stream_alive_by_default(server: FakeAnthropic, flavour: str) -> None:
    # Long thinking is legitimate: pings for longer than the idle limit, then the content.
    server.script(faults.pings_only_after(3, 0.05, seconds=0.5))
    seen = consume(flavour, server, "create_stream", **CLIENT)
    assert len(server.requests) == 1
    assert_one_clean_message(seen, server.sent[-1])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_stream_ending_after_message_delta_has_lost_nothing(
    server: FakeAnthropic, flavour: str
) -> None:
    # message_start, block start, ping, 3 deltas, block stop, message_delta: no message_stop,
    # and a clean end: passed on as it is, as the SDK alone does
    server.script(faults.close_after(8))
    seen = consume(flavour, server, "create_stream", **CLIENT)
    assert len(server.requests) == 1
    assert seen.events == server.sent[0].content_events()
    assert seen.events is not None and seen.events[-1][0] == "message_delta"


# Hostile answers that are not failures: the consumer gets them as the SDK alone would.
PASS_THROUGH: dict[str, Answer] = {
    "unknown_event_before_content": faults.unknown_event_after(1),
    "unknown_event_after_content": faults.unknown_event_after(4),
    "huge_line": faults.huge_line(1_000_000),
    "crlf_in_pieces": faults.fragmented(
        faults.ok(faults.text("naïve café → 日本", deltas=4)),
        range(150, 1300, 3),
        line_ending="\r\n",
        pause=0,
    ),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("answer", list(PASS_THROUGH.values()), ids=list(PASS_THROUGH))
def test_hostile_answers_that_are_not_failures_pass_through(
    server: FakeAnthropic, flavour: str, mode: str, answer: Answer
) -> None:
    server.script(answer)
    seen = consume(flavour, server, mode, **CLIENT)
    assert len(server.requests) == 1
    assert_one_clean_message(seen, server.sent[0])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_page_that_is_not_json_is_never_returned(server: FakeAnthropic, flavour: str) -> None:
    # The SDK alone returns such a page as a `str` from `messages.create()`.
    server.script(*[faults.wrong_content_type()] * 5)
    with pytest.raises(anthropic.APIConnectionError) as caught:
        consume(flavour, server, "create", **CLIENT)
    assert len(server.requests) == 5
    assert "not a JSON message" in str(caught.value)
    assert "malformed_answer" in caught.value.__notes__[0]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bytes_that_are_not_utf8_are_a_connection_error(
    server: FakeAnthropic, flavour: str
) -> None:
    server.script(*[faults.invalid_utf8_after(0)] * 5)
    with pytest.raises(anthropic.APIConnectionError) as caught:
        consume(flavour, server, "create", **CLIENT)
    assert len(server.requests) == 5
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_final_failure_after_retries_still_lists_every_attempt(
    server: FakeAnthropic, flavour: str
) -> None:
    server.script(faults.status(529), faults.reset_before_headers(), faults.status(400))
    with pytest.raises(anthropic.BadRequestError) as caught:
        consume(flavour, server, "create_stream", **CLIENT)
    notes = caught.value.__notes__
    assert [n.split(":")[0] for n in notes[:3]] == [f"attempt {i} of 5" for i in (1, 2, 3)]
    assert "status_400" in notes[2] and notes[3] == "sdkguard gave up: not retryable"


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", ["create_stream", "stream_final"])
def test_a_reopened_stream_is_judged_by_its_own_failure(
    server: FakeAnthropic, flavour: str, mode: str
) -> None:
    # The stream goes silent, then the port is closed when it is reopened: that attempt
    # failed because it was refused, whatever the first one went through.
    def close_the_port(event: sdkguard.RetryEvent) -> None:
        server.refuse_connections()

    server.script(faults.stall_after(2))
    with (
        sdkguard.policy(max_attempts=2, on_retry=close_the_port),
        pytest.raises(anthropic.APIConnectionError) as caught,
    ):
        consume(flavour, server, mode, **CLIENT)
    assert type(caught.value) is anthropic.APIConnectionError
    notes = caught.value.__notes__
    assert "stall_idle" in notes[0] and "connect_refused" in notes[1], notes


# After message_delta (event 8 of the default reply) the message is whole: what breaks after
# it loses nothing, as when the body ends cleanly there.
AFTER_THE_MESSAGE: dict[str, Answer] = {
    "reset_after_message_delta": faults.reset_after(8),
    "reset_after_message_stop": faults.reset_after(9),
    "truncate_after_message_stop": faults.truncate_after(9),
    "stall_after_message_delta": faults.stall_after(8),
    "reset_in_the_last_chunk": faults.reset_at_byte(1390),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mode", ["create_stream", "stream_events"])
@pytest.mark.parametrize("fault", list(AFTER_THE_MESSAGE.values()), ids=list(AFTER_THE_MESSAGE))
def test_what_breaks_after_the_message_loses_nothing(
    server: FakeAnthropic, flavour: str, mode: str, fault: Answer
) -> None:
    server.script(fault, faults.ok())
    seen = consume(flavour, server, mode, **CLIENT)
    assert len(server.requests) == 1
    assert server.sent[0].content_events()[-1][0] in ("message_delta", "message_stop")
    if mode == "create_stream":
        sent = server.sent[0].content_events()
        if sent[-1][0] == "message_delta":  # the message_stop a failure cut off: sdkguard's
            sent.append(("message_stop", {"type": "message_stop"}))
        assert seen.events == sent
    else:
        assert message_text(seen.message) == server.sent[0].text == faults.DEFAULT_TEXT
