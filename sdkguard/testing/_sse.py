"""Builds what the fake server sends: SSE events (parsed and on the wire) and JSON bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdkguard.testing._blocks import Block, Text, Thinking, ToolUse

if TYPE_CHECKING:
    from sdkguard.testing.faults import Ok

# name, parsed data, the event as one HTTP chunk
Event = tuple[str, dict[str, Any], bytes]

LAST_CHUNK = b"0\r\n\r\n"
MALFORMED_CHUNK_PAYLOAD = b"event: content_block_delta\ndata: {not json\n\n"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(data: Any) -> bytes:
    """JSON as the API writes it: compact, UTF-8."""
    return _ENCODER.encode(data).encode()


def http_chunk(payload: bytes) -> bytes:
    """`payload` as one chunk of a chunked transfer encoding."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def event(name: str, data: dict[str, Any]) -> Event:
    """An SSE event with its wire bytes."""
    payload = b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"
    return (name, data, http_chunk(payload))


PING_DATA: dict[str, Any] = {"type": "ping"}
PING: Event = event("ping", PING_DATA)
MALFORMED_CHUNK = http_chunk(MALFORMED_CHUNK_PAYLOAD)
# A text delta whose bytes are not UTF-8 (0xff never occurs in UTF-8).
INVALID_UTF8_CHUNK = http_chunk(
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"caf\xff\xfe"}}\n\n'
)


def with_line_ending(chunk: bytes, ending: bytes) -> bytes:
    """An event's HTTP chunk with its SSE lines ended by `ending` instead of `\\n`.

    JSON data never holds a raw line break, so every `\\n` of the payload ends a line.
    """
    if ending == b"\n":
        return chunk
    payload = chunk[chunk.index(b"\r\n") + 2 : -2]
    return http_chunk(payload.replace(b"\n", ending))


def proxy_page(code: int, reason: str) -> bytes:
    """The HTML error page of a proxy (nginx's words), as it answers when the API is unreachable."""
    title = f"{code} {reason}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


PORTAL_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head>\n"
    b"<body><h1>Welcome</h1><p>Accept the terms of use to continue.</p></body></html>\n"
)
"""What a captive portal answers in the API's place."""


def invalid_utf8_body(body: bytes) -> bytes:
    """A JSON message body with bytes that are not UTF-8 inside its `id` string."""
    at = body.index(b'"id":"') + len(b'"id":"')
    return body[:at] + b"\xff\xfe" + body[at:]


def split(s: str, parts: int) -> list[str]:
    """`s` in `parts` pieces whose lengths differ by at most one (the longer ones first)."""
    q, r = divmod(len(s), parts)
    out: list[str] = []
    start = 0
    for i in range(parts):
        end = start + q + (1 if i < r else 0)
        out.append(s[start:end])
        start = end
    return out


@dataclass(frozen=True)
class Plan:
    """Everything of an `Ok` reply that does not depend on the request, built once."""

    after_start: list[Event]  # every event after message_start, pings included
    content: list[dict[str, Any]]  # the blocks as a non-streaming Message carries them
    stop_reason: str
    start_usage: dict[str, int]
    usage: dict[str, int]


def _deltas(index: int, kind: str, key: str, pieces: list[str]) -> list[Event]:
    """`content_block_delta` events, one per piece.

    Formats the wire bytes from a template instead of encoding each event whole: a
    benchmark reply can hold tens of thousands of deltas. The result is byte for byte what
    `event()` makes.
    """
    prefix = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
        b'"delta":{"type":"%s","%s":' % (index, kind.encode(), key.encode())
    )
    encode = _ENCODER.encode
    out: list[Event] = []
    for piece in pieces:
        payload = prefix + encode(piece).encode() + b"}}\n\n"
        data = {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: piece}}
        out.append(("content_block_delta", data, b"%x\r\n%s\r\n" % (len(payload), payload)))
    return out


def _block_events(index: int, block: Block) -> tuple[dict[str, Any], dict[str, Any], list[Event]]:
    """(content_block_start block, final block, delta events) for one block."""
    if isinstance(block, Text):
        start: dict[str, Any] = {"type": "text", "text": ""}
        final: dict[str, Any] = {"type": "text", "text": block.text}
        deltas = _deltas(index, "text_delta", "text", split(block.text, block.deltas))
    elif isinstance(block, Thinking):
        start = {"type": "thinking", "thinking": "", "signature": ""}
        final = {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
        deltas = _deltas(index, "thinking_delta", "thinking", split(block.thinking, block.deltas))
        deltas.append(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": block.signature},
                },
            )
        )
    elif isinstance(block, ToolUse):
        start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        final = {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}
        pieces = split(json.dumps(dict(block.input), ensure_ascii=False), block.deltas)
        deltas = _deltas(index, "input_json_delta", "partial_json", pieces)
    else:
        raise TypeError(f"unknown content block {block!r}")
    return start, final, deltas


def _build_plan(ok: Ok) -> Plan:
    after_start: list[Event] = []
    content: list[dict[str, Any]] = []
    n_deltas = 0
    for index, block in enumerate(ok.blocks):
        start, final, deltas = _block_events(index, block)
        content.append(final)
        n_deltas += len(deltas)
        after_start.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        if index == 0 and ok.ping_after_start:
            after_start.append(PING)
        after_start.extend(deltas)
        after_start.append(
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        )
    stop_reason = ok.stop_reason or (
        "tool_use" if ok.blocks and isinstance(ok.blocks[-1], ToolUse) else "end_turn"
    )
    given = dict(ok.usage or {})
    usage = {
        "input_tokens": given.pop("input_tokens", 10),
        "cache_creation_input_tokens": given.pop("cache_creation_input_tokens", 0),
        "cache_read_input_tokens": given.pop("cache_read_input_tokens", 0),
        "output_tokens": given.pop("output_tokens", max(1, n_deltas)),
    }
    usage.update(given)
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    after_start.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        )
    )
    after_start.append(event("message_stop", {"type": "message_stop"}))
    return Plan(after_start, content, stop_reason, start_usage, usage)


def plan(ok: Ok) -> Plan:
    """The plan of `ok`, built on first use and kept on the answer (answers are reused)."""
    cached = ok.__dict__.get("_sdkguard_plan")
    if isinstance(cached, Plan):
        return cached
    built = _build_plan(ok)
    # Answers are frozen; the cache is not a field, so it is set past the frozen __setattr__.
    object.__setattr__(ok, "_sdkguard_plan", built)
    return built


def stream_events(ok: Ok, *, message_id: str, model: str) -> list[Event]:
    """Every event of the stream of `ok`, in the order the API sends them."""
    p = plan(ok)
    start = event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": dict(p.start_usage),
            },
        },
    )
    return [start, *p.after_start]


def message_body(ok: Ok, *, message_id: str, model: str) -> bytes:
    """The non-streaming JSON `Message` of `ok`."""
    p = plan(ok)
    return dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": p.content,
            "stop_reason": p.stop_reason,
            "stop_sequence": None,
            "usage": p.usage,
        }
    )


def error_data(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    """An error in the API's shape."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
