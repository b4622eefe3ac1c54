"""What each kind of answer does on the wire: one `Handler` per answer class, in `HANDLERS`.

A Messages reply is written as a stream (`StreamReply`) or as a JSON `Message`
(`MessageReply`); a handler says what its answer does to each, or gives the `whole` answer
when it is the same for every request (a status, a reset before any byte...).

Every part of an answer is recorded in its `SentResponse` once written, except the write that
ends the answer: that one is recorded just before (and undone if it fails), so a client that
has the whole answer never finds `sent` behind it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sdkguard.testing import _continue, _platforms, _sse
from sdkguard.testing._http import Connection, Cut, End, Shaper, head, reason
from sdkguard.testing._records import RecordedRequest, SentResponse, record_cut_event
from sdkguard.testing.faults import (
    DEFAULT_OK,
    Answer,
    Buffered,
    CloseAfter,
    Continuable,
    Fragmented,
    HugeLine,
    InvalidUtf8After,
    MalformedAfter,
    Ok,
    PingsOnlyAfter,
    ProxyError,
    ResetAfter,
    ResetAtByte,
    ResetBeforeHeaders,
    SseErrorAfter,
    StallAfter,
    StallBeforeHeaders,
    Status,
    Trickle,
    TruncateAfter,
    UnknownEventAfter,
    VanishAfter,
    VanishBeforeHeaders,
    WrongContentType,
    default_error_message,
    default_error_type,
    status_for_error_type,
)

MODELS = "models"
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
PREFILL_REFUSED = "prefill_refused"
"""The names recorded for the built-in answers to requests that take no scripted answer."""


@dataclass
class Reply:
    """What one answer is being written with."""

    conn: Connection
    sent: SentResponse
    n: int
    """The request's number, from 1: ids stay unique per response."""
    keep_alive: bool
    request: RecordedRequest
    line_ending: bytes = b"\n"

    @property
    def request_id(self) -> str:
        return f"req_fake_{self.n}"

    def base_headers(self) -> dict[str, str]:
        headers = {"request-id": self.request_id}
        if not self.keep_alive:
            headers["connection"] = "close"
        return headers

    @property
    def end(self) -> End:
        return End.KEEP if self.keep_alive else End.CLOSE

    def send_body(
        self,
        status: int,
        body: bytes,
        extra: Mapping[str, str] | None = None,
        *,
        complete: bool = True,
        content_type: str = "application/json",
        from_api: bool = True,
    ) -> End:
        """A whole answer with a body, in one write; `from_api=False`: no `request-id`."""
        sent = self.sent
        headers = {"content-type": content_type, "content-length": str(len(body))}
        headers.update(self.base_headers())
        if not from_api:
            del headers["request-id"]
        if extra:
            headers.update({k.lower(): v for k, v in extra.items()})

        def record() -> None:
            sent.status, sent.headers, sent.body, sent.completed = status, headers, body, complete

        def undo() -> None:
            sent.status, sent.headers, sent.body, sent.completed = 0, {}, None, False

        self.conn.send_last(head(status, headers) + body, record, undo)
        return self.end

    def send_error(
        self, status: int, error_type: str, message: str, *, complete: bool = True
    ) -> End:
        body = _sse.dumps(_sse.error_data(error_type, message, self.request_id))
        return self.send_body(status, body, complete=complete)


def _trickle(
    conn: Connection,
    bytes_per_second: float,
    pieces: list[tuple[bytes, Callable[[], None] | None]],
    done: Callable[[], None],
    undo: Callable[[], None],
) -> None:
    """Send `pieces` at `bytes_per_second`.

    Each piece's callback runs once it is out; `done` runs before the very last slice
    (the write that ends the answer) and `undo` if that write fails.
    """
    step = max(1, int(bytes_per_second / 50))  # about 50 writes a second
    start = time.monotonic()
    total = 0
    remaining = sum(len(data) for data, _ in pieces)
    for data, callback in pieces:
        for offset in range(0, len(data), step):
            # Pacing by the total keeps the rate when a wait oversleeps.
            wait = start + total / bytes_per_second - time.monotonic()
            if wait > 0:
                conn.pause(wait)
            piece = data[offset : offset + step]
            remaining -= len(piece)
            if remaining:
                conn.send(piece)
            else:
                conn.send_last(piece, done, undo)
            total += len(piece)
        if callback is not None:
            callback()


# --- a Messages reply, as a stream or as JSON --------------------------------------------------


