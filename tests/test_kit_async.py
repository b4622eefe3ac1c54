"""The test kit, async side: the same faults through `AsyncAnthropic`, on asyncio and trio."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import pytest

from sdkguard._sdk import http  # httpx2 from anthropic 1.0, httpx before
from sdkguard.testing import FakeAnthropic, SentResponse, faults
from tests.helpers import OverloadedError, as_the_sdk_hands_on

pytestmark = [pytest.mark.sdk_independent, pytest.mark.anyio, pytest.mark.timeout(10)]

KW: dict[str, Any] = {
    "model": "claude-kit",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def make_client(
    server: FakeAnthropic, read: float = 0.5, connect: float = 0.5
) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=server.url,
        api_key="test",
        max_retries=0,
        timeout=anthropic.Timeout(read, connect=connect),
    )


def done(server: FakeAnthropic, index: int = 0) -> SentResponse:
    sent = server.sent[index]
    sent.wait()
    return sent


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the cause chain, looking into exception groups too.

    trio reports a refused connection as an ExceptionGroup of ConnectionRefusedError (one per
    address tried) under an OSError.
    """
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if any(current is e for e in seen):
            continue
        if isinstance(current, kind):
            return True
        seen.append(current)
        todo.extend(getattr(current, "exceptions", ()))  # an exception group (py3.11+)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


