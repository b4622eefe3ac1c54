"""Activation, coverage, the SDK's own behaviours kept, cancellation, hygiene, secrets."""

from __future__ import annotations

import gc
import inspect
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import anthropic
import anyio
import pytest
from anthropic import _base_client

import sdkguard
from sdkguard._patch import current_policy
from sdkguard._sdk import http, request_method
from sdkguard.testing import FakeAnthropic, faults
from tests.conftest import FAST
from tests.helpers import API_KEY, MESSAGE_ARGS, OverloadedError, Seen, assert_one_clean_message

pytestmark = pytest.mark.timeout(20)


def _request_attr(cls: type) -> Any:
    return cls.__dict__[request_method(cls)]


# -- activation ---------------------------------------------------------------------------


def test_install_is_idempotent_thread_safe_and_uninstall_restores_exactly() -> None:
    originals = (
        _request_attr(_base_client.SyncAPIClient),
        _request_attr(_base_client.AsyncAPIClient),
    )
    threads = [threading.Thread(target=sdkguard.install, kwargs=FAST) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sdkguard.is_installed()
        patched = _request_attr(_base_client.SyncAPIClient)
        assert patched is not originals[0] and patched.__wrapped__ is originals[0]
        sdkguard.install(**FAST)
        assert _request_attr(_base_client.SyncAPIClient) is patched
    finally:
        sdkguard.uninstall()
    assert not sdkguard.is_installed()
    assert _request_attr(_base_client.SyncAPIClient) is originals[0]
    assert _request_attr(_base_client.AsyncAPIClient) is originals[1]


def test_install_before_anthropic_is_imported(server: FakeAnthropic) -> None:
    code = f"""
import sys, sdkguard
sdkguard.install(backoff_initial=0.01, backoff_max=0.01)
assert "anthropic" not in sys.modules
import anthropic
client = anthropic.Anthropic(base_url={server.url!r}, api_key="k")
print(client.messages.create(model="m", max_tokens=5, messages=[]).content[0].text)
"""
    server.script(faults.status(529), faults.ok())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Hello from the fake Anthropic server."
    assert len(server.requests) == 2
    assert "HTTP 529" in out.stderr  # the retry was announced on the sdkguard logger


def test_disabled_guard_leaves_the_sdk_alone(server: FakeAnthropic, guard: None) -> None:
    server.script(faults.status(529), faults.status(529), faults.ok())
    with (
        sdkguard.policy(enabled=False),
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0) as client,
        pytest.raises(OverloadedError),
    ):
        client.messages.create(**MESSAGE_ARGS)
    assert len(server.requests) == 1


def test_sdk_retries_are_off_for_guarded_calls(server: FakeAnthropic, guard: None) -> None:
    # The client asks for 2 retries; sdkguard owns the loop: 3 attempts, not 3 x 3.
    server.script(*[faults.status(529)] * 20)
    with (
        sdkguard.policy(max_attempts=3),
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=2) as client,
        pytest.raises(OverloadedError),
    ):
        client.messages.create(**MESSAGE_ARGS)
    assert len(server.requests) == 3


# -- coverage -------------------------------------------------------------------------------


def test_count_tokens_beta_and_raw_responses_are_guarded(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.status(529), faults.ok())
    counted = client.messages.count_tokens(model="m", messages=MESSAGE_ARGS["messages"])
    assert counted.input_tokens > 0
    server.script(faults.reset_before_headers(), faults.ok())
    beta = client.beta.messages.create(**MESSAGE_ARGS)
    assert beta.content[0].text == "Hello from the fake Anthropic server."
    server.script(faults.status(503), faults.ok())
    raw = client.messages.with_raw_response.create(**MESSAGE_ARGS)
    assert raw.parse().content[0].text == "Hello from the fake Anthropic server."
    server.script(faults.reset_after(2), faults.ok())
    with client.beta.messages.stream(**MESSAGE_ARGS) as stream:
        assert stream.get_final_text() == "Hello from the fake Anthropic server."
    assert len(server.requests) == 8


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_raw_response_stream_that_is_parsed_restarts_before_content(
    server: FakeAnthropic, guard: None, flavour: str
) -> None:
    # As langchain-anthropic streams: `with_raw_response.create(stream=True)`, then `parse()`.
    server.script(faults.reset_after(2), faults.sse_error_after(3), faults.ok())
    args = {**MESSAGE_ARGS, "stream": True}
    if flavour == "sync":
        with anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client:
            raw = client.messages.with_raw_response.create(**args)
            events = [(e.type, e.to_dict()) for e in raw.parse()]
    else:

        async def read() -> list[tuple[str, Any]]:
            async with anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY) as client:
                raw = await client.messages.with_raw_response.create(**args)
                parsed = raw.parse()  # a coroutine from anthropic 2.0, a stream before
                stream = await parsed if inspect.isawaitable(parsed) else parsed
                return [(e.type, e.to_dict()) async for e in stream]

        events = anyio.run(read)
    assert_one_clean_message(Seen(events=events), server.sent[2])
    assert len(server.requests) == 3


