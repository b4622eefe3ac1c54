"""`resume`: a stream broken after content is continued in the same stream, through the
library (sync and async, raw streams and the stream helper): the consumer reads one message,
the scripted one. Real sockets, the real SDK, the kit playing the model.

Every fault at every event position is a full product of about a thousand breaks: every
matrix cell runs a covering design of it (`covering`: every position, every fault at the
boundaries), and `make test` the rest too (marked `exhaustive`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import pytest

import sdkguard
from sdkguard import StreamInterrupted
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic, faults
from tests.conftest import FAST

pytestmark = pytest.mark.timeout(30)

LONG = "The quick brown fox jumps over the lazy dog, and the café is open. " * 3
KINDS: dict[str, faults.Ok] = {
    "text": faults.ok(faults.text(LONG, deltas=9)),
    "thinking": faults.ok(
        faults.thinking("Let me think it over.", signature="sig-t", deltas=3),
        faults.text(LONG, deltas=5),
    ),
    "tool_use": faults.ok(
        faults.text("Checking the weather, one moment.", deltas=4),
        faults.tool_use("get_weather", {"city": "Paris", "days": [1, 2]}, id="toolu_r", deltas=3),
    ),
}
ARGS: dict[str, Any] = {
    "model": "claude-resume",
    "max_tokens": 4096,
    "messages": [{"role": "user", "content": "hi"}],
}


FAULTS = (
    "reset",
    "truncate",
    "close",
    "stall",
    "pings_only",
    "overloaded",
    "api_error",
    "malformed",
)
FLAVOURS = ("sync", "async")
WORDS = (0, 2)
"""Words the continuation repeats of what was delivered (0: none, 2: an overlap to splice)."""


def after_content(n: int, reply: faults.Ok) -> list[faults.Answer]:
    """Every fault the kit has after `n` events (in the order of FAULTS), each breaking a
    first answer."""
    return [
        faults.reset_after(n, reply=reply),
        faults.truncate_after(n, reply=reply),
        faults.close_after(n, reply=reply),
        faults.stall_after(n, reply=reply),
        faults.pings_only_after(n, 0.02, reply=reply),
        faults.sse_error_after(n, "overloaded_error", reply=reply),
        faults.sse_error_after(n, "api_error", reply=reply),
        faults.malformed_after(n, reply=reply),
    ]


@pytest.fixture
def resume(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(__import__("os").environ):
        if name.startswith("SDKGUARD_"):
            monkeypatch.delenv(name)
    BUDGET.reset()
    sdkguard.install(**FAST, resume=True, progress_timeout=0.1)
    try:
        yield
    finally:
        sdkguard.uninstall()


def expected(reply: faults.Ok) -> list[dict[str, Any]]:
    """The scripted message's content, as the API's JSON has it."""
    with FakeAnthropic() as fake:
        fake.default(reply)
        with anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0) as client:
            message = client.messages.create(**ARGS)
    return [block.to_dict() for block in message.content]


def check_events(events: list[tuple[str, dict[str, Any]]], content: list[dict[str, Any]]) -> None:
    """The events form one valid message whose content is `content`."""
    kinds = [kind for kind, _ in events]
    assert kinds.count("message_start") == 1 and kinds[0] == "message_start"
    assert kinds.count("message_delta") == 1 and kinds[-2:] == ["message_delta", "message_stop"]
    blocks: dict[int, dict[str, Any]] = {}
    stopped: list[int] = []
    json_parts: dict[int, str] = {}
    for kind, data in events:
        if kind == "content_block_start":
            assert data["index"] == len(blocks) and not stopped[data["index"] :]
            blocks[data["index"]] = dict(data["content_block"])
        elif kind == "content_block_delta":
            index = data["index"]
            assert index in blocks and index not in stopped
            delta, block = data["delta"], blocks[index]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                json_parts[index] = json_parts.get(index, "") + delta["partial_json"]
        elif kind == "content_block_stop":
            assert data["index"] in blocks and data["index"] not in stopped
            stopped.append(data["index"])
    assert stopped == sorted(blocks)
    for index, text in json_parts.items():
        blocks[index]["input"] = json.loads(text)
    assert [blocks[i] for i in sorted(blocks)] == content


def read_events(client: anthropic.Anthropic) -> list[tuple[str, dict[str, Any]]]:
    with client.messages.create(**ARGS, stream=True) as stream:
        return [(event.type, event.to_dict()) for event in stream]


async def read_events_async(client: anthropic.AsyncAnthropic) -> list[tuple[str, dict[str, Any]]]:
    async with await client.messages.create(**ARGS, stream=True) as stream:
        return [(event.type, event.to_dict()) async for event in stream]


def positions(reply: faults.Ok) -> range:
    """How many events a fault can let through after content: from the first delta to all
    but message_delta and message_stop."""
    names = [event[0] for event in server_events(reply)]
    return range(names.index("content_block_delta") + 1, len(names) - 1)


def boundaries(reply: faults.Ok) -> list[int]:
    """The positions where a splice goes wrong first: after the first delta, mid-block, just
    before and just after the first block stops, after the next block starts, and just
    before message_delta."""
    names = [event[0] for event in server_events(reply)]
    first, stop = names.index("content_block_delta") + 1, names.index("content_block_stop")
    points = {first, (first + stop) // 2, stop, stop + 1, len(names) - 2}
    if names[stop + 1] == "content_block_start":
        points.add(stop + 2)
    return sorted(points)


def covering(reply: faults.Ok, flavour: str, words: int) -> list[tuple[int, int]]:
    """(position, index in FAULTS) of one kind, flavour and words, in every cell.

    Every position gets one fault, turning with flavour and words (their four runs give a
    position four faults); every boundary gets half the faults with words 0 and the other
    half with 2, so that each kind and flavour breaks every boundary with every fault.
    """
    half = WORDS.index(words)
    run = FLAVOURS.index(flavour) * len(WORDS) + half
    cases = {(n, (n + 3 * run) % len(FAULTS)) for n in positions(reply)}
    for b, n in enumerate(boundaries(reply)):
        cases |= {(n, i) for i in range(len(FAULTS)) if (i + b) % 2 == half}
    return sorted(cases)


def the_rest(reply: faults.Ok, flavour: str, words: int) -> list[tuple[int, int]]:
    """The full product of positions and faults, less `covering`'s cases."""
    every = {(n, i) for n in positions(reply) for i in range(len(FAULTS))}
    return sorted(every - set(covering(reply, flavour, words)))


