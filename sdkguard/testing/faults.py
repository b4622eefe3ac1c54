"""Answers the fake server gives to Messages requests: content, complete replies and faults.

Every function here returns a frozen dataclass. Content functions (`text`, `thinking`,
`tool_use`) build blocks for `ok`; `ok` is a complete, correct reply; every other function
is a fault that reproduces something a real network or the real API does. Script answers
with `FakeAnthropic.script(...)`: each Messages request takes the next one.

"n events" always counts SSE events in the order the server writes them, pings included:
with the default reply, event 1 is `message_start`, 2 `content_block_start`, 3 `ping`, then
the deltas.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "DEFAULT_TEXT",
    "VANISH_SUPPORTED",
    "Answer",
    "Block",
    "CloseAfter",
    "MalformedAfter",
    "Ok",
    "PingsOnlyAfter",
    "ResetAfter",
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
    "VanishAfter",
    "VanishBeforeHeaders",
    "close_after",
    "default_error_message",
    "default_error_type",
    "malformed_after",
    "ok",
    "pings_only_after",
    "reset_after",
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
    "vanish_after",
    "vanish_before_headers",
]

DEFAULT_TEXT = "Hello from the fake Anthropic server."
"""The text of the default reply, `ok()`."""

VANISH_SUPPORTED = sys.platform.startswith("linux")
"""Whether this platform can make a peer vanish (`vanish_*` faults): Linux socket filters."""

_tool_ids = itertools.count(1)

# The API's error type for each HTTP status it uses.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_STATUS_FOR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_DEFAULT_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "conflict_error": "Conflict.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of requests has exceeded your rate limit.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}


def default_error_type(code: int) -> str:
    """The API's error type for an HTTP status (unlisted: `invalid_request_error`, `api_error`)."""
    if code in _ERROR_TYPES:
        return _ERROR_TYPES[code]
    return "invalid_request_error" if 400 <= code < 500 else "api_error"


def status_for_error_type(error_type: str) -> int:
    """The HTTP status the API uses for an error type (500 if unknown)."""
    return _STATUS_FOR_TYPE.get(error_type, 500)


def default_error_message(error_type: str) -> str:
    """A message like the API's for an error type."""
    return _DEFAULT_MESSAGES.get(error_type, "Error")


# --- content blocks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Base of the content blocks of an `Ok` reply."""


@dataclass(frozen=True)
class Text(Block):
    """A text block, streamed as `deltas` `text_delta` events."""

    text: str
    deltas: int = 1


@dataclass(frozen=True)
class Thinking(Block):
    """A thinking block: `deltas` `thinking_delta` events, then one `signature_delta`."""

    thinking: str
    signature: str = "sig"
    deltas: int = 1


@dataclass(frozen=True)
class ToolUse(Block):
    """A tool_use block; its input, serialized as JSON, is split into `input_json_delta` events."""

    name: str
    input: Mapping[str, Any]
    id: str
    deltas: int = 2


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
    # Imported here because _sse imports this module.
    from sdkguard.testing._sse import plan

    plan(answer)
    return answer


DEFAULT_OK = ok()
"""`ok()`, built once: what the server answers when nothing else was scripted."""


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
