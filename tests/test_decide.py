"""The decision core: pure, so tested exhaustively with hypothesis and exact cases."""

from __future__ import annotations

import errno
import json
import socket
import ssl
import subprocess
import sys
import time

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from sdkguard import Policy
from sdkguard._decide import (
    AttemptRecord,
    CallState,
    Failure,
    Phase,
    RetryBudget,
    classify_sse_error,
    classify_status,
    parse_retry_after,
)
from sdkguard._sdk import classify_exception, http

pytestmark = pytest.mark.timeout(60)

RETRY_FIELDS = {
    "max_attempts": st.integers(1, 10),
    "backoff_initial": st.floats(0, 5),
    "backoff_multiplier": st.floats(1, 4),
    "backoff_max": st.floats(0, 30),
    "jitter": st.floats(0, 1),
    "deadline": st.none() | st.floats(0.1, 100),
    "max_retry_after": st.floats(0, 120),
}
policies = st.builds(Policy, **RETRY_FIELDS, retry_budget=st.just(False))
budgeted_policies = st.builds(
    Policy,
    **RETRY_FIELDS,
    retry_budget=st.booleans(),
    budget_capacity=st.floats(1, 100),
    budget_retry_cost=st.floats(0, 30),
    budget_timeout_cost=st.floats(0, 60),
    budget_success_refund=st.floats(0, 10),
)
# Mostly retryable failures, so that calls live long enough to meet their deadline, their
# last attempt and an empty budget.
failures = st.builds(
    Failure,
    reason=st.sampled_from(["connection_reset", "status_529", "stall_idle"]),
    description=st.just("x"),
    retryable=st.integers(0, 9).map(bool),
    retry_after=st.integers(0, 3).flatmap(lambda n: st.none() if n else st.floats(-5, 200)),
    timeout=st.booleans(),
)