class StreamReply:
    """A Messages reply as a stream: its events, written and recorded part by part."""

    def __init__(self, reply: Reply, ok: Ok, model: str, message_id: str) -> None:
        self.reply = reply
        self.conn = reply.conn
        self.sent = reply.sent
        events = _sse.stream_events(ok, message_id=message_id, model=model)
        self.bedrock = reply.request.platform == _platforms.BEDROCK
        if self.bedrock:  # Bedrock streams carry no pings
            events = [_platforms.bedrock_event(e) for e in events if e[0] != "ping"]
        self.ping = _platforms.bedrock_event(_sse.PING) if self.bedrock else _sse.PING
        # Bedrock's frames are binary, not lines: no other line ending
        self.line_ending = b"\n" if self.bedrock else reply.line_ending
        if self.line_ending != b"\n":
            events = [(name, data, self.frame(chunk)) for name, data, chunk in events]
        self.events = events
        self.headers = {
            "content-type": _platforms.EVENT_STREAM
            if self.bedrock
            else "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            **reply.base_headers(),
        }
        self.head = head(200, self.headers)
        self.written = 0
        """How many of `events` were written."""

    def frame(self, chunk: bytes) -> bytes:
        """An event's chunk with its lines ended as this reply ends them."""
        return _sse.with_line_ending(chunk, self.line_ending)

    def record_head(self) -> None:
        self.sent.status = 200
        self.sent.headers = self.headers

    def send_head(self) -> None:
        self.conn.send(self.head)
        self.record_head()

    def send_event(self, event: _sse.Event) -> None:
        """An event that is not among the reply's (a ping, an unknown type), framed here."""
        name, data, chunk = event
        self.conn.send(self.frame(chunk))
        self.sent.events.append((name, data))

    def send_events(self, n: int) -> None:
        """The reply's events up to the `n`-th."""
        events, send, record = self.events, self.conn.send, self.sent.events.append
        upto = min(n, len(events))
        for i in range(self.written, upto):
            name, data, chunk = events[i]
            send(chunk)
            record((name, data))
        self.written = max(self.written, upto)

    def finish(self, last: tuple[str, dict[str, Any]] | None, chunk: bytes, complete: bool) -> End:
        """The last event (if any) and the end of the body, in one write."""
        sent = self.sent

        def record() -> None:
            if last is not None:
                sent.events.append(last)
            sent.completed = complete

        def undo() -> None:
            if last is not None:
                sent.events.pop()
            sent.completed = False

        self.conn.send_last(chunk + _sse.LAST_CHUNK, record, undo)
        return self.reply.end

    def send_rest(self) -> End:
        """Every event not written yet, and the end of the body: a complete reply."""
        if self.written < len(self.events):
            self.send_events(len(self.events) - 1)
            name, data, chunk = self.events[-1]
            self.written = len(self.events)
            return self.finish((name, data), chunk, True)
        return self.finish(None, b"", True)


class MessageReply:
    """A Messages reply as one JSON `Message`."""

    def __init__(self, reply: Reply, ok: Ok, model: str, message_id: str) -> None:
        self.reply = reply
        self.conn = reply.conn
        self.sent = reply.sent
        self._ok, self._model, self._message_id = ok, model, message_id

    @functools.cached_property
    def body(self) -> bytes:
        return _sse.message_body(self._ok, message_id=self._message_id, model=self._model)

    @property
    def half(self) -> int:
        """Where an answer cut in its body is cut."""
        return len(self.body) // 2

    def head_of(self, body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            **self.reply.base_headers(),
        }
        return head(200, headers), headers

    def record_whole(self, headers: dict[str, str], body: bytes, complete: bool) -> None:
        self.sent.status, self.sent.headers = 200, headers
        self.sent.body, self.sent.completed = body, complete

    def undo(self) -> None:
        self.sent.completed = False

    def send_whole(self, body: bytes | None = None, *, complete: bool = True) -> End:
        """The head and `body` (the reply's by default) in one write."""
        body = self.body if body is None else body
        message_head, headers = self.head_of(body)
        self.conn.send_last(
            message_head + body,
            functools.partial(self.record_whole, headers, body, complete),
            self.undo,
        )
        return self.reply.end

    def send_head(self, part: bytes = b"") -> None:
        """The head, and `part`, the start of the body: recorded once written."""
        message_head, headers = self.head_of(self.body)
        self.conn.send(message_head + part)
        self.sent.status, self.sent.headers = 200, headers
        if part:
            self.sent.body = part

    def send_remainder(self, start: int) -> End:
        """The body from `start` on, which ends the answer."""
        _, headers = self.head_of(self.body)
        self.conn.send_last(
            self.body[start:],
            functools.partial(self.record_whole, headers, self.body, True),
            self.undo,
        )
        return self.reply.end


