"""The SDK's streams and stream helpers: their iterators, decoders and span observers."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anthropic

from sdkguard._sdk.errors import StallDetected
from sdkguard._sdk.release import SDK_VERSION


def is_event_stream(value: object) -> bool:
    return isinstance(value, (anthropic.Stream, anthropic.AsyncStream))


def http_response_of(value: Any) -> Any:
    """The http response of a `Stream` or of a raw-response wrapper."""
    return getattr(value, "response", None) or getattr(value, "http_response", None)


def on_parsed_stream(raw: Any, adopt: Callable[[Any], Any]) -> bool:
    """Have `adopt` take the event stream that `raw.parse()` makes of a raw response.

    A raw response (`with_raw_response`) of a stream holds no events until the caller parses
    it (langchain-anthropic streams that way); the `Stream` it then makes restarts like any
    other. `parse` is async on the async client's raw responses from 2.0, sync before (and on
    the sync client). False when `raw` cannot be parsed into a stream.
    """
    parse = getattr(raw, "parse", None)
    if parse is None:
        return False

    def adopted(parsed: Any) -> Any:
        # `adopt` leaves alone a stream it guards already (the raw response keeps what it
        # parsed, and a second `parse()` returns the same stream).
        return adopt(parsed) if is_event_stream(parsed) else parsed

    if inspect.iscoroutinefunction(parse):

        async def parse_async(*args: Any, **kwargs: Any) -> Any:
            return adopted(await parse(*args, **kwargs))

        raw.parse = parse_async
    else:
        raw.parse = lambda *args, **kwargs: adopted(parse(*args, **kwargs))
    return True


def parsing(send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`send`, for a raw response: the event stream that each attempt's response parses into."""
    return lambda options: send(options).parse()


