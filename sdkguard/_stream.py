"""Guarded streams: the commit point, transparent restarts, and `partial_message`.

`Delivery` is the I/O-free record of what one attempt's message has delivered; the sync and
async guards below only move events and call into `GuardedCall` when something fails.

The commit point: `message_start` and `content_block_start` (and anything else that is not
content) are held back until the first content event arrives, then released together.
Until then a failed attempt can be replaced by a new one without the consumer noticing.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anthropic
import anyio

from sdkguard import _sdk
from sdkguard._call import GuardedCall, Step, open_async, open_sync

__all__ = [
    "Delivery",
    "GuardedEvents",
    "adopt_async",
    "adopt_sync",
    "drain_async",
    "drain_sync",
    "guard_of",
]

# The first of these to arrive is the commit point: content has reached the consumer.
COMMIT_EVENTS = frozenset(
    {"content_block_delta", "content_block_stop", "message_delta", "message_stop"}
)
_NO_FIELDS: dict[str, Any] = {}  # the fields of an event that is not an SDK model
# Which attribute of each delta carries its text; citations are kept whole.
_DELTA_TEXT = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}


class Delivery:
    """What one attempt has delivered: held-back events, then content fragments (as strings).

    Strings, not event objects: keeping every event costs a third of a stream's throughput
    in garbage collection, and the message is only rebuilt when a stream breaks (or for a
    non-streaming call sent as a stream). The message and its block starts are kept as their
    JSON too, a few hundred bytes where the parsed objects take kilobytes for the whole life of
    the stream; `message_delta` comes last, and is kept as it is.
    """

    __slots__ = ("blocks", "committed", "complete", "extras", "held", "message", "message_delta")

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
        """By index: what a block's other deltas brought (signature, citations, others)."""
        self.message_delta: Any = None

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
                block = self.blocks.get(event.index)
                if block is not None:  # else a block that never started: the SDK's to judge
                    block.append(getattr(delta, field))
            else:  # signature_delta, citations_delta, others: rare, kept by field
                if self.extras is None:
                    self.extras = {}
                extra = self.extras.setdefault(event.index, {})
                if delta.type == "signature_delta":
                    extra["signature"] = delta.signature
                elif delta.type == "citations_delta":
                    extra.setdefault("citations", []).append(_sdk.wire_dict(delta.citation))
                else:  # compaction_delta, or a type newer than this code: kept whole
                    extra.setdefault("other", []).append(_sdk.wire_dict(delta))
        elif kind == "content_block_start":
            self.blocks[event.index] = [_sdk.freeze_block(event.content_block)]
        elif kind == "message_start":
            self.message = _sdk.freeze(event.message)
        elif kind == "message_delta":
            self.message_delta = event
            self.complete = True
        elif kind == "message_stop":
            self.complete = True

    def message_data(self) -> dict[str, Any] | None:
        """The message as far as it was delivered, as the API's non-streaming answer has it.

        As the SDK's stream helpers accumulate it: `message_start` gives the message, each
        `content_block_start` a block that its deltas complete, and `message_delta` the stop
        reason and the final usage (cumulative counts: a count it carries replaces the first).
        """
        if self.message is None:
            return None
        body = _sdk.thaw(self.message)
        extras = self.extras or {}
        body["content"] = [
            _block_data(_sdk.thaw(block[0]), "".join(block[1:]), extras.get(index))
            for index, block in sorted(self.blocks.items())
        ]
        if self.message_delta is not None:
            event = _sdk.wire_dict(self.message_delta)
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

    def partial_message(self) -> Any:
        """The message as far as it was delivered, of the SDK's own message class."""
        data = self.message_data()
        if data is None or self.message is None:
            return None
        return _sdk.construct(self.message[0], data)


def _block_data(block: dict[str, Any], text: str, extra: dict[str, Any] | None) -> Any:
    """A content block as far as it was delivered: its start, completed by its deltas."""
    kind = block.get("type")
    if kind == "text":
        block["text"] = (block.get("text") or "") + text
    elif kind == "thinking":
        block["thinking"] = (block.get("thinking") or "") + text
    elif text.strip() and "input" in block:  # tool_use, server_tool_use, mcp_tool_use ...
        block["input"] = _tool_input(text)
    if extra:
        if "signature" in extra:
            block["signature"] = extra["signature"]
        if "citations" in extra:
            block["citations"] = [*(block.get("citations") or ()), *extra["citations"]]
        if "other" in extra:
            block.update(other_delta_fields(block.get, extra["other"]))
    return block


def _tool_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        # Not valid JSON (fine-grained tool streaming, or a stream cut short): as far as it
        # goes, as the SDK's own stream helper parses it.
        import jiter

        try:
            return jiter.from_json(text.encode(), partial_mode="trailing-strings")
        except ValueError:
            return {}


def other_delta_fields(current: Callable[[str], Any], deltas: list[dict[str, Any]]) -> Any:
    """What the deltas without a rule of their own change in their block, by field.

    `compaction_delta` replaces the fields it carries, as the SDK's stream helper does; a
    delta type newer than this code extends a string field and replaces anything else, as
    every string delta the API has sent so far does.
    """
    update: dict[str, Any] = {}
    for delta in deltas:
        fields = dict(delta)
        kind = fields.pop("type", None)
        for key, value in fields.items():
            before = update[key] if key in update else current(key)
            extend = kind != "compaction_delta" and isinstance(before, str)
            update[key] = before + value if extend and isinstance(value, str) else value
    return update


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
                        event = None  # the consumer alone owns the events released now
                        self.settle()
                        released.reverse()
                        while released:
                            yield released.pop()
                    blocks, add = delivery.blocks, delivery.add
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
                            except KeyError:  # a block that never started: as in `add`
                                pass
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
                        event = None  # the consumer alone owns the events released now
                        self.settle()
                        released.reverse()
                        while released:
                            yield released.pop()
                    blocks, add = delivery.blocks, delivery.add
                    async for event in inner:
                        # Recorded as in the sync guard.
                        fields = getattr(event, "__dict__", _NO_FIELDS)
                        is_delta = fields.get("type") == "content_block_delta"
                        delta = fields["delta"].__dict__ if is_delta else _NO_FIELDS
                        if delta.get("type") == "text_delta":
                            # A `try` costs nothing per event here, `suppress` a context.
                            try:  # noqa: SIM105
                                blocks[fields["index"]].append(delta["text"])
                            except KeyError:  # a block that never started: as in `add`
                                pass
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


def drain_sync(call: GuardedCall, stream: Any, send: Callable[[Any], Any]) -> Delivery:
    """Read `stream` to its end under a guard, for a caller that sees nothing until then.

    Nothing of the message reaches anyone before it is complete, so every retryable failure,
    at any point, restarts it. Returns what the attempt that finished the call delivered.
    """
    guard = _guard(_SyncGuard, call, stream, send)
    guard.restart_hook = _nothing_delivered
    # Read through the stream itself, as a caller would: the SDK's span observer sees it.
    for _ in stream:
        pass
    return guard.delivery


async def drain_async(
    call: GuardedCall, stream: Any, send: Callable[[Any], Awaitable[Any]]
) -> Delivery:
    """`drain_sync` for the async client."""
    guard = _guard(_AsyncGuard, call, stream, send)
    guard.restart_hook = _nothing_delivered
    async for _ in stream:
        pass
    return guard.delivery


def _nothing_delivered() -> None:
    # A drained stream's restart has nothing to forget: `prime` resets the delivery.
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
