"""Malformed streams get the SDK's own behaviour under the guard: the events it hands on, or
the error it raises, never an error of the guard's own (a `KeyError` from its records)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from tests.conftest import FAST
from tests.helpers import API_KEY, MESSAGE_ARGS

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("guard")]

MESSAGE = {
    "id": "msg_hostile",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


def event(data: dict[str, Any]) -> str:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"


def delta(index: int, text: str) -> str:
    return event(
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": text},
        }
    )


START = event({"type": "message_start", "message": MESSAGE})
BLOCK_0 = event(
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
)
END = event(
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }
) + event({"type": "message_stop"})

# A text delta for a block that never started: the first content event (before the commit
# point), or after a block that did start (past it).
STREAMS = {
    "first-content-event": START + delta(0, "orphan") + END,
    "after-a-started-block": START
    + BLOCK_0
    + delta(0, "Hello")
    + delta(1, "orphan")
    + event({"type": "content_block_stop", "index": 0})
    + END,
}


def answer(body: str) -> faults.Status:
    """The stream as it is, under HTTP 200: the kit's `status` sends any body."""
    return faults.status(200, headers={"content-type": "text/event-stream"}, body=body)


def outcome(server: FakeAnthropic, flavour: str, mode: str) -> tuple[str, Any]:
    """What the consumer gets: the events it saw, or the type of the error it got."""
    args = {**MESSAGE_ARGS, "max_tokens": 64}
    try:
        if flavour == "sync":
            with anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client:
                if mode == "create_stream":
                    with client.messages.create(**args, stream=True) as stream:
                        return "events", [e.to_dict() for e in stream]
                with client.messages.stream(**args) as helper:
                    return "events", [e.type for e in helper]

        async def run() -> tuple[str, Any]:
            async with anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY) as client:
                if mode == "create_stream":
                    async with await client.messages.create(**args, stream=True) as stream:
                        return "events", [e.to_dict() async for e in stream]
                async with client.messages.stream(**args) as helper:
                    return "events", [e.type async for e in helper]

        return asyncio.run(run())
    except Exception as error:
        return "raised", type(error)


@pytest.mark.parametrize("stream", list(STREAMS.values()), ids=list(STREAMS))
@pytest.mark.parametrize("mode", ["create_stream", "stream_helper"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_delta_for_a_block_that_never_started_is_the_sdks_business(
    server: FakeAnthropic, flavour: str, mode: str, stream: str
) -> None:
    sdkguard.uninstall()
    server.script(answer(stream))
    plain = outcome(server, flavour, mode)
    sdkguard.install(**FAST)
    server.script(answer(stream))
    guarded = outcome(server, flavour, mode)
    assert guarded == plain
    assert guarded[1] is not KeyError
    if mode == "create_stream":  # a raw stream hands every event on, as sent
        assert plain[0] == "events"
    assert len(server.requests) == 2  # not retried: the answer is what it is
