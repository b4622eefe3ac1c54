"""Real clients against the fake server: the official TypeScript SDK, Claude Code and curl.

Each test runs a real client (tests/realclients.py, installed from npm into .cache) over
loopback against `FakeAnthropic`, and records what it does today under a fault: the behaviour
a gateway in front of the API has to improve. Client-side waits are bounded with the clients'
own options (the SDK's `maxRetries` and `timeout`, Claude Code's `CLAUDE_CODE_MAX_RETRIES` and
`API_TIMEOUT_MS`), so every test takes seconds; the harness kills a client that outlives its
own timeout. Select them with `-m real_clients` (`make real-clients`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdkguard.testing import FakeAnthropic, faults
from tests import realclients
from tests.realclients import ClientResult

pytestmark = [
    pytest.mark.real_clients,
    # Generous: the first test of a worker may install the clients on a cold cache.
    pytest.mark.timeout(600),
]

# A client run: seconds here; the harness kills it after this.
RUN_TIMEOUT = 60.0
# Claude Code with waits short enough for a test: 2 retries (0.6 s, then about 1.2 s), a 10 s
# request timeout instead of its 600 s.
CLAUDE_FAST = {"CLAUDE_CODE_MAX_RETRIES": "2", "API_TIMEOUT_MS": "10000"}
PROMPT = "say hi"
# faults.reset_after(5) and faults.sse_error_after(5) cut the default answer after its second
# text delta (events: message_start, content_block_start, ping, delta, delta).
CUT_AT = 5


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not found on PATH")


@pytest.fixture(scope="session")
def clients() -> Path:
    """The installed clients; skips when node or npm is missing, fails when npm fails."""
    reason = realclients.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    installed = realclients.ensure_installed()
    assert installed is not None
    return installed


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


def fails(result: ClientResult) -> str:
    return result.summary() + "\n" + result.stderr[-2000:]


def statuses(server: FakeAnthropic) -> list[tuple[str, bool, int]]:
    """(fault, streaming request, status sent) for every request, once each was answered."""
    for sent in server.sent:
        sent.wait()
    return [
        (s.fault, r.stream, s.status) for r, s in zip(server.requests, server.sent, strict=True)
    ]


# A clean answer


@pytest.mark.parametrize("mode", realclients.TS_MODES)
def test_ts_sdk_gets_the_answer(
    clients: Path, server: FakeAnthropic, mode: realclients.TsMode
) -> None:
    result = realclients.run_ts_client(server.url, mode, RUN_TIMEOUT, install_dir=clients)
    assert result.ok, fails(result)
    assert result.returncode == 0
    assert result.text == faults.DEFAULT_TEXT
    assert len(server.requests) == 1
    assert server.requests[0].stream is (mode != "create")
    assert server.requests[0].path == "/v1/messages"
    server.sent[0].wait()
    assert server.sent[0].completed
    if mode == "stream":
        assert result.outcome.details["final_text"] == faults.DEFAULT_TEXT
    if mode != "create":
        assert result.outcome.details["events"][-1] == "message_stop"


@pytest.mark.parametrize("output_format", ["stream-json", "text"])
def test_claude_code_gets_the_answer(
    clients: Path, server: FakeAnthropic, output_format: str
) -> None:
    result = realclients.run_claude(
        server.url,
        PROMPT,
        RUN_TIMEOUT,
        env=CLAUDE_FAST,
        output_format="text" if output_format == "text" else "stream-json",
        install_dir=clients,
    )
    assert result.ok, fails(result)
    assert result.returncode == 0
    assert result.text == faults.DEFAULT_TEXT
    assert [r.path for r in server.requests] == ["/v1/messages"]


@needs_curl
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "create"])
def test_curl_gets_the_answer(server: FakeAnthropic, stream: bool) -> None:
    result = realclients.run_curl(server.url, RUN_TIMEOUT, stream=stream)
    assert result.ok, fails(result)
    assert result.text == faults.DEFAULT_TEXT
    assert result.outcome.details["status"] == 200
    if stream:
        assert result.outcome.details["events"][-1] == "message_stop"


# What Claude Code sends


def test_claude_code_request(clients: Path, server: FakeAnthropic) -> None:
    """One streaming POST to /v1/messages?beta=true, the API key in x-api-key, and no
    preconnect: its `HEAD {base}/api/hello` is nonessential traffic, off in this harness."""
    result = realclients.run_claude(
        server.url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.ok, fails(result)
    assert [(r.method, r.path, r.query) for r in server.requests] == [
        ("POST", "/v1/messages", "beta=true")
    ]
    request = server.requests[0]
    headers = request.headers
    assert {"x-api-key", "anthropic-version", "anthropic-beta", "x-app"} <= set(headers)
    assert "authorization" not in headers
    key_is_the_dummy = headers["x-api-key"] == realclients.DUMMY_API_KEY
    assert key_is_the_dummy, "x-api-key is not the key the harness gave"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-app"] == "cli"
    assert headers["x-stainless-retry-count"] == "0"
    assert "claude-code-20250219" in headers["anthropic-beta"].split(",")
    assert request.body is not None
    assert request.stream
    assert request.body["model"] == realclients.CLAUDE_MODEL
    assert request.body["tools"] and request.body["system"]
    assert len(request.raw_body) > 20_000  # a system prompt and tool definitions
    assert PROMPT in str(request.body["messages"][-1]["content"])


def test_claude_code_with_an_auth_token(clients: Path, server: FakeAnthropic) -> None:
    """With ANTHROPIC_AUTH_TOKEN instead of a key: `Authorization: Bearer`, no x-api-key."""
    env = {**CLAUDE_FAST, "ANTHROPIC_AUTH_TOKEN": "dummy-token", "ANTHROPIC_API_KEY": None}
    result = realclients.run_claude(server.url, PROMPT, RUN_TIMEOUT, env=env, install_dir=clients)
    assert result.ok, fails(result)
    headers = server.requests[0].headers
    assert "x-api-key" not in headers
    is_bearer = headers.get("authorization") == "Bearer dummy-token"
    assert is_bearer, "authorization is not the bearer token the harness gave"


@pytest.mark.parametrize("client", ["ts-sdk", "claude", pytest.param("curl", marks=needs_curl)])
def test_a_path_prefix_is_kept(
    request: pytest.FixtureRequest, server: FakeAnthropic, client: str
) -> None:
    """A base URL with a path (a gateway's route) reaches the server whole. The fake server
    does not route prefixes (404), which is enough to see the path the client sent."""
    base_url = server.url + "/team-a"
    if client == "curl":
        result = realclients.run_curl(base_url, RUN_TIMEOUT, stream=True)
    else:
        clients: Path = request.getfixturevalue("clients")
        if client == "ts-sdk":
            result = realclients.run_ts_client(
                base_url, "stream", RUN_TIMEOUT, max_retries=0, install_dir=clients
            )
        else:
            result = realclients.run_claude(
                base_url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
            )
    assert not result.ok
    assert server.requests
    assert {r.path for r in server.requests} == {"/team-a/v1/messages"}


@pytest.mark.parametrize("client", ["ts-sdk", "claude"])
def test_under_a_wrapper_command(clients: Path, server: FakeAnthropic, client: str) -> None:
    """Run under a command that sets ANTHROPIC_BASE_URL, as `sdkguard proxy ... -- COMMAND`
    does (here `env`), the clients take their base URL from it."""
    wrapper = [shutil.which("env") or "env", f"ANTHROPIC_BASE_URL={server.url}"]
    if client == "ts-sdk":
        result = realclients.run_ts_client(
            None, "stream", RUN_TIMEOUT, wrapper=wrapper, install_dir=clients
        )
    else:
        result = realclients.run_claude(
            None, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, wrapper=wrapper, install_dir=clients
        )
    assert result.ok, fails(result)
    assert result.text == faults.DEFAULT_TEXT
    assert len(server.requests) == 1


def test_no_base_url_without_a_wrapper() -> None:
    """A client without a base URL would call the real API: refused before it starts."""
    with pytest.raises(ValueError, match="wrapper"):
        realclients.run_claude(None, PROMPT, RUN_TIMEOUT)
    with pytest.raises(ValueError, match="wrapper"):
        realclients.run_ts_client(None, "create", RUN_TIMEOUT)


# Faults: the TypeScript SDK (2 retries, before the response headers only)


@pytest.mark.parametrize("mode", realclients.TS_MODES)
def test_ts_sdk_reset_before_headers(
    clients: Path, server: FakeAnthropic, mode: realclients.TsMode
) -> None:
    """Retried twice, then `APIConnectionError` (Connection error.) from ECONNRESET."""
    server.default(faults.reset_before_headers())
    result = realclients.run_ts_client(server.url, mode, RUN_TIMEOUT, install_dir=clients)
    assert result.outcome.error_type == "APIConnectionError", fails(result)
    assert result.returncode == 1
    assert len(server.requests) == 3
    causes = result.outcome.details["error"]["causes"]
    assert "ECONNRESET" in [c["code"] for c in causes]
    assert result.text == ""


@pytest.mark.parametrize("mode", realclients.TS_MODES)
def test_ts_sdk_reset_after_content(
    clients: Path, server: FakeAnthropic, mode: realclients.TsMode
) -> None:
    """No retry once the headers came: `terminated`, from undici's socket error. The stream
    helper wraps it (`AnthropicError`); a raw stream and a plain call raise the bare
    `TypeError`. A stream keeps the text received before the cut."""
    server.default(faults.reset_after(CUT_AT))
    result = realclients.run_ts_client(server.url, mode, RUN_TIMEOUT, install_dir=clients)
    expected = "AnthropicError" if mode == "stream" else "TypeError"
    assert result.outcome.error_type == expected, fails(result)
    assert result.outcome.error_message == "terminated"
    assert len(server.requests) == 1
    server.sent[0].wait()
    if mode == "create":
        assert result.text == ""
    else:
        assert result.text == server.sent[0].text
        assert result.text and result.text != faults.DEFAULT_TEXT


@pytest.mark.parametrize("mode", realclients.TS_MODES)
def test_ts_sdk_sse_error(clients: Path, server: FakeAnthropic, mode: realclients.TsMode) -> None:
    """An SSE `error` event: `APIError` without a status, not retried. A plain call gets the
    same error as HTTP 529 instead, retried twice: `OverloadedError`."""
    server.default(faults.sse_error_after(CUT_AT))
    result = realclients.run_ts_client(server.url, mode, RUN_TIMEOUT, install_dir=clients)
    error = result.outcome.details.get("error", {})
    assert error.get("api_error_type") == "overloaded_error", fails(result)
    if mode == "create":
        assert result.outcome.error_type == "OverloadedError"
        assert error["status"] == 529
        assert len(server.requests) == 3
    else:
        assert result.outcome.error_type == "APIError"
        assert error["status"] is None
        assert len(server.requests) == 1
        assert result.text == server.sent[0].text


# Faults: Claude Code (its own retries, and a non-streaming fallback)


def test_claude_code_reset_before_headers(clients: Path, server: FakeAnthropic) -> None:
    """Retried CLAUDE_CODE_MAX_RETRIES times, then 'API Error: Connection dropped
    (ECONNRESET)', exit status 1."""
    server.default(faults.reset_before_headers())
    result = realclients.run_claude(
        server.url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.outcome.error_type == "api_error", fails(result)
    assert result.returncode == 1
    assert "ECONNRESET" in (result.outcome.error_message or "")
    assert statuses(server) == [("reset_before_headers", True, 0)] * 3


def test_claude_code_recovers_from_a_reset_before_headers(
    clients: Path, server: FakeAnthropic
) -> None:
    server.script(faults.reset_before_headers())
    result = realclients.run_claude(
        server.url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.ok, fails(result)
    assert result.text == faults.DEFAULT_TEXT
    assert statuses(server) == [("reset_before_headers", True, 0), ("ok", True, 200)]


def test_claude_code_reset_after_content(clients: Path, server: FakeAnthropic) -> None:
    """Unlike the SDK, Claude Code retries a stream cut after content, from the start; after
    the retries, one non-streaming request; then 'API Error: Connection to the API was lost
    (ECONNRESET)'. The partial text is not shown."""
    server.default(faults.reset_after(CUT_AT))
    result = realclients.run_claude(
        server.url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.outcome.error_type == "api_error", fails(result)
    assert "ECONNRESET" in (result.outcome.error_message or "")
    assert result.text == ""
    seen = statuses(server)
    assert seen[0] == ("reset_after", True, 200)
    assert {fault for fault, _, _ in seen} == {"reset_after"}
    assert len(seen) >= 2


def test_claude_code_recovers_from_a_reset_after_content(
    clients: Path, server: FakeAnthropic
) -> None:
    """The retried stream starts over: the text is the second answer's, not doubled."""
    server.script(faults.reset_after(CUT_AT))
    result = realclients.run_claude(
        server.url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.ok, fails(result)
    assert result.text == faults.DEFAULT_TEXT
    assert statuses(server) == [("reset_after", True, 200), ("ok", True, 200)]


def test_claude_code_sse_error_falls_back_to_non_streaming(
    clients: Path, server: FakeAnthropic
) -> None:
    """An SSE `error` event after content: at once a non-streaming request, which succeeds."""
    server.script(faults.sse_error_after(CUT_AT))
    result = realclients.run_claude(
        server.url, PROMPT, RUN_TIMEOUT, env=CLAUDE_FAST, install_dir=clients
    )
    assert result.ok, fails(result)
    assert result.text == faults.DEFAULT_TEXT
    assert statuses(server) == [("sse_error_after", True, 200), ("ok", False, 200)]


def test_claude_code_sse_error_without_the_fallback(clients: Path, server: FakeAnthropic) -> None:
    """With CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1 one SSE error is final."""
    server.default(faults.sse_error_after(CUT_AT))
    env = {**CLAUDE_FAST, "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1"}
    result = realclients.run_claude(server.url, PROMPT, RUN_TIMEOUT, env=env, install_dir=clients)
    assert result.outcome.error_type == "api_error", fails(result)
    assert "Overloaded" in (result.outcome.error_message or "")
    assert result.outcome.details["api_error_status"] == 529
    assert statuses(server) == [("sse_error_after", True, 200)]


# Faults: curl, which neither retries nor reads events


@needs_curl
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "create"])
def test_curl_under_faults(server: FakeAnthropic, stream: bool) -> None:
    server.script(
        faults.reset_before_headers(), faults.reset_after(CUT_AT), faults.sse_error_after(CUT_AT)
    )
    before = realclients.run_curl(server.url, RUN_TIMEOUT, stream=stream)
    assert before.outcome.error_type == "curl:56", fails(before)  # Recv failure: reset
    after = realclients.run_curl(server.url, RUN_TIMEOUT, stream=stream)
    assert after.outcome.error_type == "curl:56", fails(after)
    assert after.text == (server.sent[1].text if stream else "")
    error = realclients.run_curl(server.url, RUN_TIMEOUT, stream=stream)
    assert error.outcome.error_type == "overloaded_error", fails(error)
    assert error.outcome.details["status"] == (200 if stream else 529)


# The harness never hangs


@pytest.mark.parametrize("client", ["ts-sdk", "claude"])
def test_a_hung_client_is_killed(clients: Path, server: FakeAnthropic, client: str) -> None:
    """A server that never answers, a client that would wait 10 minutes: the harness kills
    the client's process group at its own timeout and says so."""
    server.default(faults.stall_before_headers())
    if client == "ts-sdk":
        timeout = 4.0
        result = realclients.run_ts_client(
            server.url, "stream", timeout, request_timeout=600, install_dir=clients
        )
    else:
        timeout = 6.0
        result = realclients.run_claude(server.url, PROMPT, timeout, install_dir=clients)
    assert result.timed_out, fails(result)
    assert result.returncode is None
    assert result.outcome.error_type == "timeout"
    assert timeout - 0.1 < result.elapsed < 60  # killed at its timeout, not at the client's
    assert server.requests  # it was waiting for the answer
