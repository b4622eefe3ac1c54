"""`sdkguard proxy` as users run it: the real command in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest

from sdkguard.testing import FakeAnthropic, faults

pytest.importorskip("aiohttp")

from tests.test_proxy import ARGS, FAST_PROXY, SECRET_KEY

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(90)]

FAST_OPTIONS = [f"--{name.replace('_', '-')}={value}" for name, value in FAST_PROXY.items()]


def command_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDKGUARD_", "ANTHROPIC_"))}
    env["ANTHROPIC_API_KEY"] = SECRET_KEY
    return env


def sdkguard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdkguard", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or command_env(),
    )


def test_serving_logs_retries_to_stderr_and_a_summary_at_exit(server: FakeAnthropic) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sdkguard", "proxy", "--upstream", server.url, "--port", "0",
         *FAST_OPTIONS],
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        match = re.search(r"serving (http://127\.0\.0\.1:\d+) -> ", first)
        assert match, first
        server.script(faults.reset_before_headers(), faults.ok())
        with anthropic.Anthropic(base_url=match.group(1), api_key=SECRET_KEY, max_retries=0) as c:
            c.messages.create(**ARGS)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    assert re.search(
        r"POST /v1/messages: connection reset or closed before the answer arrived; "
        r"retrying in 10 ms \(attempt 2 of 5\)",
        rest,
    ), rest
    assert "sdkguard proxy: 1 call, 1 retry, 0 restarts, 0 stalls, 0 failures" in rest
    assert SECRET_KEY not in first + rest
    assert "secret prompt text" not in rest


CLIENT_SCRIPT = """
import os, sys, anthropic
client = anthropic.Anthropic(max_retries=0)  # ANTHROPIC_BASE_URL: the proxy
args = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
with client.messages.stream(**args) as s:
    print(s.get_final_text())
print(os.environ["ANTHROPIC_BASE_URL"])
sys.exit(3)
"""


def test_wrapping_a_command(server: FakeAnthropic, tmp_path: Path) -> None:
    server.script(faults.reset_after(2), faults.ok())
    log = tmp_path / "proxy.log"
    result = sdkguard(
        "--upstream", server.url, "--log-file", str(log), *FAST_OPTIONS,
        "--", sys.executable, "-c", CLIENT_SCRIPT,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # the command's status
    text, base_url = result.stdout.splitlines()
    assert text == faults.DEFAULT_TEXT
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
    assert f"log: {log}" in result.stderr.splitlines()[0]
    assert "retrying in" not in result.stderr  # the terminal is the command's
    assert "1 call, 1 retry, 1 restart, 0 stalls, 0 failures" in result.stderr.splitlines()[-1]
    logged = log.read_text()
    assert "POST /v1/messages: connection reset by peer (ECONNRESET); retrying in" in logged
    assert "summary: 1 call" in logged
    assert SECRET_KEY not in logged
    assert len(server.requests) == 2


def test_a_missing_command_is_127() -> None:
    result = sdkguard("--", "no-such-command-sdkguard-test")
    assert result.returncode == 127
    assert "command not found: no-such-command-sdkguard-test" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--port", "70000"], {}, "--port"),
        (["--upstream", "ftp://example.com"], {}, "--upstream"),
        (["--idle-timeout", "soon"], {}, "--idle-timeout"),
        (["--max-concurrency", "0"], {}, "--max-concurrency"),
        (["--request-timeout", "-1"], {}, "--request-timeout"),
        ([], {"SDKGUARD_IDLE_TIMEOUT": "soon"}, "SDKGUARD_IDLE_TIMEOUT"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], env: dict[str, str], names: str) -> None:
    result = sdkguard(*args, "--", "true", env={**command_env(), **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_one_line_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = sdkguard("--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"sdkguard proxy: --port {port}: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


def test_another_host_is_warned_about() -> None:
    # A documentation address (RFC 5737) that this machine does not have: warned, then refused,
    # so that nothing listens beyond loopback.
    result = sdkguard("--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 2
    warning, error = result.stderr.strip().splitlines()
    assert "warning: --host 192.0.2.1 is not a loopback address" in warning
    assert "serves anyone who can reach" in warning
    assert error.startswith("sdkguard proxy: --host 192.0.2.1: cannot listen")


def test_help_lists_the_policy_options() -> None:
    result = sdkguard("--help")
    assert result.returncode == 0
    for option in ("--upstream", "--max-request-bytes", "--idle-timeout", "--retry-statuses"):
        assert option in result.stdout


def test_the_proxy_never_imports_the_sdk(server: FakeAnthropic) -> None:
    # The proxy speaks the API's wire format itself: loading `anthropic` would cost its every
    # start a second. A continued stream and a plain call, relayed in a process of their own.
    reply = faults.continuable(faults.ok(faults.text("one two three four five six", deltas=6)))
    server.script(faults.reset_after(5, reply=reply))
    server.default(reply)
    script = f"""
import json, sys, urllib.request
from sdkguard.proxy import ProxyConfig, RunningProxy

with RunningProxy(ProxyConfig(port=0, upstream={server.url!r})) as proxy:
    for stream in (True, False):
        body = {{"model": "m", "max_tokens": 99, "stream": stream,
                "messages": [{{"role": "user", "content": "hi"}}]}}
        request = urllib.request.Request(
            proxy.url + "/v1/messages", json.dumps(body).encode(),
            {{"content-type": "application/json", "x-api-key": "k"}},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status, len(response.read()))
print("anthropic" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    *answers, sdk_imported = done.stdout.splitlines()
    assert [answer.split()[0] for answer in answers] == ["200", "200"]
    assert sdk_imported == "False"
    assert len(server.requests) == 3  # the reset, its continuation, the plain call
