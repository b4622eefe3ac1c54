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

from sdkguard import _continuation, _sdk
from sdkguard._call import GuardedCall, Step, logger, open_async, open_sync
from sdkguard._continuation import Holder
from sdkguard._protocol import DELTA_TEXT, StreamProtocol

__all__ = [
    "GuardedEvents",
    "adopt_async",
    "adopt_sync",
    "drain_async",
    "drain_sync",
    "guard_of",
]

_NO_FIELDS: dict[str, Any] = {}  # the fields of an event that is not an SDK model


class SdkStreamProtocol(StreamProtocol):
    """The stream protocol of the SDK's streams: its events are the SDK's event objects."""

    __slots__ = ()

    def record(self, event: Any) -> None:
        """Record a delivered event (after the commit point).

        The guards record text deltas, nearly every event, inline (`blocks`); this is for
        everything else.
        """
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            field = DELTA_TEXT.get(delta.type)
            if field is not None:
                self.add_text(event.index, getattr(delta, field))
            elif delta.type == "signature_delta":
                self._extra(event.index)["signature"] = delta.signature
            elif delta.type == "citations_delta":
                citation = _sdk.wire_dict(delta.citation)
                self._extra(event.index).setdefault("citations", []).append(citation)
            else:  # compaction_delta, or a type newer than this code: kept whole
                self._extra(event.index).setdefault("other", []).append(_sdk.wire_dict(delta))
        elif kind == "content_block_start":
            self.blocks[event.index] = [_sdk.freeze_block(event.content_block)]
            self.open_block = event.index
        elif kind == "content_block_stop":
            self.open_block = None
        elif kind == "message_start":
            self.message = _sdk.freeze(event.message)
        elif kind == "message_delta":
            self.message_delta = event
            self.complete = True
        elif kind == "message_stop":
            self.complete = self.stopped = True

    def event_data(self, event: Any) -> dict[str, Any]:
        return _sdk.wire_dict(event)

    def partial_message(self) -> Any:
        """The message as far as it was delivered, of the SDK's own message class."""
        data = self.message_data()
        if data is None or self.message is None:
            return data
        return _sdk.construct(self.message[0], data)


