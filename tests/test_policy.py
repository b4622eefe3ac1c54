"""Policy: defaults, validation, environment variables, precedence, scopes."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

import sdkguard
from sdkguard import Policy
from sdkguard._patch import current_policy
from sdkguard._policy import DEFAULT_RETRY_STATUSES, env_names, parse_env

pytestmark = pytest.mark.timeout(10)


def test_defaults_are_the_documented_ones() -> None:
    p = Policy()
    assert (p.max_attempts, p.backoff_initial, p.backoff_multiplier, p.backoff_max) == (
        5,
        1.0,
        2.0,
        8.0,
    )
    assert (p.jitter, p.connect_timeout, p.response_timeout, p.idle_timeout) == (
        0.25,
        10.0,
        60.0,
        90.0,
    )
    assert p.progress_timeout is None and p.deadline is None and p.max_retry_after == 60.0
    assert p.retry_statuses == frozenset({408, 409, 429, 500, 502, 503, 504, 529})
    assert p.retry_budget and p.enabled and p.on_retry == ()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 2.5),
        ("max_attempts", True),
        ("jitter", 1.5),
        ("jitter", -0.1),
        ("idle_timeout", -1.0),
        ("idle_timeout", 0),
        ("connect_timeout", float("nan")),
        ("backoff_multiplier", 0.5),
        ("backoff_initial", -1),
        ("deadline", 0),
        ("retry_statuses", frozenset({999})),
        ("enabled", "yes"),
        ("tcp_keepalive", (1.0, 2.0)),
        ("tcp_keepalive", (15.0, 5.0, 3.5)),
        ("tcp_keepalive", (15.0, 5.0, 0)),
        ("tcp_keepalive", (40000.0, 5.0, 3)),  # more than the kernel takes
        ("tcp_keepalive", (15.0, 5.0, 128)),
        ("stream_plain_calls", 1),
    ],
)
def test_impossible_values_name_the_field_and_the_form(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"{field}=.*expected "):
        Policy(**{field: value})


def test_unknown_fields_are_refused_with_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"max_attempt.*known fields: max_attempts"):
        sdkguard.install(max_attempt=3)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SDKGUARD_MAX_ATTEMPTS": "3"}, {"max_attempts": 3}),
        ({"SDKGUARD_IDLE_TIMEOUT": "12.5"}, {"idle_timeout": 12.5}),
        ({"SDKGUARD_IDLE_TIMEOUT": "off"}, {"idle_timeout": None}),
        ({"SDKGUARD_DEADLINE": "30"}, {"deadline": 30.0}),
        ({"SDKGUARD_ENABLED": "0"}, {"enabled": False}),
        ({"SDKGUARD_RETRY_BUDGET": "false"}, {"retry_budget": False}),
        ({"SDKGUARD_RETRY_STATUSES": "429, 529 503"}, {"retry_statuses": {429, 503, 529}}),
        ({"SDKGUARD_TCP_KEEPALIVE": "10,2,4"}, {"tcp_keepalive": (10.0, 2.0, 4)}),
        ({"SDKGUARD_TCP_KEEPALIVE": "off"}, {"tcp_keepalive": None}),
        ({"SDKGUARD_STREAM_PLAIN_CALLS": "0"}, {"stream_plain_calls": False}),
        ({"SDKGUARD_STREAM_PLAIN_CALLS": "on"}, {"stream_plain_calls": True}),
        ({"OTHER": "1"}, {}),
    ],
)
def test_environment_variables(env: dict[str, str], expected: dict[str, Any]) -> None:
    assert parse_env(env) == expected
    Policy.from_env(env)  # and they make a valid policy


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("SDKGUARD_MAX_ATTEMPTS", "five"),
        ("SDKGUARD_MAX_ATTEMPTS", "0"),
        ("SDKGUARD_JITTER", "2"),
        ("SDKGUARD_IDLE_TIMEOUT", "-3"),
        ("SDKGUARD_ENABLED", "maybe"),
        ("SDKGUARD_RETRY_STATUSES", "429,abc"),
        ("SDKGUARD_TCP_KEEPALIVE", "10"),
        ("SDKGUARD_TCP_KEEPALIVE", "10,2,4.5"),
        ("SDKGUARD_TCP_KEEPALIVE", "10,2,400"),
        ("SDKGUARD_STREAM_PLAIN_CALLS", "sometimes"),
        ("SDKGUARD_ON_RETRY", "print"),
    ],
)
def test_malformed_variables_name_the_variable_and_the_form(var: str, raw: str) -> None:
    with pytest.raises(ValueError, match=rf"{var}={raw!r} is malformed: expected "):
        Policy.from_env({var: raw})


def test_every_field_has_a_variable() -> None:
    names = env_names()
    assert names["max_attempts"] == "SDKGUARD_MAX_ATTEMPTS"
    assert "on_retry" not in names


def test_code_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDKGUARD_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SDKGUARD_IDLE_TIMEOUT", "7")
    try:
        sdkguard.install(max_attempts=4)
        assert current_policy().max_attempts == 4
        assert current_policy().idle_timeout == 7.0
        sdkguard.install(policy=Policy(max_attempts=3))  # a whole Policy is used as it is
        assert current_policy().idle_timeout == 90.0
    finally:
        sdkguard.uninstall()


def test_install_refuses_a_policy_and_fields_together() -> None:
    with pytest.raises(TypeError):
        sdkguard.install(Policy(), max_attempts=2)


def test_scopes_nest_and_end() -> None:
    base = current_policy()
    with sdkguard.policy(max_attempts=2, deadline=20.0):
        assert (current_policy().max_attempts, current_policy().deadline) == (2, 20.0)
        with sdkguard.policy(max_attempts=7):
            assert (current_policy().max_attempts, current_policy().deadline) == (7, 20.0)
        assert current_policy().max_attempts == 2
    assert current_policy() == base


def test_scope_validates_at_once() -> None:
    with pytest.raises(ValueError, match="jitter"):
        sdkguard.policy(jitter=3)


def test_scope_as_decorator_sync_and_async() -> None:
    @sdkguard.policy(max_attempts=3)
    def sync_fn() -> int:
        return current_policy().max_attempts

    @sdkguard.policy(max_attempts=4)
    async def async_fn() -> int:
        return current_policy().max_attempts

    assert sync_fn() == 3
    assert anyio.run(async_fn) == 4
    assert sync_fn.__name__ == "sync_fn"


def test_scopes_are_per_thread() -> None:
    seen: dict[str, int] = {}
    inside = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        inside.wait(5)
        seen["other"] = current_policy().max_attempts
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with sdkguard.policy(max_attempts=9):
        inside.set()
        release.wait(5)
        seen["mine"] = current_policy().max_attempts
    thread.join(5)
    assert seen["mine"] == 9 and seen["other"] != 9


def test_scopes_are_per_task() -> None:
    async def main() -> list[int]:
        results: list[int] = []

        async def task(n: int) -> None:
            with sdkguard.policy(max_attempts=n):
                await anyio.sleep(0.01)
                results.append(current_policy().max_attempts)

        async with anyio.create_task_group() as group:
            for n in (2, 3, 4):
                group.start_soon(task, n)
        return sorted(results)

    assert anyio.run(main) == [2, 3, 4]


def test_statuses_accept_any_iterable() -> None:
    assert Policy().replace(retry_statuses=[429]).retry_statuses == frozenset({429})
    assert Policy().retry_statuses == DEFAULT_RETRY_STATUSES
