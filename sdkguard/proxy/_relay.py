"""The attempt loop of one forwarded request, and the raw SSE relay.

A thin driver over the library's pure parts: the decision core (`_decide.CallState`) says
whether to retry and how long to wait, the stream protocol (`_protocol.StreamProtocol`, fed
raw SSE events) says what to hold and when the commit point is reached. This module only sends
attempts, watches the clock, and writes to the client:

- **Before the commit point** (the upstream's first content event) the client has seen
  nothing, not even a status: every retryable failure restarts the request, and the client
  gets one clean answer, or, when every attempt failed, the last upstream error (or an
  API-shaped one when there was no HTTP answer).
- **After it**, bytes are relayed as received, cut only at event boundaries. With `resume`
  on (the proxy's default), a retryable failure sends a continuation request and splices its
  answer into the client's stream (`_continue`, `_resume.Resume`: each event read as JSON);
  when the message cannot be continued, or attempts run out, or with `resume` off, the
  client's stream ends with an SSE `error` event (`_after_content`), unless the message was
  already whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Protocol

import aiohttp
import yarl

from sdkguard import _telemetry
from sdkguard._decide import (
    BUDGET,
    NOTHING_KNOWN,
    CallState,
    Failure,
    Phase,
    Received,
    classify_sse_error,
    classify_status,
)
from sdkguard._decide import say_seconds as _say_seconds
from sdkguard._policy import Policy
from sdkguard._protocol import StreamProtocol, sse_data, sse_event_name
from sdkguard._wire import ERROR_STATUSES
from sdkguard.proxy._config import ProxyConfig
from sdkguard.proxy._resume import Resume
from sdkguard.proxy._upstream import Upstream, errno_of, failure_of, forwardable

__all__ = ["ClientGone", "Downstream", "Forward", "ProxyStats", "Relay", "error_body"]

logger = logging.getLogger("sdkguard.proxy")

Kind = Literal["stream", "converted", "whole", "counted", "pass"]
"""How a request is forwarded: a Messages stream; a non-streaming Messages call sent as a
stream; a non-streaming call sent as it is; count_tokens; anything else, once."""

ATTEMPTS_HEADER = "x-sdkguard-attempts"
BAD_GATEWAY = int(HTTPStatus.BAD_GATEWAY)
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
# What a client's stream may be cut into: whole events only, whatever the line ending.
_BOUNDARIES = ((b"\n\n", 2), (b"\r\n\r\n", 4))


class ClientGone(Exception):
    """The client closed its connection: the upstream request is dropped, nothing is said."""


class Downstream(Protocol):
    """The client's side of one request, as the server gives it to the relay."""

    async def start(self, status: int, reason: str | None, headers: list[tuple[str, str]]) -> None:
        """Send the status and headers of a streamed answer (raises `ClientGone`)."""

    async def write(self, data: bytes) -> None:
        """Send part of the body (raises `ClientGone`)."""

    async def end(self) -> None:
        """End the body cleanly."""

    async def answer(
        self, status: int, reason: str | None, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        """Send a whole answer."""

    async def abort(self) -> None:
        """Drop the connection (a pass-through body that broke)."""


@dataclass(frozen=True)
class Forward:
    """One request to forward: where to, what, and how."""

    method: str
    path: str
    """The upstream path (the client's path prefix removed), without the query."""
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    kind: Kind
    fields: Mapping[str, Any] = field(default_factory=dict)
    """The request's model, max_tokens, temperature, top_p and top_k, for telemetry (only
    when a provider may record; never content)."""

    @property
    def name(self) -> str:
        """For log lines: `POST /v1/messages` (never a header, a query or the body)."""
        return f"{self.method} {self.path}"


@dataclass
class ProxyStats:
    """What the proxy did since it started, for the summary line. One event loop: no lock."""

    calls: int = 0
    retries: int = 0
    restarts: int = 0
    """Retries of an attempt whose stream had begun (status 200, events)."""
    stalls: int = 0
    failures: int = 0
    """Calls whose client got an error that the proxy could not hide."""
    continuations: int = 0
    """Retries after content that continued the message (`resume`); counted in `retries`."""

    def summary(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count:,} {word}{'' if count == 1 else 's'}"

        return ", ".join(
            (
                n(self.calls, "call"),
                n(self.retries, "retry").replace("retrys", "retries"),
                n(self.restarts, "restart"),
                n(self.stalls, "stall"),
                n(self.failures, "failure"),
                n(self.continuations, "continuation"),
            )
        )


def error_body(error_type: str, message: str) -> bytes:
    """An error in the API's shape, as clients parse it."""
    error = {"type": "error", "error": {"type": error_type, "message": message}}
    return json.dumps(error).encode()


def error_event(error_type: str, message: str) -> bytes:
    return b"event: error\ndata: " + error_body(error_type, message) + b"\n\n"


def _json_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    kept = [
        (name, value)
        for name, value in headers
        if name.lower() not in ("content-type", "content-encoding", "cache-control")
    ]
    return [*kept, ("content-type", "application/json")]


def _first_event_end(buf: bytes, start: int) -> int:
    """The end (past its blank line) of the first whole event at or after `start`, or -1."""
    best = -1
    for boundary, size in _BOUNDARIES:
        found = buf.find(boundary, start)
        if found >= 0 and (best < 0 or found + size < best):
            best = found + size
    return best


def _last_event_end(buf: bytes) -> int:
    """The end of the last whole event in `buf`, or -1: what may be relayed now."""
    best = -1
    for boundary, size in _BOUNDARIES:
        found = buf.rfind(boundary)
        if found >= 0 and found + size > best:
            best = found + size
    return best


def _events(buf: bytes) -> list[bytes]:
    """The whole events of `buf` (which ends at an event's end, as `_last_event_end` cuts it).

    In one pass: searching for the first boundary of each kind from each event would scan the
    rest of a read for a `\r\n\r\n` that a stream of `\n` line endings never has (quadratic
    in the events of a read: the relay with `resume` on reads a whole 64 kB read this way).
    """
    for boundary, other in ((b"\n\n", b"\r"), (b"\r\n\r\n", b"\n\n")):
        if other not in buf:  # one kind of line ending
            parts = buf.split(boundary)
            parts.pop()  # what follows the last boundary: nothing whole
            return [part + boundary for part in parts]
    events, start = [], 0  # mixed line endings
    while (end := _first_event_end(buf, start)) >= 0:
        events.append(buf[start:end])
        start = end
    return events


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _summarize(call: _Call, event: bytes) -> None:
    """Telemetry's record of a message_start or message_delta event; a malformed one drops
    the record, never the relay."""
    summary = call.summary
    if summary is None:
        return
    try:
        summary.record_raw(event)
    except Exception:
        call.summary = None


def _sse_error_type(event: bytes) -> str | None:
    try:
        data = json.loads(sse_data(event) or b"null")
        error_type = data["error"]["type"]
    except (ValueError, TypeError, KeyError):
        return None
    return error_type if isinstance(error_type, str) else None


def _events_of_attempt(call: _Call) -> tuple[int | None, str | None]:
    """The events of the message that the current attempt received, and the type of the
    last, as the library counts them (pings not counted); (None, None) when not known."""
    protocol, resume = call.protocol, call.resume
    if not protocol.committed:  # every event held, as raw bytes
        return protocol.events_received()
    if resume is not None:  # what the client got is recorded, less what came before
        count, last = resume.delivered.events_received()
        count -= call.events_before
        if resume.held:  # blocks the holder keeps back: received, not recorded yet
            count += len(resume.held)
            last = resume.held[-1][0]
        return count, last
    if protocol.keep_content:  # a converted call without resume: the protocol records all
        return protocol.events_received()
    # A stream relayed as bytes (`resume` off): no event after the commit point is looked
    # at, and counting them would cost every read.
    return None, None


# -- the watchdog --------------------------------------------------------------------------------

_STALLS = {
    "stall_response": Failure("stall_response", "no response headers in time", True, timeout=True),
    "stall_idle": Failure("stall_idle", "the stream went silent", True, timeout=True),
    "stall_progress": Failure(
        "stall_progress", "no content arrived, only pings", True, timeout=True
    ),
}


# Which policy limit each stall is (telemetry's `sdkguard.limit`).
_STALL_LIMITS = {
    "stall_response": "response_timeout",
    "stall_idle": "idle_timeout",
    "stall_progress": "progress_timeout",
}


class Watchdog:
    """Cuts one attempt when a limit passes: one timer, re-armed only when it fires.

    A read costs one assignment (`last_read`); when the timer fires, it computes the next
    limit from the attempt's state and either cancels the attempt's task (naming the limit in
    `fired`) or sleeps until then. Cheaper than a timeout per read, which the relay would pay
    on every event.
    """

    __slots__ = (
        "content",
        "fired",
        "handle",
        "hard_at",
        "headers",
        "idle",
        "last_content",
        "last_read",
        "loop",
        "pre_content_at",
        "progress",
        "response_by",
        "task",
        "writing",
    )

    def __init__(
        self,
        *,
        response_by: float | None,
        idle: float | None,
        progress: float | None,
        pre_content_at: float | None,
        hard_at: float | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self.response_by = response_by
        self.idle = idle
        self.progress = progress
        self.pre_content_at = pre_content_at
        self.hard_at = hard_at
        self.headers = False
        self.content = False
        self.writing = False
        """Writing to the client: a slow client is no silence of the upstream."""
        self.last_read = self.last_content = self.loop.time()
        self.fired: str | None = None
        self.handle: asyncio.TimerHandle | None = None
        self._arm()

    def headers_arrived(self) -> None:
        self.headers = True
        self.last_read = self.last_content = self.loop.time()
        self._arm()  # the idle limit may be shorter than the response limit was

    def content_arrived(self) -> None:
        self.content = True
        self.last_content = self.loop.time()

    def stop(self) -> None:
        self.task = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _due(self) -> tuple[float, str] | None:
        limits: list[tuple[float, str]] = []
        if not self.headers:
            if self.response_by is not None:
                limits.append((self.response_by, "stall_response"))
        elif not self.writing:
            if self.idle is not None:
                limits.append((self.last_read + self.idle, "stall_idle"))
            if self.progress is not None:
                limits.append((self.last_content + self.progress, "stall_progress"))
        if not self.content and self.pre_content_at is not None:
            limits.append((self.pre_content_at, "pre_content"))
        if self.hard_at is not None:
            limits.append((self.hard_at, "deadline"))
        return min(limits) if limits else None

    def _arm(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        due = self._due()
        if due is not None and self.task is not None:
            self.handle = self.loop.call_at(due[0], self._check)

    def _check(self) -> None:
        self.handle = None
        if self.task is None:
            return
        due = self._due()
        if due is None:
            return
        when, reason = due
        if self.loop.time() >= when:
            self.fired = reason
            self.task.cancel()
        else:
            self.handle = self.loop.call_at(when, self._check)


# -- one call ------------------------------------------------------------------------------------


@dataclass
class _Failed:
    """An attempt that failed, with what the client gets if it is the last."""

    failure: Failure
    committed: bool = False
    """Content had reached the client: no retry can hide the failure."""
    answer: tuple[int, str | None, list[tuple[str, str]], bytes] | None = None
    """The upstream's HTTP answer (an error status), passed on when giving up."""
    sse_error: bytes | None = None
    """An SSE `error` event before content (a converted call: at any point)."""
    sse_held: bytes = b""
    """The events held before it."""
    received: Received = NOTHING_KNOWN
    """What the attempt received before it failed (`Relay._received`)."""


@dataclass
class _Call:
    request: Forward
    client: Downstream
    state: CallState
    protocol: StreamProtocol
    stream_began: bool = False
    """The current attempt's answer is an event stream (status 200, `text/event-stream`)."""
    committed: bool = False
    """Status, headers and content went to the client."""
    stop_sent: bool = False
    api_error: bool = False
    """The upstream's own `error` event was relayed after content."""
    upstream_status: tuple[int, str | None, list[tuple[str, str]]] = (200, None, [])
    attempt_started: float = field(default_factory=time.monotonic)
    telemetry: _telemetry.CallTelemetry | None = None
    """The call's spans and metrics: None unless a provider is configured."""
    summary: StreamProtocol | None = None
    """With telemetry, for a relayed stream: its message_start and message_delta only (the
    call's protocol keeps no content), for the usage and the stop reason."""
    message: Any = None
    """With telemetry, a whole answer's JSON (its usage)."""
    error_type: str | None = None
    """With telemetry: why the call failed, as its span records it."""
    resume: Resume | None = None
    """With `resume` on, for a stream or a converted call: continuation after content."""
    why_not_continued: str | None = None
    response: aiohttp.ClientResponse | None = None
    """The current attempt's upstream response, once its headers came: its request id and
    aiohttp's count of its body bytes tell what a failed attempt received."""
    events_before: int = 0
    """Events of the message recorded when the current continuation began (a continuation
    records into the message of the attempts before it)."""

    def headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [*headers, (ATTEMPTS_HEADER, str(self.state.attempt))]


def _never_retry_401() -> bool:
    return False  # the client's own token cache, if any, decides; the proxy has none


class Relay:
    """Forwards requests to one upstream with one policy; one per proxy."""

    def __init__(self, config: ProxyConfig, upstream: Upstream, stats: ProxyStats) -> None:
        self.config = config
        self.upstream = upstream
        self.stats = stats
        policy = config.policy
        pre = config.pre_content_deadline
        # The decision core's deadline is the pre-content deadline: no attempt starts and no
        # wait ends after it (and after it there is no content, or there would be no retry).
        self.pre_policy: Policy = policy.replace(
            deadline=pre if policy.deadline is None else min(pre, policy.deadline)
        )
        self.upstream_url = yarl.URL(config.upstream)

    async def forward(self, request: Forward, client: Downstream) -> None:
        if request.kind == "pass" or not self.config.policy.enabled:
            await self._pass(request, client)
            return
        attempt: Callable[[_Call, Watchdog], Awaitable[_Failed | None]]
        attempt = self._whole_attempt if request.kind in ("whole", "counted") else self._events
        self.stats.calls += 1
        started = time.monotonic()
        resume = self.config.policy.resume and request.kind in ("stream", "converted")
        call = _Call(
            request,
            client,
            CallState(self.pre_policy, started_at=started),
            StreamProtocol(raw=True, keep_content=request.kind == "converted" and not resume),
        )
        if resume:
            call.resume = Resume(request.body, request.name)
        if _telemetry.may_record():
            call.telemetry = self._call_telemetry(request)
        if call.telemetry is None:
            await self._attempts(call, attempt)
            return
        try:
            await self._attempts(call, attempt)
        except BaseException as err:  # the client left, or the proxy stops
            call.error_type = call.error_type or type(err).__qualname__
            raise
        finally:
            call.telemetry.finished(self._delivered(call), error_type=call.error_type)

    async def _attempts(
        self, call: _Call, attempt: Callable[[_Call, Watchdog], Awaitable[_Failed | None]]
    ) -> None:
        """Attempts until the client has its answer."""
        while True:
            call.attempt_started = time.monotonic()
            call.response, call.stream_began = None, False
            telemetry = call.telemetry
            if telemetry is None:
                failed = await self._attempt(call, attempt)
            else:
                with telemetry.attempt(call.state.attempt):
                    failed = await self._attempt(call, attempt)
            if failed is None:
                self._succeeded(call)
                return
            if failed.failure.timeout:
                self.stats.stalls += 1
            if call.resume is not None and call.protocol.committed:
                outcome = await self._continue(call, failed)
                if outcome == "continued":
                    continue
                if outcome == "answered":
                    self._succeeded(call)
                    return
                if not call.committed:  # a converted call: restarted, as without resume
                    call.resume.reset()
                    if not await self._retry(call, failed):
                        return
                    continue
            if failed.committed or call.committed:
                if call.telemetry is not None:
                    self._lost_after_content(call, failed)
                await self._after_content(call, failed)
                return
            if not await self._retry(call, failed):
                return

    # -- attempts ------------------------------------------------------------------------------

    def _watchdog(self, call: _Call) -> Watchdog:
        policy, kind = self.config.policy, call.request.kind
        limited = kind != "whole"  # a non-streaming answer's headers come with the whole answer
        streamed = kind in ("stream", "converted")
        now_loop = asyncio.get_running_loop().time()
        shift = now_loop - time.monotonic()  # call times are monotonic, the timer's the loop's
        hard = None if policy.deadline is None else call.state.started_at + policy.deadline + shift
        response = policy.response_timeout
        return Watchdog(
            response_by=now_loop + response if limited and response is not None else None,
            idle=policy.idle_timeout if limited else None,
            progress=policy.progress_timeout if streamed else None,
            pre_content_at=(
                call.state.started_at + self.config.pre_content_deadline + shift
                if limited and not call.protocol.committed  # (a continuation: content came)
                else None
            ),
            hard_at=hard,
        )

    async def _attempt(
        self, call: _Call, attempt: Callable[[_Call, Watchdog], Awaitable[_Failed | None]]
    ) -> _Failed | None:
        """One attempt, its failures classified; a stall cancels it from its watchdog."""
        watchdog = self._watchdog(call)
        task = watchdog.task
        error: BaseException | None = None
        try:
            failed = await attempt(call, watchdog)
        except asyncio.CancelledError:
            fired = watchdog.fired
            if fired is None:
                raise  # the client left, or the proxy stops
            if sys.version_info >= (3, 11) and task is not None and task.uncancel() > 0:
                raise  # cancelled from outside as well
            failed = _Failed(self._stall(fired), committed=call.committed)
        except ClientGone:
            raise
        except Exception as err:
            phase: Phase = "body" if watchdog.headers else "response"
            failure = failure_of(err, phase) or Failure(
                "forward_error", f"cannot forward the request ({type(err).__name__})", False
            )
            failed, error = _Failed(failure, committed=call.committed), err
        finally:
            watchdog.stop()
        if failed is not None:
            failed.received = self._received(call, error, error_event=failed.sse_error is not None)
        return failed

    def _stall(self, fired: str) -> Failure:
        if fired == "pre_content":
            limit = self.pre_policy.deadline
            return Failure(
                "deadline",
                f"no content within the pre-content deadline ({limit:g} s)",
                True,
                timeout=True,
            )
        if fired == "deadline":
            return Failure("deadline", "the call's deadline passed", True, timeout=True)
        return _STALLS[fired]

    async def _send(self, call: _Call) -> aiohttp.ClientResponse:
        request = call.request
        body = request.body
        if call.resume is not None and call.resume.sending is not None:
            body = call.resume.sending  # a continuation request
        response = await self.upstream.send(
            request.method,
            request.path,
            request.query,
            request.headers,
            body,
            self.config.policy.connect_timeout,
        )
        call.response = response
        if call.telemetry is not None:
            call.telemetry.response(response.headers, response.status)
        return response

    async def _read_body(self, response: aiohttp.ClientResponse, watchdog: Watchdog) -> bytes:
        parts = []
        while chunk := await response.content.readany():
            watchdog.last_read = watchdog.loop.time()
            parts.append(chunk)
        return b"".join(parts)

    async def _whole_attempt(self, call: _Call, watchdog: Watchdog) -> _Failed | None:
        """count_tokens, or a non-streaming call sent as it is: one whole answer."""
        response = await self._send(call)
        watchdog.headers_arrived()
        read = False
        try:
            body = await self._read_body(response, watchdog)
            read = True
            watchdog.content_arrived()
            status, headers = response.status, forwardable(response.headers.items())
            if status >= 400:
                failure = self._status_failure(response)
                return _Failed(failure, answer=(status, response.reason, headers, body))
            if call.telemetry is not None:
                call.message = _json_object(body)
            await call.client.answer(status, response.reason, call.headers(headers), body)
            return None
        finally:
            response.release() if read else response.close()

    def _status_failure(self, response: aiohttp.ClientResponse) -> Failure:
        return classify_status(
            response.status,
            response.headers,
            policy=self.config.policy,
            wall_now=time.time(),
            client_should_retry=_never_retry_401,
        )

    async def _events(self, call: _Call, watchdog: Watchdog) -> _Failed | None:
        """A Messages call sent as a stream: relayed, or (converted) answered as JSON."""
        response = await self._send(call)
        watchdog.headers_arrived()
        done = False
        try:
            status, headers = response.status, forwardable(response.headers.items())
            content_type = response.headers.get("content-type", "")
            continuing = call.resume is not None and call.resume.sending is not None
            if status >= 300 or not content_type.startswith("text/event-stream"):
                body = await self._read_body(response, watchdog)
                done = True
                if status == 400 and continuing and call.resume.refused(status, body):  # type: ignore[union-attr]
                    response.release()
                    response = await self._send(call)  # the user turn: no attempt spent
                    done = False
                    status, headers = response.status, forwardable(response.headers.items())
                    content_type = response.headers.get("content-type", "")
            if status >= 300 or not content_type.startswith("text/event-stream"):
                if not done:
                    body = await self._read_body(response, watchdog)
                    done = True
                if status >= 400:
                    failure = self._status_failure(response)
                    return _Failed(failure, answer=(status, response.reason, headers, body))
                if continuing or (status < 300 and "json" not in content_type):
                    return _Failed(
                        Failure("malformed_answer", "the answer is not an event stream", True)
                    )
                # JSON where a stream was asked for (a mock, a gateway): passed on as it is.
                await call.client.answer(status, response.reason, call.headers(headers), body)
                return None
            call.stream_began = True
            call.upstream_status = (status, response.reason, headers)
            failed = await self._relay(call, watchdog, response)
            done = failed is None
            return failed
        finally:
            response.release() if done else response.close()

    async def _relay(
        self, call: _Call, watchdog: Watchdog, response: aiohttp.ClientResponse
    ) -> _Failed | None:
        protocol, client, resume = call.protocol, call.client, call.resume
        converting = call.request.kind == "converted"
        reader = response.content
        pending = b""
        # Before the commit point: every event is looked at, and held.
        while not protocol.committed:
            chunk = await reader.readany()
            if not chunk:
                return _Failed(
                    Failure("stream_incomplete", "the stream ended before the message did", True)
                )
            watchdog.last_read = watchdog.loop.time()
            pending += chunk
            start = 0
            while not protocol.committed and (end := _first_event_end(pending, start)) >= 0:
                event, start = pending[start:end], end
                kind = sse_event_name(event) or ""
                if kind == "error":
                    # Left in the protocol (a retry restarts it): the forensics count them.
                    held = b"".join(protocol.held)
                    failure = classify_sse_error(_sse_error_type(event))
                    return _Failed(failure, sse_error=event, sse_held=held)
                released = protocol.hold(kind, event)
                if released is not None:
                    watchdog.content_arrived()
                    if call.telemetry is not None:
                        self._content_began(call, released)
                    out = b"".join(released)
                    if resume is not None:
                        out = b"".join(
                            [resume.process(item, sse_event_name(item)) for item in released]
                        )
                    if not converting:
                        status, reason, headers = call.upstream_status
                        await client.start(status, reason, call.headers(headers))
                        call.committed = True
                        await self._write(watchdog, client, out)
            pending = pending[start:]
        if resume is not None:
            watchdog.content_arrived()  # (a continuation's: no commit point of its own)
            return await self._resumed(call, watchdog, reader, pending)
        # After it: relayed as received, up to the last whole event of each read.
        while True:
            end = _last_event_end(pending)
            if end >= 0:
                out, pending = pending[:end], pending[end:]
                if converting:
                    for event in _events(out):
                        if sse_event_name(event) == "error":
                            return _Failed(
                                classify_sse_error(_sse_error_type(event)), sse_error=event
                            )
                        protocol.record_raw(event)
                else:
                    if b"message_" in out or b"error" in out:
                        self._note_events(call, out)
                    await self._write(watchdog, client, out)
                if b"content_block" in out or b"message_delta" in out:
                    watchdog.last_content = watchdog.loop.time()
            chunk = await reader.readany()
            if not chunk:
                break
            watchdog.last_read = watchdog.loop.time()
            pending = pending + chunk if pending else chunk
        if converting:
            if not protocol.complete:
                return _Failed(
                    Failure("stream_incomplete", "the stream ended before the message did", True)
                )
            status, reason, headers = call.upstream_status
            body = json.dumps(protocol.message_data()).encode()
            await client.answer(status, reason, call.headers(_json_headers(headers)), body)
            return None
        if call.stop_sent or call.api_error:
            await client.end()
            return None
        return _Failed(
            Failure("stream_incomplete", "the stream ended before the message did", True),
            committed=True,
        )

    async def _resumed(
        self, call: _Call, watchdog: Watchdog, reader: aiohttp.StreamReader, pending: bytes
    ) -> _Failed | None:
        """After the commit point with `resume` on: each event read as JSON, spliced when it is
        a continuation's, held when it is a block not yet past, recorded, relayed."""
        resume, client = call.resume, call.client
        assert resume is not None
        converting = call.request.kind == "converted"
        while True:
            end = _last_event_end(pending)
            if end >= 0:
                events, pending = pending[:end], pending[end:]
                parts: list[bytes] = []
                failed = None
                for event in _events(events):
                    kind = sse_event_name(event)
                    if kind == "error":
                        failure = classify_sse_error(_sse_error_type(event))
                        if failure.retryable or converting:
                            failed = _Failed(failure, committed=call.committed, sse_error=event)
                            break
                        parts.append(event)  # the API's own word: relayed, as without resume
                        continue
                    parts.append(resume.process(event, kind))
                out = b"".join(parts)
                if out and not converting:
                    if b"message_" in out or b"error" in out:
                        self._note_events(call, out)
                    await self._write(watchdog, client, out)
                if failed is not None:
                    return failed
                if b"content_block" in events or b"message_delta" in events:
                    watchdog.last_content = watchdog.loop.time()
            chunk = await reader.readany()
            if not chunk:
                break
            watchdog.last_read = watchdog.loop.time()
            pending = pending + chunk if pending else chunk
        delivered = resume.delivered
        if converting:
            if not delivered.complete:
                return _Failed(
                    Failure("stream_incomplete", "the stream ended before the message did", True)
                )
            await self._answer_converted(call)
            return None
        if call.stop_sent or call.api_error:
            await client.end()
            return None
        return _Failed(
            Failure("stream_incomplete", "the stream ended before the message did", True),
            committed=True,
        )

    async def _answer_converted(self, call: _Call) -> None:
        """A converted call's message, whole: the client's JSON answer."""
        assert call.resume is not None
        status, reason, headers = call.upstream_status
        body = json.dumps(call.resume.delivered.message_data()).encode()
        await call.client.answer(status, reason, call.headers(_json_headers(headers)), body)

    def _note_events(self, call: _Call, out: bytes) -> None:
        """What the relayed events change: the message whole, stopped, or an API error."""
        for event in _events(out):
            kind = sse_event_name(event)
            if kind == "message_stop":
                call.stop_sent = True
            elif kind == "error":
                call.api_error = True
                if call.telemetry is not None:
                    call.error_type = _sse_error_type(event) or "unknown_error"
            if kind in ("message_delta", "message_stop"):
                call.protocol.record_raw(event)
                if kind == "message_delta" and call.summary is not None:
                    _summarize(call, event)

    async def _write(self, watchdog: Watchdog, client: Downstream, data: bytes) -> None:
        watchdog.writing = True
        try:
            await client.write(data)
        finally:
            watchdog.writing = False
            watchdog.last_read = watchdog.loop.time()

    # -- outcomes ------------------------------------------------------------------------------

    def _succeeded(self, call: _Call) -> None:
        policy = self.config.policy
        if call.api_error:
            self.stats.failures += 1
        elif policy.retry_budget and BUDGET.refund(call.state.refund(), policy.budget_capacity):
            logger.info("the retry budget is refilled: failing calls are retried again")
        if call.telemetry is not None:
            if call.api_error:  # the upstream's own error event, relayed after content
                call.telemetry.attempt_failed(
                    call.error_type or "unknown_error",
                    None,
                    None,
                    stall=None,
                    received=self._received(call, None, error_event=True),
                )
            else:
                call.telemetry.attempt_succeeded()

    async def _retry(self, call: _Call, failed: _Failed) -> bool:
        """Wait and go on (True), or give the client the last answer (False)."""
        failure, name = failed.failure, call.request.name
        now = time.monotonic()
        decision = call.state.decide(failure, now=now, rand=random.random())
        wait = decision.wait if decision.retry else None
        received = failed.received
        call.state = call.state.record(
            failure, now - call.attempt_started, wait, decision.cost, received=received
        )
        if call.telemetry is not None:
            if wait is None:
                call.error_type = failure.reason
            stall = _STALL_LIMITS.get(failure.reason)
            call.telemetry.attempt_failed(
                failure.reason, None, wait, stall=stall, received=received
            )
        if decision.retry:
            self.stats.retries += 1
            if call.stream_began:
                self.stats.restarts += 1
            logger.warning(
                "%s: %s; retrying in %s (attempt %d of %d)",
                name,
                failure.description,
                _say_seconds(decision.wait),
                call.state.attempt,
                self.pre_policy.max_attempts,
            )
            await asyncio.sleep(decision.wait)
            call.protocol.restart()
            call.stream_began = False
            call.events_before = 0
            return True
        self.stats.failures += 1
        if decision.budget_refused:
            log = logger.error if BUDGET.ran_dry() else logger.debug
            log(
                "%s: %s; not retried: the process-wide retry budget is exhausted. Until "
                "successful calls refill it, failing calls are answered without a retry",
                name,
                failure.description,
            )
        elif failure.retryable:
            attempts = call.state.attempt
            logger.error(
                "%s: giving up after %d attempt%s: %s (%s)",
                name,
                attempts,
                "" if attempts == 1 else "s",
                failure.description,
                decision.why_not,
            )
        await self._give_up(call, failed, decision.why_not or "")
        return False

    async def _give_up(self, call: _Call, failed: _Failed, why_not: str) -> None:
        """Before content: the upstream's last answer, or an API-shaped error of our own."""
        client, failure = call.client, failed.failure
        if failed.answer is not None:
            status, reason, headers, body = failed.answer
            await client.answer(status, reason, call.headers(headers), body)
            return
        if failed.sse_error is not None:
            if call.request.kind == "converted":  # as the API answers a plain call
                error_type = _sse_error_type(failed.sse_error) or "api_error"
                status = ERROR_STATUSES.get(error_type, 500)
                body = sse_data(failed.sse_error) or b""
                headers = _json_headers(call.upstream_status[2])
                await client.answer(status, None, call.headers(headers), body)
                return
            status, reason, headers = call.upstream_status
            await client.start(status, reason, call.headers(headers))
            await client.write(failed.sse_held + failed.sse_error)
            await client.end()
            return
        error_type = "timeout_error" if failure.timeout else "api_error"
        status = ERROR_STATUSES["timeout_error"] if failure.timeout else BAD_GATEWAY
        notes = "; ".join(call.state.notes())
        message = f"sdkguard proxy: {failure.description}; gave up: {why_not} ({notes})"
        await client.answer(
            status,
            None,
            call.headers([("content-type", "application/json")]),
            error_body(error_type, message),
        )

    async def _continue(
        self, call: _Call, failed: _Failed
    ) -> Literal["continued", "answered", "not"]:
        """After content with `resume` on: continue the message in a new attempt (the same
        rules as a retry: max_attempts, the retry budget, the call's deadline), or not."""
        resume, failure, name = call.resume, failed.failure, call.request.name
        assert resume is not None
        if resume.delivered.complete and not call.api_error:
            if call.request.kind != "converted":
                return "not"  # `_after_content` ends the whole message
            duration = time.monotonic() - call.attempt_started
            call.state = call.state.record(failure, duration, None, received=failed.received)
            await self._answer_converted(call)
            return "answered"
        if not failure.retryable:
            return "not"
        why_not = resume.plan()
        if why_not is not None:
            call.why_not_continued = f"the message is not continued: {why_not}"
            return "not"
        if call.state.policy is self.pre_policy:
            # After content the pre-content deadline is past its use: the call's own deadline
            # (none by default) bounds the continuations.
            call.state = dataclasses.replace(call.state, policy=self.config.policy)
        now = time.monotonic()
        decision = call.state.decide(failure, now=now, rand=random.random())
        if not decision.retry:
            call.why_not_continued = f"not continued: {decision.why_not}"
            return "not"
        received = failed.received
        call.state = call.state.record(
            failure, now - call.attempt_started, decision.wait, decision.cost, received=received
        )
        if call.telemetry is not None:
            stall = _STALL_LIMITS.get(failure.reason)
            call.telemetry.attempt_failed(
                failure.reason, None, decision.wait, stall=stall, continued=True, received=received
            )
        self.stats.retries += 1
        self.stats.continuations += 1
        logger.warning(
            "%s: continuing after %s; next attempt in %s (attempt %d of %d)",
            name,
            failure.description,
            _say_seconds(decision.wait),
            call.state.attempt,
            self.config.policy.max_attempts,
        )
        await asyncio.sleep(decision.wait)
        resume.begin()
        call.events_before = resume.delivered.events_received()[0]
        return "continued"

    async def _after_content(self, call: _Call, failed: _Failed) -> None:
        """A failure once content reached the client: no retry can hide it.

        The message already whole loses nothing: its `message_stop` is sent. Otherwise the
        stream ends with an `error` event the client's SDK raises, and a clean end of body.
        Continuation after content (a later issue) will plug in here.
        """
        failure, client, name = failed.failure, call.client, call.request.name
        duration = time.monotonic() - call.attempt_started
        call.state = call.state.record(failure, duration, None, received=failed.received)
        try:
            if call.protocol.whole(api_error=call.api_error):
                logger.info(
                    "%s: %s after the message was whole; the client gets its message_stop",
                    name,
                    failure.description,
                )
                if not call.stop_sent:
                    await client.write(MESSAGE_STOP)
                await client.end()
                self._succeeded(call)
                return
            self.stats.failures += 1
            why_not = call.why_not_continued
            logger.error(
                "%s: stream interrupted after content was relayed: %s; %sthe client gets an "
                "error event",
                name,
                failure.description,
                "" if why_not is None else why_not + "; ",
            )
            if failed.sse_error is not None:  # the API's own error event
                await client.write(failed.sse_error)
                await client.end()
                return
            error_type = "overloaded_error" if failure.retryable else "api_error"
            notes = "; ".join(call.state.notes())
            if why_not is not None:
                notes += f"; {why_not}"
            message = (
                "sdkguard proxy: the upstream stream broke after content was relayed: "
                f"{failure.description} ({notes})"
            )
            await client.write(error_event(error_type, message))
            await client.end()
        except ClientGone:
            pass

    # -- forensics ------------------------------------------------------------------------------

    @staticmethod
    def _received(call: _Call, error: BaseException | None, *, error_event: bool) -> Received:
        """What the failed attempt received: worked out once, at the failure, from what the
        relay keeps anyway (the response's headers, aiohttp's count of the body bytes, what the
        protocol held or recorded), never counted per event. `error_event`: an SSE `error`
        event ended it (counted, as the library counts it)."""
        errno = None if error is None else errno_of(error)
        response = call.response
        if response is None:  # no response headers: nothing received (the proxy knows it)
            return Received(bytes_received=0, errno=errno)
        count, last = None, None
        if call.stream_began:
            count, last = _events_of_attempt(call)
            if count is not None and error_event:
                count, last = count + 1, "error"
        return Received(
            response.headers.get("request-id"),
            response.content.total_bytes,
            count,
            last if count else None,
            errno,
        )

    # -- telemetry (only when a provider is configured) -----------------------------------------

    def _call_telemetry(self, request: Forward) -> _telemetry.CallTelemetry | None:
        name = "messages.count_tokens" if request.kind == "counted" else "messages.create"
        return _telemetry.start_call(
            lambda: name,
            request.fields,
            self.upstream_url,
            stream=request.kind in ("stream", "converted"),  # as the library records it
            sdk_call=None,
        )

    def _content_began(self, call: _Call, released: list[bytes]) -> None:
        """The commit point: the first chunk, and for a relayed stream what the telemetry
        keeps of the message (message_start: the id, the model, the input usage)."""
        if call.telemetry is None:
            return
        call.telemetry.first_chunk()
        if call.request.kind != "stream":
            return  # a converted call's protocol keeps the message
        call.summary = StreamProtocol(raw=True)
        for event in released:
            if sse_event_name(event) in ("message_start", "message_delta"):
                _summarize(call, event)

    def _lost_after_content(self, call: _Call, failed: _Failed) -> None:
        """The attempt failed once content had reached the client (a message already whole
        loses nothing: `_after_content` counts it a success)."""
        if call.telemetry is None or call.protocol.whole(api_error=call.api_error):
            return
        failure = failed.failure
        call.error_type = failure.reason
        stall = _STALL_LIMITS.get(failure.reason)
        call.telemetry.attempt_failed(
            failure.reason, None, None, stall=stall, received=failed.received
        )

    @staticmethod
    def _delivered(call: _Call) -> Any:
        """The message as far as the client got it, as JSON: for its usage and stop reason."""
        try:
            if call.resume is not None:
                return call.resume.delivered.message_data()
            if call.request.kind == "converted":
                return call.protocol.message_data()
            if call.summary is not None:
                return call.summary.message_data()
        except Exception:  # telemetry never breaks a relay
            return None
        return call.message

    # -- everything else -------------------------------------------------------------------------

    async def _pass(self, request: Forward, client: Downstream) -> None:
        """Forwarded once, the answer streamed back as it comes."""
        try:
            response = await self.upstream.send(
                request.method,
                request.path,
                request.query,
                request.headers,
                request.body,
                self.config.policy.connect_timeout,
            )
        except Exception as err:
            failure = failure_of(err, "response")
            words = failure.description if failure else f"cannot forward ({type(err).__name__})"
            await client.answer(
                BAD_GATEWAY,
                None,
                [("content-type", "application/json")],
                error_body("api_error", f"sdkguard proxy: {words}"),
            )
            return
        done = False
        try:
            await client.start(
                response.status, response.reason, forwardable(response.headers.items())
            )
            async for chunk in response.content.iter_any():
                await client.write(chunk)
            await client.end()
            done = True
        except ClientGone:
            raise
        except Exception as err:
            logger.warning("%s: the upstream answer broke: %s", request.name, type(err).__name__)
            await client.abort()
        finally:
            response.release() if done else response.close()
