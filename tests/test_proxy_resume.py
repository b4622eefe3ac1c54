"""sdkguard proxy with `resume` on (its default): a stream broken after content is continued in
the client's stream, with the plain anthropic SDK (sdkguard not installed), sync and async,
`create(stream=True)`, `messages.stream()` and non-streaming `create`. The client reads one
valid message, the scripted one; the upstream saw the continuation requests."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard import _continuation
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic, faults

pytest.importorskip("aiohttp")

from sdkguard.proxy import RunningProxy
from tests.test_proxy import SECRET_KEY, start_proxy
from tests.test_resume import KINDS, LONG, check_events, server_events

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(120)]

ARGS: dict[str, Any] = {
    "model": "claude-proxy-resume",
    "max_tokens": 4096,
    "messages": [{"role": "user", "content": "hi"}],
}
RESUME = {"resume": "on", "idle_timeout": "0.2", "progress_timeout": "0.2"}
# For the loops over faults: a stall and pings-only cost 0.1 s each, no wait before continuing.
QUICK_RESUME = {
    **RESUME,
    "idle_timeout": "0.1",
    "progress_timeout": "0.1",
    "backoff_initial": "0",
    "backoff_max": "0",
}


FAULTS = ("reset", "truncate", "close", "stall", "pings_only", "overloaded", "api_error")


def after_content(n: int, reply: faults.Ok) -> dict[str, faults.Answer]:
    """Every retryable fault of the kit after `n` events (by the names of FAULTS), each
    breaking a first answer."""
    return {
        "reset": faults.reset_after(n, reply=reply),
        "truncate": faults.truncate_after(n, reply=reply),
        "close": faults.close_after(n, reply=reply),
        "stall": faults.stall_after(n, reply=reply),
        "pings_only": faults.pings_only_after(n, 0.02, reply=reply),
        "overloaded": faults.sse_error_after(n, "overloaded_error", reply=reply),
        "api_error": faults.sse_error_after(n, "api_error", reply=reply),
    }


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    assert not sdkguard.is_installed(), "these clients must not be guarded by the library"
    BUDGET.reset()
    _continuation.PREFILL_REFUSED.clear()
    yield
    _continuation.PREFILL_REFUSED.clear()


@pytest.fixture
def proxy(server: FakeAnthropic) -> Iterator[RunningProxy]:
    with start_proxy(server.url, policy=RESUME) as running:
        yield running


def expected(reply: faults.Ok) -> dict[str, Any]:
    """The scripted message, as the API's JSON has it (no null fields: SDK releases before
    1.0 set `citations=None` on the blocks their stream helper builds)."""
    with FakeAnthropic() as fake:
        fake.default(reply)
        with anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0) as client:
            return client.messages.create(**ARGS).to_dict(exclude_none=True)


Read = tuple[list[tuple[str, dict[str, Any]]] | None, dict[str, Any]]


def sync_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=SECRET_KEY, max_retries=0)


def async_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=SECRET_KEY, max_retries=0)


def read_with(client: anthropic.Anthropic, mode: str, args: dict[str, Any]) -> Read:
    """The events (raw streams) and the final message, as the application got them."""
    if mode == "create_stream":
        with client.messages.create(**args, stream=True) as stream:
            events = [(event.type, event.to_dict()) for event in stream]
        return events, {}
    if mode == "stream_helper":
        with client.messages.stream(**args) as helper:
            for _ in helper:  # read as it comes
                pass
            return None, helper.get_final_message().to_dict(exclude_none=True)
    return None, client.messages.create(**args).to_dict(exclude_none=True)


async def read_with_async(
    client: anthropic.AsyncAnthropic, mode: str, args: dict[str, Any]
) -> Read:
    if mode == "create_stream":
        stream = await client.messages.create(**args, stream=True)
        events = [(event.type, event.to_dict()) async for event in stream]
        return events, {}
    if mode == "stream_helper":
        async with client.messages.stream(**args) as helper:
            async for _ in helper:
                pass
            return None, (await helper.get_final_message()).to_dict(exclude_none=True)
    return None, (await client.messages.create(**args)).to_dict(exclude_none=True)


def read_sync(url: str, mode: str, args: dict[str, Any]) -> Read:
    with sync_client(url) as client:
        return read_with(client, mode, args)


def read_async(url: str, mode: str, args: dict[str, Any]) -> Read:
    async def main() -> Read:
        async with async_client(url) as client:
            return await read_with_async(client, mode, args)

    return asyncio.run(main())


def check(read: Read, scripted: dict[str, Any]) -> None:
    events, message = read
    if events is not None:
        check_events(events, scripted["content"])
        return
    assert message["content"] == scripted["content"]
    assert message["stop_reason"] == scripted["stop_reason"]
    assert message["role"] == "assistant" and message["type"] == "message"


def check_requests(server: FakeAnthropic, start: int = 0, prefill: bool = True) -> list[Any]:
    """The first request (from `start`) is the client's; each later one continues it as
    documented. Returns the requests."""
    requests = server.requests[start:]
    first = requests[0].body
    for request in requests[1:]:
        body = request.body
        turns = body["messages"][len(first["messages"]) :]
        if not turns:  # nothing delivered yet (a thinking block held back): the request again
            assert {**body, "max_tokens": 0} == {**first, "max_tokens": 0}
            assert body["max_tokens"] <= first["max_tokens"]
            continue
        assert body["model"] == first["model"] and body["stream"] is True
        assert body["max_tokens"] < first["max_tokens"]
        assert body["messages"][0] == first["messages"][0]
        assert turns[0]["role"] == "assistant"
        if len(turns) == 2:
            assert turns[1] == {"role": "user", "content": _continuation.CONTINUE_PROMPT}
        else:
            assert prefill and len(turns) == 1
    return requests


def positions(reply: faults.Ok) -> list[int]:
    """Event positions after the commit point: the first, the middle, the last before the
    message_delta."""
    total = len(server_events(reply))
    return sorted({4, total // 2, total - 3})


# -- every kind, every fault, several positions, every way of reading --------------------------

Case = tuple[str, int, int, str]
"""How the client reads, the words a continuation repeats, the events before the fault, the
fault's name in `after_content`."""