def test_a_raw_response_stream_read_as_bytes_is_left_to_its_reader(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.reset_after(2), faults.ok())
    raw = client.messages.with_raw_response.create(**MESSAGE_ARGS, stream=True)
    with pytest.raises(http.ReadError):
        b"".join(raw.http_response.iter_bytes())
    assert len(server.requests) == 1


def test_text_stream_recovers_before_content(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.stall_after(2), faults.ok())
    with client.messages.stream(**MESSAGE_ARGS) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == server.sent[-1].text and len(server.requests) == 2
    assert_one_clean_message(Seen(message=final), server.sent[-1])


def test_until_done_recovers_after_content(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    reply = faults.ok(faults.text("x" * 50, deltas=10))
    server.script(faults.reset_after(8, reply=reply), reply)
    with client.messages.stream(**MESSAGE_ARGS) as stream:
        stream.until_done()
        final = stream.get_final_message()
    assert final.content[0].text == "x" * 50  # type: ignore[union-attr]
    assert len(server.requests) == 2


def test_partial_message_of_thinking_and_tool_use(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    reply = faults.ok(
        faults.thinking("let me think", deltas=3, signature="sig-1"),
        faults.tool_use("get_weather", {"city": "Paris", "unit": "c"}, deltas=4),
    )
    # 1 start, 2 block, 3 ping, 4-6 thinking, 7 signature, 8 stop, 9 tool block, 10-11 json
    server.script(faults.reset_after(11, reply=reply))
    with (
        pytest.raises(sdkguard.StreamInterrupted) as caught,
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        for _ in stream:
            pass
    partial = caught.value.partial_message
    thinking, tool = partial.content
    assert (thinking.thinking, thinking.signature) == ("let me think", "sig-1")
    assert tool.name == "get_weather" and isinstance(tool.input, dict)
    assert set(tool.input) <= {"city", "unit"}


# -- the SDK's own behaviours ------------------------------------------------------------------


def test_401_gets_the_clients_single_retry_with_a_token_cache(
    server: FakeAnthropic, guard: None
) -> None:
    credentials = pytest.importorskip("anthropic.lib.credentials")
    tokens = iter(["token-one", "token-two", "token-three"])

    def provider(*, force_refresh: bool = False) -> Any:
        return credentials.AccessToken(next(tokens))

    server.script(faults.status(401), faults.status(401), faults.ok())
    with (
        anthropic.Anthropic(base_url=server.url, credentials=provider) as client,
        pytest.raises(anthropic.AuthenticationError),
    ):
        client.messages.create(**MESSAGE_ARGS)
    assert len(server.requests) == 2  # exactly one retry, with a fresh token
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer token-one",
        "Bearer token-two",
    ]


def test_one_idempotency_key_and_counted_attempts(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.reset_before_headers(), faults.status(529), faults.ok())
    client.messages.create(**MESSAGE_ARGS)
    assert [r.headers["x-stainless-retry-count"] for r in server.requests] == ["0", "1", "2"]


def test_every_attempt_sends_the_first_attempts_idempotency_key(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    # Anthropic's own client sends no key; a client that names a header (a gateway's subclass)
    # gets one per call, the same on every attempt, as in the SDK's own retry loop.
    client._idempotency_header = "Idempotency-Key"
    server.script(faults.reset_before_headers(), faults.status(529), faults.ok())
    client.messages.create(**MESSAGE_ARGS)
    client.messages.create(**MESSAGE_ARGS)
    keys = [r.headers.get("idempotency-key") for r in server.requests]
    assert len(keys) == 4 and keys[0] and len(set(keys[:3])) == 1
    assert keys[3] != keys[0]  # a new call, a new key


# -- deadline, hooks ---------------------------------------------------------------------------


def test_deadline_cuts_a_silent_attempt_and_gives_up(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.stall_before_headers(), faults.ok())
    started = time.monotonic()
    with (
        sdkguard.policy(deadline=0.25, response_timeout=10.0),
        pytest.raises(sdkguard.StreamStalled) as caught,
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        list(stream)
    assert time.monotonic() - started < 5.0  # the deadline cut it, not the response timeout
    # Named for the deadline, not for the response limit it stood in for.
    assert caught.value.reason == "deadline" and caught.value.limit == 0.25
    assert "the call's deadline passed before the response began (deadline=0.25 s)" in str(
        caught.value
    )
    assert "response_timeout" not in str(caught.value)
    assert "deadline" in caught.value.__notes__[-1]
    assert len(server.requests) == 1


def test_deadline_cutting_a_silent_body_is_named(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.stall_after(1), faults.ok())  # message_start, then silence
    with (
        sdkguard.policy(deadline=0.3, idle_timeout=10.0),
        pytest.raises(sdkguard.StreamStalled) as caught,
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        list(stream)
    assert caught.value.reason == "deadline"
    assert "deadline passed during the answer (deadline=0.3 s)" in str(caught.value)
    assert "idle_timeout" not in str(caught.value)
    assert len(server.requests) == 1


def test_deadline_cutting_a_plain_call_raises_the_sdks_timeout_naming_it(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.stall_before_headers(), faults.ok())
    with (
        sdkguard.policy(deadline=0.3, stream_plain_calls=False),
        pytest.raises(anthropic.APITimeoutError) as caught,
    ):
        client.messages.create(**MESSAGE_ARGS)
    assert not isinstance(caught.value, sdkguard.StreamStalled)  # not a stream
    assert "the call's deadline passed before the response began (deadline=0.3 s)" in str(
        caught.value
    )
    assert len(server.requests) == 1


def test_a_short_wait_is_said_in_milliseconds(
    server: FakeAnthropic,
    guard: None,
    client: anthropic.Anthropic,
    records: pytest.LogCaptureFixture,
) -> None:
    server.script(faults.status(529), faults.ok())
    with sdkguard.policy(backoff_initial=0.04, backoff_max=1.0, jitter=0.0):
        client.messages.create(**MESSAGE_ARGS)
    (warning,) = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert warning.endswith("; retrying in 40 ms (attempt 2 of 5)"), warning


def test_a_failing_hook_is_logged_and_ignored(
    server: FakeAnthropic,
    guard: None,
    client: anthropic.Anthropic,
    records: pytest.LogCaptureFixture,
) -> None:
    events: list[sdkguard.RetryEvent] = []

    def broken(event: sdkguard.RetryEvent) -> None:
        raise RuntimeError("hook bug")

    server.script(faults.status(529), faults.ok())
    with sdkguard.policy(on_retry=(broken, events.append)):
        client.messages.create(**MESSAGE_ARGS)
    assert len(events) == 1
    event = events[0]
    assert (event.call, event.attempt, event.max_attempts, event.reason) == (
        "messages.create",
        2,
        5,
        "status_529",
    )
    assert isinstance(event.error, OverloadedError) and event.elapsed >= 0
    assert any("on_retry hook" in r.getMessage() for r in records.records)


# -- cancellation and hygiene -------------------------------------------------------------------


def _wait_closed(server: FakeAnthropic) -> None:
    deadline = time.monotonic() + 2
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.open_connections == 0


def test_break_and_close_is_not_retried(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.ok(faults.text("a" * 100, deltas=50)))
    with client.messages.create(**MESSAGE_ARGS, stream=True) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    assert len(server.requests) == 1
    _wait_closed(server)


def test_keyboard_interrupt_propagates_at_once(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.ok(faults.text("a" * 100, deltas=50)))
    with (
        pytest.raises(KeyboardInterrupt),
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        for event in stream:
            if event.type == "message_start":
                raise KeyboardInterrupt
    assert len(server.requests) == 1
    _wait_closed(server)


def test_task_cancellation_is_not_retried(server: FakeAnthropic, guard: None) -> None:
    server.script(faults.stall_after(2), faults.ok())

    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY) as client:
            with anyio.move_on_after(0.1) as scope:
                stream = await client.messages.create(**MESSAGE_ARGS, stream=True)
                async with stream:
                    async for _ in stream:
                        pass
            assert scope.cancelled_caught

    with sdkguard.policy(idle_timeout=5.0):
        anyio.run(main)
    assert len(server.requests) == 1
    _wait_closed(server)


def test_broken_connections_are_never_reused(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    client.messages.create(**MESSAGE_ARGS)  # warm the pool: one idle keep-alive connection
    server.script(faults.stall_after(2), faults.reset_after(1), faults.ok(), faults.ok())
    with client.messages.create(**MESSAGE_ARGS, stream=True) as stream:
        list(stream)
    client.messages.create(**MESSAGE_ARGS)
    connections = [r.connection for r in server.requests]
    stalled, reset, good, after = connections[1:]
    assert len({stalled, reset, good}) == 3, connections
    assert after == good  # a healthy connection is still reused


def test_dropped_stream_closes_its_connection(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.ok(faults.text("a" * 100, deltas=50)))
    stream = client.messages.create(**MESSAGE_ARGS, stream=True)
    next(iter(stream))
    del stream
    gc.collect()
    _wait_closed(server)


# -- secrets ------------------------------------------------------------------------------------


def test_no_key_header_or_content_in_logs_or_errors(
    server: FakeAnthropic,
    guard: None,
    client: anthropic.Anthropic,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sdkguard")
    server.script(*[faults.reset_after(2)] * 5)
    with (
        pytest.raises(anthropic.APIConnectionError) as caught,
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        list(stream)
    text = caplog.text + "\n".join(caught.value.__notes__) + str(caught.value)
    assert "sdkguard" in caplog.text
    for secret in (API_KEY, "secret prompt text", "Hello from"):
        assert secret not in text


def test_current_policy_outside_any_scope_is_the_installed_one(guard: None) -> None:
    assert current_policy().backoff_initial == FAST["backoff_initial"]


def test_log_lines_name_the_sdk_method(
    server: FakeAnthropic,
    guard: None,
    client: anthropic.Anthropic,
    records: pytest.LogCaptureFixture,
) -> None:
    server.script(*[faults.status(529), faults.ok()] * 6)
    client.beta.messages.create(**MESSAGE_ARGS)
    client.messages.count_tokens(model="m", messages=MESSAGE_ARGS["messages"])
    with client.messages.stream(**MESSAGE_ARGS) as stream:
        stream.get_final_message()
    with client.messages.create(**MESSAGE_ARGS, stream=True) as raw:
        list(raw)
    with client.beta.messages.stream(**MESSAGE_ARGS) as beta_stream:
        beta_stream.get_final_message()
    with client.beta.messages.create(**MESSAGE_ARGS, stream=True) as beta_raw:
        list(beta_raw)
    names = [r.getMessage().split(":")[0] for r in records.records]
    assert names == [
        "beta.messages.create",
        "messages.count_tokens",
        "messages.stream",
        "messages.create",
        "beta.messages.stream",
        "beta.messages.create",
    ]


def test_refused_connection_is_recognised_on_trio(server: FakeAnthropic, guard: None) -> None:
    reasons: list[str] = []

    def reopen(event: sdkguard.RetryEvent) -> None:
        reasons.append(event.reason)
        server.accept_connections()

    async def main() -> str:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY) as client:
            message = await client.messages.create(**MESSAGE_ARGS)
            return str(message.content[0].text)  # type: ignore[union-attr]

    server.refuse_connections()
    with sdkguard.policy(on_retry=reopen):
        text = anyio.run(main, backend="trio")
    assert reasons == ["connect_refused"] and text.startswith("Hello")


def test_a_retry_count_header_set_by_the_caller_wins(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.status(529), faults.ok(), faults.status(529), faults.ok())
    client.messages.create(**MESSAGE_ARGS, extra_headers={"x-stainless-retry-count": "42"})
    client.messages.create(
        **MESSAGE_ARGS, extra_headers={"x-stainless-retry-count": anthropic.Omit()}
    )
    counts = [r.headers.get("x-stainless-retry-count") for r in server.requests]
    assert counts == ["42", "42", None, None]


def test_raw_responses_know_their_retries(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.status(529), faults.reset_before_headers(), faults.ok())
    raw = client.messages.with_raw_response.create(**MESSAGE_ARGS)
    assert raw.retries_taken == 2


@pytest.mark.parametrize(("max_retries", "requests"), [(0, 1), (1, 2), (2, 5)])
def test_an_explicit_max_retries_is_the_callers_word(
    server: FakeAnthropic, guard: None, max_retries: int, requests: int
) -> None:
    # 2 is the SDK's default, indistinguishable from "not set": sdkguard's 5 attempts apply.
    server.script(*[faults.status(529)] * 6)
    with (
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=max_retries) as c,
        pytest.raises(OverloadedError),
    ):
        c.messages.create(**MESSAGE_ARGS)
    assert len(server.requests) == requests


def test_a_body_from_a_generator_is_sent_whole_on_every_attempt(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.status(529), faults.ok())
    messages = MESSAGE_ARGS["messages"]
    client.messages.create(
        model="m",
        max_tokens=5,
        messages=(m for m in messages),  # type: ignore[arg-type]
    )
    assert [r.body["messages"] for r in server.requests] == [messages, messages]


def test_giving_up_before_content_delivers_what_was_held_back(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.sse_error_after(2, error_type="invalid_request_error"))
    seen: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        seen.extend(event.type for event in stream)
    assert seen == ["message_start", "content_block_start"]  # as the SDK alone delivers them


def test_a_stream_closed_by_another_thread_is_not_retried(
    server: FakeAnthropic, guard: None, client: anthropic.Anthropic
) -> None:
    server.script(faults.stall_after(5), faults.ok())
    # Closing does not wake a read blocked on the socket: the guard's idle timeout does, and
    # finds the stream closed by the caller. It fires a second after the stall, long after the
    # close below even on a loaded machine (FAST's 0.3 s raced it: a late close was retried).
    with sdkguard.policy(idle_timeout=1.0):
        stream = client.messages.create(**MESSAGE_ARGS, stream=True)
    errors: list[BaseException] = []
    seen: list[str] = []

    def read() -> None:
        try:
            for event in stream:
                seen.append(event.type)
        except Exception as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()

    def reader_waits() -> bool:  # every event sent was read: the reader waits for more
        sent = server.sent[0] if server.sent else None
        return (
            sent is not None and len(sent.events) == 5 and len(seen) == len(sent.content_events())
        )

    deadline = time.monotonic() + 5
    while not reader_waits() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert reader_waits(), seen
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert len(server.requests) == 1
    assert errors and not isinstance(errors[0], sdkguard.StreamInterrupted)


def test_an_error_from_the_callers_event_hook_is_not_retried(
    server: FakeAnthropic, guard: None
) -> None:
    # The SDK wraps whatever sending raised into APIConnectionError: here the user's own code.
    def refuse(request: Any) -> None:
        raise ValueError("the caller's hook says no")

    http_client = anthropic.DefaultHttpxClient(event_hooks={"request": [refuse]})
    with (
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY, http_client=http_client) as c,
        pytest.raises(anthropic.APIConnectionError) as caught,
    ):
        c.messages.create(**MESSAGE_ARGS)
    assert isinstance(caught.value.__cause__, ValueError)
    assert not getattr(caught.value, "__notes__", None)  # one attempt: nothing to list
    assert server.requests == []


def test_a_closed_client_is_not_retried(
    server: FakeAnthropic, guard: None, records: pytest.LogCaptureFixture
) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key=API_KEY)
    client.close()
    events: list[sdkguard.RetryEvent] = []
    with (
        sdkguard.policy(on_retry=events.append),
        pytest.raises(anthropic.APIConnectionError) as caught,
    ):
        client.messages.create(**MESSAGE_ARGS)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert events == []  # not one wait
    assert not any("retrying" in r.getMessage() for r in records.records)
    assert not getattr(caught.value, "__notes__", None)  # one attempt: nothing to list
    assert server.requests == [] and server.connections_accepted == 0
