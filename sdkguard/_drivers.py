"""The guarded `request` of the sync and async clients: open, then hand streams to `_stream`.

Loaded when the SDK is patched (with anthropic), never by `import sdkguard`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anthropic

from sdkguard import _sdk
from sdkguard._call import GuardedCall, open_async, open_sync
from sdkguard._plain import PlainCall
from sdkguard._policy import Policy
from sdkguard._sdk import is_guarded_request, restore_keepalive
from sdkguard._stream import adopt_async, adopt_sync, drain_async, drain_sync, guard_of

__all__ = [
    "guard_of",
    "is_guarded_request",
    "request_async",
    "request_sync",
    "restore_keepalive",
]


def _bind(
    cast_to: Any,
    options: Any,
    *_: Any,
    stream: bool = False,
    stream_cls: Any = None,
    **extra: Any,
) -> tuple[Any, Any, bool, Any, dict[str, Any]]:
    # The arguments of the patched method. `extra` is the SDK's `call=` (its span), passed on
    # to every attempt; 0.x had a `remaining_retries` positional, which we drop.
    return cast_to, options, stream, stream_cls, extra


def _plain_call(
    client: Any, policy: Policy, cast_to: Any, options: Any, extra: Any, asynchronous: bool
) -> Any:
    """The non-streaming call to send as a stream, or None."""
    if not policy.stream_plain_calls:
        return None
    stream_cls = _sdk.plain_call_stream_class(
        client, cast_to, options, extra.get("call"), asynchronous=asynchronous
    )
    return None if stream_cls is None else PlainCall(client, cast_to, options, stream_cls)


def request_sync(
    wrapped: Callable[..., Any], client: Any, policy: Policy, *args: Any, **kwargs: Any
) -> Any:
    """The guarded `SyncAPIClient._request` (`request` before the SDK had tracing)."""
    cast_to, options, stream, stream_cls, extra = _bind(*args, **kwargs)
    _sdk.apply_keepalive(client, policy.tcp_keepalive)
    plain = None if stream else _plain_call(client, policy, cast_to, options, extra, False)
    if plain is not None:
        return _plain_sync(wrapped, client, policy, plain, extra)
    call = GuardedCall(
        client, cast_to, options, stream=stream, policy=policy, sdk_call=extra.get("call")
    )
    send = functools.partial(wrapped, cast_to, stream=stream, stream_cls=stream_cls, **extra)
    result = open_sync(call, send)
    if stream:
        return adopt_sync(call, result, send)
    call.succeeded(result)
    return result


def _plain_sync(
    wrapped: Callable[..., Any], client: Any, policy: Policy, plain: PlainCall, extra: Any
) -> Any:
    """A non-streaming call sent as a stream; the caller gets the same message."""
    cast_to = plain.cast_to
    call = GuardedCall(
        client, cast_to, plain.options, stream=True, policy=policy, sdk_call=extra.get("call")
    )

    def send(attempt_options: Any) -> Any:
        stream = wrapped(
            cast_to, attempt_options, stream=True, stream_cls=plain.stream_cls, **extra
        )
        parsing = plain.json_answer(stream, call.body_read_timeout(), call.state.attempt - 1)
        if parsing is not None:
            plain.answered(stream, parsing)
        return stream

    stream = open_sync(call, send)
    try:
        delivery = drain_sync(call, stream, send)
    except anthropic.APIStatusError as err:
        plain.raise_as_plain(err)
        raise
    if plain.answer is not None:
        return plain.answer
    return plain.rebuilt(stream, delivery, call.state.attempt - 1)


async def request_async(
    wrapped: Callable[..., Any], client: Any, policy: Policy, *args: Any, **kwargs: Any
) -> Any:
    """The guarded `AsyncAPIClient._request` (`request` before the SDK had tracing)."""
    cast_to, options, stream, stream_cls, extra = _bind(*args, **kwargs)
    _sdk.apply_keepalive(client, policy.tcp_keepalive)
    plain = None if stream else _plain_call(client, policy, cast_to, options, extra, True)
    if plain is not None:
        return await _plain_async(wrapped, client, policy, plain, extra)
    call = GuardedCall(
        client, cast_to, options, stream=stream, policy=policy, sdk_call=extra.get("call")
    )
    send = functools.partial(wrapped, cast_to, stream=stream, stream_cls=stream_cls, **extra)
    result = await open_async(call, send)
    if stream:
        return adopt_async(call, result, send)
    call.succeeded(result)
    return result


async def _plain_async(
    wrapped: Callable[..., Any], client: Any, policy: Policy, plain: PlainCall, extra: Any
) -> Any:
    """`_plain_sync` for the async client."""
    cast_to = plain.cast_to
    call = GuardedCall(
        client, cast_to, plain.options, stream=True, policy=policy, sdk_call=extra.get("call")
    )

    async def send(attempt_options: Any) -> Any:
        stream = await wrapped(
            cast_to, attempt_options, stream=True, stream_cls=plain.stream_cls, **extra
        )
        parsing = plain.json_answer(stream, call.body_read_timeout(), call.state.attempt - 1)
        if parsing is not None:
            plain.answered(stream, await parsing)
        return stream

    stream = await open_async(call, send)
    try:
        delivery = await drain_async(call, stream, send)
    except anthropic.APIStatusError as err:
        plain.raise_as_plain(err)
        raise
    if plain.answer is not None:
        return plain.answer
    return await plain.rebuilt(stream, delivery, call.state.attempt - 1)
