"""Guarded streams: the commit point, transparent restarts, and `partial_message`.

`Delivery` is the I/O-free record of what one attempt's message has delivered; the sync and
async guards below only move events and call into `GuardedCall` when something fails.

The commit point: `message_start` and `content_block_start` (and anything else that is not
content) are held back until the first content event arrives, then released together.
Until then a failed attempt can be replaced by a new one without the consumer noticing.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anthropic
import anyio

from sdkguard import _sdk
from sdkguard._call import GuardedCall, Step, open_async, open_sync

__all__ = ["Delivery", "adopt_async", "adopt_sync"]

# The first of these to arrive is the commit point: content has reached the consumer.
COMMIT_EVENTS = frozenset(
    {"content_block_delta", "content_block_stop", "message_delta", "message_stop"}
)
# Which attribute of each delta carries its text; citations are kept whole.
_DELTA_TEXT = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}


class Delivery:
    """What one attempt has delivered: held-back events, then content fragments (as strings).

    Strings, not event objects: keeping every event costs a third of a stream's throughput
    in garbage collection, and `partial_message` is only needed when a stream breaks.
    """

    __slots__ = ("blocks", "committed", "complete", "extras", "held", "message_delta", "parts")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.committed = False
        # The message is complete once `message_delta` (stop reason, final usage) arrived:
        # a body that then ends without `message_stop` has lost nothing.
        self.complete = False
        self.held: list[Any] = []
        self.blocks: dict[int, Any] = {}
        self.parts: dict[int, list[str]] = {}
        self.extras: dict[int, dict[str, Any]] = {}
        self.message_delta: Any = None

    def hold(self, event: Any) -> list[Any] | None:
        """Before the commit point: keep `event`, or return every event to release now."""
        self.held.append(event)
        if event.type not in COMMIT_EVENTS:
            return None
        self.committed = True
        released, self.held = self.held, []
        for item in released:
            self.add(item)
        return released

    def add(self, event: Any) -> None:
        """Record a delivered event (after the commit point)."""
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            field = _DELTA_TEXT.get(delta.type)
            if field is not None:
                self.parts[event.index].append(getattr(delta, field))
            else:  # signature_delta, citations_delta: rare, kept by field
                extra = self.extras.setdefault(event.index, {})
                if delta.type == "signature_delta":
                    extra["signature"] = delta.signature
                elif delta.type == "citations_delta":
                    extra.setdefault("citations", []).append(delta.citation)
        elif kind == "content_block_start":
            self.blocks[event.index] = event.content_block
            self.parts[event.index] = []
        elif kind == "message_start":
            self.blocks = {-1: event.message}
        elif kind == "message_delta":
            self.message_delta = event
            self.complete = True
        elif kind == "message_stop":
            self.complete = True

    def partial_message(self) -> Any:
        """The message as far as it was delivered, of the SDK's own message class."""
        message = self.blocks.get(-1)
        if message is None:
            return None
        content = [
            _rebuild_block(block, "".join(self.parts.get(index, ())), self.extras.get(index))
            for index, block in sorted(self.blocks.items())
            if index >= 0
        ]
        update: dict[str, Any] = {"content": content}
        if self.message_delta is not None:
            delta = self.message_delta.delta
            update["stop_reason"] = delta.stop_reason
            update["stop_sequence"] = delta.stop_sequence
            usage = getattr(self.message_delta, "usage", None)
            if usage is not None and message.usage is not None:
                update["usage"] = _sdk.copy_model(
                    message.usage, {"output_tokens": usage.output_tokens}
                )
        return _sdk.copy_model(message, update)


def _rebuild_block(block: Any, text: str, extra: dict[str, Any] | None) -> Any:
    update: dict[str, Any] = dict(extra or {})
    kind = getattr(block, "type", None)
    if kind == "text":
        update["text"] = block.text + text
        if "citations" in update:
            update["citations"] = [*(block.citations or ()), *update["citations"]]
    elif kind == "thinking":
        update["thinking"] = block.thinking + text
    elif text and hasattr(block, "input"):  # tool_use, server_tool_use, mcp_tool_use ...
        import jiter

        try:
            update["input"] = jiter.from_json(text.encode(), partial_mode="trailing-strings")
        except ValueError:
            update["input"] = {}
    return _sdk.copy_model(block, update) if update else block


