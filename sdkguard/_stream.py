"""Guarded streams: the commit point, transparent restarts, and `partial_message`.

The sync and async guards below drive the stream protocol (`_protocol.StreamProtocol`, no
I/O: what to hold, release and record) with the SDK's events; they only move events, and call
into `GuardedCall` when something fails.

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
from sdkguard._protocol import StreamProtocol

__all__ = [
    "GuardedEvents",
    "adopt_async",
    "adopt_sync",
    "drain_async",
    "drain_sync",
    "guard_of",
]

_NO_FIELDS: dict[str, Any] = {}  # the fields of an event that is not an SDK model


class _Guard:
    """What the sync and async guards share: the call, the outward stream, the protocol."""

    __slots__ = (
        "call",
        "closed",
        "held_end",
        "inner",
        "outer",
        "protocol",
        "restart_hook",
        "send",
    )

    def __init__(self, call: GuardedCall, outer: Any, send: Callable[[Any], Any]) -> None:
        self.call = call
        # Weak: the stream holds the guard's generator, and a cycle back to the stream would
        # leave closing a dropped stream to the garbage collector instead of reference counting.
        self.outer: weakref.ref[Any] | None = weakref.ref(outer)
        self.send: Callable[[Any], Any] | None = send
        self.protocol = StreamProtocol()
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
        _sdk.adapt_stream(attempt_stream)
        if call.policy.progress_timeout is not None:
            _sdk.watch_progress(attempt_stream, call.policy.progress_timeout)
        if call.telemetry is not None:
            response = attempt_stream.response
            call.telemetry.response(response.headers, response.status_code)
        self.held_end = _sdk.hold_stream_end(attempt_stream.response, replacing=self.held_end)
        outer = None if self.outer is None else self.outer()
        if outer is not None and outer is not attempt_stream:  # `.response` follows the attempt
            outer.response = attempt_stream.response
        self.protocol.restart()

    def committed_to_user(self) -> bool:
        return self.protocol.committed and self.restart_hook is None

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
        return self.protocol.partial_message() if self.call.telemetry is not None else None

    def ended(self) -> None:
        """The stream ended however it ended (closed, broken off): the call's spans end too."""
        if self.held_end is not None:
            self.held_end.release()
        if self.call.telemetry is not None:
            self.call.telemetry.finished(self.protocol.partial_message())

    def failed(self, err: Exception) -> Step:
        return self.call.failed(
            err,
            "body",
            committed=self.committed_to_user(),
            partial=self.protocol.partial_message,
        )


class _SyncGuard(_Guard):
    __slots__ = ()

    def events(self) -> Iterator[Any]:
        protocol, call = self.protocol, self.call
        try:
            while True:
                inner = self.inner
                try:
                    if not protocol.committed:
                        released = None
                        for event in inner:
                            released = protocol.hold(event.type, event)
                            if released is not None:
                                break
                        if released is None:
                            raise _sdk.IncompleteStream
                        event = None  # the consumer alone owns the events released now
                        self.settle()
                        released.reverse()
                        while released:
                            yield released.pop()
                    blocks, record = protocol.blocks, protocol.record
                    for event in inner:
                        # Text deltas are nearly every event: recorded inline, read from
                        # the models' field dicts (their attribute access costs 4x more).
                        fields = getattr(event, "__dict__", _NO_FIELDS)
                        is_delta = fields.get("type") == "content_block_delta"
                        delta = fields["delta"].__dict__ if is_delta else _NO_FIELDS
                        if delta.get("type") == "text_delta":
                            # A `try` costs nothing per event here, `suppress` a context.
                            try:  # noqa: SIM105
                                blocks[fields["index"]].append(delta["text"])
                            except KeyError:  # a block that never started: as in `record`
                                pass
                        else:
                            record(event)
                        yield event
                    if not protocol.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    inner.close()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    if protocol.whole(isinstance(err, anthropic.APIStatusError)):
                        call.succeeded(message=self.final_message())
                        return
                    step = self.failed(err)
                    if step.error is not None:
                        # Giving up: deliver what was held back, as the SDK alone would have.
                        yield from protocol.take_held()
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
        protocol, call = self.protocol, self.call
        try:
            while True:
                inner = self.inner
                try:
                    if not protocol.committed:
                        released = None
                        async for event in inner:
                            released = protocol.hold(event.type, event)
                            if released is not None:
                                break
                        if released is None:
                            raise _sdk.IncompleteStream
                        event = None  # the consumer alone owns the events released now
                        self.settle()
                        released.reverse()
                        while released:
                            yield released.pop()
                    blocks, record = protocol.blocks, protocol.record
                    async for event in inner:
                        # Recorded as in the sync guard.
                        fields = getattr(event, "__dict__", _NO_FIELDS)
                        is_delta = fields.get("type") == "content_block_delta"
                        delta = fields["delta"].__dict__ if is_delta else _NO_FIELDS
                        if delta.get("type") == "text_delta":
                            # A `try` costs nothing per event here, `suppress` a context.
                            try:  # noqa: SIM105
                                blocks[fields["index"]].append(delta["text"])
                            except KeyError:  # a block that never started: as in `record`
                                pass
                        else:
                            record(event)
                        yield event
                    if not protocol.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    await inner.aclose()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    if protocol.whole(isinstance(err, anthropic.APIStatusError)):
                        call.succeeded(message=self.final_message())
                        return
                    step = self.failed(err)
                    if step.error is not None:
                        # Giving up: deliver what was held back, as the SDK alone would have.
                        for item in protocol.take_held():
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
    return _adopt(_SyncGuard, call, result, send, _sdk.parsing)