def cases(kind: str) -> list[Case]:
    """Raw streams with every fault, the overlap spliced or not (repeated words 2, 0); the stream
    helper and plain `create` with a reset, a stall and an error event (1 word)."""
    found: list[Case] = []
    for words in (0, 2):
        reply = faults.continuable(KINDS[kind], repeat_words=words)
        found += [("create_stream", words, n, name) for n in positions(reply) for name in FAULTS]
    reply = faults.continuable(KINDS[kind], repeat_words=1)
    for mode in ("stream_helper", "create"):
        found += [
            (mode, 1, n, name)
            for n in positions(reply)
            for name in ("reset", "stall", "overloaded")
        ]
    return found


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_fault_after_content_is_continued_for_every_way_of_reading(
    server: FakeAnthropic, flavour: str, kind: str
) -> None:
    scripted = expected(KINDS[kind])

    def arm(case: Case) -> int:
        """Script the case's fault; the number of requests before it."""
        _, words, n, name = case
        reply = faults.continuable(KINDS[kind], repeat_words=words)
        server.script(after_content(n, reply)[name])
        server.default(reply)
        return len(server.requests)

    def verify(case: Case, start: int, got: Read) -> None:
        assert (got[0] is not None) == (case[0] == "create_stream"), case
        try:
            check(got, scripted)
        except AssertionError as err:
            raise AssertionError(f"{case}: {err}") from err
        assert len(check_requests(server, start)) >= 2, case

    # One client for every case: a new one per case cost more than the case itself.
    with start_proxy(server.url, policy=QUICK_RESUME) as proxy:
        if flavour == "sync":
            with sync_client(proxy.url) as client:
                for case in cases(kind):
                    start = arm(case)
                    verify(case, start, read_with(client, case[0], ARGS))
            return

        async def main() -> None:
            async with async_client(proxy.url) as client:
                for case in cases(kind):
                    start = arm(case)
                    verify(case, start, await read_with_async(client, case[0], ARGS))

        asyncio.run(main())


