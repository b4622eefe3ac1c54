"""The decision core: classify a failure, decide whether to retry, compute the wait.

Nothing here does I/O, sleeps or reads a clock: time and randomness come in as arguments,
so the sync and async drivers share every decision and the core can be tested exhaustively.
"""

from __future__ import annotations

import email.utils
import errno
import json
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from sdkguard._policy import Policy

__all__ = [
    "CLIENT_TIMEOUT",
    "CONNECTION_ERROR",
    "RETRY_REQUESTED",
    "AttemptRecord",
    "CallState",
    "Decision",
    "Failure",
    "Received",
    "RetryBudget",
    "chain_of",
    "classify_sse_error",
    "classify_status",
    "classify_transport",
    "errno_name",
    "is_transport_error",
    "parse_retry_after",
    "say_seconds",
]

Phase = Literal["response", "body"]
"""Where a failure happened: before the response headers arrived, or while reading the body."""

# SSE `error` event types the API sends for transient trouble.
RETRYABLE_SSE_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, as the core understands it."""

    reason: str
    """Stable reason code: `connection_reset`, `stall_idle`, `status_529`, ..."""
    description: str
    """Human words for log lines: `connection reset by peer (ECONNRESET)`."""
    retryable: bool
    retry_after: float | None = None
    """The wait the server asked for, in seconds, when it asked."""
    timeout: bool = False
    """A timeout or stall: costs more of the retry budget."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What one attempt of a call came to."""

    number: int
    reason: str
    description: str
    duration: float
    wait: float | None
    """The wait that followed it (None: no further attempt)."""
    request_id: str | None = None
    """The `request-id` header of its response (None: no response headers, or none sent)."""
    bytes_received: int | None = None
    """Bytes of the response body received, as the HTTP library counts them (compressed, if
    the body was); 0 when the attempt failed before the response headers; None: not known
    (a non-streaming answer broken off by the transport)."""
    events_received: int | None = None
    """SSE events of the message received, pings not counted (the SDK drops them) and an
    `error` event counted; for a continuation, the events it added to the message. None: no
    event stream was read (not a stream, or an error status, or no response headers)."""
    last_event: str | None = None
    """The type of the last event received (`content_block_delta`, ...), if any."""
    errno: str | None = None
    """The symbolic errno of the failure (`ECONNRESET`, `ETIMEDOUT`, ...) where the chain of
    the exception raised carries an `OSError` with one."""

    def note(self, max_attempts: int) -> str:
        line = f"attempt {self.number} of {max_attempts}: {self.reason} after {self.duration:.2f} s"
        details = self.details()
        if details:
            line = f"{line} ({details})"
        return line if self.wait is None else f"{line}; waited {say_seconds(self.wait)}"

    def details(self) -> str:
        """What the attempt received, in a few words: only the parts known (no content)."""
        parts: list[str] = []
        if self.request_id:
            parts.append(f"request {self.request_id}")
        if self.bytes_received is not None:
            parts.append(f"{self.bytes_received:,} B")
        if self.events_received is not None:
            count = self.events_received
            parts.append(f"{count:,} event{'' if count == 1 else 's'}")
        if self.last_event:
            parts.append(f"last {self.last_event}")
        if self.errno:
            parts.append(self.errno)
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Received:
    """What an attempt received before it failed (the forensics of `AttemptRecord`)."""

    request_id: str | None = None
    bytes_received: int | None = None
    events_received: int | None = None
    last_event: str | None = None
    errno: str | None = None


NOTHING_KNOWN = Received()


def errno_name(err: BaseException) -> str | None:
    """The symbolic errno of the first `OSError` with one in `err`'s chain (`ECONNRESET`)."""
    for item in chain_of(err):
        number = item.errno if isinstance(item, OSError) else None
        if isinstance(number, int) and number > 0:
            # A socket.gaierror's errno is an EAI_ code, not an errno.
            if isinstance(item, socket.gaierror):
                continue
            return errno.errorcode.get(number)
    return None


