"""Answers the fake server gives to Messages requests: content, complete replies and faults.

Every function here returns a frozen dataclass. Content functions (`text`, `thinking`,
`tool_use`) build blocks for `ok`; `ok` is a complete, correct reply; every other function
is a fault that reproduces something a real network or the real API does. Script answers
with `FakeAnthropic.script(...)`: each Messages request takes the next one.

"n events" always counts SSE events in the order the server writes them, pings included:
with the default reply, event 1 is `message_start`, 2 `content_block_start`, 3 `ping`, then
the deltas.

Hostile answers (`unknown_event_after`, `huge_line`, `invalid_utf8_after`, `proxy_error`,
`wrong_content_type`) reproduce what a changing API, a proxy or a corrupt transfer sends;
`reset_at_byte` and the `fragmented` wrapper act on the bytes of an answer, wherever they
fall (inside a header, a chunk-size line, a UTF-8 character or a line ending). `buffered`
passes a reply on late and whole, as a proxy that buffers whole answers does.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sdkguard import _wire
from sdkguard.testing._blocks import Block, Text, Thinking, ToolUse
from sdkguard.testing._sse import plan

__all__ = [
    "DEFAULT_TEXT",
    "VANISH_SUPPORTED",
    "Answer",
    "Block",
    "Buffered",
    "CloseAfter",
    "Continuable",
    "Fragmented",
    "HugeLine",
    "InvalidUtf8After",
    "MalformedAfter",
    "Ok",
    "PingsOnlyAfter",
    "ProxyError",
    "ResetAfter",
    "ResetAtByte",
    "ResetBeforeHeaders",
    "SseErrorAfter",
    "StallAfter",
    "StallBeforeHeaders",
    "Status",
    "Text",
    "Thinking",
    "ToolUse",
    "Trickle",
    "TruncateAfter",
    "UnknownEventAfter",
    "VanishAfter",
    "VanishBeforeHeaders",
    "WrongContentType",
    "buffered",
    "close_after",
    "continuable",
    "default_error_message",
    "default_error_type",
    "fragmented",
    "huge_line",
    "invalid_utf8_after",
    "malformed_after",
    "ok",
    "pings_only_after",
    "proxy_error",
    "reset_after",
    "reset_at_byte",
    "reset_before_headers",
    "sse_error_after",
    "stall_after",
    "stall_before_headers",
    "status",
    "status_for_error_type",
    "text",
    "thinking",
    "tool_use",
    "trickle",
    "truncate_after",
    "unknown_event_after",
    "vanish_after",
    "vanish_before_headers",
    "wrong_content_type",
]

DEFAULT_TEXT = "Hello from the fake Anthropic server."
"""The text of the default reply, `ok()`."""

VANISH_SUPPORTED = sys.platform.startswith("linux")
"""Whether this platform can make a peer vanish (`vanish_*` faults): Linux socket filters."""

_tool_ids = itertools.count(1)


def default_error_type(code: int) -> str:
    """The API's error type for an HTTP status (unlisted: `invalid_request_error`, `api_error`)."""
    return _wire.error_type_for_status(code)


def status_for_error_type(error_type: str) -> int:
    """The HTTP status the API uses for an error type (500 if unknown)."""
    return _wire.ERROR_STATUSES.get(error_type, 500)


def default_error_message(error_type: str) -> str:
    """A message like the API's for an error type."""
    known = _wire.ERROR_TYPES.get(error_type)
    return known.message if known is not None else "Error"


# --- content blocks -------------------------------------------------------------------------


def _check_deltas(deltas: int) -> None:
    if deltas < 1:
        raise ValueError(f"deltas must be at least 1, got {deltas}")


def text(text: str, *, deltas: int = 1) -> Text:
    """A text block split into `deltas` pieces as equal as possible.

    `deltas` may be large (tens of thousands) for benchmarks; pieces are empty when the text
    is shorter than `deltas`.
    """
    _check_deltas(deltas)
    return Text(text=text, deltas=deltas)


def thinking(thinking: str, *, signature: str = "sig", deltas: int = 1) -> Thinking:
    """A thinking block: `deltas` `thinking_delta` events, then a `signature_delta`."""
    _check_deltas(deltas)
    return Thinking(thinking=thinking, signature=signature, deltas=deltas)


