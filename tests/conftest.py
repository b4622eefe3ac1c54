"""Shared fixtures: a fake server, a guard installed with a fast policy, clients."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard._decide import BUDGET
from sdkguard.testing import FakeAnthropic

# Waits and limits in tenths of a second at most: no test waits seconds.
FAST: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.02,
    "jitter": 0.0,
    "connect_timeout": 0.5,
    "response_timeout": 0.3,
    "idle_timeout": 0.3,
    "retry_budget": False,
}

MESSAGE_ARGS: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "secret prompt text"}],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sdkguard installed with the fast policy (environment ignored), removed afterwards."""
    for name in list(__import__("os").environ):
        if name.startswith("SDKGUARD_"):
            monkeypatch.delenv(name)
    BUDGET.reset()
    sdkguard.install(**FAST)
    try:
        yield
    finally:
        sdkguard.uninstall()


@pytest.fixture
def client(server: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test-secret-key") as c:
        yield c


@pytest.fixture
async def async_client(server: FakeAnthropic) -> Any:
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-test-secret-key") as c:
        yield c


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="sdkguard")
    return caplog
