"""`resume`: fuzz where the break falls. The first answer of a continuable message is cut by a
TCP reset at any byte of the wire (inside a chunk-size line, an event, a UTF-8 character of
the text), sync and async, `create(stream=True)` iterated: the consumer reads one valid
message equal to the scripted one, continued when the cut fell after the commit point,
restarted cleanly before it. Real sockets, the real SDK, the kit playing the model."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdkguard
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic, faults
from tests.conftest import FAST
from tests.test_resume import ARGS, check_events, consume, expected

pytestmark = pytest.mark.timeout(60)

# Non-ASCII text, split so that deltas end inside words: a cut can fall inside a two-, three-
# or four-byte character of an event's JSON, and the delivered text ends mid-word.
TEXT = "Naïve café owners in Zürich → 日本の茶屋 serve crème brûlée 🍮 at noon. " * 2
KINDS: dict[str, faults.Ok] = {
    "text": faults.ok(faults.text(TEXT, deltas=7), message_id="msg_fuzz", model="claude-fuzz"),
    "thinking_tool_use": faults.ok(
        faults.thinking("Let me think it over, ça va.", signature="sig-f", deltas=3),
        faults.text(TEXT, deltas=5),
        faults.tool_use("get_weather", {"city": "Zürich", "days": [1, 2]}, id="toolu_f", deltas=3),
        message_id="msg_fuzz",
        model="claude-fuzz",
    ),
}
# The fast test policy, with limits of a few seconds: a loaded machine (pytest-xdist) must not
# turn a slow read into a stall. Resets need no short limit.
POLICY: dict[str, Any] = {
    **FAST,
    "connect_timeout": 5.0,
    "response_timeout": 5.0,
    "idle_timeout": 5.0,
    "resume": True,
}


@dataclass(frozen=True)
class Layout:
    """Where things are in the bytes of the first answer (from the status line)."""

    size: int
    body: int
    """The first byte of the body (after the headers' blank line)."""
    first_delta: int
    """The first byte of the first `content_block_delta` event."""
    committed: int
    """Past the first delta's chunk (its closing CRLF): every cut from here is after content."""
    complete: int
    """The end of the `message_delta` event's JSON: from here nothing is missing (the SDK
    parses an event whose data line ends with the body)."""
    multibyte: tuple[int, ...]
    """Offsets that fall inside a multi-byte UTF-8 character of an event."""


def raw_answer(url: str) -> bytes:
    """Every byte of the server's next answer to `ARGS` as a stream, off a raw socket."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps({**ARGS, "stream": True}).encode()
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # a persistent connection, as the SDK's: the headers of the answer are the same
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        sock.settimeout(10)
        while not data.endswith(b"\r\n0\r\n\r\n") and (more := sock.recv(1 << 20)):
            data += more
    return bytes(data)


def _chunk_end(raw: bytes, at: int) -> int:
    """The end of the HTTP chunk holding the event that ends at `at` (its "\\n\\n")."""
    return raw.index(b"\r\n", at) + 2


@cache
def layout(kind: str) -> Layout:
    with FakeAnthropic() as server:  # a fresh server: the first request, as in every example
        server.default(faults.continuable(KINDS[kind]))
        raw = raw_answer(server.url)
    body = raw.index(b"\r\n\r\n") + 4
    first_delta = raw.index(b"event: content_block_delta")
    message_delta = raw.index(b"event: message_delta")
    multibyte = tuple(
        i for i in range(body, len(raw)) if 0x80 <= raw[i] < 0xC0 and raw[i - 1] >= 0xC0
    )
    return Layout(
        size=len(raw),
        body=body,
        first_delta=first_delta,
        committed=_chunk_end(raw, raw.index(b"\n\n", first_delta) + 2),
        complete=raw.index(b"\n\n", message_delta),
        multibyte=multibyte,
    )


@pytest.fixture
def resume(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("SDKGUARD_"):
            monkeypatch.delenv(name)
    BUDGET.reset()
    sdkguard.install(**POLICY)
    try:
        yield
    finally:
        sdkguard.uninstall()


@cache
def content(kind: str) -> list[dict[str, Any]]:
    return expected(KINDS[kind])


def break_at(kind: str, flavour: str, offset: int) -> None:
    """Cut the first answer at `offset`: one whole message, continued or restarted."""
    reply = faults.continuable(KINDS[kind], repeat_words=offset % 3)
    where = layout(kind)
    with FakeAnthropic() as server:
        server.script(faults.reset_at_byte(offset, reply=reply))
        server.default(reply)
        events = consume(flavour, server)
        bodies = [r.body for r in server.requests]
    assert 1 <= len(bodies) <= 2, (offset, len(bodies))
    if len(bodies) == 1:  # nothing of the message was missing
        assert offset >= where.complete, offset
        if events[-1][0] == "message_delta":
            # a break after `message_delta` ends the stream as complete, without the
            # `message_stop` that never came (docs/streams.md)
            events.append(("message_stop", {"type": "message_stop"}))
    check_events(events, content(kind))
    if len(bodies) == 1:
        return
    continued = bodies[1]["messages"] != ARGS["messages"]
    if offset < where.first_delta:  # before the commit point: a clean restart
        assert not continued, offset
        assert bodies[1] == bodies[0]
    elif offset >= where.committed and offset < where.complete and kind == "text":
        # after content (thinking and tool_use blocks are held back: a cut inside them, where
        # nothing reached the consumer yet, may restart)
        assert continued, offset
    if continued:
        assert bodies[1]["messages"][: len(ARGS["messages"])] == ARGS["messages"]
        assert bodies[1]["messages"][len(ARGS["messages"])]["role"] == "assistant"
        assert bodies[1]["max_tokens"] < ARGS["max_tokens"]


def interesting(kind: str) -> list[int]:
    """The offsets every run tries: each side of the commit point, each byte of the first
    delta's chunk-size line, inside multi-byte characters, the end of the answer."""
    where = layout(kind)
    return sorted(
        {
            where.body,
            where.body + 1,
            *range(where.first_delta - 8, where.first_delta + 2),
            *range(where.committed - 4, where.committed + 4),
            *where.multibyte[:: max(1, len(where.multibyte) // 6)],
            where.complete - 1,
            where.complete,
            where.size - 1,
            where.size + 3,
        }
    )


KIND_FLAVOURS = [(k, f) for k in KINDS for f in ("sync", "async")]


@pytest.mark.usefixtures("resume")
@pytest.mark.parametrize(("kind", "flavour"), KIND_FLAVOURS)
def test_a_cut_at_the_boundaries_ends_in_the_scripted_message(kind: str, flavour: str) -> None:
    for offset in interesting(kind):
        break_at(kind, flavour, offset)


@pytest.mark.usefixtures("resume")
@pytest.mark.parametrize(("kind", "flavour"), KIND_FLAVOURS)
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_cut_at_any_byte_ends_in_the_scripted_message(
    kind: str, flavour: str, data: st.DataObject
) -> None:
    where = layout(kind)
    offset = data.draw(st.integers(where.body, where.size + 2), label="offset")
    break_at(kind, flavour, offset)