def break_and_read(kind: str, flavour: str, words: int, cases: list[tuple[int, int]]) -> None:
    """Each case in turn breaks the first answer after content; the consumer must read the
    scripted message every time. One client for every case: a new one per case cost more
    than the case itself."""
    reply = faults.continuable(KINDS[kind], repeat_words=words)
    content = expected(KINDS[kind])
    # A stall costs idle_timeout, as pings cost progress_timeout; no wait before continuing.
    quick = sdkguard.policy(idle_timeout=0.1, backoff_initial=0, backoff_max=0)
    with FakeAnthropic() as server, quick:

        def arm(n: int, i: int) -> None:
            server.script(after_content(n, reply)[i])
            server.default(reply)

        def check(n: int, i: int, events: list[tuple[str, dict[str, Any]]]) -> None:
            try:
                check_events(events, content)
            except AssertionError as err:
                raise AssertionError(f"{FAULTS[i]} after {n} events: {err}") from err

        if flavour == "sync":
            with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
                for n, i in cases:
                    arm(n, i)
                    check(n, i, read_events(client))
            return

        async def run() -> None:
            async with anthropic.AsyncAnthropic(base_url=server.url, api_key="k") as client:
                for n, i in cases:
                    arm(n, i)
                    check(n, i, await read_events_async(client))

        anyio.run(run)


@pytest.mark.usefixtures("resume")
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("words", WORDS)
def test_every_fault_after_content_ends_in_the_scripted_message(
    kind: str, flavour: str, words: int
) -> None:
    reply = faults.continuable(KINDS[kind], repeat_words=words)
    break_and_read(kind, flavour, words, covering(reply, flavour, words))


@pytest.mark.exhaustive
@pytest.mark.usefixtures("resume")
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("words", WORDS)
def test_every_fault_at_every_position_ends_in_the_scripted_message(
    kind: str, flavour: str, words: int
) -> None:
    reply = faults.continuable(KINDS[kind], repeat_words=words)
    break_and_read(kind, flavour, words, the_rest(reply, flavour, words))


def test_the_covering_design_covers() -> None:
    """What the cells run: each run of a kind, flavour and words breaks every position, the
    four runs of a kind give each position four faults, the two runs of a kind and flavour
    break every boundary with every fault; with the exhaustive rest, the full product."""
    for kind in KINDS:
        reply = faults.continuable(KINDS[kind])
        every = range(len(FAULTS))
        product = {(n, i) for n in positions(reply) for i in every}
        assert len(boundaries(reply)) >= 4 and set(boundaries(reply)) <= set(positions(reply))
        runs = {(f, w): set(covering(reply, f, w)) for f in FLAVOURS for w in WORDS}
        for (flavour, words), cases in runs.items():
            assert {n for n, _ in cases} == set(positions(reply))
            rest = set(the_rest(reply, flavour, words))
            assert cases | rest == product and not cases & rest
        for flavour in FLAVOURS:
            both = runs[flavour, WORDS[0]] | runs[flavour, WORDS[1]]
            assert {(n, i) for n in boundaries(reply) for i in every} <= both
        for n in positions(reply):
            assert len({i for cases in runs.values() for m, i in cases if m == n}) >= 4


def server_events(reply: faults.Ok) -> list[Any]:
    from sdkguard.testing._sse import stream_events

    return stream_events(reply, message_id="m", model="x")