def say_seconds(seconds: float) -> str:
    """A wait in words: `40 ms`, `2.0 s` (a short wait is not `0.0 s`)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


BUDGET_EXHAUSTED = (
    "the process-wide retry budget is exhausted (too many retries failed lately; "
    "successful calls refill it)"
)


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    wait: float = 0.0
    why_not: str | None = None
    """Why the call gives up (None when it retries)."""
    cost: float = 0.0
    """Tokens of the retry budget this retry took."""
    budget_refused: bool = False
    """The call gives up because the retry budget is empty."""


class RetryBudget:
    """A process-wide token bucket, as in the AWS SDKs' standard retry mode.

    A retry takes `cost` tokens (more after a timeout); a call that succeeds without a retry
    gives back a small refund, one that succeeded after retries gives back what its last
    retry took. So a healthy process never notices the bucket, while an outage, in which
    nothing succeeds, does not turn every call into `max_attempts` requests. The first attempt
    of a call is always free.

    It also remembers whether it ran dry, so that this is said once: `ran_dry()` is True for
    the first refusal only, until the bucket is back above half of its capacity.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent = 0.0  # tokens spent below capacity; 0 = full, whatever the capacity
        self._dry = False

    def try_spend(self, cost: float, capacity: float) -> bool:
        with self._lock:
            if self._spent + cost > capacity:
                return False
            self._spent += cost
            return True

    def ran_dry(self) -> bool:
        """A retry was refused: True when it is the first refusal since the bucket recovered."""
        with self._lock:
            first, self._dry = not self._dry, True
            return first

    def refund(self, amount: float, capacity: float) -> bool:
        """Give back `amount`; True when this brings a bucket that ran dry back above half."""
        if not self._spent:  # the common case, a full bucket, takes no lock
            return False
        with self._lock:
            self._spent = max(0.0, self._spent - amount)
            if self._dry and self._spent <= capacity / 2:
                self._dry = False
                return True
            return False

    def available(self, capacity: float) -> float:
        return max(0.0, capacity - self._spent)

    def reset(self) -> None:
        with self._lock:
            self._spent = 0.0
            self._dry = False


BUDGET = RetryBudget()


@dataclass(frozen=True, slots=True)
class CallState:
    """The retry state of one logical call: immutable, each failure yields the next state."""

    policy: Policy
    started_at: float
    attempt: int = 1
    history: tuple[AttemptRecord, ...] = ()
    last_cost: float = 0.0
    """Tokens of the retry budget that the last retry took."""

    def remaining(self, now: float) -> float | None:
        """Seconds left of the deadline (None: no deadline)."""
        if self.policy.deadline is None:
            return None
        return self.started_at + self.policy.deadline - now

    def decide(
        self,
        failure: Failure,
        *,
        now: float,
        rand: float,
        budget: RetryBudget | None = BUDGET,
    ) -> Decision:
        """Retry or give up after `failure`; `rand` in [0, 1) draws the jitter."""
        policy = self.policy
        if not failure.retryable:
            return Decision(False, why_not="not retryable")
        if self.attempt >= policy.max_attempts:
            if policy.max_attempts == 1:
                return Decision(False, why_not="max_attempts is 1")
            return Decision(False, why_not=f"all {policy.max_attempts} attempts failed")
        if failure.retry_after is not None and failure.retry_after > policy.max_retry_after:
            return Decision(
                False,
                why_not=(
                    f"the server asked to wait {failure.retry_after:.1f} s, "
                    f"more than max_retry_after ({policy.max_retry_after:g} s)"
                ),
            )
        wait = self.backoff(rand) if failure.retry_after is None else max(failure.retry_after, 0.0)
        # Compared as the caller will: the wait must end strictly before the deadline.
        if policy.deadline is not None and now + wait >= self.started_at + policy.deadline:
            return Decision(False, why_not=f"the deadline ({policy.deadline:g} s) would pass")
        cost = 0.0
        if budget is not None and policy.retry_budget:
            cost = policy.budget_timeout_cost if failure.timeout else policy.budget_retry_cost
            if not budget.try_spend(cost, policy.budget_capacity):
                return Decision(False, why_not=BUDGET_EXHAUSTED, budget_refused=True)
        return Decision(True, wait=wait, cost=cost)

    def backoff(self, rand: float) -> float:
        """The computed wait before attempt `self.attempt + 1`, jitter applied."""
        policy = self.policy
        exponent = min(self.attempt - 1, 1000)  # attempt 2 waits backoff_initial
        try:
            base = policy.backoff_initial * policy.backoff_multiplier**exponent
        except OverflowError:
            base = policy.backoff_max
        return min(policy.backoff_max, base) * (1.0 - policy.jitter * rand)

    def record(
        self,
        failure: Failure,
        duration: float,
        wait: float | None,
        cost: float = 0.0,
        *,
        received: Received = NOTHING_KNOWN,
    ) -> CallState:
        """The state after this attempt failed: the next attempt when `wait` is not None.

        `cost`: what the retry took of the budget; `received`: what the attempt received.
        """
        entry = AttemptRecord(
            self.attempt,
            failure.reason,
            failure.description,
            duration,
            wait,
            received.request_id,
            received.bytes_received,
            received.events_received,
            received.last_event,
            received.errno,
        )
        if wait is None:
            return replace(self, history=(*self.history, entry))
        return replace(
            self, attempt=self.attempt + 1, history=(*self.history, entry), last_cost=cost
        )

    def refund(self) -> float:
        """What a success gives back to the budget: the last retry's cost, or the refund."""
        return self.last_cost if self.attempt > 1 else self.policy.budget_success_refund

    def notes(self) -> list[str]:
        return [entry.note(self.policy.max_attempts) for entry in self.history]