def tool_use(
    name: str, input: Mapping[str, Any], *, id: str | None = None, deltas: int = 2
) -> ToolUse:
    """A tool_use block whose JSON input is streamed in `deltas` `input_json_delta` pieces.

    `id` defaults to a fresh `toolu_fake_<n>`.
    """
    _check_deltas(deltas)
    # Fail here, not inside the server thread, when the input cannot be sent as JSON.
    json.dumps(input)
    return ToolUse(
        name=name,
        input=dict(input),
        id=id if id is not None else f"toolu_fake_{next(_tool_ids)}",
        deltas=deltas,
    )


# --- answers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """Base of everything the server can be scripted to answer."""

    name: ClassVar[str] = "answer"


@dataclass(frozen=True)
class Ok(Answer):
    """A complete, correct reply: a JSON `Message`, or an SSE stream for `stream: true`."""

    blocks: tuple[Block, ...]
    model: str | None = None
    stop_reason: str | None = None
    usage: Mapping[str, int] | None = None
    ping_after_start: bool = True
    message_id: str | None = None
    stream: bool | None = None
    name: ClassVar[str] = "ok"


@dataclass(frozen=True)
class Continuable(Ok):
    """A reply that plays the model for continuation requests (see `continuable`)."""

    repeat_words: int = 0
    """How many of the delivered part's last words the rest repeats first (0: none)."""
    name: ClassVar[str] = "continuable"


@dataclass(frozen=True)
class ResetBeforeHeaders(Answer):
    """The request is read, then the connection is reset (TCP RST) before any byte is sent."""

    name: ClassVar[str] = "reset_before_headers"


@dataclass(frozen=True)
class StallBeforeHeaders(Answer):
    """The request is read, then nothing is sent for `seconds` (forever if None)."""

    seconds: float | None = None
    reply: Ok | None = None
    name: ClassVar[str] = "stall_before_headers"


@dataclass(frozen=True)
class ResetAfter(Answer):
    """`n` events, then a TCP RST."""

    n: int
    reply: Ok | None = None
    name: ClassVar[str] = "reset_after"


@dataclass(frozen=True)
class VanishBeforeHeaders(Answer):
    """The request is read, then the server's host vanishes: no FIN, RST or ACK ever again."""

    name: ClassVar[str] = "vanish_before_headers"


@dataclass(frozen=True)
class VanishAfter(Answer):
    """`n` events, then the server's host vanishes: no FIN, RST or ACK ever again."""

    n: int
    reply: Ok | None = None
    name: ClassVar[str] = "vanish_after"


@dataclass(frozen=True)
class StallAfter(Answer):
    """`n` events, then silence with the socket open for `seconds` (forever if None)."""

    n: int
    seconds: float | None = None
    reply: Ok | None = None
    name: ClassVar[str] = "stall_after"


@dataclass(frozen=True)
class PingsOnlyAfter(Answer):
    """`n` events, then only `ping` events every `interval` s, for `seconds` (forever if None)."""

    n: int
    interval: float
    seconds: float | None = None
    reply: Ok | None = None
    name: ClassVar[str] = "pings_only_after"


@dataclass(frozen=True)
class Trickle(Answer):
    """A correct reply sent at `bytes_per_second`, headers included."""

    bytes_per_second: float
    reply: Ok | None = None
    name: ClassVar[str] = "trickle"


@dataclass(frozen=True)
class Status(Answer):
    """Any HTTP status with any headers and a body (an error in the API's shape by default)."""

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    error_type: str | None = None
    message: str | None = None
    name: ClassVar[str] = "status"


@dataclass(frozen=True)
class SseErrorAfter(Answer):
    """`n` events, then `event: error` under HTTP 200, then a clean end of body."""

    n: int
    error_type: str = "overloaded_error"
    message: str | None = None
    reply: Ok | None = None
    name: ClassVar[str] = "sse_error_after"


@dataclass(frozen=True)
class TruncateAfter(Answer):
    """`n` events, then the connection closes inside the chunked body (no last chunk)."""

    n: int
    reply: Ok | None = None
    name: ClassVar[str] = "truncate_after"