async def read_stream(
    server: FakeAnthropic, read: float = 0.5
) -> tuple[list[tuple[str, dict[str, Any]]], BaseException | None]:
    """Events a raw-stream consumer saw (as data dicts), and the error that ended it, if any."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with make_client(server, read) as client:
        try:
            async with await client.messages.create(**KW, stream=True) as stream:
                async for event in stream:
                    seen.append((event.type, event.to_dict()))
        except Exception as e:
            return seen, e
    return seen, None


THINKING = "Let me think."
TOOL_INPUT = {"query": "weather", "limit": 3}
ALL_KINDS = (
    faults.thinking(THINKING, signature="sig-a", deltas=3),
    faults.text("Let me look that up.", deltas=4),
    faults.tool_use("search", TOOL_INPUT, id="toolu_a", deltas=3),
)


def check_all_kinds(message: Any) -> None:
    thinking, text, tool = message.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock)
    assert (thinking.thinking, thinking.signature) == (THINKING, "sig-a")
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Let me look that up."
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert (tool.id, tool.name, tool.input) == ("toolu_a", "search", TOOL_INPUT)
    assert message.stop_reason == "tool_use"
    assert message.model == "claude-kit"


async def test_ok_raw_stream_is_what_the_server_sent(fake: FakeAnthropic) -> None:
    fake.script(faults.ok(*ALL_KINDS))
    seen, error = await read_stream(fake)
    assert error is None
    assert seen == done(fake).content_events()
    assert done(fake).completed and seen[-1][0] == "message_stop"


async def test_ok_message_parses(fake: FakeAnthropic) -> None:
    fake.script(faults.ok(*ALL_KINDS))
    async with make_client(fake) as client:
        message = await client.messages.create(**KW)
    check_all_kinds(message)
    assert message.id == "msg_fake_1" and message._request_id == "req_fake_1"


async def test_ok_stream_helper_final_message(fake: FakeAnthropic) -> None:
    fake.script(faults.ok(*ALL_KINDS))
    async with make_client(fake) as client, client.messages.stream(**KW) as helper:
        message = await helper.get_final_message()
    check_all_kinds(message)


async def test_reset_before_headers(fake: FakeAnthropic) -> None:
    fake.script(faults.reset_before_headers())
    seen, error = await read_stream(fake)
    assert seen == []
    assert isinstance(error, anthropic.APIConnectionError)
    assert caused_by(error, ConnectionResetError)


async def test_reset_after_is_a_read_error_from_a_real_reset(fake: FakeAnthropic) -> None:
    fake.script(faults.reset_after(3))
    seen, error = await read_stream(fake)
    assert isinstance(error, http.ReadError)
    assert caused_by(error, ConnectionResetError)
    assert [n for n, _ in seen] == ["message_start", "content_block_start"]
    assert seen == done(fake).content_events()


async def test_stall_after_is_a_read_timeout(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_after(4))
    start = time.monotonic()
    seen, error = await read_stream(fake, read=0.3)
    assert isinstance(error, http.ReadTimeout)
    assert time.monotonic() - start >= 0.25
    assert len(seen) == 3 and seen == done(fake).content_events()


async def test_stall_before_headers_is_a_timeout(fake: FakeAnthropic) -> None:
    fake.script(faults.stall_before_headers())
    seen, error = await read_stream(fake, read=0.2)
    assert isinstance(error, anthropic.APITimeoutError)
    assert seen == []


async def test_pings_only_keep_a_short_read_timeout_from_firing(fake: FakeAnthropic) -> None:
    fake.script(faults.pings_only_after(4, interval=0.04, seconds=0.6))
    start = time.monotonic()
    seen, error = await read_stream(fake, read=0.3)
    assert error is None
    assert time.monotonic() - start >= 0.55
    assert seen[-1][0] == "message_stop"
    assert [n for n, _ in done(fake).events].count("ping") >= 10
    assert seen == done(fake).content_events()


async def test_status_529_is_overloaded_error(fake: FakeAnthropic) -> None:
    fake.script(faults.status(529, headers={"retry-after": "1"}))
    seen, error = await read_stream(fake)
    assert seen == []
    assert isinstance(error, OverloadedError)
    assert error.type == "overloaded_error" and error.request_id == "req_fake_1"
    assert error.response.headers["retry-after"] == "1"


async def test_sse_error_after_is_an_api_status_error_under_200(fake: FakeAnthropic) -> None:
    fake.script(faults.sse_error_after(3))
    seen, error = await read_stream(fake)
    assert isinstance(error, anthropic.APIStatusError)
    assert not isinstance(error, OverloadedError)
    assert (error.status_code, error.type) == (200, "overloaded_error")
    assert seen == done(fake).content_events()[:-1]


async def test_truncate_after_is_a_protocol_error(fake: FakeAnthropic) -> None:
    fake.script(faults.truncate_after(4))
    seen, error = await read_stream(fake)
    assert isinstance(error, http.RemoteProtocolError)
    assert len(seen) == 3


async def test_close_after_ends_without_message_stop(fake: FakeAnthropic) -> None:
    fake.script(faults.close_after(5))
    seen, error = await read_stream(fake)
    assert error is None
    assert len(seen) == 4 and "message_stop" not in [n for n, _ in seen]
    assert not done(fake).completed


async def test_malformed_after_is_a_json_error(fake: FakeAnthropic) -> None:
    fake.script(faults.malformed_after(3))
    seen, error = await read_stream(fake)
    assert isinstance(error, json.JSONDecodeError)
    assert len(seen) == 2


async def test_trickle(fake: FakeAnthropic) -> None:
    fake.script(faults.trickle(10_000, reply=faults.ok(faults.text("z" * 2000, deltas=3))))
    start = time.monotonic()
    seen, error = await read_stream(fake, read=1.0)
    assert error is None
    assert time.monotonic() - start >= 0.2
    assert seen == done(fake).content_events() and done(fake).text == "z" * 2000


async def test_refused_connection(fake: FakeAnthropic) -> None:
    with fake.refusing():
        seen, error = await read_stream(fake)
    assert isinstance(error, anthropic.APIConnectionError)
    assert caused_by(error, ConnectionRefusedError)
    assert seen == [] and fake.requests == []


async def test_keep_alive_and_a_new_connection_after_a_reset(fake: FakeAnthropic) -> None:
    fake.script(faults.ok(), faults.ok(), faults.reset_before_headers())
    async with make_client(fake) as client:
        await client.messages.create(**KW)
        await client.messages.create(**KW)
        with pytest.raises(anthropic.APIConnectionError):
            await client.messages.create(**KW)
        await client.messages.create(**KW)
    assert [r.connection for r in fake.requests] == [0, 0, 0, 1]


async def test_a_hundred_concurrent_streams(fake: FakeAnthropic) -> None:
    texts: list[str] = []

    # The SDK costs milliseconds per stream, so 100 here (see the sync test for 250
    # connections). Generous timeouts: on a busy machine one event loop running 100 tasks
    # can take more than half a second to come back to a connect the kernel has completed.
    async with make_client(fake, read=5.0, connect=5.0) as client:

        async def one() -> None:
            async with client.messages.stream(**KW) as helper:
                texts.append((await helper.get_final_message()).content[0].text)

        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(one)
    assert texts == [faults.DEFAULT_TEXT] * 100
    assert len(fake.requests) == 100
    assert fake.connections_accepted > 50  # concurrent streams each need a connection


async def test_hostile_answers(fake: FakeAnthropic) -> None:
    reply = faults.ok(faults.text("naïve → 日本", deltas=4))
    fake.script(
        faults.unknown_event_after(2),
        faults.invalid_utf8_after(3),
        faults.wrong_content_type(),
        faults.reset_at_byte(700),
        faults.fragmented(reply, list(range(1, 1200, 5)), line_ending="\r\n", pause=0),
        faults.huge_line(100_000),
    )
    seen, error = await read_stream(fake)
    assert done(fake).content_events()[2][0] == "future_event"
    assert error is None and seen == as_the_sdk_hands_on(done(fake).content_events())
    seen, error = await read_stream(fake)
    assert isinstance(error, UnicodeDecodeError) and seen == done(fake, 1).content_events()
    assert await read_stream(fake) == ([], None)  # an HTML page: no event, a silent end
    seen, error = await read_stream(fake)
    assert isinstance(error, http.ReadError) and caused_by(error, ConnectionResetError)
    assert seen == done(fake, 3).content_events() and seen
    seen, error = await read_stream(fake)
    assert error is None and done(fake, 4).completed and seen == done(fake, 4).content_events()
    seen, error = await read_stream(fake)
    assert error is None and done(fake, 5).completed and seen == done(fake, 5).content_events()


async def test_hostile_plain_answers(fake: FakeAnthropic) -> None:
    fake.script(faults.invalid_utf8_after(0), faults.proxy_error(), faults.wrong_content_type())
    async with make_client(fake) as client:
        with pytest.raises(UnicodeDecodeError):
            await client.messages.create(**KW)
        with pytest.raises(anthropic.InternalServerError) as proxy:
            await client.messages.create(**KW)
        assert proxy.value.status_code == 502 and "Bad Gateway" in str(proxy.value.body)
        assert isinstance(await client.messages.create(**KW), str)
