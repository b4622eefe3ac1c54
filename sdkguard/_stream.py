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

import anyio

from sdkguard import _sdk
from sdkguard._call import GuardedCall, Step, open_async, open_sync

__all__ = ["Delivery", "GuardedEvents", "adopt_async", "adopt_sync", "guard_of"]

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
    in garbage collection, and `partial_message` is only needed when a stream breaks. The
    message and its blocks are kept as their JSON too, a few hundred bytes where the parsed
    objects take kilobytes for the whole life of the stream.
    """

    __slots__ = ("blocks", "committed", "complete", "extras", "held", "message", "stop")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.committed = False
        # The message is complete once `message_delta` (stop reason, final usage) arrived:
        # a body that then ends without `message_stop` has lost nothing.
        self.complete = False
        self.held: list[Any] = []
        self.message: _sdk.Frozen | None = None
        self.blocks: dict[int, list[Any]] = {}
        """By index: the block as it started (frozen), then the text of each delta."""
        self.extras: dict[int, dict[str, Any]] | None = None
        self.stop: tuple[Any, Any, Any] | None = None
        """`message_delta`'s stop reason, stop sequence and output tokens."""

    def hold(self, event: Any) -> list[Any] | None:
        """Before the commit point: keep `event`, or return every event to release now."""
        self.held.append(event)
        if event.type not in COMMIT_EVENTS:
            return None
        self.committed = True
        # The list itself is released: the drivers pop the events from it as they deliver them.
        for item in self.held:
            self.add(item)
        return self.held

    def add(self, event: Any) -> None:
        """Record a delivered event (after the commit point)."""
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            field = _DELTA_TEXT.get(delta.type)
            if field is not None:
                self.blocks[event.index].append(getattr(delta, field))
            else:  # signature_delta, citations_delta: rare, kept by field
                if self.extras is None:
                    self.extras = {}
                extra = self.extras.setdefault(event.index, {})
                if delta.type == "signature_delta":
                    extra["signature"] = delta.signature
                elif delta.type == "citations_delta":
                    extra.setdefault("citations", []).append(_sdk.plain(delta.citation))
        elif kind == "content_block_start":
            self.blocks[event.index] = [_sdk.freeze(event.content_block)]
        elif kind == "message_start":
            self.message = _sdk.freeze(event.message)
        elif kind == "message_delta":
            usage = getattr(event, "usage", None)
            output_tokens = None if usage is None else usage.output_tokens
            self.stop = (event.delta.stop_reason, event.delta.stop_sequence, output_tokens)
            self.complete = True
        elif kind == "message_stop":
            self.complete = True

    def partial_message(self) -> Any:
        """The message as far as it was delivered, of the SDK's own message class."""
        if self.message is None:
            return None
        message_class, message = _sdk.thaw(self.message)
        extras = self.extras or {}
        message["content"] = [
            _rebuild_block(_sdk.thaw(block[0])[1], "".join(block[1:]), extras.get(index))
            for index, block in sorted(self.blocks.items())
        ]
        if self.stop is not None:
            message["stop_reason"], message["stop_sequence"], output_tokens = self.stop
            usage = message.get("usage")
            if output_tokens is not None and isinstance(usage, dict):
                usage["output_tokens"] = output_tokens
        return _sdk.construct(message_class, message)


