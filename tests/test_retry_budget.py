"""The retry budget: it caps what a sustained outage multiplies, and never bites a healthy process.

Outages are real (the fake server answers every request with a fault); the healthy process
is simulated on the pure decision core, where 20,000 calls take a fraction of a second.
"""

from __future__ import annotations

import gc
import logging
import random

import anthropic
import pytest

import sdkguard
from sdkguard import Policy
from sdkguard._decide import BUDGET, CallState, Failure, RetryBudget
from sdkguard.testing import FakeAnthropic, faults
from sdkguard.testing.faults import Answer
from tests.helpers import API_KEY, MESSAGE_ARGS, OverloadedError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("guard")]

OUTAGES: dict[str, tuple[Answer, type[Exception]]] = {
    "overloaded": (faults.status(529), OverloadedError),
    "connection_reset": (faults.reset_before_headers(), anthropic.APIConnectionError),
}


def outage(
    server: FakeAnthropic, answer: Answer, calls: int, timeout: float = 5.0, limit: float = 5.0
) -> list[Exception]:
    """`calls` calls while every request gets `answer`; the errors they raised.

    `limit` is the stream limits' (response and idle): seconds by default, so that an answer
    a loaded machine serves late is still the answer (under the fast 0.3 s, one 529 of 1,000
    became a stall in two parallel runs).
    """
    # Streams of earlier tests, settled when collected, would refund or spend tokens here.
    gc.collect()
    BUDGET.reset()
    server.default(answer)
    errors: list[Exception] = []
    with (
        # counting, not waiting
        sdkguard.policy(
            backoff_initial=0.0, backoff_max=0.0, response_timeout=limit, idle_timeout=limit
        ),
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY, timeout=timeout) as client,
    ):
        for _ in range(calls):
            try:
                client.messages.create(**MESSAGE_ARGS)
            except anthropic.APIError as err:
                errors.append(err)
    assert len(errors) == calls
    return errors


@pytest.mark.parametrize("case", list(OUTAGES.values()), ids=list(OUTAGES))
def test_with_the_budget_an_outage_costs_a_tenth_more_requests(
    server: FakeAnthropic, case: tuple[Answer, type[Exception]]
) -> None:
    answer, error_type = case
    with sdkguard.policy(retry_budget=True):  # the default sizes: 500 tokens, 5 a retry
        errors = outage(server, answer, 1000)
    assert len(server.requests) == 1000 + 100
    assert len(server.requests) / 1000 <= 1.1
    assert all(type(err) is error_type for err in errors), [
        (i, repr(err), getattr(err, "__notes__", None))
        for i, err in enumerate(errors)
        if type(err) is not error_type
    ][:3]
    # Once the bucket is empty, a call fails at its first attempt and says why.
    last = errors[-1]
    assert [note.split(":")[0] for note in last.__notes__] == ["attempt 1 of 5", "sdkguard gave up"]
    assert "retry budget is exhausted" in last.__notes__[-1]


@pytest.mark.parametrize("case", list(OUTAGES.values()), ids=list(OUTAGES))
def test_without_the_budget_an_outage_costs_five_times_the_requests(
    server: FakeAnthropic, case: tuple[Answer, type[Exception]]
) -> None:
    outage(server, case[0], 100)
    assert len(server.requests) == 500


def test_retries_after_a_stall_cost_twice_as_much(server: FakeAnthropic) -> None:
    # A plain call keeps the client's read timeout: a short one here.
    with sdkguard.policy(retry_budget=True, budget_capacity=100):
        outage(server, faults.stall_before_headers(), 15, timeout=0.05, limit=0.3)
    assert len(server.requests) == 15 + 100 // 10
    BUDGET.reset()
    server.requests.clear()
    with sdkguard.policy(retry_budget=True, budget_capacity=100):
        outage(server, faults.status(529), 30)
    assert len(server.requests) == 30 + 100 // 5