class Calls(RuleBasedStateMachine):
    """Many calls of one process, interleaved, sharing one retry budget and one clock.

    Any sequence of failures (statuses, stalls, resets, server-requested waits), successes
    and passing time: every wait stays within its bounds and never crosses the deadline, no
    call makes more than `max_attempts` attempts, and the budget is exactly the token bucket
    it claims to be (checked against a model of it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.budget = RetryBudget()
        self.model_spent = 0.0  # the bucket, as the docs describe it
        self.now = 1000.0
        self.calls: list[CallState] = []

    @initialize(policy=budgeted_policies, calls=st.integers(1, 5))
    def use(self, policy: Policy, calls: int) -> None:
        self.policy = policy
        self.calls = [CallState(policy, started_at=self.now) for _ in range(calls)]

    @rule()
    def start_call(self) -> None:
        self.calls.append(CallState(self.policy, started_at=self.now))

    @rule(seconds=st.floats(0, 20))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    def pick(self, data: st.DataObject) -> int:
        """One of the calls in flight (a new one if there is none)."""
        if not self.calls:
            self.start_call()
        return data.draw(st.integers(0, len(self.calls) - 1))

    @rule(data=st.data(), failure=failures, rand=st.floats(0, 1, exclude_max=True))
    def attempt_fails(self, data: st.DataObject, failure: Failure, rand: float) -> None:
        index = self.pick(data)
        state, policy = self.calls[index], self.policy
        available = self.budget.available(policy.budget_capacity)
        decision = state.decide(failure, now=self.now, rand=rand, budget=self.budget)
        # The oracle: the documented rules, in their documented order.
        if failure.retry_after is None:
            base = policy.backoff_initial * policy.backoff_multiplier ** (state.attempt - 1)
            wait = min(policy.backoff_max, base) * (1 - policy.jitter * rand)
        else:
            wait = max(failure.retry_after, 0.0)
        cost = policy.budget_timeout_cost if failure.timeout else policy.budget_retry_cost
        if not failure.retryable:
            why_not: str | None = "not retryable"
        elif state.attempt >= policy.max_attempts:
            why_not = "attempts failed" if policy.max_attempts > 1 else "max_attempts is 1"
        elif failure.retry_after is not None and failure.retry_after > policy.max_retry_after:
            why_not = "max_retry_after"
        elif policy.deadline is not None and self.now + wait >= state.started_at + policy.deadline:
            why_not = "deadline"
        elif policy.retry_budget and self.model_spent + cost > policy.budget_capacity:
            why_not = "budget"
        else:
            why_not = None
        assert decision.retry == (why_not is None) == (decision.why_not is None)
        event(f"why not: {why_not}")
        if why_not is not None:
            assert why_not in (decision.why_not or "")
            assert decision.budget_refused == (why_not == "budget") and decision.cost == 0
            assert self.budget.available(policy.budget_capacity) == available
            given_up = state.record(failure, 1.0, None)
            assert given_up.attempt == state.attempt and len(given_up.history) == state.attempt
            self.calls.pop(index)
            return
        assert decision.wait == wait >= 0
        assert wait <= (
            policy.backoff_max if failure.retry_after is None else policy.max_retry_after
        )
        if policy.deadline is not None:  # the next attempt starts before the deadline
            assert self.now + wait < state.started_at + policy.deadline
        assert decision.cost == (cost if policy.retry_budget else 0)
        self.model_spent += decision.cost
        self.calls[index] = state.record(failure, 1.0, decision.wait, decision.cost)
        assert self.calls[index].last_cost == decision.cost
        self.now += wait

    @rule(data=st.data())
    def call_succeeds(self, data: st.DataObject) -> None:
        state = self.calls.pop(self.pick(data))
        refund = state.refund()
        # As the AWS SDKs do: the last retry's cost back after retries, else the refund.
        assert refund == (
            state.last_cost if state.attempt > 1 else self.policy.budget_success_refund
        )
        if self.policy.retry_budget:
            self.budget.refund(refund, self.policy.budget_capacity)
            self.model_spent = max(0.0, self.model_spent - refund)

    @invariant()
    def within_bounds(self) -> None:
        if not hasattr(self, "policy"):
            return
        capacity = self.policy.budget_capacity
        assert self.budget.available(capacity) == max(0.0, capacity - self.model_spent)
        assert 0 <= self.budget.available(capacity) <= capacity
        for state in self.calls:
            assert 1 <= state.attempt <= self.policy.max_attempts
            assert len(state.history) == state.attempt - 1


TestCalls = Calls.TestCase
TestCalls.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@given(policy=policies, rand=st.floats(0, 1, exclude_max=True), attempt=st.integers(1, 2000))
def test_backoff_is_capped_and_jittered_downwards(
    policy: Policy, rand: float, attempt: int
) -> None:
    wait = CallState(policy, 0.0, attempt=attempt).backoff(rand)
    assert 0 <= wait <= policy.backoff_max
    assert wait >= min(policy.backoff_max, policy.backoff_initial) * (1 - policy.jitter) - 1e-9


def test_backoff_follows_the_documented_sequence() -> None:
    policy = Policy(jitter=0)
    waits = [CallState(policy, 0.0, attempt=n).backoff(0.5) for n in range(1, 6)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_server_wait_replaces_backoff_unless_too_long() -> None:
    state = CallState(Policy(max_retry_after=10), 0.0)
    slow = Failure("status_429", "HTTP 429", True, retry_after=3.0)
    assert state.decide(slow, now=0.0, rand=0.0, budget=None).wait == 3.0
    too_slow = Failure("status_429", "HTTP 429", True, retry_after=30.0)
    decision = state.decide(too_slow, now=0.0, rand=0.0, budget=None)
    assert not decision.retry and "max_retry_after" in (decision.why_not or "")


def test_no_wait_crosses_the_deadline() -> None:
    state = CallState(Policy(deadline=5.0, jitter=0, backoff_initial=2.0), started_at=0.0)
    reset = Failure("connection_reset", "reset", True)
    assert state.decide(reset, now=2.0, rand=0.0, budget=None).retry
    decision = state.decide(reset, now=3.5, rand=0.0, budget=None)
    assert not decision.retry and "deadline" in (decision.why_not or "")
    # A wait that would end exactly at the deadline leaves no time for an attempt.
    assert not state.decide(reset, now=3.0, rand=0.0, budget=None).retry


def test_retry_budget_stops_retry_storms_and_refills() -> None:
    budget = RetryBudget()
    policy = Policy(budget_capacity=10, budget_retry_cost=5, budget_success_refund=5)
    reset = Failure("connection_reset", "reset", True)
    state = CallState(policy, 0.0)
    assert state.decide(reset, now=0, rand=0, budget=budget).retry
    assert state.decide(reset, now=0, rand=0, budget=budget).retry
    refused = state.decide(reset, now=0, rand=0, budget=budget)
    assert not refused.retry and "budget" in (refused.why_not or "")
    budget.refund(5, 10)
    assert state.decide(reset, now=0, rand=0, budget=budget).retry


def test_the_budget_pays_only_what_it_holds_in_full() -> None:
    budget = RetryBudget()
    assert budget.try_spend(5.25, capacity=10)
    assert not budget.try_spend(5.25, capacity=10)  # 10.5 tokens: more than it holds
    assert budget.try_spend(4.75, capacity=10)  # exactly all of it
    assert budget.available(10) == 0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "Wed, 25 Nov 2026 12:00:10 GMT"}, 10.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    now = 1795608000.0  # Wed, 25 Nov 2026 12:00:00 GMT
    assert parse_retry_after(headers, now) == expected


@pytest.mark.parametrize(
    ("status", "headers", "client_says", "retryable"),
    [
        (529, {}, False, True),
        (529, {"x-should-retry": "false"}, True, False),
        (400, {"x-should-retry": "true"}, False, True),
        (400, {}, True, False),
        (401, {}, True, True),  # the client's own single 401 retry (token cache)
        (401, {}, False, False),
        (404, {}, False, False),
        (408, {}, False, True),
    ],
)
def test_status_precedence(
    status: int, headers: dict[str, str], client_says: bool, retryable: bool
) -> None:
    failure = classify_status(
        status,
        headers,
        policy=Policy(),
        wall_now=time.time(),
        client_should_retry=lambda: client_says,
    )
    assert failure.retryable is retryable
    assert failure.reason == f"status_{status}"


def test_sse_error_types() -> None:
    assert classify_sse_error("overloaded_error").retryable
    assert classify_sse_error("api_error").retryable
    assert classify_sse_error("rate_limit_error").retryable
    assert not classify_sse_error("invalid_request_error").retryable
    assert classify_sse_error("overloaded_error").reason == "overloaded_error"


def _wrapped(cause: BaseException, outer: type[Exception]) -> Exception:
    try:
        try:
            raise cause
        except BaseException as err:
            raise outer("boom") from err
    except Exception as final:
        return final


@pytest.mark.parametrize(
    ("cause", "outer", "reason", "retryable"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), http.ReadError, "connection_reset", True),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "no"),
            http.ConnectError,
            "connect_refused",
            True,
        ),
        (BrokenPipeError(errno.EPIPE, "pipe"), http.WriteError, "connection_reset", True),
        (socket.gaierror(socket.EAI_AGAIN, "again"), http.ConnectError, "dns", True),
        (socket.gaierror(socket.EAI_NONAME, "nx"), http.ConnectError, "dns_not_found", False),
        (OSError(errno.ENETUNREACH, "unreach"), http.ConnectError, "network_unreachable", True),
        (ssl.SSLCertVerificationError("bad cert"), http.ConnectError, "tls_certificate", False),
        (TimeoutError("t"), http.ConnectTimeout, "connect_timeout", True),
        (TimeoutError("t"), http.ReadTimeout, "stall_idle", True),
        # the kernel gave up on the connection (keepalive, retransmissions): not a stall
        (TimeoutError(errno.ETIMEDOUT, "timed out"), http.ReadTimeout, "connection_timeout", True),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), http.ReadError, "connection_timeout", True),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), http.WriteError, "connection_timeout", True),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), http.ConnectTimeout, "connect_timeout", True),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), http.ConnectError, "connect_timeout", True),
        (ValueError("x"), http.RemoteProtocolError, "connection_closed", True),
    ],
)
def test_transport_failures(
    cause: BaseException, outer: type[Exception], reason: str, retryable: bool
) -> None:
    failure = classify_exception(_wrapped(cause, outer), phase="body", stream=True)
    assert failure is not None
    assert (failure.reason, failure.retryable) == (reason, retryable)


@pytest.mark.parametrize(
    "err",
    [
        json.JSONDecodeError("Expecting value", "{not json", 1),
        UnicodeDecodeError("utf-8", b"caf\xff", 3, 4, "invalid start byte"),
    ],
)
def test_corrupt_answers_are_retried(err: Exception) -> None:
    failure = classify_exception(err, phase="body", stream=True)
    assert failure is not None and (failure.reason, failure.retryable) == ("malformed_answer", True)


def test_read_timeout_depends_on_phase_and_kind() -> None:
    err = _wrapped(TimeoutError(), http.ReadTimeout)
    assert classify_exception(err, phase="response", stream=True).reason == "stall_response"  # type: ignore[union-attr]
    assert classify_exception(err, phase="response", stream=False).reason == "read_timeout"  # type: ignore[union-attr]


@pytest.mark.parametrize("err", [ValueError("user bug"), KeyError("k"), RuntimeError("x")])
def test_errors_that_are_not_the_networks_are_left_alone(err: Exception) -> None:
    assert classify_exception(err, phase="response", stream=True) is None


def _sent(cause: BaseException) -> Exception:
    """What the SDK raises when sending raised `cause`: `APIConnectionError` from it."""
    import anthropic

    try:
        try:
            raise cause
        except BaseException as err:
            raise anthropic.APIConnectionError(request=http.Request("POST", "http://x")) from err
    except Exception as final:
        return final


LOST_BEFORE_ANSWER = ("connection_reset", "connection reset or closed before the answer arrived")


@pytest.mark.parametrize(
    ("err", "phase", "expected"),
    [
        # Before the response: one name for every way of losing the connection, as a sync
        # client (an end of file after its write failed) and an async one (the reset) see it.
        (
            _wrapped(ConnectionResetError(errno.ECONNRESET, "r"), http.ReadError),
            "response",
            LOST_BEFORE_ANSWER,
        ),
        (
            _wrapped(BrokenPipeError(errno.EPIPE, "p"), http.ReadError),
            "response",
            LOST_BEFORE_ANSWER,
        ),
        (
            _wrapped(
                ValueError(),
                lambda m: http.RemoteProtocolError(
                    "Server disconnected without sending a response."
                ),
            ),
            "response",
            LOST_BEFORE_ANSWER,
        ),
        # Once the answer began: what the kernel said, or mid-answer.
        (
            _wrapped(ConnectionResetError(errno.ECONNRESET, "r"), http.ReadError),
            "body",
            ("connection_reset", "connection reset by peer (ECONNRESET)"),
        ),
        (
            _wrapped(
                ValueError(),
                lambda m: http.RemoteProtocolError(
                    "peer closed connection without sending complete message body: "
                    "incomplete chunked read"
                ),
            ),
            "body",
            ("connection_closed", "the server closed the connection mid-answer"),
        ),
        # A non-streaming answer cut short is read before `send` returns: mid-answer too.
        (
            _wrapped(
                ValueError(),
                lambda m: http.RemoteProtocolError(
                    "peer closed connection without sending complete message body: "
                    "received 10 bytes, expected 20"
                ),
            ),
            "response",
            ("connection_closed", "the server closed the connection mid-answer"),
        ),
        # A client reused across `asyncio.run()`: its pooled connection died with the loop.
        (
            _sent(RuntimeError("Event loop is closed")),
            "response",
            ("connection_closed", "the pooled connection belonged to a closed event loop"),
        ),
    ],
)
def test_connection_losses_by_phase(
    err: Exception, phase: Phase, expected: tuple[str, str]
) -> None:
    failure = classify_exception(err, phase=phase, stream=True)
    assert failure is not None and failure.retryable
    assert (failure.reason, failure.description) == expected


@pytest.mark.parametrize(
    "cause",
    [
        RuntimeError("Cannot send a request, as the client has been closed."),
        RuntimeError("Event loop is closed, said the user's hook"),
        RuntimeError(),
    ],
)
def test_other_runtime_errors_from_sending_are_not_retried(cause: RuntimeError) -> None:
    assert classify_exception(_sent(cause), phase="response", stream=True) is None


@pytest.mark.parametrize(
    ("wait", "said"), [(0.04, "40 ms"), (0.9994, "999 ms"), (1.0, "1.0 s"), (2.04, "2.0 s")]
)
def test_a_short_wait_is_noted_in_milliseconds(wait: float, said: str) -> None:
    record = AttemptRecord(2, "status_529", "HTTP 529", 0.1, wait)
    assert record.note(5) == f"attempt 2 of 5: status_529 after 0.10 s; waited {said}"


def test_the_core_imports_no_client_library() -> None:
    # The decision core, the stream protocol and the continuation are shared by the library
    # and the proxy, which never loads the SDK (a second of its start, or of its first failure).
    code = (
        "import sys\n"
        "import sdkguard._continuation, sdkguard._decide, sdkguard._protocol, sdkguard._sockets\n"
        "refused = ConnectionRefusedError(111, 'refused')\n"
        "assert sdkguard._decide.classify_transport(refused, phase='response', stream=True)\n"
        "print(sorted(m for m in ('anthropic', 'httpx', 'httpx2', 'aiohttp') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
