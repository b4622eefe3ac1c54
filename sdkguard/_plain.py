"""Non-streaming calls sent as streams under the hood, and the same `Message` rebuilt.

A non-streaming `messages.create()` gets nothing back until the whole answer is ready, so a
dead connection looks exactly like a slow answer. With `stream_plain_calls`, sdkguard sends
the call as a stream instead: pings and events give the response and idle limits something to
watch, and since nothing reaches the caller before the message is complete, every retryable
failure at any point restarts the call (`_stream.drain_sync`).

The message is rebuilt as the JSON body the non-streaming answer would have had, and that
body goes through the SDK's own non-streaming code (`SdkCall.parse_answer`): the caller gets the
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
from sdkguard._protocol import StreamProtocol

__all__ = ["PlainCall"]


class PlainAnswer:
    """The JSON answer of an attempt, in place of its events: to the guard, a whole message."""

    __slots__ = ("message",)
    type = "message_stop"  # the guard's commit point, and a complete message

    def __init__(self, message: Any) -> None:
        self.message = message


class PlainCall:
    """What a non-streaming call sent as a stream needs besides its `GuardedCall`."""

    __slots__ = ("answer", "sdk_call")

    def __init__(self, sdk_call: _sdk.SdkCall) -> None:
        self.sdk_call = sdk_call
        """The call as a stream (`SdkCall.as_stream`): what each attempt sends."""
        self.answer: Any = None
        """The JSON answer of the latest attempt, when it was not an event stream."""

    def json_answer(self, stream: Any, read_timeout: float | None, retries_taken: int) -> Any:
        """None for an event stream; else what parses the JSON answer (awaitable when async)."""
        response = stream.response
        if _sdk.is_sse(response):
            self.answer = None
            return None
        _sdk.set_body_read_timeout(response, read_timeout)
        return self.sdk_call.parse_answer(response, retries_taken, body=None)

    def answered(self, stream: Any, message: Any) -> None:
        """The attempt's JSON answer was parsed: the stream yields it whole to the guard.

        A 2xx page that is not JSON (a captive portal's) raises here, inside the attempt."""
        self.answer = _sdk.checked(self.sdk_call.cast_to, message)
        answer = PlainAnswer(message)
        is_async = self.sdk_call.asynchronous
        _sdk.replace_iterator(stream, _one_async(answer) if is_async else _one(answer))

    def rebuilt(self, stream: Any, delivered: StreamProtocol, retries_taken: int) -> Any:
        """The caller's result from the events `delivered` recorded (awaitable when async)."""
        body = json.dumps(delivered.message_data(), separators=(",", ":")).encode()
        return self.sdk_call.parse_answer(stream.response, retries_taken, body=body)

    def raise_as_plain(self, err: Exception) -> None:
        """Raise the error a non-streaming answer would have carried for a stream's `error`
        event (`OverloadedError` for `overloaded_error`, ...), with sdkguard's notes."""
        error = self.sdk_call.plain_status_error(err)
        if error is not None:
            for note in getattr(err, "__notes__", ()):
                add_note(error, note)
            raise error from err


def _one(answer: PlainAnswer) -> Iterator[PlainAnswer]:
    yield answer


async def _one_async(answer: PlainAnswer) -> AsyncIterator[PlainAnswer]:
    yield answer