@dataclass(frozen=True)
class CloseAfter(Answer):
    """`n` events, then a clean end of body with no `message_stop`."""

    n: int
    reply: Ok | None = None
    name: ClassVar[str] = "close_after"


@dataclass(frozen=True)
class MalformedAfter(Answer):
    """`n` events, then an event whose data is not valid JSON, then the end of body."""

    n: int
    reply: Ok | None = None
    name: ClassVar[str] = "malformed_after"


@dataclass(frozen=True)
class UnknownEventAfter(Answer):
    """`n` events, then an event of a type the SDK does not know, then the rest of the reply."""

    n: int
    event: str = "future_event"
    reply: Ok | None = None
    name: ClassVar[str] = "unknown_event_after"


@dataclass(frozen=True)
class HugeLine(Answer):
    """A correct reply whose first block is one `text_delta` of at least `size` bytes."""

    size: int
    reply: Ok | None = field(default=None, repr=False)
    """The reply as sent: the huge text block first, then the blocks of the given reply."""
    name: ClassVar[str] = "huge_line"


@dataclass(frozen=True)
class InvalidUtf8After(Answer):
    """`n` events, then an event whose bytes are not valid UTF-8, then the end of body."""

    n: int
    reply: Ok | None = None
    name: ClassVar[str] = "invalid_utf8_after"


@dataclass(frozen=True)
class ProxyError(Answer):
    """An HTML error page from a proxy in front of the API: status `code`, `text/html`."""

    code: int = 502
    name: ClassVar[str] = "proxy_error"


@dataclass(frozen=True)
class WrongContentType(Answer):
    """HTTP 200 with `content_type` and an HTML page instead of the API's answer."""

    content_type: str = "text/html; charset=utf-8"
    name: ClassVar[str] = "wrong_content_type"


@dataclass(frozen=True)
class ResetAtByte(Answer):
    """The first `offset` bytes of the answer (status line and headers included), then a RST."""

    offset: int
    reply: Ok | None = None
    name: ClassVar[str] = "reset_at_byte"


@dataclass(frozen=True)
class Buffered(Answer):
    """Nothing for `seconds` (forever if None), then the whole reply in one write."""

    seconds: float | None
    reply: Ok | None = None
    name: ClassVar[str] = "buffered"


@dataclass(frozen=True)
class Fragmented(Answer):
    """`answer`, its bytes written in pieces cut at the byte offsets `at`."""

    answer: Answer
    at: tuple[int, ...]
    line_ending: str = "\n"
    pause: float = 0.001
    name: ClassVar[str] = "fragmented"


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")


def _check_seconds(seconds: float | None) -> None:
    if seconds is not None and seconds < 0:
        raise ValueError(f"seconds must be None or at least 0, got {seconds}")


_DEFAULT_BLOCKS: tuple[Block, ...] = (Text(DEFAULT_TEXT, deltas=3),)


def ok(
    *blocks: Block,
    model: str | None = None,
    stop_reason: str | None = None,
    usage: Mapping[str, int] | None = None,
    ping_after_start: bool = True,
    message_id: str | None = None,
    stream: bool | None = None,
) -> Ok:
    """A complete reply with `blocks` (default: one text block in three deltas).

    `model` defaults to the request's model; `stop_reason` to `"tool_use"` when the last block
    is a tool_use, else `"end_turn"`; `usage` overrides `input_tokens`, `output_tokens`,
    `cache_creation_input_tokens`, `cache_read_input_tokens` (output defaults to the number
    of deltas). `message_id` defaults to a fresh `msg_fake_<n>` per response. `stream`
    answers as a stream (True) or as JSON (False) whatever the request asked, as a proxy or a
    mock that ignores `"stream"` does; None (the default) follows the request.
    """
    for block in blocks:
        if not isinstance(block, Block):
            raise TypeError(
                f"ok() takes content blocks (faults.text/thinking/tool_use), got {block!r}"
            )
    answer = Ok(
        blocks=blocks or _DEFAULT_BLOCKS,
        model=model,
        stop_reason=stop_reason,
        usage=dict(usage) if usage is not None else None,
        ping_after_start=ping_after_start,
        message_id=message_id,
        stream=stream,
    )
    # Build the wire bytes now, not while serving: a benchmark then times only the client.
    plan(answer)
    return answer