def parsing_async(send: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """`parsing` for the async client, whose raw responses parse with or without `await`."""

    async def send_and_parse(options: Any) -> Any:
        parsed = (await send(options)).parse()
        return await parsed if inspect.isawaitable(parsed) else parsed

    return send_and_parse


def take_iterator(stream: Any, replacement: Any) -> Any:
    """Return the stream's own event iterator and put `replacement` in its place.

    Up to 1.x `Stream.__init__` builds `_iterator`; from 2.0 it is a cached property built on
    first use. Reading it and then setting the attribute works for both (a cached property
    does not define `__set__`); setting it keeps the instance's compact attribute storage.
    """
    own = stream._iterator
    stream._iterator = replacement
    return own


def own_iterator(stream: Any) -> Any:
    return stream._iterator


class _ProgressWatch:
    """Wraps a stream's SSE decoder to see raw events, pings included, before the SDK drops them.

    A ping more than `limit` seconds after the last other event means the server is alive but
    the message makes no progress. Costs one clock read per event; no timer, no thread.
    """

    __slots__ = ("_decoder", "_limit")

    def __init__(self, decoder: Any, limit: float) -> None:
        self._decoder = decoder
        self._limit = limit

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[Any]:
        limit, clock = self._limit, time.monotonic
        last = clock()
        for sse in self._decoder.iter_bytes(iterator):
            now = clock()
            if sse.event != "ping":
                last = now
            elif now - last > limit:
                raise StallDetected(f"no content for {now - last:.2f} s")
            yield sse

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        limit, clock = self._limit, time.monotonic
        last = clock()
        async for sse in self._decoder.aiter_bytes(iterator):
            now = clock()
            if sse.event != "ping":
                last = now
            elif now - last > limit:
                raise StallDetected(f"no content for {now - last:.2f} s")
            yield sse


_BEDROCK_RAISES_VALUE_ERROR = SDK_VERSION.startswith("0.")


def adapt_stream(stream: Any) -> None:
    """Make a Bedrock stream of anthropic 0.x report a failure as later versions do.

    Up to 0.125 the Bedrock decoder raises `ValueError("Bad response code ...")` for an AWS
    exception frame (`throttlingException`, ...); from 1.0 the stream raises it as an
    `APIStatusError` whose body names the exception, which sdkguard classifies like an SSE
    `error` event. Old streams get the same, so their failures are retried and raised alike.
    """
    if not _BEDROCK_RAISES_VALUE_ERROR:
        return
    decoder: Any = getattr(stream, "_decoder", None)
    parse = getattr(decoder, "_parse_message_from_event", None)
    if parse is None:
        return

    def parse_message(message: Any) -> Any:
        response = message.to_response_dict()
        if response["status_code"] == 200:
            return parse(message)
        headers = response["headers"]
        try:
            text = json.loads(response["body"]).get("message")
        except (ValueError, AttributeError):
            text = None
        kind = headers.get(":exception-type") or headers.get(":error-code")
        body = {"type": "error", "error": {"type": kind, "message": text}}
        raise stream._client._make_status_error(f"{body}", body=body, response=stream.response)

    decoder._parse_message_from_event = parse_message


def watch_progress(stream: Any, limit: float) -> None:
    """Check the progress limit on every raw event of `stream` (before its iterator exists)."""
    stream._decoder = _ProgressWatch(stream._decoder, limit)


class HeldEnd:
    """Holds back how an attempt's response body ended from the SDK's span observer (1.14+).

    The SDK ends its call span when a body ends. While sdkguard may still restart the stream,
    how an attempt's body ended is held back: an abandoned attempt's end is dropped, so the
    call span lives on through the restart and ends with the attempt that finishes the call.

    The observer's own `begin` and `end` are replaced on the instance rather than the observer
    wrapped: the SDK recognises its observer by type (`share_message_snapshot` of the stream
    helpers looks for its `FirstEnd`), so it must stay in place.
    """

    __slots__ = ("_begin", "_begun", "_end", "_mode", "_pending", "observer")

    def __init__(self, observer: Any) -> None:
        self.observer = observer
        self._begin = observer.begin
        self._end = observer.end
        self._begun = False
        self._mode = "hold"
        self._pending: tuple[Any, BaseException | None] | None = None
        observer.begin = self.begin
        observer.end = self.end

    def begin(self) -> None:
        self._begun = True
        self._begin()

    def end(self, how: Any, error: BaseException | None = None) -> None:
        if self._mode == "pass" or not self._begun:
            # Not begun: the SDK never parsed this body (the application read the bytes
            # itself, or dropped the stream unread), so no restart can replace it.
            self._end(how, error)
        elif self._mode == "hold" and self._pending is None:
            self._pending = (how, error)

    def release(self) -> None:
        """This attempt finishes the call: report how its body ended, and all that follows."""
        if self._mode == "hold":
            self._mode = "pass"
            if self._pending is not None:
                self._end(*self._pending)

    def drop(self) -> None:
        """This attempt was abandoned for another: nothing of its end reaches the span."""
        self._mode = "drop"
        self._pending = None


def hold_stream_end(response: Any, replacing: HeldEnd | None) -> HeldEnd | None:
    """Hold back the SDK's observer of `response`'s body, if it has one.

    `replacing` is the held end of the attempt this one replaces: it is dropped, and the
    message snapshot that a stream helper shared with its observer (the span's output content,
    `share_message_snapshot`) is shared with the new observer, as the helper reads on.
    """
    if replacing is not None:
        replacing.drop()
    observer = getattr(getattr(response, "stream", None), "stream_observer", None)
    if observer is None:
        return None
    if replacing is not None:
        shared = getattr(getattr(replacing.observer, "inner", None), "_shared_snapshot", None)
        share = getattr(getattr(observer, "inner", None), "share_snapshot", None)
        if shared is not None and share is not None:
            share(shared)
    return HeldEnd(observer)


def reset_message_stream(helper: Any) -> None:
    """Forget what a `MessageStream` accumulated, so a restarted stream builds a fresh message.

    The helper keeps its snapshot in name-mangled attributes (`_MessageStream__...`,
    `_BetaMessageStream__...`, async twins); match them by suffix.
    """
    for name in list(vars(helper)):
        if name.endswith("__final_message_snapshot"):
            setattr(helper, name, None)
        elif name.endswith("__json_bufs"):
            setattr(helper, name, {})


def raw_stream_of(helper: Any) -> Any:
    return getattr(helper, "_raw_stream", None)


def replace_iterator(stream: Any, iterator: Any) -> None:
    """Make `stream` yield `iterator` instead of reading its body, which was read already.

    Written into the instance: up to 1.x `_iterator` is an attribute set in `__init__` (a
    generator not started yet), from 2.0 a cached property not read yet.
    """
    stream.__dict__["_iterator"] = iterator


def event_class(stream: Any) -> Any:
    """The type a stream parses its events into (a union of the SDK's event models)."""
    return stream._cast_to
