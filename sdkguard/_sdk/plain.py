"""Non-streaming calls sent as streams: which calls, the stream request, the parse of the answer."""

from __future__ import annotations

import functools
import json
from typing import Any

import anthropic

from sdkguard._sdk.errors import error_type
from sdkguard._sdk.models import copy_model
from sdkguard._sdk.release import http
from sdkguard._wire import ERROR_STATUSES

_RAW_RESPONSE_HEADER = "x-stainless-raw-response"
# Platforms whose streams go to another endpoint (Bedrock: another wire format too), which the
# fake server cannot stand in for: their plain calls are left as they are.
_STREAMS_ELSEWHERE = ("anthropic.lib.bedrock", "anthropic.lib.vertex")
_BODY_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "transfer-encoding"}
)


@functools.lru_cache(maxsize=8)
def _stream_classes(asynchronous: bool) -> dict[Any, Any]:
    # The answer types a stream can rebuild, with the stream class the SDK's own
    # `create(stream=True)` reads them with.
    from anthropic.types import Message, RawMessageStreamEvent
    from anthropic.types.beta import BetaMessage, BetaRawMessageStreamEvent

    stream = anthropic.AsyncStream if asynchronous else anthropic.Stream
    return {
        Message: stream[RawMessageStreamEvent],
        BetaMessage: stream[BetaRawMessageStreamEvent],
    }


def plain_call_stream_class(
    client: Any, cast_to: Any, options: Any, sdk_call: Any, *, asynchronous: bool
) -> Any:
    """The stream class to send this non-streaming call with, or None to send it as it is.

    Only a `create()` or `parse()` of the Messages API answering a `Message` or `BetaMessage`:
    not `count_tokens`, not a raw response (the caller asked for the HTTP answer itself), not
    a platform whose streams go elsewhere, not a client with middleware (0.108+: it would see,
    and could answer, a stream request the caller never made), not a call the SDK's own
    tracing records (1.14+: its span would describe a stream).
    """
    if getattr(client, "_middleware", None) or getattr(sdk_call, "span", None) is not None:
        return None
    url: str = options.url
    if url.split("?", 1)[0] != "/v1/messages":
        return None
    body = options.json_data
    if not isinstance(body, dict) or body.get("stream") is True:
        return None
    headers = options.headers if isinstance(options.headers, dict) else {}
    if any(name.lower() == _RAW_RESPONSE_HEADER for name in headers):
        return None
    if type(client).__module__.startswith(_STREAMS_ELSEWHERE):
        return None
    return _stream_classes(asynchronous).get(cast_to)


def as_stream_request(options: Any) -> Any:
    """The options of a non-streaming call, asking for a stream.

    Without the call's `post_parser` (`parse()`'s): the SDK would apply it to the stream; it
    is applied to the rebuilt message instead (`parse_answer` with the call's own options).
    """
    update = {
        "json_data": {**options.json_data, "stream": True},
        "post_parser": anthropic.NOT_GIVEN,
    }
    return copy_model(options, update)


def is_sse(response: Any) -> bool:
    """Whether an answer is an event stream (a server may answer a stream request with JSON)."""
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def parse_answer(
    client: Any, cast_to: Any, options: Any, response: Any, retries_taken: int, body: bytes | None
) -> Any:
    """The SDK's own non-streaming result of `response`, or of the JSON `body` in its place.

    The same code as for a non-streaming answer: `parse()`'s output, `_request_id` and strict
    validation come out exactly as the SDK makes them. A coroutine for an async client.
    """
    if body is not None:
        response = _json_answer(response, response.status_code, body)
    return client._process_response(
        cast_to=cast_to,
        options=options,
        response=response,
        stream=False,
        stream_cls=None,
        retries_taken=retries_taken,
    )


def plain_status_error(client: Any, err: Any) -> Any:
    """For a stream's `event: error`, the SDK's error for the same error as an HTTP status
    (`OverloadedError` for `overloaded_error`, ...), or None when it is not one."""
    response = err.response
    status = ERROR_STATUSES.get(error_type(err.body) or "")
    if status is None or response.status_code >= 400:
        return None
    answer = _json_answer(response, status, json.dumps(err.body).encode())
    return client._make_status_error_from_response(answer)


def _json_answer(response: Any, status: int, body: bytes) -> Any:
    """A JSON answer with `status` and `body`, and the other headers of `response`."""
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _BODY_HEADERS]
    headers.append(("content-type", "application/json"))
    return http.Response(status, headers=headers, content=body, request=response.request)