def adopt_async(call: GuardedCall, result: Any, send: Callable[[Any], Awaitable[Any]]) -> Any:
    """`adopt_sync` for the async client."""
    return _adopt(_AsyncGuard, call, result, send, _sdk.parsing_async)


def _adopt(
    guard_class: type[_SyncGuard | _AsyncGuard],
    call: GuardedCall,
    result: Any,
    send: Callable[[Any], Any],
    parsing: Callable[[Any], Any],
) -> Any:
    if not _sdk.is_event_stream(result):
        return _adopt_raw(
            call,
            result,
            lambda stream: _adopt(guard_class, call, stream, parsing(send), parsing),
        )
    if guard_of(result) is not None:
        return result
    _guard(guard_class, call, result, send)
    _end_spans_when_dropped(result, call)
    return result


def _guard(
    guard_class: type[_SyncGuard | _AsyncGuard],
    call: GuardedCall,
    stream: Any,
    send: Callable[[Any], Any],
) -> _Guard:
    """Put a guard between `stream` and whoever reads it."""
    guard = guard_class(call, stream, send)
    guard.prime(stream)
    guard.inner = _sdk.take_iterator(stream, GuardedEvents(guard, guard.events()))
    return guard


def drain_sync(call: GuardedCall, stream: Any, send: Callable[[Any], Any]) -> StreamProtocol:
    """Read `stream` to its end under a guard, for a caller that sees nothing until then.

    Nothing of the message reaches anyone before it is complete, so every retryable failure,
    at any point, restarts it. Returns what the attempt that finished the call delivered.
    """
    guard = _guard(_SyncGuard, call, stream, send)
    guard.restart_hook = _nothing_delivered
    # Read through the stream itself, as a caller would: the SDK's span observer sees it.
    for _ in stream:
        pass
    return guard.protocol


async def drain_async(
    call: GuardedCall, stream: Any, send: Callable[[Any], Awaitable[Any]]
) -> StreamProtocol:
    """`drain_sync` for the async client."""
    guard = _guard(_AsyncGuard, call, stream, send)
    guard.restart_hook = _nothing_delivered
    async for _ in stream:
        pass
    return guard.protocol


def _nothing_delivered() -> None:
    # A drained stream's restart has nothing to forget: `prime` restarts the protocol.
    pass


def _adopt_raw(call: GuardedCall, result: Any, adopt: Callable[[Any], Any]) -> Any:
    """A raw response (`with_raw_response`, `with_streaming_response`) of the first attempt.

    The idle limit applies to its body. A stream's raw response that the caller parses becomes
    a guarded stream (`adopt`), restartable before content; one whose bytes the caller reads
    itself was restartable only until its headers arrived.
    """
    response = _sdk.http_response_of(result)
    if response is not None:
        _sdk.set_body_read_timeout(response, call.body_read_timeout())
    if call.stream and _sdk.on_parsed_stream(result, adopt):
        _end_spans_when_dropped(result, call)  # when the caller never parses it
    else:
        call.succeeded(result)
    return result


def _end_spans_when_dropped(stream: Any, call: GuardedCall) -> None:
    # A stream dropped before it was ever read never runs its guard's `finally`.
    if call.telemetry is not None:
        weakref.finalize(stream, call.telemetry.finished)