class _Guard:
    """What the sync and async guards share: the call, the outward stream, the protocol."""

    __slots__ = (
        "call",
        "closed",
        "event_class",
        "events_before",
        "held_end",
        "inner",
        "outer",
        "protocol",
        "response",
        "restart_hook",
        "resume",
        "send",
    )

    def __init__(self, call: GuardedCall, outer: Any, send: Callable[[Any], Any]) -> None:
        self.call = call
        # Weak: the stream holds the guard's generator, and a cycle back to the stream would
        # leave closing a dropped stream to the garbage collector instead of reference counting.
        self.outer: weakref.ref[Any] | None = weakref.ref(outer)
        self.send: Callable[[Any], Any] | None = send
        self.protocol = SdkStreamProtocol()
        self.event_class: Any = _sdk.event_class(outer)
        """The type the stream parses its events into (for the events sdkguard makes)."""
        self.restart_hook: Callable[[], None] | None = None
        """Set while a stream helper consumes events itself (`get_final_message()`): then
        nothing has reached the user, and a restart after the commit point is allowed."""
        self.inner: Any = None
        self.closed = False
        """The caller closed the stream: whatever reading it raises now is not retried."""
        self.held_end: _sdk.HeldEnd | None = None
        self.resume: _Resume | None = None
        """Set when a broken message is continued (`resume`): see `_Resume`."""
        self.response: Any = None
        """The current attempt's http response (its request id and byte count)."""
        self.events_before = 0
        """Events the protocol had recorded when the current attempt began (a continuation
        records into the message of the attempts before it)."""

    def prime(self, attempt_stream: Any, *, continuing: bool = False) -> None:
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
        self.response = attempt_stream.response
        if continuing:
            self.events_before = self.protocol.events_received()[0]
        else:
            self.events_before = 0
            self.protocol.restart()

    def committed_to_user(self) -> bool:
        return self.protocol.committed and self.restart_hook is None

    def settle(self) -> None:
        """At the commit point: when no restart can follow, let go of what one needed."""
        if self.call.telemetry is not None:
            self.call.telemetry.first_chunk()
        if self.restart_hook is None and self.resume is None:
            self.send = None
            self.outer = None
            self.call.settle()

    def final_message(self) -> Any:
        """The streamed message, rebuilt only when telemetry wants its usage."""
        return self.protocol.partial_message() if self.call.telemetry is not None else None

    def missing_stop(self) -> list[Any]:
        """A `message_stop` for a whole message whose body failed after `message_delta` (a
        reset, a silence): the consumer reads a message that ends as every message ends. A
        body that ends cleanly without one is the server's word, passed on as it is."""
        if self.protocol.stopped:
            return []
        self.protocol.stopped = True
        return [_sdk.construct(self.event_class, {"type": "message_stop"})]

    def ended(self) -> None:
        """The stream ended however it ended (closed, broken off): the call's spans end too."""
        if self.held_end is not None:
            self.held_end.release()
        if self.call.telemetry is not None:
            self.call.telemetry.finished(self.protocol.partial_message())

    def failed(self, err: Exception, held: list[Any] | tuple[()] = ()) -> Step:
        """`held`: events a `resume` holder keeps back, received but not recorded yet."""
        count, last = self.protocol.events_received()
        count += len(held) - self.events_before
        if held:
            last = held[-1].type
        if isinstance(err, anthropic.APIStatusError):  # an `error` event broke the stream
            count, last = count + 1, "error"
        return self.call.failed(
            err,
            "body",
            committed=self.committed_to_user(),
            partial=self.protocol.partial_message,
            continuation=self.resume.plan if self.resume and self.protocol.committed else None,
            response=self.response,
            events=(count, last if count else None),
        )

    # -- resume: one message across attempts -------------------------------------------------

    def deliver(self, event: Any, holder: Holder, held: list[Any]) -> Iterator[Any]:
        """The events to hand on for `event`, with `resume` on: blocks that are not text are
        held until the message goes past them, and what goes out is recorded."""
        kind = event.type
        block_type = event.content_block.type if kind == "content_block_start" else None
        step = holder.step(kind, block_type)
        if step == Holder.HOLD:
            held.append(event)
            return
        if step == Holder.RELEASE:
            held.append(event)
            batch, held[:] = list(held), []
        else:
            batch = [event]
        protocol = self.protocol
        for item in batch:
            if protocol.committed:
                protocol.record(item)
                yield item
                continue
            released = protocol.hold(item.type, item)
            if released is not None:
                self.settle()
                released.reverse()
                while released:
                    yield released.pop()

    def spliced(self, event: Any) -> list[Any]:
        """A continuation's event as the events of the message being continued."""
        resume = self.resume
        assert resume is not None and resume.splicer is not None
        out = resume.splicer.feed(_sdk.wire_dict(event))
        return [_sdk.construct(self.event_class, data) for data in out]