# --- handlers ----------------------------------------------------------------------------------

A = TypeVar("A", bound=Answer)


class _AfterN(Protocol):
    """A fault that acts after `n` events."""

    @property
    def n(self) -> int: ...


N = TypeVar("N", bound=_AfterN)


def _stream_ok(out: StreamReply, answer: Answer) -> End:
    out.send_head()
    out.send_events(len(out.events))
    return out.send_rest()


def _message_ok(out: MessageReply, answer: Answer) -> End:
    return out.send_whole()


@dataclass(frozen=True)
class Handler:
    """What one kind of answer does; by default, a correct reply."""

    whole: Callable[[Reply, Any], End] | None = None
    """The whole answer, the same for a stream, a JSON reply and count_tokens (a status, a
    reset before any byte...); None: a Messages reply, written by `stream` or `message`."""
    before: Callable[[Reply, Any], None] | None = None
    """What happens before a reply is written (the wait of a stall), count_tokens included."""
    stream: Callable[[StreamReply, Any], End] = _stream_ok
    """Writes the reply to a request for a stream."""
    message: Callable[[MessageReply, Any], End] = _message_ok
    """Writes the reply to a request for a JSON `Message`."""
    count_tokens: bool = False
    """Whether it applies to count_tokens (a `whole` answer always does); else count_tokens
    gets its usual answer, recorded as `ok`: its answer has no events and no body to cut."""


# Whole answers.


def _status(reply: Reply, answer: Status) -> End:
    if answer.body is None:
        if answer.code >= 400:
            error_type = answer.error_type or default_error_type(answer.code)
            message = answer.message or default_error_message(error_type)
            body = _sse.dumps(_sse.error_data(error_type, message, reply.request_id))
        else:
            body = b""
    elif isinstance(answer.body, bytes):
        body = answer.body
    elif isinstance(answer.body, str):
        body = answer.body.encode()
    else:
        body = _sse.dumps(answer.body)
    return reply.send_body(answer.code, body, answer.headers)


def _proxy_error(reply: Reply, answer: ProxyError) -> End:
    page = _sse.proxy_page(answer.code, reason(answer.code))
    # Not the API's answer: no request-id, and never a complete reply.
    return reply.send_body(
        answer.code, page, complete=False, content_type="text/html", from_api=False
    )


def _wrong_content_type(reply: Reply, answer: WrongContentType) -> End:
    return reply.send_body(
        200, _sse.PORTAL_PAGE, complete=False, content_type=answer.content_type, from_api=False
    )


def _reset_now(reply: Reply, answer: Answer) -> End:
    return End.RESET


def _vanish_now(reply: Reply, answer: Answer) -> End:
    return reply.conn.vanish_until_stopped()


def _wait(reply: Reply, answer: StallBeforeHeaders | Buffered) -> None:
    reply.conn.pause(answer.seconds)


# Streams: most faults act after the head and `n` events.


def _after_n(then: Callable[[StreamReply, N], End]) -> Callable[[StreamReply, N], End]:
    """A stream handler: the head and the first `answer.n` events, then `then`."""

    def handle(out: StreamReply, answer: N) -> End:
        out.send_head()
        out.send_events(answer.n)
        return then(out, answer)

    return handle


def _reset(out: StreamReply | MessageReply, answer: Answer) -> End:
    return End.RESET


def _close(out: StreamReply | MessageReply, answer: Answer) -> End:
    return End.CLOSE


def _vanish(out: StreamReply | MessageReply, answer: Answer) -> End:
    return out.conn.vanish_until_stopped()


def _end_body(out: StreamReply, answer: CloseAfter) -> End:
    return out.finish(None, b"", out.written >= len(out.events))


def _stall_then_rest(out: StreamReply, answer: StallAfter) -> End:
    out.conn.pause(answer.seconds)
    return out.send_rest()


def _pings_then_rest(out: StreamReply, answer: PingsOnlyAfter) -> End:
    deadline = None if answer.seconds is None else time.monotonic() + answer.seconds
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        wait = answer.interval if deadline is None else min(answer.interval, deadline - now)
        out.conn.pause(wait)
        if deadline is not None and time.monotonic() >= deadline:
            break
        out.send_event(out.ping)
    return out.send_rest()


def _error_event(out: StreamReply, answer: SseErrorAfter) -> End:
    message = answer.message or default_error_message(answer.error_type)
    name, data, chunk = (
        _platforms.bedrock_error(answer.error_type, message)
        if out.bedrock
        else _sse.event("error", _sse.error_data(answer.error_type, message, out.reply.request_id))
    )
    return out.finish((name, data), out.frame(chunk), False)