def test_running_dry_is_said_once_and_refilling_too(
    server: FakeAnthropic, records: pytest.LogCaptureFixture
) -> None:
    records.set_level(logging.INFO, logger="sdkguard")
    with sdkguard.policy(retry_budget=True, budget_capacity=20):  # 4 retries
        outage(server, faults.status(529), 10)
        assert len(server.requests) == 10 + 4
        dry = [r for r in records.records if "retry budget is exhausted" in r.getMessage()]
        assert len(dry) == 1 and dry[0].levelno == logging.ERROR
        assert "messages.create: HTTP 529; not retried" in dry[0].getMessage()
        # After it, calls that fail without a retry say nothing more.
        assert records.records[-1] is dry[0]
        # Successful calls refill the bucket: once it is back above half, retries resume.
        server.default(faults.ok())
        with anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client:
            for _ in range(20):  # 1 token each: back above half after 10
                client.messages.create(**MESSAGE_ARGS)
            refilled = [r for r in records.records if "refilled" in r.getMessage()]
            assert len(refilled) == 1 and refilled[0].levelno == logging.INFO
            assert BUDGET.available(20) == 20
            server.script(faults.status(529), faults.ok())
            client.messages.create(**MESSAGE_ARGS)
        assert [s.status for s in server.sent[-2:]] == [529, 200]
        # A second outage is said again.
        outage(server, faults.status(529), 10)
        dry = [r for r in records.records if "retry budget is exhausted" in r.getMessage()]
        assert len(dry) == 2


def test_a_success_after_retries_gives_their_cost_back(server: FakeAnthropic) -> None:
    # As the AWS SDKs do: a call that recovered gives back what its last retry took, so
    # isolated failures cost nothing in the end; a call without a retry refunds 1 token.
    with (
        sdkguard.policy(retry_budget=True, budget_capacity=20),
        anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client,
    ):
        server.script(faults.status(529), faults.ok())
        client.messages.create(**MESSAGE_ARGS)
        assert BUDGET.available(20) == 20
        server.script(faults.status(529), faults.reset_before_headers(), faults.ok())
        client.messages.create(**MESSAGE_ARGS)
        assert BUDGET.available(20) == 20 - 10 + 5
        client.messages.create(**MESSAGE_ARGS)
        assert BUDGET.available(20) == 16


def simulate(policy: Policy, failure_rate: float, calls: int, seed: int) -> tuple[int, int]:
    """`calls` calls, one after the other, where each attempt fails with `failure_rate`.

    Returns (retries refused by the budget, calls that failed).
    """
    rng = random.Random(seed)
    budget = RetryBudget()
    reset = Failure("connection_reset", "reset", True)
    stall = Failure("stall_idle", "silent", True, timeout=True)
    refused = failed = 0
    for _ in range(calls):
        state = CallState(policy, started_at=0.0)
        while rng.random() < failure_rate:
            failure = stall if rng.random() < 0.2 else reset
            decision = state.decide(failure, now=0.0, rand=0.5, budget=budget)
            if not decision.retry:
                refused += decision.budget_refused
                failed += 1
                break
            state = state.record(failure, 0.0, decision.wait, decision.cost)
        else:
            budget.refund(state.refund(), policy.budget_capacity)
    return refused, failed


@pytest.mark.parametrize("seed", range(5))
def test_the_default_budget_never_bites_a_healthy_process(seed: int) -> None:
    # One attempt in ten failing, a fifth of them stalls, is a very bad day, not an outage.
    refused, failed = simulate(Policy(), failure_rate=0.1, calls=20_000, seed=seed)
    assert refused == 0
    assert failed < 5  # five failures in a row: one call in 100,000


def test_the_default_budget_bites_in_an_outage() -> None:
    refused, failed = simulate(Policy(), failure_rate=0.9, calls=2_000, seed=1)
    assert failed >= refused > 1_500


def test_a_burst_of_concurrent_failures_fits_in_the_default_budget() -> None:
    # 50 calls in flight when the network drops, each retrying twice before it is back.
    budget, policy = RetryBudget(), Policy()
    reset = Failure("connection_reset", "reset", True)
    states = [CallState(policy, started_at=0.0) for _ in range(50)]
    for _ in range(2):
        decisions = [s.decide(reset, now=0.0, rand=0.5, budget=budget) for s in states]
        assert all(d.retry for d in decisions)
        states = [
            s.record(reset, 0.0, d.wait, d.cost) for s, d in zip(states, decisions, strict=True)
        ]
    assert budget.available(policy.budget_capacity) == 0.0 + 500 - 50 * 2 * 5
