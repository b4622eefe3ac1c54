"""The stream protocol fed raw SSE events, as the proxy's relay feeds it.

The events are the fake server's own wire bytes for an answer, and the message the protocol
rebuilds from them is compared with the server's non-streaming JSON for the same answer: the
two forms of one answer must agree field for field. (The SDK's drivers feed it SDK events;
the guard's tests cover that path end to end.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdkguard._protocol import COMMIT_EVENTS, StreamProtocol, sse_data, sse_event_name
from sdkguard.testing import faults
from sdkguard.testing._sse import dumps, message_body, stream_events

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]

ANSWERS = {
    "text": faults.ok(faults.text("The quick brown fox jumps over the lazy dog.", deltas=9)),
    "thinking": faults.ok(
        faults.thinking("Let me think about it.", signature="sig-123", deltas=3),
        faults.text("Done thinking.", deltas=2),
    ),
    "tool_use": faults.ok(
        faults.text("Calling a tool.", deltas=2),
        faults.tool_use("lookup", {"city": "Paris", "days": [1, 2, 3]}, id="toolu_1", deltas=4),
    ),
}


def raw_events(answer: faults.Ok, *, ending: bytes = b"\n") -> list[bytes]:
    """The answer's SSE events as the wire carries them, one bytes object each."""
    return [
        b"event: " + name.encode() + ending + b"data: " + dumps(data) + ending + ending
        for name, data, _ in stream_events(answer, message_id="msg_1", model="claude-test")
    ]


def relay(protocol: StreamProtocol, events: list[bytes]) -> list[bytes]:
    """What a relay delivers: events held until the commit point, then each as it comes."""
    delivered: list[bytes] = []
    for event in events:
        if not protocol.committed:
            released = protocol.hold(sse_event_name(event) or "", event)
            if released is not None:
                delivered.extend(released)
        else:
            protocol.record_raw(event)
            delivered.append(event)
    return delivered


@pytest.mark.parametrize("name", sorted(ANSWERS))
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_the_message_rebuilt_from_raw_events_is_the_json_answer(name: str, ending: bytes) -> None:
    answer = ANSWERS[name]
    protocol = StreamProtocol(raw=True)
    events = raw_events(answer, ending=ending)
    assert relay(protocol, events) == events  # relayed exactly as received, in order
    assert protocol.complete
    expected = json.loads(message_body(answer, message_id="msg_1", model="claude-test"))
    assert protocol.message_data() == expected
    assert protocol.partial_message() == expected  # raw events: the JSON data itself


def test_events_are_held_until_the_first_content_event_then_released_together() -> None:
    protocol = StreamProtocol(raw=True)
    events = raw_events(ANSWERS["text"])
    names = [sse_event_name(e) for e in events]
    first_content = next(i for i, n in enumerate(names) if n in COMMIT_EVENTS)
    for event in events[:first_content]:
        assert protocol.hold(sse_event_name(event) or "", event) is None
    assert not protocol.committed
    released = protocol.hold("content_block_delta", events[first_content])
    assert released == events[: first_content + 1]
    assert protocol.committed


def test_a_restart_forgets_the_attempt() -> None:
    protocol = StreamProtocol(raw=True)
    relay(protocol, raw_events(ANSWERS["text"])[:5])
    assert protocol.committed and protocol.message is not None
    protocol.restart()
    assert not protocol.committed and protocol.held == [] and protocol.message_data() is None


def test_the_message_is_whole_once_message_delta_came() -> None:
    protocol = StreamProtocol(raw=True)
    events = raw_events(ANSWERS["text"])
    delta_at = next(i for i, e in enumerate(events) if sse_event_name(e) == "message_delta")
    relay(protocol, events[:delta_at])
    assert not protocol.whole(api_error=False)
    relay(protocol, events[delta_at : delta_at + 1])
    assert protocol.whole(api_error=False)
    assert not protocol.whole(api_error=True)  # an `error` event is still the API's word


def test_without_content_kept_only_the_end_is_tracked() -> None:
    protocol = StreamProtocol(raw=True, keep_content=False)
    relay(protocol, raw_events(ANSWERS["tool_use"]))
    assert protocol.complete
    assert protocol.blocks == {} and protocol.message_delta is None


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0), name=st.sampled_from(sorted(ANSWERS)))
def test_a_stream_cut_anywhere_gives_a_prefix_of_the_message(cut: int, name: str) -> None:
    """The partial message of a stream cut after any event: each block a prefix of its whole
    self, no block the answer does not have."""
    answer = ANSWERS[name]
    events = raw_events(answer)
    protocol = StreamProtocol(raw=True)
    relay(protocol, events[: cut % (len(events) + 1)])
    whole = json.loads(message_body(answer, message_id="msg_1", model="claude-test"))
    partial: dict[str, Any] | None = protocol.message_data()
    if partial is None:
        return
    assert len(partial["content"]) <= len(whole["content"])
    for got, full in zip(partial["content"], whole["content"], strict=False):
        assert got["type"] == full["type"]
        for field in ("text", "thinking"):
            if field in full:
                assert full[field].startswith(got[field])


@pytest.mark.parametrize(
    ("event", "name", "data"),
    [
        (b"event: ping\ndata: {}\n\n", "ping", b"{}"),
        (b"event:ping\r\ndata:{}\r\n\r\n", "ping", b"{}"),
        (b"data: a\ndata: b\n\n", None, b"a\nb"),
        (b": comment\nevent: x\n\n", "x", None),
        (b"xevent: no\n\n", None, None),
    ],
)
def test_sse_fields(event: bytes, name: str | None, data: bytes | None) -> None:
    assert sse_event_name(event) == name
    assert sse_data(event) == data