def _malformed_event(out: StreamReply, answer: MalformedAfter) -> End:
    # not recorded: its data is not JSON
    return out.finish(None, out.frame(_sse.MALFORMED_CHUNK), False)


def _invalid_utf8_event(out: StreamReply, answer: InvalidUtf8After) -> End:
    # not recorded either: its data is not text
    return out.finish(None, out.frame(_sse.INVALID_UTF8_CHUNK), False)


def _unknown_event_then_rest(out: StreamReply, answer: UnknownEventAfter) -> End:
    out.send_event(_sse.event(answer.event, {"type": answer.event}))
    return out.send_rest()


def _stream_at_once(out: StreamReply, answer: Buffered) -> End:
    """The head, every event and the end of the body in one write, as a buffering proxy
    passes a finished answer on."""
    sent, events = out.sent, out.events
    whole = out.head + b"".join(chunk for _, _, chunk in events) + _sse.LAST_CHUNK

    recorded_before = len(sent.events)

    def record() -> None:
        out.record_head()
        sent.events.extend((name, data) for name, data, _ in events)
        sent.completed = True

    def undo() -> None:
        sent.status, sent.headers, sent.completed = 0, {}, False
        del sent.events[recorded_before:]

    out.conn.send_last(whole, record, undo)
    out.written = len(events)
    return out.reply.end


def _trickle_stream(out: StreamReply, answer: Trickle) -> End:
    sent = out.sent
    pieces: list[tuple[bytes, Callable[[], None] | None]] = [(out.head, out.record_head)]
    for name, data, chunk in out.events:
        pieces.append((chunk, functools.partial(sent.events.append, (name, data))))
    pieces.append((_sse.LAST_CHUNK, None))

    def complete() -> None:
        sent.completed = True

    def incomplete() -> None:
        sent.completed = False

    _trickle(out.conn, answer.bytes_per_second, pieces, complete, incomplete)
    return out.reply.end


# JSON Messages: the API neither pings nor streams them, so event faults act on the body.


def _half_then(
    then: Callable[[MessageReply, A], End],
) -> Callable[[MessageReply, A], End]:
    """A message handler: the head and half of the body, then `then`."""

    def handle(out: MessageReply, answer: A) -> End:
        out.send_head(out.body[: out.half])
        return then(out, answer)

    return handle


def _stall_then_remainder(out: MessageReply, answer: StallAfter) -> End:
    out.conn.pause(answer.seconds)
    return out.send_remainder(out.half)


def _head_then_wait(out: MessageReply, answer: PingsOnlyAfter) -> End:
    # The API does not ping non-streaming answers: headers, then silence.
    out.send_head()
    out.conn.pause(answer.seconds)
    return out.send_remainder(0)


def _error_status(out: MessageReply, answer: SseErrorAfter) -> End:
    message = answer.message or default_error_message(answer.error_type)
    status = status_for_error_type(answer.error_type)
    # The reply was not given: not completed, as for a stream.
    return out.reply.send_error(status, answer.error_type, message, complete=False)


def _malformed_body(out: MessageReply, answer: MalformedAfter) -> End:
    return out.send_whole(out.body[: out.half] + b"{not json", complete=False)


def _invalid_utf8_body(out: MessageReply, answer: InvalidUtf8After) -> End:
    return out.send_whole(_sse.invalid_utf8_body(out.body), complete=False)


def _trickle_message(out: MessageReply, answer: Trickle) -> End:
    message_head, headers = out.head_of(out.body)

    def record_head() -> None:
        out.sent.status, out.sent.headers = 200, headers

    _trickle(
        out.conn,
        answer.bytes_per_second,
        [(message_head, record_head), (out.body, None)],
        functools.partial(out.record_whole, headers, out.body, True),
        out.undo,
    )
    return out.reply.end