class _Resume:
    """What continuing one message needs: the original request, what each attempt billed,
    the splice of the current continuation."""

    __slots__ = (
        "body",
        "guard",
        "inputs",
        "model",
        "planned",
        "prefill",
        "splicer",
        "user_turn",
    )

    def __init__(self, guard: _Guard, body: Any) -> None:
        self.guard = guard
        self.body = body
        self.model = str(body.get("model")) if isinstance(body, dict) else ""
        self.inputs: list[dict[str, Any]] = []
        """The input usage of each attempt abandoned so far."""
        self.splicer: _continuation.Splicer | None = None
        self.planned: _continuation.Plan | None = None
        self.prefill = False
        self.user_turn: Any = None

    def plan(self) -> str | None:
        """Plan the next continuation; None, or why the message cannot be continued."""
        protocol = self.guard.protocol
        planned = _continuation.plan(
            self.body,
            self.model,
            protocol.message_data(),
            block_indices=protocol.blocks,
            open_block=protocol.open_block,
            previous=self.splicer,
            inputs=self.inputs,
        )
        if isinstance(planned, str):
            return planned
        self.planned = planned
        self.prefill, self.user_turn = planned.prefill, planned.user_turn
        self.inputs = planned.inputs
        return None

    def begin(self) -> None:
        """The planned continuation is the next attempt's request."""
        assert self.planned is not None
        self.splicer = self.planned.splicer
        self.guard.call.continue_with(self.planned.body)

    def start_over(self) -> None:
        """The message is not continued but sent again whole (nothing reached the caller):
        forget the continuations, and send the original request."""
        if self.splicer is not None:
            self.guard.call.continue_with(self.body)
        self.splicer = self.planned = None
        self.inputs = []

    def sent(self, send: Callable[[Any], Any], options: Any) -> Any:
        if not self.prefill:
            return send(options)
        try:
            return send(options)
        except anthropic.BadRequestError as err:
            if not self._refused(err):
                raise
        return send(self._without_prefill(options))

    async def sent_async(self, send: Callable[[Any], Awaitable[Any]], options: Any) -> Any:
        if not self.prefill:
            return await send(options)
        try:
            return await send(options)
        except anthropic.BadRequestError as err:
            if not self._refused(err):
                raise
        return await send(self._without_prefill(options))

    def _refused(self, err: anthropic.BadRequestError) -> bool:
        if not _continuation.is_prefill_refusal(400, err.body):
            return False
        _PREFILL_REFUSED.add(self.model)
        logger.info(
            "%s: %s refuses an assistant prefill; continuing with a user turn (remembered "
            "for this process)",
            self.guard.call.name,
            self.model,
        )
        return True

    def _without_prefill(self, options: Any) -> Any:
        """The same attempt with the user turn in place of the prefill (no attempt spent)."""
        self.prefill = False
        assert self.planned is not None
        splicer = self.planned.splicer
        splicer.stripped = ""
        self.guard.call.continue_with(self.user_turn)
        return _sdk.with_json_body(options, self.user_turn)


_PREFILL_REFUSED = _continuation.PREFILL_REFUSED
"""Models seen refusing an assistant prefill, for the life of the process."""