def _rebuild_block(block: dict[str, Any], text: str, extra: dict[str, Any] | None) -> Any:
    """A content block as far as it was delivered, from its start and its deltas."""
    citations = extra.get("citations") if extra else None
    if extra:
        block.update(extra)
    kind = block.get("type")
    if kind == "text":
        block["text"] = (block.get("text") or "") + text
        if citations:
            block["citations"] = [*(block.get("citations") or ()), *citations]
    elif kind == "thinking":
        block["thinking"] = (block.get("thinking") or "") + text
    elif text and "input" in block:  # tool_use, server_tool_use, mcp_tool_use ...
        import jiter

        try:
            block["input"] = jiter.from_json(text.encode(), partial_mode="trailing-strings")
        except ValueError:
            block["input"] = {}
    return block


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
        self.outer: weakref.ref[Any] | None = weakref.ref(outer)
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
        outer = None if self.outer is None else self.outer()
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
            self.outer = None
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
                        event = None  # the consumer alone owns the events released now
                        self.settle()
                        released.reverse()
                        while released:
                            yield released.pop()
                    blocks, add = delivery.blocks, delivery.add
                    for event in inner:
                        # Text deltas are nearly every event: record them inline.
                        if event.type == "content_block_delta" and event.delta.type == "text_delta":
                            blocks[event.index].append(event.delta.text)
                        else:
                            add(event)
                        yield event
                    if not delivery.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    inner.close()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    step = self.failed(err)
                    if step.error is not None:
                        # Giving up: deliver what was held back, as the SDK alone would have.
                        yield from self.held_back()
                        if step.error is err:
                            raise
                        raise step.error from err
                    time.sleep(step.wait)
                    self._restart()
                    continue
                call.succeeded(message=self.final_message())
                return
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
                        event = None  # the consumer alone owns the events released now
                        self.settle()
                        released.reverse()
                        while released:
                            yield released.pop()
                    blocks, add = delivery.blocks, delivery.add
                    async for event in inner:
                        # Text deltas are nearly every event: record them inline.
                        if event.type == "content_block_delta" and event.delta.type == "text_delta":
                            blocks[event.index].append(event.delta.text)
                        else:
                            add(event)
                        yield event
                    if not delivery.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    await inner.aclose()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    step = self.failed(err)
                    if step.error is not None:
                        # Giving up: deliver what was held back, as the SDK alone would have.
                        for item in self.held_back():
                            yield item
                        if step.error is err:
                            raise
                        raise step.error from err
                    await anyio.sleep(step.wait)
                    await self._restart()
                    continue
                call.succeeded(message=self.final_message())
                return
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


class GuardedEvents:
    """What a guarded stream iterates: its guard's event generator, with the guard beside it.

    `for` loops get the generator itself, so iterating adds no layer; the guard is found here
    (`guard_of`) rather than in an attribute of its own, which would grow every stream's
    `__dict__`. The guard does not refer back to this object: no reference cycle.
    """

    __slots__ = ("events", "guard")

    def __init__(self, guard: _Guard, events: Any) -> None:
        self.guard = guard
        self.events = events

    def __iter__(self) -> Any:
        return self.events

    def __next__(self) -> Any:
        return next(self.events)

    def __aiter__(self) -> Any:
        return self.events

    def __anext__(self) -> Any:
        return self.events.__anext__()


def guard_of(stream: Any) -> _Guard | None:
    """The guard of a stream sdkguard adopted, or None."""
    events = vars(stream).get("_iterator")
    return events.guard if isinstance(events, GuardedEvents) else None


def adopt_sync(call: GuardedCall, result: Any, send: Callable[[Any], Any]) -> Any:
    """Guard the body of the stream the first attempt returned; return it to the caller."""
    return _adopt(_SyncGuard, call, result, send)


def adopt_async(call: GuardedCall, result: Any, send: Callable[[Any], Awaitable[Any]]) -> Any:
    """`adopt_sync` for the async client."""
    return _adopt(_AsyncGuard, call, result, send)


def _adopt(
    guard_class: type[_SyncGuard | _AsyncGuard],
    call: GuardedCall,
    result: Any,
    send: Callable[[Any], Any],
) -> Any:
    if not _sdk.is_event_stream(result):
        # A raw response (`with_raw_response`, `with_streaming_response`): the caller reads the
        # bytes itself, so only the opening was restartable; the idle limit still applies.
        response = _sdk.http_response_of(result)
        if response is not None:
            _sdk.set_body_read_timeout(response, call.body_read_timeout())
        call.succeeded(result)
        return result
    guard = guard_class(call, result, send)
    guard.prime(result)
    events = guard.events()
    guard.inner = _sdk.take_iterator(result, GuardedEvents(guard, events))
    _end_spans_when_dropped(result, call)
    return result


def _end_spans_when_dropped(stream: Any, call: GuardedCall) -> None:
    # A stream dropped before it was ever read never runs its guard's `finally`.
    if call.telemetry is not None:
        weakref.finalize(stream, call.telemetry.finished)