HANDLERS: Mapping[type[Answer], Handler] = {
    Ok: Handler(count_tokens=True),
    Continuable: Handler(count_tokens=True),
    Status: Handler(whole=_status),
    ProxyError: Handler(whole=_proxy_error),
    WrongContentType: Handler(whole=_wrong_content_type),
    ResetBeforeHeaders: Handler(whole=_reset_now),
    VanishBeforeHeaders: Handler(whole=_vanish_now),
    StallBeforeHeaders: Handler(before=_wait, count_tokens=True),
    Buffered: Handler(before=_wait, stream=_stream_at_once, count_tokens=True),
    ResetAtByte: Handler(count_tokens=True),  # the connection's shaper cuts it
    HugeLine: Handler(),
    UnknownEventAfter: Handler(stream=_after_n(_unknown_event_then_rest)),
    ResetAfter: Handler(stream=_after_n(_reset), message=_half_then(_reset)),
    TruncateAfter: Handler(stream=_after_n(_close), message=_half_then(_close)),
    CloseAfter: Handler(stream=_after_n(_end_body), message=_half_then(_close)),
    VanishAfter: Handler(stream=_after_n(_vanish), message=_half_then(_vanish)),
    StallAfter: Handler(
        stream=_after_n(_stall_then_rest), message=_half_then(_stall_then_remainder)
    ),
    PingsOnlyAfter: Handler(stream=_after_n(_pings_then_rest), message=_head_then_wait),
    SseErrorAfter: Handler(stream=_after_n(_error_event), message=_error_status),
    MalformedAfter: Handler(stream=_after_n(_malformed_event), message=_malformed_body),
    InvalidUtf8After: Handler(stream=_after_n(_invalid_utf8_event), message=_invalid_utf8_body),
    Trickle: Handler(stream=_trickle_stream, message=_trickle_message),
}
"""What every kind of answer does (`fragmented` wraps one of these: see `scripted`)."""


# --- answering a request -----------------------------------------------------------------------


def scripted(reply: Reply, answer: Answer, wire: Fragmented | None, route: _platforms.Route) -> End:
    """Write a scripted `answer` to a Messages request; `wire` is the `fragmented` holding it."""
    conn = reply.conn
    stop_at = answer.offset if isinstance(answer, ResetAtByte) else None
    if wire is not None or stop_at is not None:
        conn.shaper = Shaper(wire.at if wire else (), stop_at, wire.pause if wire else 0.0)
        if wire is not None:
            reply.line_ending = wire.line_ending.encode()
    try:
        if route.count_tokens:
            end = _count_tokens(reply, answer)
        else:
            try:
                end = _messages(reply, answer, route.model)
            except Cut as cut:
                if reply.request.stream:
                    record_cut_event(reply.sent, cut.data, cut.written)
                raise
        # reset_at_byte past the end of the answer: all of it was sent, now the reset
        return End.RESET if stop_at is not None else end
    finally:
        conn.shaper = None


def _messages(reply: Reply, answer: Answer, path_model: str | None) -> End:
    handler = HANDLERS[type(answer)]
    if handler.whole is not None:
        return handler.whole(reply, answer)
    if handler.before is not None:
        handler.before(reply, answer)
    ok = answer if isinstance(answer, Ok) else getattr(answer, "reply", None) or DEFAULT_OK
    body = reply.request.body
    if isinstance(ok, Continuable):
        ok = _continue.rest_of(ok, body)
    model = ok.model or (body.get("model") if isinstance(body, dict) else None) or path_model
    if not isinstance(model, str):
        model = "claude-fake"
    message_id = ok.message_id or f"msg_fake_{reply.n}"
    if reply.request.stream if ok.stream is None else ok.stream:
        return handler.stream(StreamReply(reply, ok, model, message_id), answer)
    return handler.message(MessageReply(reply, ok, model, message_id), answer)


def _count_tokens(reply: Reply, answer: Answer) -> End:
    handler = HANDLERS[type(answer)]
    if handler.whole is not None:
        return handler.whole(reply, answer)
    if not handler.count_tokens:
        reply.sent.fault = Ok.name
    elif handler.before is not None:
        handler.before(reply, answer)
    tokens = max(1, len(reply.request.raw_body) // 4)
    return reply.send_body(200, _sse.dumps({"input_tokens": tokens}))


def builtin(reply: Reply, name: str, path: str) -> End:
    """The answer to a request that takes no scripted answer."""
    if name == MODELS:
        model = {
            "type": "model",
            "id": "claude-fake-1",
            "display_name": "Fake model",
            "created_at": "2025-01-01T00:00:00Z",
        }
        body = {
            "data": [model],
            "has_more": False,
            "first_id": model["id"],
            "last_id": model["id"],
        }
        return reply.send_body(200, _sse.dumps(body))
    if name == PREFILL_REFUSED:
        return reply.send_error(400, "invalid_request_error", _continue.PREFILL_REFUSED)
    if name == BAD_REQUEST:
        return reply.send_error(
            400, default_error_type(400), "The request body is not a JSON object."
        )
    return reply.send_error(404, default_error_type(404), f"Not found: {path}")
