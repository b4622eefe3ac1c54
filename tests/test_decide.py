"""The decision core: pure, so tested exhaustively with hypothesis and exact cases."""

from __future__ import annotations

import errno
import json
import socket
import ssl
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdkguard import Policy
from sdkguard._decide import (
    CallState,
    Failure,
    RetryBudget,
    classify_exception,
    classify_sse_error,
    classify_status,
    parse_retry_after,
)
from sdkguard._sdk import http

pytestmark = pytest.mark.timeout(60)

policies = st.builds(
    Policy,
    max_attempts=st.integers(1, 10),
    backoff_initial=st.floats(0, 5),
    backoff_multiplier=st.floats(1, 4),
    backoff_max=st.floats(0, 30),
    jitter=st.floats(0, 1),
    deadline=st.none() | st.floats(0.1, 100),
    max_retry_after=st.floats(0, 120),
    retry_budget=st.just(False),
)
failures = st.builds(
    Failure,
    reason=st.sampled_from(["connection_reset", "status_529", "stall_idle", "status_400"]),
    description=st.just("x"),
    retryable=st.booleans(),
    retry_after=st.none() | st.floats(-5, 200),
    timeout=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    sequence=st.lists(st.tuples(failures, st.floats(0, 1, exclude_max=True), st.floats(0, 20))),
)
def test_any_failure_sequence_stays_within_bounds(
    policy: Policy, sequence: list[tuple[Failure, float, float]]
) -> None:
    state = CallState(policy, started_at=1000.0)
    now = 1000.0
    attempts = 1
    for failure, rand, duration in sequence:
        now += duration
        decision = state.decide(failure, now=now, rand=rand, budget=None)
        # exactly one decision: retry with a wait, or give up with a reason
        assert decision.retry == (decision.why_not is None)
        if not decision.retry:
            state = state.record(failure, duration, None)
            assert len(state.history) == attempts
            break
        assert decision.wait >= 0
        if failure.retry_after is None:
            assert decision.wait <= policy.backoff_max
        else:
            assert decision.wait <= policy.max_retry_after
        if policy.deadline is not None:
            assert now + decision.wait < 1000.0 + policy.deadline
        state = state.record(failure, duration, decision.wait)
        now += decision.wait
        attempts += 1
        assert attempts <= policy.max_attempts
        assert state.attempt == attempts


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