DEFAULT_OK = ok()
"""`ok()`, built once: what the server answers when nothing else was scripted."""


def continuable(message: Ok | None = None, *, repeat_words: int = 0) -> Continuable:
    """`message` (default `ok()`), answered as a model answers a request to continue it.

    A request that carries a delivered part of `message` as its last assistant turn (an
    assistant prefill: the conversation ends with it; or an assistant turn followed by a user
    turn that says "continue") gets the rest of `message`: a stream with its own
    `message_start`, the remaining text of the interrupted block, the following blocks,
    `message_delta` and `message_stop`. The delivered part is matched block by block against
    `message` (text blocks by prefix, the last one possibly cut inside a word); a request whose
    assistant turn is not a proper prefix of it gets all of `message`, as `ok` does.

    `repeat_words`: the rest first repeats the delivered part's last `repeat_words` words
    (the last one as far as it was delivered, complete in the rest), as a model asked to
    continue often does. A continuable works wherever an `ok()` reply does, so faults after
    content combine with it: `reset_after(7, reply=msg)` breaks the first answer, and a
    continuation request that takes `msg` (or `reset_after(3, reply=msg)`) gets the rest.
    Models that refuse a prefill are set on the server (`FakeAnthropic.refuse_prefill`).
    """
    base = message or DEFAULT_OK
    if isinstance(base, Continuable):
        raise TypeError("continuable() takes an ok() reply, not a continuable one")
    if repeat_words < 0:
        raise ValueError(f"repeat_words must be at least 0, got {repeat_words}")
    answer = Continuable(
        blocks=base.blocks,
        model=base.model,
        stop_reason=base.stop_reason,
        usage=base.usage,
        ping_after_start=base.ping_after_start,
        message_id=base.message_id,
        stream=base.stream,
        repeat_words=repeat_words,
    )
    plan(answer)
    return answer


def reset_before_headers() -> ResetBeforeHeaders:
    """Read the request, then reset the connection (TCP RST, SO_LINGER 0) without answering."""
    return ResetBeforeHeaders()


def stall_before_headers(
    seconds: float | None = None, *, reply: Ok | None = None
) -> StallBeforeHeaders:
    """Read the request, then send nothing with the socket open.

    Forever by default (until the client closes or the server stops); with `seconds`, the
    reply is sent normally afterwards.
    """
    _check_seconds(seconds)
    return StallBeforeHeaders(seconds=seconds, reply=reply)


def reset_after(n: int, *, reply: Ok | None = None) -> ResetAfter:
    """Send `n` events of the reply, then reset the connection (TCP RST)."""
    _check_n(n)
    return ResetAfter(n=n, reply=reply)


def _check_vanish() -> None:
    if not VANISH_SUPPORTED:
        raise NotImplementedError(
            "a vanishing peer needs Linux: the server drops its packets with a socket filter"
        )


def vanish_before_headers() -> VanishBeforeHeaders:
    """Read the request, then vanish: the server's kernel drops every packet of the connection.

    The client gets no FIN, no RST and no acknowledgement of anything it sends, as when the
    server's host loses power or a NAT forgets the connection: only TCP keepalive, a
    retransmission limit or a read timeout can notice. Linux only (`VANISH_SUPPORTED`).
    """
    _check_vanish()
    return VanishBeforeHeaders()


def vanish_after(n: int, *, reply: Ok | None = None) -> VanishAfter:
    """Send `n` events, then vanish (see `vanish_before_headers`). Linux only."""
    _check_n(n)
    _check_vanish()
    return VanishAfter(n=n, reply=reply)


def stall_after(n: int, seconds: float | None = None, *, reply: Ok | None = None) -> StallAfter:
    """Send `n` events, then nothing with the socket open.

    Forever by default; with `seconds`, the rest of the reply is sent normally afterwards.
    """
    _check_n(n)
    _check_seconds(seconds)
    return StallAfter(n=n, seconds=seconds, reply=reply)


