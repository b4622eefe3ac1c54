"""Non-streaming calls sent as streams under the hood, and the same `Message` rebuilt.

A non-streaming `messages.create()` gets nothing back until the whole answer is ready, so a
dead connection looks exactly like a slow answer. With `stream_plain_calls`, sdkguard sends
the call as a stream instead: pings and events give the response and idle limits something to
watch, and since nothing reaches the caller before the message is complete, every retryable
failure at any point restarts the call (`_stream.drain_sync`).

The message is rebuilt as the JSON body the non-streaming answer would have had, and that
body goes through the SDK's own non-streaming code (`_sdk.parse_answer`): the caller gets the
`Message`, `BetaMessage` or `parse()` result the SDK would have made of it, `_request_id`
included. A server that answers the stream request with JSON is taken at its word: that
answer is parsed as it is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sdkguard import _sdk
from sdkguard._call import add_note
from sdkguard._stream import Delivery, other_delta_fields

__all__ = ["PlainCall", "message_body"]


class PlainAnswer:
    """The JSON answer of an attempt, in place of its events: to the guard, a whole message."""

    __slots__ = ("message",)
    type = "message_stop"  # the guard's commit point, and a complete message

    def __init__(self, message: Any) -> None:
        self.message = message


class PlainCall:
    """What a non-streaming call sent as a stream needs besides its `GuardedCall`."""

    __slots__ = ("answer", "cast_to", "client", "options", "plain_options", "stream_cls")

    def __init__(self, client: Any, cast_to: Any, options: Any, stream_cls: Any) -> None:
        self.client = client
        self.cast_to = cast_to
        self.plain_options = options
        self.options = _sdk.as_stream_request(options)
        """The request each attempt sends."""
        self.stream_cls = stream_cls
        self.answer: Any = None
        """The JSON answer of the latest attempt, when it was not an event stream."""

    def json_answer(self, stream: Any, read_timeout: float | None, retries_taken: int) -> Any:
        """None for an event stream; else what parses the JSON answer (awaitable when async)."""
        response = stream.response
        if _sdk.is_sse(response):
            self.answer = None
            return None
        _sdk.set_body_read_timeout(response, read_timeout)
        return self._parse(response, retries_taken=retries_taken, body=None)

    def answered(self, stream: Any, message: Any) -> None:
        """The attempt's JSON answer was parsed: the stream yields it whole to the guard."""
        self.answer = message
        answer = PlainAnswer(message)
        is_async = _sdk.is_async_stream(stream)
        _sdk.replace_iterator(stream, _one_async(answer) if is_async else _one(answer))

    def rebuilt(self, stream: Any, delivery: Delivery, retries_taken: int) -> Any:
        """The caller's result from the events `delivery` holds (awaitable when async)."""
        body = json.dumps(message_body(delivery), separators=(",", ":")).encode()
        return self._parse(stream.response, retries_taken=retries_taken, body=body)

    def raise_as_plain(self, err: Exception) -> None:
        """Raise the error a non-streaming answer would have carried for a stream's `error`
        event (`OverloadedError` for `overloaded_error`, ...), with sdkguard's notes."""
        error = _sdk.plain_status_error(self.client, err)
        if error is not None:
            for note in getattr(err, "__notes__", ()):
                add_note(error, note)
            raise error from err

    def _parse(self, response: Any, *, retries_taken: int, body: bytes | None) -> Any:
        return _sdk.parse_answer(
            self.client, self.cast_to, self.plain_options, response, retries_taken, body
        )


def _one(answer: PlainAnswer) -> Iterator[PlainAnswer]:
    yield answer


async def _one_async(answer: PlainAnswer) -> AsyncIterator[PlainAnswer]:
    yield answer


# -- the JSON body of the non-streaming answer --------------------------------------------------


def message_body(delivery: Delivery) -> dict[str, Any]:
    """The message `delivery` holds, as the API's non-streaming answer carries it.

    As the SDK's stream helpers accumulate it: `message_start` gives the message, each
    `content_block_start` a block that its deltas complete, and `message_delta` the stop
    reason and the final usage (cumulative counts: a count it carries replaces the first).
    """
    body = _sdk.wire_dict(delivery.blocks[-1])
    body["content"] = [
        _block_body(block, "".join(delivery.parts.get(index, ())), delivery.extras.get(index))
        for index, block in sorted(delivery.blocks.items())
        if index >= 0
    ]
    if delivery.message_delta is not None:
        event = _sdk.wire_dict(delivery.message_delta)
        event.pop("type", None)
        usage = event.pop("usage", None) or {}
        # The delta's fields, then the event's own (beta: context_management, ...): a value
        # replaces what message_start said, a null only fills a gap.
        for key, value in (*(event.pop("delta", None) or {}).items(), *event.items()):
            if value is not None or body.get(key) is None:
                body[key] = value
        counts = {key: value for key, value in usage.items() if value is not None}
        body["usage"] = {**(body.get("usage") or {}), **counts}
    return body


def _block_body(block: Any, text: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    data = _sdk.wire_dict(block)
    kind = data.get("type")
    if kind == "text":
        data["text"] = (data.get("text") or "") + text
    elif kind == "thinking":
        data["thinking"] = (data.get("thinking") or "") + text
    elif text.strip() and "input" in data:  # tool_use, server_tool_use, mcp_tool_use ...
        data["input"] = _tool_input(text)
    if extra:
        if "signature" in extra:
            data["signature"] = extra["signature"]
        if "citations" in extra:
            added = [_sdk.wire_dict(citation) for citation in extra["citations"]]
            data["citations"] = [*(data.get("citations") or ()), *added]
        if "other" in extra:
            data.update(other_delta_fields(data.get, extra["other"]))
    return data


def _tool_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        # Not valid JSON (fine-grained tool streaming, or an answer cut at max_tokens): as far
        # as it goes, as the SDK's own stream helper parses it.
        import jiter

        try:
            return jiter.from_json(text.encode(), partial_mode="trailing-strings")
        except ValueError:
            return {}
