"""Non-streaming calls sent as streams under the hood (`stream_plain_calls`).

The caller gets the very `Message` the non-streaming answer would have been; the guard gets
events to watch, so silence is detected and a failure at any point restarts the call.
Real HTTP over loopback against the fake server, which gives the same content as JSON and as
SSE: every comparison below is the SDK's own parse of the JSON answer against the message
rebuilt from the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import anyio
import pydantic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from sdkguard.testing.faults import Answer, Ok
from tests.helpers import API_KEY, MESSAGE_ARGS

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("guard")]
FLAVOURS = ("sync", "async")
# A short read limit of the client's own: what a plain call waits for without the conversion.
CLIENT: dict[str, Any] = {"timeout": anthropic.Timeout(1.0, connect=0.5)}

CONVERTED = sdkguard.policy(stream_plain_calls=True)
NOT_CONVERTED = sdkguard.policy(stream_plain_calls=False)


def call(
    flavour: str,
    server: FakeAnthropic,
    *,
    beta: bool = False,
    method: str = "create",
    client_args: dict[str, Any] | None = None,
    **args: Any,
) -> Any:
    """One plain call with a new client: sync, or async under asyncio or trio."""
    options = {"base_url": server.url, "api_key": API_KEY, **CLIENT, **(client_args or {})}
    arguments = {**MESSAGE_ARGS, **args}

    def resource(client: Any) -> Any:
        return client.beta.messages if beta else client.messages

    if flavour == "sync":
        with anthropic.Anthropic(**options) as client:
            return getattr(resource(client), method)(**arguments)

    async def run() -> Any:
        async with anthropic.AsyncAnthropic(**options) as client:
            return await getattr(resource(client), method)(**arguments)

    return anyio.run(run, backend="trio" if flavour == "trio" else "asyncio")


def as_json_and_as_stream(
    server: FakeAnthropic, answer: Ok, run: Callable[[], Any]
) -> tuple[Any, Any]:
    """`run()` answered with JSON (no conversion), then with SSE (converted)."""
    server.script(answer)
    with NOT_CONVERTED:
        plain = run()
    server.script(answer)
    with CONVERTED:
        converted = run()
    assert [r.stream for r in server.requests] == [False, True]
    return plain, converted


def assert_same_message(converted: Any, plain: Any, server: FakeAnthropic) -> None:
    """Field for field, fields set included, and the request id of the answer it came from."""
    assert type(converted) is type(plain)
    assert converted == plain
    assert converted.to_dict() == plain.to_dict()
    assert converted.model_fields_set == plain.model_fields_set
    for a, b in zip(converted.content, plain.content, strict=True):
        assert type(a) is type(b) and a.model_fields_set == b.model_fields_set
    assert converted._request_id == server.sent[-1].request_id is not None
    assert plain._request_id == server.sent[0].request_id


ANSWERS: dict[str, Ok] = {
    "text": faults.ok(faults.text("Hello, world: a longer answer in pieces.", deltas=7)),
    "thinking_then_text": faults.ok(
        faults.thinking("Let me think about it.", signature="sig-123", deltas=3),
        faults.text("The answer is 42."),
    ),
    "tool_use": faults.ok(
        faults.text("Let me look that up."),
        faults.tool_use(
            "get_weather",
            {"city": "Paris", "days": [1, 2, 3], "units": {"t": "C"}, "x": 2.5, "ok": True},
            id="toolu_1",
            deltas=5,
        ),
    ),
    "two_tools": faults.ok(
        faults.tool_use("a", {}, id="toolu_a", deltas=1),
        faults.tool_use("b", {"q": "é ü ✓"}, id="toolu_b", deltas=3),
    ),
    "usage_and_stop_reason": faults.ok(
        faults.text("cut"),
        stop_reason="max_tokens",
        usage={
            "input_tokens": 1234,
            "output_tokens": 64,
            "cache_creation_input_tokens": 7,
            "cache_read_input_tokens": 900,
        },
        ping_after_start=False,
    ),
}


@pytest.mark.parametrize("beta", [False, True], ids=["messages", "beta"])
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("name", list(ANSWERS))
def test_the_rebuilt_message_equals_the_non_streaming_answer(
    server: FakeAnthropic, name: str, flavour: str, beta: bool
) -> None:
    answer = faults.ok(*ANSWERS[name].blocks, **_ok_fields(ANSWERS[name]), message_id="msg_same")
    plain, converted = as_json_and_as_stream(
        server, answer, lambda: call(flavour, server, beta=beta)
    )
    assert_same_message(converted, plain, server)
    assert type(converted).__name__ == ("BetaMessage" if beta else "Message")


def _ok_fields(answer: Ok) -> dict[str, Any]:
    return {
        "stop_reason": answer.stop_reason,
        "usage": answer.usage,
        "ping_after_start": answer.ping_after_start,
    }


class Weather(pydantic.BaseModel):
    city: str
    degrees: float


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_parse_output_is_rebuilt_exactly(server: FakeAnthropic, flavour: str) -> None:
    if not hasattr(anthropic.resources.Messages, "parse"):
        pytest.skip(f"anthropic {anthropic.__version__} has no messages.parse()")
    answer = faults.ok(
        faults.text('{"city": "Paris", "degrees": 21.5}', deltas=4), message_id="msg_same"
    )
    plain, converted = as_json_and_as_stream(
        server, answer, lambda: call(flavour, server, method="parse", output_format=Weather)
    )
    assert_same_message(converted, plain, server)
    assert converted.parsed_output == Weather(city="Paris", degrees=21.5)


# -- silence and failures at any point --------------------------------------------------------


def _retries(policy_fields: dict[str, Any], run: Callable[[], Any]) -> tuple[Any, list[Any]]:
    seen: list[sdkguard.RetryEvent] = []
    with sdkguard.policy(on_retry=seen.append, **policy_fields):
        return run(), seen


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (faults.stall_before_headers(), "stall_response"),
        (faults.stall_after(2), "stall_idle"),  # headers and message_start, then silence
        (faults.stall_after(6), "stall_idle"),  # the text delivered, then silence
    ],
    ids=["before_headers", "before_content", "after_content"],
)
def test_a_silent_call_is_detected_at_the_stream_limits_and_recovered(
    server: FakeAnthropic, flavour: str, fault: Answer, reason: str
) -> None:
    server.script(fault, faults.ok())
    slow_client = {"timeout": anthropic.Timeout(10.0, connect=0.5)}
    message, retries = _retries(
        {"stream_plain_calls": True}, lambda: call(flavour, server, client_args=slow_client)
    )
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [r.reason for r in retries] == [reason]
    # noticed at the stream limits (0.3 s), not at the client's read timeout (10 s here, so
    # that a bound between the two leaves a loaded machine seconds to spare)
    assert retries[0].elapsed < 5.0
    assert len(server.requests) == 2 and server.requests[0].stream


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_without_the_conversion_a_silent_call_waits_for_the_read_timeout(
    server: FakeAnthropic, flavour: str
) -> None:
    server.script(faults.stall_after(2), faults.ok())  # headers and half the JSON body
    message, retries = _retries({"stream_plain_calls": False}, lambda: call(flavour, server))
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [r.reason for r in retries] == ["read_timeout"]
    assert retries[0].elapsed >= 1.0  # the client's own read timeout
    assert not server.requests[0].stream


# Every point of the hidden stream: events 0 to 9 of the default reply (1 message_start,
# 2 content_block_start, 3 ping, 4-6 deltas, 7 content_block_stop, 8 message_delta,
# 9 message_stop), then before the terminating chunk. From message_delta on the message is
# whole: a reset then loses nothing, and is not retried.
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("n", range(10))
def test_a_reset_at_any_point_of_the_hidden_stream_is_invisible(
    server: FakeAnthropic, flavour: str, n: int
) -> None:
    same = faults.ok(message_id="msg_same")
    server.script(same)
    with NOT_CONVERTED:
        expected = call(flavour, server)
    server.script(faults.reset_after(n, reply=same), same)
    with CONVERTED:
        message = call(flavour, server)
    assert message == expected and message.to_dict() == expected.to_dict()
    assert len(server.requests) == (3 if n < 8 else 2)
    assert message._request_id == server.sent[-1].request_id


AFTER_CONTENT: dict[str, Answer] = {
    "truncate": faults.truncate_after(5),
    "close_without_stop": faults.close_after(5),
    "malformed_event": faults.malformed_after(5),
    "sse_overloaded": faults.sse_error_after(5),
    "sse_api_error": faults.sse_error_after(7, error_type="api_error"),
    "status_529": faults.status(529),
}


@pytest.mark.parametrize("flavour", [*FLAVOURS, "trio"])
@pytest.mark.parametrize("fault", list(AFTER_CONTENT.values()), ids=list(AFTER_CONTENT))
def test_failures_after_content_restart_too(
    server: FakeAnthropic, flavour: str, fault: Answer
) -> None:
    # Nothing reached the caller: content delivered by the failed attempt is not a commit.
    server.script(fault, faults.ok())
    with CONVERTED:
        message = call(flavour, server)
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert len(server.requests) == 2
    assert message._request_id == server.sent[-1].request_id


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pings_without_progress_are_a_stall_when_limited(
    server: FakeAnthropic, flavour: str
) -> None:
    server.script(faults.pings_only_after(5, 0.02), faults.ok())
    message, retries = _retries(
        {"stream_plain_calls": True, "progress_timeout": 0.15}, lambda: call(flavour, server)
    )
    assert [r.reason for r in retries] == ["stall_progress"]
    assert message.content[0].text == faults.DEFAULT_TEXT


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_read_timeout_no_longer_caps_the_whole_answer(
    server: FakeAnthropic, flavour: str
) -> None:
    # The SDK's read timeout (600 s by its ten-minute rule; 1 s here) bounds the wait for a
    # whole non-streaming answer. Sent as a stream, it bounds each read: an answer that keeps
    # pinging for longer arrives in one attempt.
    slow = faults.pings_only_after(3, 0.1, seconds=1.3)
    server.script(slow)
    with CONVERTED:
        message = call(flavour, server)
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert len(server.requests) == 1
    server.script(slow, faults.ok())
    _, retries = _retries({"stream_plain_calls": False}, lambda: call(flavour, server))
    assert [r.reason for r in retries] == ["read_timeout"]


def test_the_sdks_ten_minute_rule_still_refuses_before_sending(server: FakeAnthropic) -> None:
    # The SDK checks it in create() before the request exists: its error is left as it is.
    with (
        CONVERTED,
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client,
        pytest.raises(ValueError, match="Streaming is required"),
    ):
        client.messages.create(**{**MESSAGE_ARGS, "max_tokens": 100_000})
    assert server.requests == []


# -- errors are those of a non-streaming answer ---------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("overloaded_error", 529),
        ("api_error", 500),
        ("rate_limit_error", 429),
        ("invalid_request_error", 400),
    ],
)
def test_an_error_event_is_raised_as_the_status_error_of_a_plain_answer(
    server: FakeAnthropic, flavour: str, error_type: str, status: int
) -> None:
    server.script(*[faults.sse_error_after(5, error_type=error_type)] * 3)
    # The same error, answered to a plain request (the fake server sends it as a status):
    # `OverloadedError`, `InternalServerError`, `RateLimitError`, `BadRequestError`.
    with (
        NOT_CONVERTED,
        sdkguard.policy(max_attempts=1),
        pytest.raises(anthropic.APIStatusError) as plain,
    ):
        call(flavour, server)
    with (
        CONVERTED,
        sdkguard.policy(max_attempts=2),
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        call(flavour, server)
    err = caught.value
    assert type(err) is type(plain.value)
    assert err.status_code == plain.value.status_code == status
    assert err.body == plain.value.body | {"request_id": err.body["request_id"]}
    assert err.request_id == server.sent[-1].request_id
    retried = error_type != "invalid_request_error"
    assert len(server.requests) == (3 if retried else 2)
    assert bool(getattr(err, "__notes__", None)) == retried


# -- a server that answers the stream request with JSON -------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_json_answer_to_the_stream_request_is_used_as_it_is(
    server: FakeAnthropic, flavour: str
) -> None:
    answer = faults.ok(*ANSWERS["tool_use"].blocks, message_id="msg_same")
    server.script(answer)
    with NOT_CONVERTED:
        plain = call(flavour, server)
    json_only = faults.ok(*answer.blocks, message_id="msg_same", stream=False)
    server.script(json_only, faults.reset_after(4), json_only)
    with CONVERTED:
        first = call(flavour, server)
        # a JSON answer after a restart of the stream, too
        restarted = call(flavour, server)
    assert [r.stream for r in server.requests] == [False, True, True, True]
    for message in (first, restarted):
        assert message == plain and message.to_dict() == plain.to_dict()
    assert restarted._request_id == server.sent[-1].request_id


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_broken_json_answer_is_retried(server: FakeAnthropic, flavour: str) -> None:
    json_only = faults.ok(stream=False)
    server.script(faults.reset_after(1, reply=json_only), faults.ok())
    message, retries = _retries({"stream_plain_calls": True}, lambda: call(flavour, server))
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [r.reason for r in retries] == ["connection_reset"]


# -- what is not converted -------------------------------------------------------------------


def test_raw_responses_count_tokens_and_the_switch_are_left_as_they_are(
    server: FakeAnthropic,
) -> None:
    with CONVERTED, anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client:
        raw = client.messages.with_raw_response.create(**MESSAGE_ARGS)
        assert raw.http_response.headers["content-type"] == "application/json"
        with client.messages.with_streaming_response.create(**MESSAGE_ARGS) as response:
            assert response.parse().content[0].text == faults.DEFAULT_TEXT
        client.messages.count_tokens(model="m", messages=MESSAGE_ARGS["messages"])
        with NOT_CONVERTED:
            client.messages.create(**MESSAGE_ARGS)
        client.messages.create(**MESSAGE_ARGS)
    assert [r.stream for r in server.requests] == [False, False, False, False, True]
    assert [r.path for r in server.requests][2] == "/v1/messages/count_tokens"


def test_a_converted_call_is_logged_as_the_callers_create(
    server: FakeAnthropic, records: pytest.LogCaptureFixture
) -> None:
    server.script(faults.reset_after(5), faults.ok())
    with CONVERTED:
        call("sync", server, beta=True)
    assert [r.getMessage().split(":")[0] for r in records.records] == ["beta.messages.create"]


# -- behind a proxy that buffers whole answers ------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_behind_a_buffering_proxy_plain_calls_go_out_as_they_are(
    flavour: str, server: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    # The proxy holds a stream's headers until the whole answer is done (1 s here, past the
    # 0.3 s response limit): the converted attempt is cut, the next goes out unconverted and
    # gets the client's own read timeout. The host is remembered: the next call is sent as it
    # is at once. Said once.
    caplog.set_level("WARNING", logger="sdkguard")
    slow_client = {"timeout": anthropic.Timeout(10.0, connect=0.5)}
    server.script(*[faults.buffered(1.0)] * 3)
    with CONVERTED:
        first = call(flavour, server, client_args=slow_client)
        second = call(flavour, server, client_args=slow_client)
    assert first.content[0].text == second.content[0].text != ""
    assert [r.stream for r in server.requests] == [True, False, False]
    said = [r.getMessage() for r in caplog.records if "buffers whole answers" in r.getMessage()]
    assert len(said) == 1 and server.url in said[0], said


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_restarted_plain_call_that_gets_no_headers_stays_a_stream(
    flavour: str, server: FakeAnthropic
) -> None:
    # The first attempt's stream had its headers, so the host does not buffer streams: a later
    # attempt that gets none in time is a stall like any other, retried as a stream again.
    server.script(faults.reset_after(5), faults.stall_before_headers())
    with CONVERTED:
        message = call(flavour, server)
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [r.stream for r in server.requests] == [True, True, True]
