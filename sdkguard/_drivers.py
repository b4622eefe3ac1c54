"""The guarded `request` of the sync and async clients: open, then hand streams to `_stream`.

Loaded when the SDK is patched (with anthropic), never by `import sdkguard`. What a call is
is read from the SDK once, here at the entry (`_sdk.read_call`); the attempt loop carries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic

from sdkguard import _plain_hosts, _sdk
from sdkguard._call import GuardedCall, open_async, open_sync
from sdkguard._plain import PlainCall
from sdkguard._policy import Policy
from sdkguard._sdk import (
    is_guarded_request,
    raw_stream_of,
    reset_message_stream,
    restore_keepalive,
)
from sdkguard._stream import adopt_async, adopt_sync, drain_async, drain_sync, guard_of

__all__ = [
    "guard_of",
    "is_guarded_request",
    "raw_stream_of",
    "request_async",
    "request_sync",
    "reset_message_stream",
    "restore_keepalive",
]


def _enter(
    client: Any, policy: Policy, args: tuple[Any, ...], kwargs: dict[str, Any], asynchronous: bool
) -> _sdk.SdkCall:
    _sdk.apply_keepalive(client, policy.tcp_keepalive)
    return _sdk.read_call(
        client, args, kwargs, asynchronous=asynchronous, plain_calls=policy.stream_plain_calls
    )


def request_sync(
    wrapped: Callable[..., Any], client: Any, policy: Policy, *args: Any, **kwargs: Any
) -> Any:
    """The guarded `SyncAPIClient._request` (`request` before the SDK had tracing)."""
    sdk_call = _enter(client, policy, args, kwargs, asynchronous=False)
    if _converted(sdk_call):
        return _plain_sync(wrapped, sdk_call, policy)
    call = GuardedCall(sdk_call, policy)
    send = sdk_call.sender(wrapped)
    result = open_sync(call, send)
    if sdk_call.stream:
        return adopt_sync(call, result, send)
    call.succeeded(result)
    return result


def _converted(sdk_call: _sdk.SdkCall) -> bool:
    """Whether to send this non-streaming call as a stream."""
    return sdk_call.plain_stream_cls is not None and not _plain_hosts.buffers_streams(
        sdk_call.base_url(), time.monotonic()
    )


def _plain_sync(wrapped: Callable[..., Any], sdk_call: _sdk.SdkCall, policy: Policy) -> Any:
    """A non-streaming call sent as a stream; the caller gets the same message."""
    plain = PlainCall(sdk_call.as_stream())
    call = GuardedCall(plain.sdk_call, policy, unconverted=sdk_call)
    send_stream = plain.sdk_call.sender(wrapped)
    send_unconverted = sdk_call.sender(wrapped)

    def send(attempt_options: Any) -> Any:
        if not call.stream:  # the call fell back to being sent as it was made
            return send_unconverted(attempt_options)
        stream = send_stream(attempt_options)
        parsing = plain.json_answer(stream, call.body_read_timeout(), call.state.attempt - 1)
        if parsing is not None:
            plain.answered(stream, parsing)
        return stream

    stream = open_sync(call, send)
    if not call.stream:
        call.succeeded(stream)
        return stream
    call.headers_came()
    try:
        delivered = drain_sync(call, stream, send)
    except anthropic.APIStatusError as err:
        plain.raise_as_plain(err)
        raise
    if plain.answer is not None:
        return plain.answer
    return plain.rebuilt(stream, delivered, call.state.attempt - 1)


async def request_async(
    wrapped: Callable[..., Any], client: Any, policy: Policy, *args: Any, **kwargs: Any
) -> Any:
    """The guarded `AsyncAPIClient._request` (`request` before the SDK had tracing)."""
    sdk_call = _enter(client, policy, args, kwargs, asynchronous=True)
    if _converted(sdk_call):
        return await _plain_async(wrapped, sdk_call, policy)
    call = GuardedCall(sdk_call, policy)
    send = sdk_call.sender(wrapped)
    result = await open_async(call, send)
    if sdk_call.stream:
        return adopt_async(call, result, send)
    call.succeeded(result)
    return result


async def _plain_async(wrapped: Callable[..., Any], sdk_call: _sdk.SdkCall, policy: Policy) -> Any:
    """`_plain_sync` for the async client."""
    plain = PlainCall(sdk_call.as_stream())
    call = GuardedCall(plain.sdk_call, policy, unconverted=sdk_call)
    send_stream = plain.sdk_call.sender(wrapped)
    send_unconverted = sdk_call.sender(wrapped)

    async def send(attempt_options: Any) -> Any:
        if not call.stream:  # the call fell back to being sent as it was made
            return await send_unconverted(attempt_options)
        stream = await send_stream(attempt_options)
        parsing = plain.json_answer(stream, call.body_read_timeout(), call.state.attempt - 1)
        if parsing is not None:
            plain.answered(stream, await parsing)
        return stream

    stream = await open_async(call, send)
    if not call.stream:
        call.succeeded(stream)
        return stream
    call.headers_came()
    try:
        delivered = await drain_async(call, stream, send)
    except anthropic.APIStatusError as err:
        plain.raise_as_plain(err)
        raise
    if plain.answer is not None:
        return plain.answer
    return await plain.rebuilt(stream, delivered, call.state.attempt - 1)