def pings_only_after(
    n: int, interval: float, seconds: float | None = None, *, reply: Ok | None = None
) -> PingsOnlyAfter:
    """Send `n` events, then only `ping` events every `interval` seconds.

    Forever by default; with `seconds`, the rest of the reply is sent normally afterwards.
    """
    _check_n(n)
    _check_seconds(seconds)
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    return PingsOnlyAfter(n=n, interval=interval, seconds=seconds, reply=reply)


def trickle(bytes_per_second: float, *, reply: Ok | None = None) -> Trickle:
    """Send a correct reply slowly: `bytes_per_second`, status line and headers included."""
    if bytes_per_second <= 0:
        raise ValueError(f"bytes_per_second must be positive, got {bytes_per_second}")
    return Trickle(bytes_per_second=bytes_per_second, reply=reply)


def status(
    code: int,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    error_type: str | None = None,
    message: str | None = None,
) -> Status:
    """Answer with HTTP status `code`, extra `headers`, and `body`.

    `body` may be a JSON-able object, `str` or `bytes`. By default, for a status of 400 or
    more, it is an error in the API's shape, `{"type": "error", "error": {"type": ...,
    "message": ...}, "request_id": ...}`, whose type follows the status (529
    `overloaded_error`, 429 `rate_limit_error`, ...) unless `error_type` is given; below 400
    the body is empty. No `x-should-retry` header is sent unless given in `headers`.
    """
    if not 100 <= code <= 599:
        raise ValueError(f"code must be an HTTP status (100-599), got {code}")
    return Status(
        code=code,
        headers=dict(headers or {}),
        body=body,
        error_type=error_type,
        message=message,
    )


def sse_error_after(
    n: int,
    error_type: str = "overloaded_error",
    message: str | None = None,
    *,
    reply: Ok | None = None,
) -> SseErrorAfter:
    """Send `n` events, then `event: error` under HTTP 200 (as the API does), then end the body.

    A non-streaming request gets the error as an HTTP status instead (529 for
    `overloaded_error`, 500 `api_error`, 429 `rate_limit_error`, ...).
    """
    _check_n(n)
    return SseErrorAfter(n=n, error_type=error_type, message=message, reply=reply)


def truncate_after(n: int, *, reply: Ok | None = None) -> TruncateAfter:
    """Send `n` events, then close the connection inside the chunked body."""
    _check_n(n)
    return TruncateAfter(n=n, reply=reply)


def close_after(n: int, *, reply: Ok | None = None) -> CloseAfter:
    """Send `n` events, then end the body cleanly, without `message_stop`."""
    _check_n(n)
    return CloseAfter(n=n, reply=reply)


def malformed_after(n: int, *, reply: Ok | None = None) -> MalformedAfter:
    """Send `n` events, then an event whose data is not valid JSON, then end the body."""
    _check_n(n)
    return MalformedAfter(n=n, reply=reply)


def unknown_event_after(
    n: int, event: str = "future_event", *, reply: Ok | None = None
) -> UnknownEventAfter:
    """Send `n` events, then `event: EVENT` with `data: {"type": EVENT}`, then the rest.

    The API adds event types over time; a client must let one it does not know pass. The
    SDK hands it on as an event of that `type`, from raw streams and stream helpers alike,
    and leaves it out of the message it accumulates. A non-streaming request gets the reply
    unchanged.
    """
    _check_n(n)
    if not event or any(c in event for c in "\r\n"):
        raise ValueError(f"event must be a non-empty name on one line, got {event!r}")
    return UnknownEventAfter(n=n, event=event, reply=reply)


_HUGE_PATTERN = "The quick brown fox jumps over the lazy dog; \u00e9t\u00e9 \u2192 \u65e5\u672c. "


