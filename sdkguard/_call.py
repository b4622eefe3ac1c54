"""The attempt loop of one guarded call: a shared core (`GuardedCall`) and two thin drivers.

`GuardedCall` turns what happened into the next step using the pure decision core; the sync
and async drivers only send attempts, sleep, and hand streams to `_stream`.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import anyio

from sdkguard import _plain_hosts, _sdk, _telemetry
from sdkguard._decide import (
    BUDGET,
    CallState,
    Decision,
    Failure,
    Phase,
    Received,
    classify_sse_error,
    classify_status,
    errno_name,
    say_seconds,
)
from sdkguard._errors import StreamInterrupted, StreamStalled
from sdkguard._events import RetryEvent
from sdkguard._policy import Policy, with_max_attempts

logger = logging.getLogger("sdkguard")

_STALL_LIMITS = {
    "stall_response": "response_timeout",
    "stall_idle": "idle_timeout",
    "stall_progress": "progress_timeout",
}


@dataclass(frozen=True, slots=True)
class Step:
    """What a driver does next: wait and try again, or raise `error`."""

    wait: float = 0.0
    error: BaseException | None = None
    continued: bool = False
    """The next attempt continues the message (`resume`) instead of starting it again."""


def _min(a: float | None, b: float | None, c: float | None = None) -> float | None:
    """The smallest of the limits that are set (None: no limit)."""
    if b is not None and (a is None or b < a):
        a = b
    if c is not None and (a is None or c < a):
        a = c
    return a


def add_note(err: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        err.add_note(note)
    else:  # PEP 678 by hand
        notes = getattr(err, "__notes__", None)
        if notes is None:
            notes = []
            err.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


class GuardedCall:
    """One logical call: its policy, its retry state and what the SDK said the call is."""

    __slots__ = (
        "_attempt_started",
        "_base_timeout",
        "_first_attempt_options",
        "_idempotency_key",
        "_name",
        "policy",
        "sdk",
        "state",
        "stream",
        "telemetry",
        "unconverted",
    )

    def __init__(
        self, sdk_call: _sdk.SdkCall, policy: Policy, *, unconverted: _sdk.SdkCall | None = None
    ) -> None:
        if sdk_call.explicit_max_retries is not None:
            policy = with_max_attempts(policy, sdk_call.explicit_max_retries + 1)
        self.sdk: _sdk.SdkCall | None = sdk_call
        """What the SDK said the call is; dropped when no attempt can follow (`settle`)."""
        self.stream = sdk_call.stream
        self.policy = policy
        self._name: str | None = None
        self._idempotency_key = sdk_call.idempotency_key
        self._first_attempt_options: Any = None
        self._base_timeout = sdk_call.base_timeout
        self.unconverted = unconverted
        """For a plain call sent as a stream: the call as the caller made it, which the next
        attempt sends instead when a stream got no headers in time (`_fall_back`)."""
        now = time.monotonic()
        self.state = CallState(policy, started_at=now)
        self._attempt_started = now
        tracer_provider = sdk_call.tracer_provider
        self.telemetry = (
            _telemetry.start_call(
                lambda: self.name,
                sdk_call.body(),
                sdk_call.base_url(),
                stream=sdk_call.stream,
                sdk_call=sdk_call.sdk_span_call,
                tracer_provider=tracer_provider,
            )
            if sdk_call.traced and _telemetry.may_record(tracer_provider)
            else None
        )

    @property
    def name(self) -> str:
        """The SDK method, for log lines and hooks (only computed when something is said)."""
        return self._name if self._name is not None else self._unsettled().name

    def _unsettled(self) -> _sdk.SdkCall:
        sdk = self.sdk
        assert sdk is not None, "a settled call sends no attempt"
        return sdk

    def checked(self, result: Any) -> Any:
        """An attempt's result, unless the SDK handed back a body that is not JSON as text."""
        return _sdk.checked(self._unsettled().cast_to, result)

    def continue_with(self, body: Any) -> None:
        """The next attempts send `body`, a continuation request (with a key of its own)."""
        self.sdk = self._unsettled().with_body(body)
        self._idempotency_key = None
        self._first_attempt_options = None

    def settle(self) -> None:
        """No attempt follows: keep the call's name, drop the request."""
        self._name = self.name
        self._first_attempt_options = None
        self.sdk = None

    # -- attempts -------------------------------------------------------------------------

    def attempt_options(self) -> Any:
        """Options for the next attempt: SDK retries off, its retry count, our timeouts."""
        sdk = self._unsettled()
        self._attempt_started = now = time.monotonic()
        policy = self.policy
        remaining = self._remaining(now)
        base = self._base_timeout
        read = _min(base.read, policy.response_timeout if self.stream else None, remaining)
        timeout = _sdk.make_timeout(
            _min(base.connect, policy.connect_timeout, remaining),
            read,
            base.write,
            _min(base.pool, remaining),
        )
        key = self._idempotency_key
        if key is None and self._first_attempt_options is not None:
            key = self._idempotency_key = sdk.first_attempt_key(self._first_attempt_options)
        options = _sdk.attempt_options(sdk.options, self.state.attempt - 1, timeout, key)
        if key is None:  # the SDK sets the key on these options (see `SdkCall.idempotency_key`)
            self._first_attempt_options = options
        return options

    def body_read_timeout(self) -> float | None:
        """The per-read limit of a stream's body: the idle limit, within the deadline."""
        return _min(
            self._base_timeout.read,
            self.policy.idle_timeout,
            self._remaining(time.monotonic()),
        )

    def _remaining(self, now: float) -> float | None:
        # Never zero or negative: a transport limit must be positive, and a spent deadline
        # then fails the attempt at once, after which the core gives up.
        remaining = self.state.remaining(now)
        return None if remaining is None else max(remaining, 0.001)

    def succeeded(self, result: Any = None, message: Any = None) -> None:
        """The call ended well: `result` is what the caller gets, `message` the streamed one."""
        if self.state.attempt > 1:
            _sdk.record_retries(result, self.state.attempt - 1)
        policy = self.policy
        if policy.retry_budget and BUDGET.refund(self.state.refund(), policy.budget_capacity):
            logger.info("the retry budget is refilled: failing calls are retried again")
        if self.telemetry is not None:
            self.telemetry.attempt_succeeded()
            self.telemetry.finished(result if message is None else message)

    # -- failures -------------------------------------------------------------------------

    def classify(self, err: BaseException, phase: Phase) -> Failure | None:
        if isinstance(err, _sdk.StallDetected):
            return Failure(
                "stall_progress", "no content arrived, only pings", True, None, timeout=True
            )
        if isinstance(err, _sdk.IncompleteStream):
            return Failure("stream_incomplete", "the stream ended before the message did", True)
        if isinstance(err, _sdk.NotJsonAnswer):
            return Failure("malformed_answer", "the answer is not a JSON message", True)
        if isinstance(err, anthropic.APIStatusError):
            response = err.response
            if response.status_code < 400:  # an `event: error` inside a 200 stream
                return classify_sse_error(_sdk.error_type(err.body))
            return classify_status(
                response.status_code,
                response.headers,
                policy=self.policy,
                wall_now=time.time(),
                client_should_retry=lambda: self._unsettled().client_would_retry(response),
            )
        return _sdk.classify_exception(err, phase=phase, stream=self.stream)

    def failed(
        self,
        err: Exception,
        phase: Phase,
        *,
        committed: bool = False,
        partial: Callable[[], Any] | None = None,
        continuation: Callable[[], str | None] | None = None,
        response: Any = None,
        events: tuple[int, str | None] | None = None,
    ) -> Step:
        """The step after attempt `self.state.attempt` raised `err`.

        `committed`: content reached the caller, so the call cannot start again.
        `continuation` (`resume` on, after the commit point): plans the message's continuation
        and says None, or why it cannot be continued; a continuation is an attempt like any
        retry. A call that cannot be continued starts again unless it is `committed`.
        `response`: the attempt's http response, when it got one (a stream's body failed);
        `events`: how many events of the message it received, and the type of the last.
        """
        failure = self.classify(err, phase)
        if failure is None:  # not the network's or the API's doing: leave it exactly as raised
            if self.telemetry is not None:
                self.telemetry.finished(error_type=type(err).__qualname__)
            return Step(error=err)
        received = self._received(err, response, events)
        now = time.monotonic()
        duration = now - self._attempt_started
        if failure.timeout and self._deadline_passed(now):
            # The transport's limit was the deadline's remainder: name the deadline, not the
            # stall limit it stood in for.
            failure = _deadline_failure(phase)
        why_not_continued = None
        if continuation is not None and failure.retryable:
            why_not_continued = continuation()
        continuing = continuation is not None and failure.retryable and why_not_continued is None
        if committed and not continuing and (continuation is None or why_not_continued is not None):
            why_not = "content had already reached the caller"
            if why_not_continued is not None:
                why_not += f", and the message is not continued: {why_not_continued}"
            decision = Decision(False, why_not=why_not)
        elif failure.reason == "deadline":
            decision = Decision(False, why_not=f"the deadline ({self.policy.deadline:g} s) passed")
        else:
            decision = self.state.decide(failure, now=now, rand=random.random())
        wait = decision.wait if decision.retry else None
        self.state = self.state.record(failure, duration, wait, decision.cost, received=received)
        if self.telemetry is not None:
            stall = _STALL_LIMITS.get(failure.reason)
            self.telemetry.attempt_failed(
                failure.reason,
                err,
                wait,
                stall=stall,
                continued=continuing and wait is not None,
                received=received,
            )
            if wait is None:
                self.telemetry.finished(_partial_or_none(partial), error_type=failure.reason)
        if decision.retry:
            if failure.reason == "stall_response" and self.unconverted is not None:
                self._fall_back()
            self._announce(failure, err, decision.wait, now, received, continued=continuing)
            return Step(wait=decision.wait, continued=continuing)
        return Step(error=self._give_up(err, failure, decision, committed, partial))

    def _received(
        self, err: BaseException, response: Any, events: tuple[int, str | None] | None
    ) -> Received:
        """What the failed attempt received: read once, from counters kept anyway (the http
        response's header and byte count, the stream protocol's record), never per event."""
        if response is None:
            response = _sdk.response_of(err)  # an error status: the SDK read its body
        if response is not None:
            request_id, count = _sdk.received_from(response)
        else:
            # No response: a stream failed before its headers (nothing received), a
            # non-streaming answer may have been broken off anywhere (not known).
            request_id, count = None, 0 if self.stream else None
        return Received(
            request_id,
            count,
            None if events is None else events[0],
            None if events is None else events[1],
            errno_name(err),
        )

    def headers_came(self) -> None:
        """A plain call's stream got its headers: the host does not buffer streams, and its
        later attempts (restarts, continuations) stay streams."""
        self.unconverted = None

    def _fall_back(self) -> None:
        """A plain call's stream got no headers in time: send the call as the caller made it.

        A proxy that buffers whole answers (nginx's `proxy_buffering`, corporate proxies)
        holds a stream's headers until the whole answer is done, so the response limit cuts
        every attempt, each a new generation. Unconverted, the call gets the SDK's own read
        timeout (and TCP keepalive); the host is remembered, so later calls go out unconverted.
        """
        assert self.unconverted is not None
        self.sdk, self.unconverted, self.stream = self.unconverted, None, False
        origin = str(self.sdk.base_url())
        if _plain_hosts.remember_buffering(origin, time.monotonic()):
            logger.warning(
                "%s: no response headers in time for a stream sent in place of a non-streaming "
                "call (a proxy that buffers whole answers?); non-streaming calls to %s are sent "
                "as they are for the next %d minutes",
                self.name,
                origin,
                _plain_hosts.REMEMBERED_FOR // 60,
            )

    def _deadline_passed(self, now: float) -> bool:
        remaining = self.state.remaining(now)
        # A transport timer may fire a clock tick early.
        return remaining is not None and remaining < _DEADLINE_TOLERANCE

    def _announce(
        self,
        failure: Failure,
        err: BaseException,
        wait: float,
        now: float,
        received: Received,
        *,
        continued: bool = False,
    ) -> None:
        attempt, max_attempts = self.state.attempt, self.policy.max_attempts
        logger.warning(
            "%s: continuing after %s; next attempt in %s (attempt %d of %d)"
            if continued
            else "%s: %s; retrying in %s (attempt %d of %d)",
            self.name,
            failure.description,
            say_seconds(wait),
            attempt,
            max_attempts,
        )
        if self.policy.on_retry:
            event = RetryEvent(
                call=self.name,
                attempt=attempt,
                max_attempts=max_attempts,
                reason=failure.reason,
                description=failure.description,
                error=err,
                wait=wait,
                elapsed=now - self.state.started_at,
                continued=continued,
                request_id=received.request_id,
                bytes_received=received.bytes_received,
                events_received=received.events_received,
                last_event=received.last_event,
                errno=received.errno,
            )
            for hook in self.policy.on_retry:
                try:
                    hook(event)
                except Exception:
                    logger.exception("%s: on_retry hook %r raised; ignored", self.name, hook)

    def _give_up(
        self,
        err: Exception,
        failure: Failure,
        decision: Decision,
        committed: bool,
        partial: Callable[[], Any] | None,
    ) -> BaseException:
        state = self.state
        if decision.budget_refused:
            # Said once per outage, not once per call: during one, every call fails here.
            log = logger.error if BUDGET.ran_dry() else logger.debug
            log(
                "%s: %s; not retried: the process-wide retry budget is exhausted. Until "
                "successful calls refill it, failing calls are raised without a retry",
                self.name,
                failure.description,
            )
        elif failure.retryable:
            logger.error(
                "%s: giving up after %d attempt%s: %s (%s)",
                self.name,
                state.attempt,
                "" if state.attempt == 1 else "s",
                failure.description,
                decision.why_not,
            )
        request = _sdk.request_of(err)
        error: BaseException = err
        if committed and not isinstance(err, anthropic.APIStatusError):
            error = StreamInterrupted(
                f"{self.name}: stream interrupted after content was delivered: "
                f"{failure.description}",
                request=request,
                partial_message=_partial_or_none(partial),
                attempts=state.history,
                reason=failure.reason,
            )
        elif failure.reason in _STALL_LIMITS or (failure.reason == "deadline" and self.stream):
            limit_name = _STALL_LIMITS.get(failure.reason, "deadline")
            limit = getattr(self.policy, limit_name)
            error = StreamStalled(
                f"{self.name}: {failure.description} ({limit_name}={limit:g} s)",
                request=request,
                reason=failure.reason,
                limit=limit,
            )
        elif failure.reason == "deadline":  # a plain call: the SDK's type for a timeout
            error = anthropic.APITimeoutError(request=request)
            error.message = (
                f"{self.name}: {failure.description} (deadline={self.policy.deadline:g} s)"
            )
            error.args = (error.message,)
        elif not isinstance(err, anthropic.AnthropicError):
            # A raw transport error from a body read, or our own end-of-stream check: give
            # handlers the SDK's type for a connection failure.
            error = anthropic.APIConnectionError(
                message=f"{self.name}: {failure.description}", request=request
            )
        if error is not err:
            error.__cause__ = err
        if failure.retryable or state.attempt > 1:  # a first attempt's final error: as raised
            for line in state.notes():
                add_note(error, line)
            add_note(error, f"sdkguard gave up: {decision.why_not}")
        return error