class _Guard:
    """What the sync and async guards share: the call, the outward stream, the delivery."""

    __slots__ = (
        "call",
        "closed",
        "delivery",
        "held_end",
        "inner",
        "outer",
        "restart_hook",
        "send",
    )

    def __init__(self, call: GuardedCall, outer: Any, send: Callable[[Any], Any]) -> None:
        self.call = call
        # Weak: the stream holds the guard's generator, and a cycle back to the stream would
        # leave closing a dropped stream to the garbage collector instead of reference counting.
        self.outer = weakref.ref(outer)
        self.send: Callable[[Any], Any] | None = send
        self.delivery = Delivery()
        self.restart_hook: Callable[[], None] | None = None
        """Set while a stream helper consumes events itself (`get_final_message()`): then
        nothing has reached the user, and a restart after the commit point is allowed."""
        self.inner: Any = None
        self.closed = False
        """The caller closed the stream: whatever reading it raises now is not retried."""
        self.held_end: _sdk.HeldEnd | None = None

    def prime(self, attempt_stream: Any) -> None:
        """Prepare a new attempt's stream: body limits, progress watch, its event iterator."""
        call = self.call
        _sdk.set_body_read_timeout(attempt_stream.response, call.body_read_timeout())
        if call.policy.progress_timeout is not None:
            _sdk.watch_progress(attempt_stream, call.policy.progress_timeout)
        if call.telemetry is not None:
            response = attempt_stream.response
            call.telemetry.response(response.headers, response.status_code)
        self.held_end = _sdk.hold_stream_end(attempt_stream.response, replacing=self.held_end)
        outer = self.outer()
        if outer is not None:  # `stream.response` follows the attempt
            outer.response = attempt_stream.response
        self.delivery.reset()

    def committed_to_user(self) -> bool:
        return self.delivery.committed and self.restart_hook is None

    def settle(self) -> None:
        """At the commit point: when no restart can follow, let go of what one needed."""
        if self.call.telemetry is not None:
            self.call.telemetry.first_chunk()
        if self.restart_hook is None:
            self.send = None
            self.call.settle()

    def final_message(self) -> Any:
        """The streamed message, rebuilt only when telemetry wants its usage."""
        return self.delivery.partial_message() if self.call.telemetry is not None else None

    def ended(self) -> None:
        """The stream ended however it ended (closed, broken off): the call's spans end too."""
        if self.held_end is not None:
            self.held_end.release()
        if self.call.telemetry is not None:
            self.call.telemetry.finished(self.delivery.partial_message())

    def held_back(self) -> list[Any]:
        """The events held back at the commit point, handed over once (on giving up)."""
        held, self.delivery.held = self.delivery.held, []
        return held

    def lost_nothing(self, err: Exception) -> bool:
        """The message was whole (`message_delta` had come) when reading the rest failed.

        Losing what follows loses nothing, as when the body ends cleanly there; an `error`
        event is still the API's word, raised as the SDK raises it.
        """
        return self.delivery.complete and not isinstance(err, anthropic.APIStatusError)

    def failed(self, err: Exception) -> Step:
        return self.call.failed(
            err,
            "body",
            committed=self.committed_to_user(),
            partial=self.delivery.partial_message,
        )


class _SyncGuard(_Guard):
    __slots__ = ()

    def events(self) -> Iterator[Any]:
        delivery, call = self.delivery, self.call
        try:
            while True:
                inner = self.inner
                try:
                    if not delivery.committed:
                        released = None
                        for event in inner:
                            released = delivery.hold(event)
                            if released is not None:
                                break
                        if released is None:
                            raise _sdk.IncompleteStream
                        self.settle()
                        yield from released
                        released = None  # the consumer owns them now
                    parts, add = delivery.parts, delivery.add
                    for event in inner:
                        # Text deltas are nearly every event: record them inline.
                        if event.type == "content_block_delta" and event.delta.type == "text_delta":
                            parts[event.index].append(event.delta.text)
                        else:
                            add(event)
                        yield event
                    if not delivery.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    inner.close()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    if self.lost_nothing(err):
                        call.succeeded(message=self.final_message())
                        return
                    step = self.failed(err)
                    if step.error is not None:
                        # Giving up: deliver what was held back, as the SDK alone would have.
                        yield from self.held_back()
                        if step.error is err:
                            raise
                        raise step.error from err
                else:
                    call.succeeded(message=self.final_message())
                    return
                # Out of the handler: what the next attempt raises must not carry this
                # failure as its context, which is where failures are classified from.
                time.sleep(step.wait)
                self._restart()
        finally:
            self.inner.close()
            self.ended()

    def _restart(self) -> None:
        if self.restart_hook is not None:
            self.restart_hook()
        assert self.send is not None, "a settled stream never restarts"
        attempt_stream = open_sync(self.call, self.send)
        self.prime(attempt_stream)
        self.inner = _sdk.own_iterator(attempt_stream)