def parse_retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """`retry-after-ms`, then `retry-after` (seconds or an HTTP date), in seconds."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed)) - wall_now


def classify_status(
    status: int,
    headers: Mapping[str, str],
    *,
    policy: Policy,
    wall_now: float,
    client_should_retry: Callable[[], bool],
) -> Failure:
    """An error status. Precedence: `x-should-retry`, `retry_statuses`, then (401 only) the client.

    The client's own `_should_retry` owns the 401 rule: with a token cache it invalidates the
    token and allows exactly one retry.
    """
    reason = f"status_{status}"
    should = headers.get("x-should-retry")
    if should == "true":
        retryable = True
    elif should == "false":
        retryable = False
    elif status in policy.retry_statuses:
        retryable = True
    elif status == 401:
        retryable = client_should_retry()
    else:
        retryable = False
    retry_after = parse_retry_after(headers, wall_now) if retryable else None
    return Failure(reason, f"HTTP {status}", retryable, retry_after, timeout=status == 408)


def classify_sse_error(error_type: str | None) -> Failure:
    """An `event: error` in a stream (HTTP 200): retried for the transient types only."""
    name = error_type or "unknown_error"
    return Failure(name, f"stream error event {name}", name in RETRYABLE_SSE_ERRORS)


def chain_of(err: BaseException) -> list[BaseException]:
    """`err`, its causes and contexts, and the members of exception groups among them.

    On trio a refused connection is an `OSError` caused by a group of per-address errors.
    """
    chain: list[BaseException] = []
    pending: list[BaseException] = [err]
    while pending and len(chain) < 32:
        current = pending.pop(0)
        if any(seen is current for seen in chain):
            continue
        chain.append(current)
        pending.extend(getattr(current, "exceptions", ()))
        cause = current.__cause__ or current.__context__
        if cause is not None:
            pending.append(cause)
    return chain


def _is_http_library_error(err: BaseException, name: str) -> bool:
    # httpx, httpx2, httpcore and httpcore2 share these class names; matching on the name keeps
    # the core independent of which one the installed SDK uses.
    cls = type(err)
    return cls.__name__ == name and cls.__module__.startswith(("httpx", "httpcore"))


def _timed_out(reason: str, description: str) -> Failure:
    return Failure(reason, description, retryable=True, timeout=True)


# A connection lost before the answer (a reset, or a close, while the request is sent or
# before the response began) is named alike whatever each client saw of it: a sync client
# whose write failed sees only an end of file (httpcore swallows the write error and reads
# on: "Server disconnected without sending a response"), an async one the reset or a broken
# pipe, and neither can tell a reset from a close then.
_LOST_BEFORE_ANSWER = Failure(
    "connection_reset", "connection reset or closed before the answer arrived", True
)
_CLOSED_MID_ANSWER = Failure(
    "connection_closed", "the server closed the connection mid-answer", True
)
# What asyncio raises for a pooled connection whose event loop was closed (a client reused
# across `asyncio.run()` calls); the retry gets a fresh connection, as the SDK's own does.
_CLOSED_LOOP = Failure(
    "connection_closed", "the pooled connection belonged to a closed event loop", True
)


def _os_failure(err: OSError, phase: Phase) -> Failure | None:
    if isinstance(err, ConnectionRefusedError):
        return Failure("connect_refused", "connection refused (ECONNREFUSED)", True)
    if phase == "response" and isinstance(
        err, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    ):
        return _LOST_BEFORE_ANSWER
    if isinstance(err, (ConnectionResetError, ConnectionAbortedError)):
        return Failure("connection_reset", "connection reset by peer (ECONNRESET)", True)
    if isinstance(err, BrokenPipeError):
        return Failure("connection_reset", "broken pipe (EPIPE)", True)
    if isinstance(err, ssl.SSLCertVerificationError):
        return Failure("tls_certificate", "TLS certificate verification failed", False)
    if isinstance(err, ssl.SSLError):
        return Failure("tls_error", f"TLS error ({err.reason or 'unknown'})", True)
    if isinstance(err, socket.gaierror):
        if err.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):
            return Failure("dns", "temporary DNS failure (EAI_AGAIN)", True)
        return Failure("dns_not_found", f"DNS lookup failed ({err.strerror})", False)
    if err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN):
        return Failure("network_unreachable", "network unreachable (ENETUNREACH)", True)
    if err.errno == errno.ETIMEDOUT:  # while connecting (an established one is seen earlier)
        return Failure("connect_timeout", "connection timed out (ETIMEDOUT)", True, timeout=True)
    return None


RETRY_REQUESTED = Failure("retryable_error", "retry requested by middleware", True)
CLIENT_TIMEOUT = Failure("timeout", "request timed out", True, None, True)
"""A client's own timeout, with no transport error behind it to say more."""
CONNECTION_ERROR = Failure("connection_error", "connection error", True)


