"""Real clients through sdkguard proxy: the TypeScript SDK and Claude Code (tests/realclients.py).

Before content a reset or a silence is invisible to them; after content each ends with its own
error, never a hang. Marked `real_clients` (`make real-clients`), as tests/test_real_clients.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdkguard.testing import FakeAnthropic, faults
from tests import realclients

pytest.importorskip("aiohttp")

from tests.test_proxy import start_proxy

pytestmark = [pytest.mark.real_clients, pytest.mark.timeout(600)]

RUN_TIMEOUT = 60.0
CLAUDE_FAST = {"CLAUDE_CODE_MAX_RETRIES": "2", "API_TIMEOUT_MS": "10000"}
BEFORE_CONTENT = {
    "reset_before_headers": faults.reset_before_headers(),
    "stall_before_headers": faults.stall_before_headers(),
    "reset_after_2": faults.reset_after(2),
}


@pytest.fixture(scope="session")
def clients() -> Path:
    reason = realclients.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    installed = realclients.ensure_installed()
    assert installed is not None
    return installed


@pytest.fixture
def proxy_url(server: FakeAnthropic) -> Iterator[str]:
    with start_proxy(server.url) as proxy:
        yield proxy.url


@pytest.mark.parametrize("fault", list(BEFORE_CONTENT))
@pytest.mark.parametrize("mode", realclients.TS_MODES)
def test_ts_sdk_sees_nothing_of_a_fault_before_content(
    clients: Path, server: FakeAnthropic, proxy_url: str, mode: realclients.TsMode, fault: str
) -> None:
    server.script(BEFORE_CONTENT[fault], faults.ok())
    result = realclients.run_ts_client(
        proxy_url, mode, RUN_TIMEOUT, max_retries=0, install_dir=clients
    )
    assert result.ok, result.summary() + result.stderr[-2000:]
    assert result.text == faults.DEFAULT_TEXT
    assert len(server.requests) == 2


def test_ts_sdk_gets_an_error_after_content(
    clients: Path, server: FakeAnthropic, proxy_url: str
) -> None:
    server.script(faults.reset_after(5))
    result = realclients.run_ts_client(
        proxy_url, "stream", RUN_TIMEOUT, max_retries=0, install_dir=clients
    )
    assert not result.ok
    assert result.outcome.error_type != "timeout"
    assert "overloaded_error" in (result.outcome.error_message or "") + str(result.outcome.details)


@pytest.mark.parametrize("fault", ["reset_before_headers", "stall_before_headers"])
def test_claude_code_sees_nothing_of_a_fault_before_content(
    clients: Path, server: FakeAnthropic, proxy_url: str, fault: str
) -> None:
    server.script(BEFORE_CONTENT[fault], faults.ok())
    result = realclients.run_claude(
        proxy_url, "say hi", RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.ok, result.summary() + result.stderr[-2000:]
    assert result.text == faults.DEFAULT_TEXT


def test_claude_code_gets_an_error_after_content(
    clients: Path, server: FakeAnthropic, proxy_url: str
) -> None:
    server.script(faults.reset_after(5), faults.reset_after(5), faults.reset_after(5))
    result = realclients.run_claude(
        proxy_url,
        "say hi",
        RUN_TIMEOUT,
        env={**CLAUDE_FAST, "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1"},
        install_dir=clients,
    )
    assert not result.ok
    assert result.outcome.error_type != "timeout"