class _SyncGuard(_Guard):
    __slots__ = ()

    def resuming_events(self) -> Iterator[Any]:
        """`events` with `resume` on: a break after content is continued in the same stream."""
        protocol, call, resume = self.protocol, self.call, self.resume
        assert resume is not None
        try:
            while True:
                inner = self.inner
                holder, held, blocks = Holder(), list[Any](), protocol.blocks
                try:
                    for event in inner:
                        if resume.splicer is None:
                            # A text delta passed on, nearly every event: recorded inline
                            # as in `events` (a delta never changes what the holder does).
                            fields = getattr(event, "__dict__", _NO_FIELDS)
                            if fields.get("type") == "content_block_delta" and (
                                protocol.committed and not holder.holding
                            ):
                                delta = fields["delta"].__dict__
                                if delta.get("type") == "text_delta":
                                    try:  # noqa: SIM105 (as in `events`)
                                        blocks[fields["index"]].append(delta["text"])
                                    except KeyError:  # a block that never started
                                        pass
                                    yield event
                                    continue
                            yield from self.deliver(event, holder, held)
                            continue
                        for item in self.spliced(event):
                            yield from self.deliver(item, holder, held)
                    if not protocol.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    inner.close()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    if protocol.whole(isinstance(err, anthropic.APIStatusError)):
                        yield from self.missing_stop()
                        call.succeeded(message=self.final_message())
                        return
                    step = self.failed(err, held)
                    if step.error is not None:
                        yield from protocol.take_held()
                        if step.error is err:
                            raise
                        raise step.error from err
                else:
                    call.succeeded(message=self.final_message())
                    return
                time.sleep(step.wait)
                if step.continued:
                    self._continue()
                else:
                    resume.start_over()
                    self._restart()
        finally:
            self.inner.close()
            self.ended()

    def _continue(self) -> None:
        assert self.resume is not None and self.send is not None
        self.resume.begin()
        send = self.send
        resume = self.resume
        attempt_stream = open_sync(self.call, lambda options: resume.sent(send, options))
        self.prime(attempt_stream, continuing=True)
        self.inner = _sdk.own_iterator(attempt_stream)

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
                        yield from self.missing_stop()
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

    async def resuming_events(self) -> AsyncIterator[Any]:
        """`resuming_events` of the sync guard, for the async client."""
        protocol, call, resume = self.protocol, self.call, self.resume
        assert resume is not None
        try:
            while True:
                inner = self.inner
                holder, held, blocks = Holder(), list[Any](), protocol.blocks
                try:
                    async for event in inner:
                        if resume.splicer is None:
                            # A text delta passed on: recorded inline, as in the sync guard.
                            fields = getattr(event, "__dict__", _NO_FIELDS)
                            if fields.get("type") == "content_block_delta" and (
                                protocol.committed and not holder.holding
                            ):
                                delta = fields["delta"].__dict__
                                if delta.get("type") == "text_delta":
                                    try:  # noqa: SIM105 (as in `events`)
                                        blocks[fields["index"]].append(delta["text"])
                                    except KeyError:  # a block that never started
                                        pass
                                    yield event
                                    continue
                        items = [event] if resume.splicer is None else self.spliced(event)
                        for item in items:
                            for out in self.deliver(item, holder, held):
                                yield out
                    if not protocol.complete:
                        raise _sdk.IncompleteStream
                except Exception as err:
                    await inner.aclose()
                    if self.closed:  # the caller closed the stream: not a failure
                        raise
                    if protocol.whole(isinstance(err, anthropic.APIStatusError)):
                        for item in self.missing_stop():
                            yield item
                        call.succeeded(message=self.final_message())
                        return
                    step = self.failed(err, held)
                    if step.error is not None:
                        for item in protocol.take_held():
                            yield item
                        if step.error is err:
                            raise
                        raise step.error from err
                else:
                    call.succeeded(message=self.final_message())
                    return
                await anyio.sleep(step.wait)
                if step.continued:
                    await self._continue()
                else:
                    resume.start_over()
                    await self._restart()
        finally:
            await self.inner.aclose()
            self.ended()

    async def _continue(self) -> None:
        assert self.resume is not None and self.send is not None
        self.resume.begin()
        send, resume = self.send, self.resume

        async def send_continuation(options: Any) -> Any:
            return await resume.sent_async(send, options)

        attempt_stream = await open_async(self.call, send_continuation)
        self.prime(attempt_stream, continuing=True)
        self.inner = _sdk.own_iterator(attempt_stream)

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
                        for item in self.missing_stop():
                            yield item
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
    """Put a guard between `stream` and whoever reads it (a resuming one with `resume` on)."""
    guard = guard_class(call, stream, send)
    guard.prime(stream)
    events: Any
    if call.policy.resume and call.sdk is not None:
        guard.resume = _Resume(guard, call.sdk.body())
        events = guard.resuming_events()
    else:
        events = guard.events()
    guard.inner = _sdk.take_iterator(stream, GuardedEvents(guard, events))
    return guard


def drain_sync(call: GuardedCall, stream: Any, send: Callable[[Any], Any]) -> StreamProtocol:
    """Read `stream` to its end under a guard, for a caller that sees nothing until then.

    Nothing of the message reaches anyone before it is complete, so every retryable failure,
    at any point, starts it again; with `resume` on, a failure after the commit point is
    continued instead (the model writes only the rest), and one that cannot be continued
    starts again. Returns what the attempts that finished the call delivered.
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