def classify_transport(err: BaseException, *, phase: Phase, stream: bool) -> Failure | None:
    """A failure of the network, the transport or the transfer anywhere in `err`'s chain
    (`OSError`s, httpx's and httpcore's errors, corrupt bytes), or None.

    What a client library raises around them (the SDK's `APIConnectionError`) is the caller's
    to read: `_sdk.classify_exception` for the library, the proxy's own for aiohttp.
    """
    if isinstance(err, json.JSONDecodeError):
        # Raised by the SDK parsing a 2xx body or an event's data: a corrupt transfer.
        return Failure("malformed_answer", "the answer is not valid JSON", True)
    if isinstance(err, UnicodeDecodeError):
        # The SDK decoding a body or an SSE line: corrupt bytes, as much as invalid JSON.
        return Failure("malformed_answer", "the answer is not valid UTF-8", True)
    chain = chain_of(err)
    connecting = ("ConnectTimeout", "ConnectError")
    if not any(_is_http_library_error(item, name) for item in chain for name in connecting):
        for item in chain:
            # The kernel gave up on an established connection (TCP keepalive or its
            # retransmission limit): the peer vanished. The socket's own timeout has no errno;
            # httpcore calls both a `ReadTimeout` (sync) or a `ReadError` (async).
            if isinstance(item, OSError) and item.errno == errno.ETIMEDOUT:
                return Failure(
                    "connection_timeout",
                    "connection timed out (ETIMEDOUT): the server stopped answering",
                    True,
                    timeout=True,
                )
    for item in chain:
        if _is_http_library_error(item, "ReadTimeout"):
            if not stream:
                return Failure(
                    "read_timeout", "no response within the read timeout", True, None, True
                )
            if phase == "response":
                return Failure("stall_response", "no response headers in time", True, None, True)
            return Failure("stall_idle", "the stream went silent", True, None, True)
        if _is_http_library_error(item, "ConnectTimeout"):
            return Failure("connect_timeout", "connect timed out", True, None, True)
        if _is_http_library_error(item, "WriteTimeout"):
            return Failure("write_timeout", "sending the request timed out", True, None, True)
        if _is_http_library_error(item, "PoolTimeout"):
            return Failure(
                "pool_timeout", "no free connection in the pool in time", True, None, True
            )
    for item in chain:
        # A socket's own timeout is a TimeoutError without errno: the limits above judge it.
        if isinstance(item, OSError) and (
            not isinstance(item, TimeoutError) or item.errno == errno.ETIMEDOUT
        ):
            failure = _os_failure(item, phase)
            if failure is not None:
                return failure
    for item in chain:
        if _is_http_library_error(item, "RemoteProtocolError"):
            # h11's words for an end of file before any byte of a response.
            if "without sending a response" in str(item):
                return _LOST_BEFORE_ANSWER
            return _CLOSED_MID_ANSWER
        if any(
            _is_http_library_error(item, name)
            for name in ("ReadError", "WriteError", "ConnectError", "NetworkError")
        ):
            return Failure("connection_error", f"connection error ({item})", True)
    for item in chain:
        # Matched by its words: a closed client, or any other RuntimeError, is no failure
        # of the connection, and no retry mends it.
        if type(item) is RuntimeError and item.args == ("Event loop is closed",):
            return _CLOSED_LOOP
    return None


def is_transport_error(err: BaseException) -> bool:
    """A failure of the transport (httpx or httpcore `TransportError`, an `OSError`), except
    `UnsupportedProtocol`: a URL no retry can send."""
    if isinstance(err, OSError):
        return True
    names = [
        cls.__name__
        for cls in type(err).__mro__
        if cls.__module__.startswith(("httpx", "httpcore"))
    ]
    return "TransportError" in names and "UnsupportedProtocol" not in names