_DEADLINE_TOLERANCE = 0.01


def _deadline_failure(phase: Phase) -> Failure:
    where = "before the response began" if phase == "response" else "during the answer"
    return Failure("deadline", f"the call's deadline passed {where}", True, timeout=True)


def _partial_or_none(partial: Callable[[], Any] | None) -> Any:
    # Rebuilding the message must never hide the failure being reported.
    try:
        return partial() if partial is not None else None
    except Exception:
        logger.debug("could not rebuild the partial message", exc_info=True)
        return None


# -- drivers ---------------------------------------------------------------------------------


def open_sync(call: GuardedCall, send: Callable[[Any], Any]) -> Any:
    """Send attempts until one gets a response (headers, or a whole non-streaming answer).

    `send(options)` sends one attempt; an answer the SDK could only hand back as text (not
    JSON) fails the attempt (`GuardedCall.checked`)."""
    while True:
        token = _sdk.enter_attempt(call.state.attempt)
        try:
            if call.telemetry is None:
                return call.checked(send(call.attempt_options()))
            with call.telemetry.attempt(call.state.attempt):
                return call.checked(send(call.attempt_options()))
        except Exception as err:
            step = call.failed(err, "response")
            if step.error is err:
                raise
            if step.error is not None:
                raise step.error from err
            time.sleep(step.wait)
        finally:
            _sdk.leave_attempt(token)


async def open_async(call: GuardedCall, send: Callable[[Any], Awaitable[Any]]) -> Any:
    """`open_sync` for the async client."""
    while True:
        token = _sdk.enter_attempt(call.state.attempt)
        try:
            if call.telemetry is None:
                return call.checked(await send(call.attempt_options()))
            with call.telemetry.attempt(call.state.attempt):
                return call.checked(await send(call.attempt_options()))
        except Exception as err:
            step = call.failed(err, "response")
            if step.error is err:
                raise
            if step.error is not None:
                raise step.error from err
            await anyio.sleep(step.wait)
        finally:
            _sdk.leave_attempt(token)