@pytest.mark.parametrize("mode", ["create_stream", "stream_helper", "create"])
def test_a_model_refusing_prefill_gets_the_user_turn_at_once(
    server: FakeAnthropic, proxy: RunningProxy, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sdkguard.proxy")
    reply = faults.continuable(KINDS["text"], repeat_words=2)
    args = {**ARGS, "model": "claude-refuses"}
    server.refuse_prefill("claude-refuses")
    server.script(faults.reset_after(6, reply=reply))
    server.default(reply)
    check(read_sync(proxy.url, mode, args), expected(KINDS["text"]))
    assert [s.fault for s in server.sent] == ["reset_after", "prefill_refused", "continuable"]
    assert server.requests[1].body["messages"][-1]["role"] == "assistant"
    assert server.requests[2].body["messages"][-1]["role"] == "user"
    check_requests(server)
    assert proxy.stats.continuations == 1 and proxy.stats.retries == 1  # the 400: no attempt
    # remembered: the next break sends the user turn first
    server.script(faults.truncate_after(5, reply=reply))
    check(read_sync(proxy.url, mode, args), expected(KINDS["text"]))
    assert [s.fault for s in server.sent][3:] == ["truncate_after", "continuable"]
    check_requests(server, 3, prefill=False)
    assert "claude-refuses refuses an assistant prefill" in caplog.text


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_on_a_model_refusing_prefill(
    server: FakeAnthropic, proxy: RunningProxy, kind: str
) -> None:
    reply = faults.continuable(KINDS[kind], repeat_words=1)
    scripted = expected(KINDS[kind])
    args = {**ARGS, "model": "claude-refuses"}
    server.refuse_prefill("claude-refuses")
    with sync_client(proxy.url) as client:
        for n in positions(reply):
            for name in ("reset", "api_error"):
                _continuation.PREFILL_REFUSED.clear()
                start = len(server.requests)
                server.script(after_content(n, reply)[name])
                server.default(reply)
                check(read_with(client, "create_stream", args), scripted)
                requests = check_requests(server, start)
                assert len(requests) >= 2, (n, name)
                assert requests[-1].body["messages"][-1]["role"] == "user" or len(requests) == 2


def test_the_log_line_the_attempts_and_the_summary(
    server: FakeAnthropic, proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sdkguard.proxy")
    reply = faults.continuable(KINDS["text"], repeat_words=1)
    server.script(faults.reset_after(6, reply=reply), faults.truncate_after(5, reply=reply))
    server.default(reply)
    events, _ = read_sync(proxy.url, "create_stream", ARGS)
    assert events is not None
    check_events(events, expected(KINDS["text"])["content"])
    assert len(server.requests) == 3
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[0].startswith("POST /v1/messages: continuing after connection reset")
    assert lines[0].endswith("(attempt 2 of 5)") and lines[1].endswith("(attempt 3 of 5)")
    assert proxy.stats.continuations == 2
    assert proxy.stats.summary().endswith("0 failures, 2 continuations")


def test_usage_is_the_sum_billed(server: FakeAnthropic, proxy: RunningProxy) -> None:
    reply = faults.continuable(KINDS["text"])
    server.script(faults.reset_after(6, reply=reply))
    server.default(reply)
    _, message = read_sync(proxy.url, "stream_helper", ARGS)
    delivered = server.requests[1].body["messages"][-1]["content"][0]["text"]
    rest_deltas = sum(1 for name, _ in server.sent[1].events if name == "content_block_delta")
    assert message["usage"]["input_tokens"] == 10 + 10
    assert message["usage"]["output_tokens"] == -(-len(delivered) // 4) + rest_deltas


def test_attempts_run_out_the_client_gets_the_error_event(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    reply = faults.continuable(KINDS["text"])
    server.script(
        faults.reset_after(6, reply=reply), *(faults.reset_after(3, reply=reply) for _ in range(4))
    )
    seen = ""
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        for event in stream:
            if event.type == "content_block_delta":
                seen += event.delta.text  # type: ignore[union-attr]
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"
    assert "not continued: all 5 attempts failed" in body["error"]["message"]
    assert len(server.requests) == 5 and LONG.startswith(seen) and len(seen) > len(LONG) // 3
    assert proxy.stats.failures == 1 and proxy.stats.continuations == 4


def test_continuations_end_at_the_calls_deadline(server: FakeAnthropic) -> None:
    reply = faults.continuable(KINDS["text"])
    policy = {**RESUME, "deadline": "0.8", "max_attempts": "50"}
    server.script(faults.reset_after(6, reply=reply))
    server.default(faults.stall_after(3, reply=reply))  # every continuation goes silent
    with (
        start_proxy(server.url, policy=policy) as proxy,
        anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"
    assert "deadline" in body["error"]["message"]
    assert 2 <= len(server.requests) < 10


@pytest.mark.parametrize(
    "change",
    [
        {
            "tool_choice": {"type": "any"},
            "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        },
        {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
    ],
)
def test_requests_not_continued_end_with_the_error_event(
    server: FakeAnthropic, proxy: RunningProxy, change: dict[str, Any]
) -> None:
    reply = faults.continuable(KINDS["text"])
    server.script(faults.reset_after(6, reply=reply))
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.create(**ARGS, **change, stream=True) as stream,
    ):
        list(stream)
    assert "not continued" in str(raised.value.body)
    assert len(server.requests) == 1


def test_a_continuation_answered_529_is_tried_again(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    reply = faults.continuable(KINDS["text"], repeat_words=1)
    server.script(
        faults.reset_after(6, reply=reply), faults.status(529, headers={"retry-after": "0"})
    )
    server.default(reply)
    events, _ = read_sync(proxy.url, "create_stream", ARGS)
    assert events is not None
    check_events(events, expected(KINDS["text"])["content"])
    assert len(check_requests(server)) == 3


def test_a_continuation_refused_otherwise_ends_with_the_error_event(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    reply = faults.continuable(KINDS["text"])
    server.script(faults.reset_after(6, reply=reply), faults.status(400, message="no"))
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    body = raised.value.body
    assert isinstance(body, dict) and "sdkguard proxy" in body["error"]["message"]
    assert len(server.requests) == 2 and proxy.stats.failures == 1


def test_the_apis_own_error_after_content_is_relayed(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    server.script(faults.sse_error_after(5, "invalid_request_error", "bad thing"))
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        list(stream)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["message"] == "bad thing"
    assert len(server.requests) == 1


def test_no_resume_keeps_the_error_event(server: FakeAnthropic) -> None:
    reply = faults.continuable(KINDS["text"])
    with start_proxy(server.url, policy={**RESUME, "resume": "off"}) as proxy:
        server.script(faults.reset_after(6, reply=reply))
        server.default(reply)
        with (
            anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as c,
            pytest.raises(anthropic.APIStatusError) as raised,
            c.messages.create(**ARGS, stream=True) as stream,
        ):
            list(stream)
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"
    assert len(server.requests) == 1


def test_a_fault_before_content_is_still_a_plain_restart(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    server.script(faults.reset_after(2), faults.ok())
    with (
        anthropic.Anthropic(base_url=proxy.url, api_key=SECRET_KEY, max_retries=0) as client,
        client.messages.create(**ARGS, stream=True) as stream,
    ):
        seen = [(e.type, e.to_dict()) for e in stream]
    assert seen == server.sent[1].content_events()  # byte for byte, as without resume
    assert server.requests[1].body == server.requests[0].body
    assert json.loads(server.requests[1].raw_body) == ARGS | {"stream": True}


# -- real clients (tests/realclients.py): a reset after content is invisible ----------------------


@pytest.mark.real_clients
@pytest.mark.timeout(600)
def test_ts_sdk_reads_one_whole_message_across_a_reset(
    server: FakeAnthropic, proxy: RunningProxy
) -> None:
    from tests import realclients

    reason = realclients.unavailable_reason()
    installed = None if reason else realclients.ensure_installed()
    if installed is None:
        pytest.skip(reason or "the real clients are not installed")
    reply = faults.continuable(KINDS["text"], repeat_words=2)
    server.script(faults.reset_after(6, reply=reply))
    server.default(reply)
    result = realclients.run_ts_client(
        proxy.url, "stream", 60.0, max_retries=0, install_dir=installed
    )
    assert result.ok, result.summary() + result.stderr[-2000:]
    assert result.text == LONG
    assert len(server.requests) == 2


@pytest.mark.real_clients
@pytest.mark.timeout(600)
def test_claude_code_reads_one_whole_answer_across_a_reset(server: FakeAnthropic) -> None:
    import shutil
    import sys
    from pathlib import Path

    from tests import realclients

    reason = realclients.unavailable_reason()
    installed = None if reason else realclients.ensure_installed()
    if installed is None:
        pytest.skip(reason or "the real clients are not installed")
    reply = faults.continuable(KINDS["text"], repeat_words=2)
    server.script(faults.reset_after(6, reply=reply))
    server.default(reply)
    command = Path(sys.executable).with_name("sdkguard")
    sdkguard_command = str(command) if command.exists() else shutil.which("sdkguard")
    assert sdkguard_command is not None
    # the real command with its defaults: resume is on
    wrapper = [sdkguard_command, "proxy", "--upstream", server.url, "--"]
    result = realclients.run_claude(
        None,
        "say hi",
        120.0,
        env={"CLAUDE_CODE_MAX_RETRIES": "0", "API_TIMEOUT_MS": "20000"},
        wrapper=wrapper,
        install_dir=installed,
    )
    assert result.ok, result.summary() + result.stderr[-2000:]
    assert result.text == LONG
    assert any(r.body["messages"][-1]["role"] == "assistant" for r in server.requests)


# -- the command line -------------------------------------------------------------------------

# The wrapped command reads the stream with urllib: importing the SDK took two of the three
# seconds of each case (tests/test_proxy_cli.py wraps the SDK itself).
COMMAND_CLIENT = """
import json, os, sys, urllib.request
request = urllib.request.Request(
    os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",  # the proxy
    data=json.dumps({**json.loads(sys.argv[1]), "stream": True}).encode(),
    headers={
        "x-api-key": os.environ["ANTHROPIC_API_KEY"],
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    },
)
text, error = "", None
with urllib.request.urlopen(request, timeout=30) as response:
    for line in response:
        if line.startswith(b"data:"):
            data = json.loads(line[5:])
            if data["type"] == "content_block_delta":
                text += data["delta"]["text"]
            elif data["type"] == "error":
                error = data
print(json.dumps({"error": error} if error else text))
"""


@pytest.mark.parametrize(
    ("options", "variable", "resumed"),
    [
        ([], None, True),
        (["--no-resume"], None, False),
        ([], "0", False),
        (["--resume"], "0", True),
    ],
)
def test_the_option_and_the_variable(
    server: FakeAnthropic, options: list[str], variable: str | None, resumed: bool
) -> None:
    import subprocess
    import sys

    from tests.test_proxy_cli import FAST_OPTIONS, command_env

    env = command_env()
    if variable is not None:
        env["SDKGUARD_RESUME"] = variable
    reply = faults.continuable(KINDS["text"])
    server.script(faults.reset_after(6, reply=reply))
    server.default(reply)
    result = subprocess.run(
        [sys.executable, "-m", "sdkguard", "proxy", "--upstream", server.url, *FAST_OPTIONS,
         *options, "--", sys.executable, "-c", COMMAND_CLIENT, json.dumps(ARGS)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    summary = result.stderr.splitlines()[-1]
    if resumed:
        assert got == LONG
        assert "0 failures, 1 continuation;" in summary, summary
    else:
        assert got["error"]["error"]["type"] == "overloaded_error"
        assert "1 failure, 0 continuations;" in summary, summary


# -- telemetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stream_helper", "create"])
def test_the_spans_of_a_continued_call(
    server: FakeAnthropic, proxy: RunningProxy, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from tests.test_proxy_telemetry import (
        Recorded,
        attrs,
        client_of,
        the_tree,
        use_global_providers,
    )

    scripted = expected(KINDS["text"])
    otel = Recorded()
    use_global_providers(monkeypatch, otel.tracer_provider, otel.meter_provider)
    try:
        reply = faults.continuable(KINDS["text"])
        server.script(faults.reset_after(6, reply=reply))
        server.default(reply)
        with client_of(proxy.url) as client:
            if mode == "create":
                message = client.messages.create(**ARGS).to_dict(exclude_none=True)
            else:
                with client.messages.stream(**ARGS) as helper:
                    for _ in helper:
                        pass
                    message = helper.get_final_message().to_dict(exclude_none=True)
        check((None, message), scripted)
        _, call, attempts = the_tree(otel)
        assert [attrs(a)["sdkguard.outcome"] for a in attempts] == ["continued", "success"]
        assert "error.type" not in attrs(call)
        assert attrs(call)["gen_ai.usage.input_tokens"] == 20  # both attempts' input
        assert attrs(call)["gen_ai.response.finish_reasons"] == ("end_turn",)
    finally:
        otel.tracer_provider.shutdown()
        otel.meter_provider.shutdown()


# -- the relay's event splitter -----------------------------------------------------------------


def test_events_are_split_in_one_pass_as_the_boundary_search_does() -> None:
    import random

    from sdkguard.proxy._relay import _events, _first_event_end

    def reference(buf: bytes) -> list[bytes]:
        events, start = [], 0
        while (end := _first_event_end(buf, start)) >= 0:
            events.append(buf[start:end])
            start = end
        return events

    rng = random.Random(15)
    for _ in range(5000):
        buf = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 40)))
        assert _events(buf) == reference(buf), buf
    event = b'event: ping\ndata: {"type": "ping"}\n\n'
    assert _events(event * 3 + b"event: pi") == [event] * 3
    crlf = event.replace(b"\n", b"\r\n")
    assert _events(crlf * 2) == [crlf] * 2