class _AsyncGuard(_Guard):
    __slots__ = ()

    async def events(self) -> AsyncIterator[Any]:
        delivery, call = self.delivery, self.call
        try:
            while True:
                inner = self.inner
                try:
                    if not delivery.committed:
                        released = None
                        async for event in inner:
                            released = delivery.hold(event)
                            if released is not None:
                                break
                        if released is None:
                            raise _sdk.IncompleteStream
                        self.settle()
                        for item in released:
                            yield item
                        released = None  # the consumer owns them now
                    parts, add = delivery.parts, delivery.add
                    async for event in inner:
                        # Text deltas are nearly every event: record them inline.
                        if event.type == "content_block_delta" and event.delta.type == "text_delta":
                            parts[event.index].append(event.delta.text)
                        else:
                            add(event)
                        yield event
                    if not delivery.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    await inner.aclose()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    if self.lost_nothing(err):
                        call.succeeded(message=self.final_message())
                        return
                    step = self.failed(err)
                    if step.error is not None:
                        # Giving up: deliver what was held back, as the SDK alone would have.
                        for item in self.held_back():
                            yield item
                        if step.error is err:
                            raise
                        raise step.error from err
                else:
                    call.succeeded(message=self.final_message())
                    return
                # Out of the handler, as in the sync guard.
                await anyio.sleep(step.wait)
                await self._restart()
        finally:
            await self.inner.aclose()
            self.ended()

    async def _restart(self) -> None:
        if self.restart_hook is not None:
            self.restart_hook()
        assert self.send is not None, "a settled stream never restarts"
        attempt_stream = await open_async(self.call, self.send)
        self.prime(attempt_stream)
        self.inner = _sdk.own_iterator(attempt_stream)


def adopt_sync(call: GuardedCall, result: Any, send: Callable[[Any], Any]) -> Any:
    """Guard the body of the stream the first attempt returned; return it to the caller."""
    if not _sdk.is_event_stream(result):
        # A raw response (`with_raw_response`, `with_streaming_response`): the caller reads the
        # bytes itself, so only the opening was restartable; the idle limit still applies.
        response = _sdk.http_response_of(result)
        if response is not None:
            _sdk.set_body_read_timeout(response, call.body_read_timeout())
        call.succeeded(result)
        return result
    guard = _SyncGuard(call, result, send)
    guard.prime(result)
    guard.inner = _sdk.take_iterator(result, guard.events())
    result._sdkguard = guard
    _end_spans_when_dropped(result, call)
    return result


def adopt_async(call: GuardedCall, result: Any, send: Callable[[Any], Awaitable[Any]]) -> Any:
    """`adopt_sync` for the async client."""
    if not _sdk.is_event_stream(result):
        response = _sdk.http_response_of(result)
        if response is not None:
            _sdk.set_body_read_timeout(response, call.body_read_timeout())
        call.succeeded(result)
        return result
    guard = _AsyncGuard(call, result, send)
    guard.prime(result)
    guard.inner = _sdk.take_iterator(result, guard.events())
    result._sdkguard = guard
    _end_spans_when_dropped(result, call)
    return result


def _end_spans_when_dropped(stream: Any, call: GuardedCall) -> None:
    # A stream dropped before it was ever read never runs its guard's `finally`.
    if call.telemetry is not None:
        weakref.finalize(stream, call.telemetry.finished)