def consume(flavour: str, server: FakeAnthropic) -> list[tuple[str, dict[str, Any]]]:
    if flavour == "sync":
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            return read_events(client)

    async def run() -> list[tuple[str, dict[str, Any]]]:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key="k") as client:
            return await read_events_async(client)

    return anyio.run(run)


@pytest.mark.usefixtures("resume")
def test_the_stream_helper_and_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sdkguard")
    events: list[Any] = []
    reply = faults.continuable(KINDS["text"], repeat_words=1)
    with FakeAnthropic() as server:
        server.script(faults.reset_after(6, reply=reply), faults.truncate_after(5, reply=reply))
        server.default(reply)
        with (
            anthropic.Anthropic(base_url=server.url, api_key="k") as client,
            client.messages.stream(**ARGS) as helper,
        ):
            text = "".join(helper.text_stream)
            message = helper.get_final_message()
        assert text == LONG and message.content[0].text == LONG  # type: ignore[union-attr]
        bodies = [r.body for r in server.requests]
    assert len(bodies) == 3
    assert bodies[1]["messages"][-1]["role"] == "assistant"  # prefill first
    assert bodies[1]["max_tokens"] < ARGS["max_tokens"]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[0].startswith("messages.stream: continuing after connection reset")
    assert lines[0].endswith("(attempt 2 of 5)") and lines[1].endswith("(attempt 3 of 5)")
    del events


@pytest.mark.usefixtures("resume")
def test_a_model_refusing_prefill_gets_the_user_turn_and_is_remembered() -> None:
    reply = faults.continuable(KINDS["text"], repeat_words=2)
    hooks: list[Any] = []
    with FakeAnthropic() as server, sdkguard.policy(on_retry=hooks.append):
        server.refuse_prefill("claude-refuses")
        server.script(faults.reset_after(6, reply=reply))
        server.default(reply)
        args = {**ARGS, "model": "claude-refuses"}
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            with client.messages.create(**args, stream=True) as stream:
                events = [(e.type, e.to_dict()) for e in stream]
            check_events(events, expected(KINDS["text"]))
            faults_seen = [s.fault for s in server.sent]
            assert faults_seen == ["reset_after", "prefill_refused", "continuable"]
            assert server.requests[2].body["messages"][-1]["role"] == "user"
            # the next call sends no prefill to that model
            server.script(faults.reset_after(6, reply=reply))
            with client.messages.create(**args, stream=True) as stream:
                check_events([(e.type, e.to_dict()) for e in stream], expected(KINDS["text"]))
            assert [s.fault for s in server.sent][3:] == ["reset_after", "continuable"]
    assert [(h.attempt, h.continued, h.reason) for h in hooks] == [
        (2, True, "connection_reset"),
        (2, True, "connection_reset"),
    ]


@pytest.mark.usefixtures("resume")
def test_attempts_run_out_partial_message_holds_every_continuation() -> None:
    reply = faults.continuable(KINDS["text"])
    with FakeAnthropic() as server, sdkguard.policy(max_attempts=3):
        server.script(*(faults.reset_after(6, reply=reply) for _ in range(3)))
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            seen = ""
            with pytest.raises(StreamInterrupted) as caught:  # noqa: SIM117
                with client.messages.create(**ARGS, stream=True) as stream:
                    for event in stream:
                        if event.type == "content_block_delta":
                            seen += event.delta.text  # type: ignore[union-attr]
    partial = caught.value.partial_message
    assert partial is not None and partial.content[0].text == seen
    assert len(seen) > len(LONG) // 9 * 2  # three attempts' text
    assert LONG.startswith(seen)
    assert len(server.requests) == 3


@pytest.mark.usefixtures("resume")
def test_usage_is_the_sum_billed() -> None:
    reply = faults.continuable(KINDS["text"])
    with FakeAnthropic() as server:
        server.script(faults.reset_after(6, reply=reply))
        server.default(reply)
        with (
            anthropic.Anthropic(base_url=server.url, api_key="k") as client,
            client.messages.stream(**ARGS) as helper,
        ):
            for _ in helper:  # read as it comes: a break is continued
                pass
            message = helper.get_final_message()
        delivered = server.requests[1].body["messages"][-1]["content"][0]["text"]
        rest_deltas = sum(1 for name, _ in server.sent[1].events if name == "content_block_delta")
    assert message.usage.input_tokens == 10 + 10
    assert message.usage.output_tokens == -(-len(delivered) // 4) + rest_deltas


@pytest.mark.usefixtures("resume")
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
def test_requests_not_continued_raise_as_today(change: dict[str, Any]) -> None:
    reply = faults.continuable(KINDS["text"])
    with FakeAnthropic() as server:
        server.script(faults.reset_after(6, reply=reply))
        with (
            anthropic.Anthropic(base_url=server.url, api_key="k") as client,
            pytest.raises(StreamInterrupted) as caught,
            client.messages.create(**ARGS, **change, stream=True) as stream,
        ):
            for _ in stream:
                pass
        assert len(server.requests) == 1
    assert "not continued" in "\n".join(getattr(caught.value, "__notes__", []))
