"""`resume` for the four ways of reading a call, sync and async: a plain `create()`, a raw
`create(stream=True)`, the stream helper iterated, and the stream helper's
`get_final_message()` alone. Whoever reads the message (the caller, the SDK's helper, or
sdkguard rebuilding a plain call's `Message`), a break after the commit point is continued,
and the caller gets the scripted message whole, its usage the sum billed. Real sockets, the
real SDK, the kit playing the model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import anyio
import pytest

import sdkguard
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic, faults
from tests.conftest import FAST
from tests.test_resume import ARGS, KINDS, check_events, expected, server_events

pytestmark = pytest.mark.timeout(60)

Events = list[tuple[str, dict[str, Any]]]
# For the tests with no silence among their faults: no stall a loaded machine could fake.
PATIENT = sdkguard.policy(idle_timeout=10.0, progress_timeout=10.0)
Read = Callable[[anthropic.Anthropic], tuple[Any, Events | None]]
ReadAsync = Callable[[anthropic.AsyncAnthropic], Awaitable[tuple[Any, Events | None]]]


@pytest.fixture(autouse=True)
def resume(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(__import__("os").environ):
        if name.startswith("SDKGUARD_"):
            monkeypatch.delenv(name)
    BUDGET.reset()
    # A stall costs idle_timeout: short, and no wait before the next attempt. A healthy
    # stream that a loaded machine pauses that long is retried too, so the checks below
    # allow more attempts than the fault's one.
    fast = {**FAST, "idle_timeout": 0.1, "backoff_initial": 0, "backoff_max": 0}
    sdkguard.install(**fast, resume=True, progress_timeout=0.1)
    try:
        yield
    finally:
        sdkguard.uninstall()


# -- the four ways, each giving the final message and the events the caller read (if any) --


def plain(client: anthropic.Anthropic) -> tuple[Any, Events | None]:
    return client.messages.create(**ARGS), None


def raw_stream(client: anthropic.Anthropic) -> tuple[Any, Events | None]:
    with client.messages.create(**ARGS, stream=True) as stream:
        events = [(event.type, event.to_dict()) for event in stream]
    return None, events


def helper_iterated(client: anthropic.Anthropic) -> tuple[Any, Events | None]:
    with client.messages.stream(**ARGS) as helper:
        for _ in helper:
            pass
        return helper.get_final_message(), None


def final_message(client: anthropic.Anthropic) -> tuple[Any, Events | None]:
    with client.messages.stream(**ARGS) as helper:
        return helper.get_final_message(), None


async def plain_async(client: anthropic.AsyncAnthropic) -> tuple[Any, Events | None]:
    return await client.messages.create(**ARGS), None


async def raw_stream_async(client: anthropic.AsyncAnthropic) -> tuple[Any, Events | None]:
    async with await client.messages.create(**ARGS, stream=True) as stream:
        events = [(event.type, event.to_dict()) async for event in stream]
    return None, events


async def helper_iterated_async(client: anthropic.AsyncAnthropic) -> tuple[Any, Events | None]:
    async with client.messages.stream(**ARGS) as helper:
        async for _ in helper:
            pass
        return await helper.get_final_message(), None


async def final_message_async(client: anthropic.AsyncAnthropic) -> tuple[Any, Events | None]:
    async with client.messages.stream(**ARGS) as helper:
        return await helper.get_final_message(), None


WAYS: dict[str, tuple[Read, ReadAsync]] = {
    "create": (plain, plain_async),
    "create_stream": (raw_stream, raw_stream_async),
    "stream_iterated": (helper_iterated, helper_iterated_async),
    "get_final_message": (final_message, final_message_async),
}


def read(way: str, flavour: str, server: FakeAnthropic) -> tuple[Any, Events | None]:
    read_sync, read_async = WAYS[way]
    if flavour == "sync":
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            return read_sync(client)

    async def run() -> tuple[Any, Events | None]:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key="k") as client:
            return await read_async(client)

    return anyio.run(run)


def check(result: tuple[Any, Events | None], content: list[dict[str, Any]]) -> None:
    message, events = result
    if events is not None:
        check_events(events, content)
    else:
        # no null fields: the stream helper of SDK releases before 1.0 sets citations=None
        blocks = [block.to_dict(exclude_none=True) for block in message.content]
        assert blocks == [{k: v for k, v in block.items() if v is not None} for block in content]


def positions(reply: faults.Ok) -> list[int]:
    """Where to cut the first answer: after its first delta, inside each block, at each block
    boundary, and right before `message_delta`."""
    names = [event[0] for event in server_events(reply)]
    first_delta = names.index("content_block_delta")
    cuts = {first_delta + 1, len(names) - 2}
    for i, name in enumerate(names):
        if name in ("content_block_start", "content_block_stop") and i > first_delta:
            cuts.update({i, i + 1})
    return sorted(cut for cut in cuts if first_delta < cut < len(names) - 1)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("way", list(WAYS))
def test_a_break_after_content_is_continued_whichever_way_the_call_is_read(
    way: str, flavour: str, kind: str
) -> None:
    reply = faults.continuable(KINDS[kind], repeat_words=1)
    content = expected(KINDS[kind])
    continued: list[int] = []
    cuts = positions(reply)
    with FakeAnthropic() as server:
        server.default(reply)
        for n in cuts:
            for fault in (faults.reset_after(n, reply=reply), faults.stall_after(n, reply=reply)):
                before = len(server.requests)
                server.script(fault)
                check(read(way, flavour, server), content)
                sent = server.requests[before:]
                assert len(sent) >= 2, (n, fault)
                # a continuation carries the delivered part back (a cut inside a block held
                # back, thinking here, starts the message again: nothing of it was delivered)
                if any(r.body["messages"][-1]["role"] == "assistant" for r in sent[1:]):
                    continued.append(n)
    assert continued.count(cuts[-1]) == 2  # right before `message_delta`: always continued
    if kind == "text":
        assert continued == [n for n in cuts for _ in range(2)]


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("way", ["create", "get_final_message"])
def test_usage_of_a_continued_call_read_whole_is_the_sum_billed(way: str, flavour: str) -> None:
    reply = faults.continuable(KINDS["text"])
    with FakeAnthropic() as server, PATIENT:
        server.script(faults.reset_after(6, reply=reply))
        server.default(reply)
        message, _ = read(way, flavour, server)
        delivered = server.requests[1].body["messages"][-1]["content"][0]["text"]
        rest_deltas = sum(1 for name, _ in server.sent[1].events if name == "content_block_delta")
    assert message.usage.input_tokens == 10 + 10
    assert message.usage.output_tokens == -(-len(delivered) // 4) + rest_deltas


FORCED_TOOL = {
    "tool_choice": {"type": "any"},
    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
}


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("way", ["create", "get_final_message"])
def test_a_call_read_whole_that_cannot_be_continued_starts_again(way: str, flavour: str) -> None:
    """Nothing reached the caller, so a message that is not continued (a forced tool here) is
    sent again whole, as without `resume`, instead of raising."""
    reply = faults.continuable(KINDS["text"])

    def forced(client: anthropic.Anthropic) -> tuple[Any, Events | None]:
        if way == "create":
            return client.messages.create(**ARGS, **FORCED_TOOL), None  # type: ignore[call-overload]
        with client.messages.stream(**ARGS, **FORCED_TOOL) as helper:  # type: ignore[arg-type]
            return helper.get_final_message(), None

    async def forced_async(client: anthropic.AsyncAnthropic) -> tuple[Any, Events | None]:
        if way == "create":
            return await client.messages.create(**ARGS, **FORCED_TOOL), None  # type: ignore[call-overload]
        async with client.messages.stream(**ARGS, **FORCED_TOOL) as helper:  # type: ignore[arg-type]
            return await helper.get_final_message(), None

    with FakeAnthropic() as server, PATIENT:
        server.script(faults.reset_after(6, reply=reply))
        server.default(reply)
        if flavour == "sync":
            with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
                message, _ = forced(client)
        else:

            async def run() -> tuple[Any, Events | None]:
                async with anthropic.AsyncAnthropic(base_url=server.url, api_key="k") as client:
                    return await forced_async(client)

            message, _ = anyio.run(run)
        bodies = [request.body for request in server.requests]
    check((message, None), expected(KINDS["text"]))
    assert len(bodies) == 2
    assert bodies[1]["messages"] == bodies[0]["messages"]  # the original request, again


@pytest.mark.parametrize("resume_on", [True, False])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_body_cut_right_after_message_delta_still_ends_with_message_stop(
    flavour: str, resume_on: bool
) -> None:
    """The message is whole at `message_delta`: nothing is retried, and the caller reads the
    `message_stop` every message ends with, made by sdkguard."""
    reply = KINDS["tool_use"]
    names = [event[0] for event in server_events(reply)]
    after_delta = names.index("message_delta") + 1
    with FakeAnthropic() as server, PATIENT, sdkguard.policy(resume=resume_on):
        server.script(faults.reset_after(after_delta, reply=reply))
        _, events = read("create_stream", flavour, server)
        assert len(server.requests) == 1
    assert events is not None
    check_events(events, expected(reply))
