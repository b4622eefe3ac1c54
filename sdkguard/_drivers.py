"""The guarded `request` of the sync and async clients: open, then hand streams to `_stream`.

Loaded when the SDK is patched (with anthropic), never by `import sdkguard`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdkguard._call import GuardedCall, open_async, open_sync
from sdkguard._policy import Policy
from sdkguard._sdk import checked, is_guarded_request
from sdkguard._stream import adopt_async, adopt_sync

__all__ = ["is_guarded_request", "request_async", "request_sync"]


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


def request_sync(
    wrapped: Callable[..., Any], client: Any, policy: Policy, *args: Any, **kwargs: Any
) -> Any:
    """The guarded `SyncAPIClient._request` (`request` before the SDK had tracing)."""
    cast_to, options, stream, stream_cls, extra = _bind(*args, **kwargs)
    call = GuardedCall(
        client, cast_to, options, stream=stream, policy=policy, sdk_call=extra.get("call")
    )

    def send(attempt_options: Any) -> Any:
        return checked(
            cast_to,
            wrapped(cast_to, attempt_options, stream=stream, stream_cls=stream_cls, **extra),
        )

    result = open_sync(call, send)
    if stream:
        return adopt_sync(call, result, send)
    call.succeeded(result)
    return result


async def request_async(
    wrapped: Callable[..., Any], client: Any, policy: Policy, *args: Any, **kwargs: Any
) -> Any:
    """The guarded `AsyncAPIClient._request` (`request` before the SDK had tracing)."""
    cast_to, options, stream, stream_cls, extra = _bind(*args, **kwargs)
    call = GuardedCall(
        client, cast_to, options, stream=stream, policy=policy, sdk_call=extra.get("call")
    )

    async def send(attempt_options: Any) -> Any:
        return checked(
            cast_to,
            await wrapped(cast_to, attempt_options, stream=stream, stream_cls=stream_cls, **extra),
        )

    result = await open_async(call, send)
    if stream:
        return adopt_async(call, result, send)
    call.succeeded(result)
    return result