def huge_line(size: int = 10_000_000, *, reply: Ok | None = None) -> HugeLine:
    """A correct reply with a first text block sent as one `text_delta` of at least `size` bytes.

    On a stream that event's `data:` line is over `size` bytes long (10 MB by default); a
    non-streaming request gets the same message as one JSON body. The text mixes one-, two-
    and three-byte UTF-8 characters. The blocks of `reply` (default: `ok()`'s) follow it.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    repeats = -(-size // len(_HUGE_PATTERN.encode()))  # rounded up
    base = reply or DEFAULT_OK
    sent = ok(
        Text(_HUGE_PATTERN * repeats, deltas=1),
        *base.blocks,
        model=base.model,
        stop_reason=base.stop_reason,
        usage=base.usage,
        ping_after_start=base.ping_after_start,
        message_id=base.message_id,
    )
    return HugeLine(size=size, reply=sent)


def invalid_utf8_after(n: int, *, reply: Ok | None = None) -> InvalidUtf8After:
    """Send `n` events, then an event whose text holds bytes that are not UTF-8, then end the body.

    A non-streaming request gets a complete body (by its `content-length`) that is not UTF-8.
    """
    _check_n(n)
    return InvalidUtf8After(n=n, reply=reply)


def proxy_error(code: int = 502) -> ProxyError:
    """An HTML error page (`content-type: text/html`) with status `code`, as a proxy sends it.

    No `request-id` header and no JSON: the API never saw the request.
    """
    if not 400 <= code <= 599:
        raise ValueError(f"code must be an HTTP error status (400-599), got {code}")
    return ProxyError(code=code)


def wrong_content_type(content_type: str = "text/html; charset=utf-8") -> WrongContentType:
    """Answer HTTP 200 with `content_type` and an HTML page, not the API's answer.

    What a captive portal or a misconfigured proxy does; the same for streaming and
    non-streaming requests.
    """
    if not content_type or any(c in content_type for c in "\r\n"):
        raise ValueError(f"content_type must be a header value, got {content_type!r}")
    return WrongContentType(content_type=content_type)


def reset_at_byte(offset: int, *, reply: Ok | None = None) -> ResetAtByte:
    """Send the first `offset` bytes of the answer, then reset the connection (TCP RST).

    `offset` counts from the first byte of the status line, so the cut may fall anywhere:
    inside the headers, a chunk-size line, an event, a UTF-8 character. At or past the end
    of the answer, the whole answer is sent, then the connection is reset.
    """
    if offset < 0:
        raise ValueError(f"offset must be at least 0, got {offset}")
    return ResetAtByte(offset=offset, reply=reply)


def buffered(seconds: float | None, *, reply: Ok | None = None) -> Buffered:
    """The reply as a proxy that buffers whole answers passes it on: all of it, late.

    Nothing is sent for `seconds` (the time the API takes to generate the whole answer;
    forever if None), then the status line, the headers and the whole body in one write: a
    stream's every event at once, a non-streaming request's JSON. What nginx with
    `proxy_buffering on` or a corporate proxy does to a stream.
    """
    _check_seconds(seconds)
    return Buffered(seconds=seconds, reply=reply)


def fragmented(
    answer: Answer,
    at: tuple[int, ...] | list[int] = (),
    *,
    line_ending: str = "\n",
    pause: float = 0.001,
) -> Fragmented:
    """`answer`, with its bytes written in pieces cut at the byte offsets `at`.

    Offsets count from the first byte of the status line; the server pauses `pause` seconds
    between pieces, so that each arrives in a read of its own. `line_ending` ends the lines
    of a stream's SSE events: `"\\n"` (the API's), `"\\r\\n"` or `"\\r"`, all three allowed by
    the SSE format. What the answer is and what is recorded do not change.
    """
    if isinstance(answer, Fragmented):
        raise TypeError("fragmented() takes an answer that is not fragmented already")
    if not isinstance(answer, Answer):
        raise TypeError(
            f"fragmented() takes an answer from sdkguard.testing.faults, got {answer!r}"
        )
    cuts = tuple(sorted(set(at)))
    if cuts and cuts[0] < 1:
        raise ValueError(f"offsets must be at least 1, got {cuts[0]}")
    if line_ending not in ("\n", "\r\n", "\r"):
        raise ValueError(f"line_ending must be \\n, \\r\\n or \\r, got {line_ending!r}")
    if pause < 0:
        raise ValueError(f"pause must be at least 0, got {pause}")
    return Fragmented(answer=answer, at=cuts, line_ending=line_ending, pause=pause)
