"""`sdkguard doctor`: the report, its exit status, good and bad configurations.

The command line runs in subprocesses (startup activation is part of what it reports); the
report's logic also runs in this process, where `install(...)` from code can be seen.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard import _doctor, _sdk, _startup
from sdkguard._doctor import collect, render, satisfies

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 60


def environment(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SDKGUARD_", "OTEL_")) and name != "PYTHONPATH"
    }
    env.update(extra)
    return env


def doctor(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdkguard", "doctor", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def row(out: str, field: str) -> list[str]:
    """A policy row of the text report: value and source."""
    match = re.search(rf"^  {field}  .*$", out, re.MULTILINE)
    assert match, f"no row {field} in:\n{out}"
    return re.split(r" {2,}", match[0].strip())[1:]


def test_a_good_configuration() -> None:
    env = environment(SDKGUARD_AUTO="1", SDKGUARD_IDLE_TIMEOUT="30", SDKGUARD_DEADLINE="off")
    result = doctor(env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert result.stderr == ""
    version = importlib.metadata.version("anthropic")
    assert f"  {version}: supported (anthropic>=0.93,<3)" in out
    assert "this Python reads sdkguard_startup.pth" in out
    assert "SDKGUARD_AUTO: '1' (on)" in out
    assert "in this process: on" in out
    assert "sdkguard installed in this process: yes" in out
    assert row(out, "idle_timeout") == ["30", "environment SDKGUARD_IDLE_TIMEOUT"]
    assert row(out, "deadline") == ["off", "environment SDKGUARD_DEADLINE"]
    assert row(out, "max_attempts") == ["5", "default"]
    assert row(out, "retry_statuses") == ["408 409 429 500 502 503 504 529", "default"]
    assert "patched\n" in out  # for real, not a trial
    assert "anthropic._base_client.SyncAPIClient." in out
    assert "anthropic._base_client.AsyncAPIClient." in out
    assert "tracer provider: none configured in this process" in out
    assert "instrumentor 'sdkguard': registered" in out
    assert out.rstrip().endswith("no problems found")


def test_a_good_configuration_as_json() -> None:
    result = doctor("--json", env=environment(SDKGUARD_MAX_ATTEMPTS="8"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["anthropic"]["supported"] is True
    assert report["anthropic"]["requirement"] == "anthropic>=0.93,<3"
    assert report["startup"]["installed"] is True
    assert report["startup"]["on"] is False
    assert report["startup"]["this_process"] == "off"
    assert report["installed"] is False
    policy = report["policy"]
    assert policy["max_attempts"] == {
        "value": 8,
        "display": "8",
        "source": "environment",
        "variable": "SDKGUARD_MAX_ATTEMPTS",
        "raw": "8",
    }
    assert policy["progress_timeout"]["value"] is None
    assert policy["progress_timeout"]["source"] == "default"
    assert policy["retry_statuses"]["value"] == [408, 409, 429, 500, 502, 503, 504, 529]
    assert policy["on_retry"]["variable"] is None
    assert report["patched"]["trial"] is True, "not installed here: what install() patches"
    method = _sdk.request_method(anthropic._base_client.SyncAPIClient)  # `_request` from 1.14
    assert any(t.endswith(f"SyncAPIClient.{method}") for t in report["patched"]["targets"])
    assert report["opentelemetry"]["configured"] is False
    assert report["opentelemetry"]["instrumentor"]["entry_point"] is True
    assert any("startup activation is off" in note for note in report["notes"])


def test_a_malformed_variable() -> None:
    env = environment(SDKGUARD_AUTO="1", SDKGUARD_MAX_ATTEMPTS="five")
    result = doctor(env=env)
    assert result.returncode == 1
    message = (
        "environment variable SDKGUARD_MAX_ATTEMPTS='five' is malformed: expected an integer >= 1"
    )
    # The doctor's own start-up says it once on stderr, like any Python process would.
    assert result.stderr.splitlines() == [
        f"sdkguard: startup activation failed: {message}; running unguarded"
    ]
    out = result.stdout
    assert row(out, "max_attempts") == [
        "5",
        "MALFORMED SDKGUARD_MAX_ATTEMPTS='five' (default shown)",
    ]
    assert f"in this process: failed: {message}" in out
    assert "problems (1)\n" in out
    assert f"  - {message}" in out

    report = json.loads(doctor("--json", env=env).stdout)
    assert report["ok"] is False
    assert report["problems"] == [message]
    assert report["policy"]["max_attempts"]["source"] == "malformed"
    assert report["policy"]["max_attempts"]["error"] == message


def test_a_malformed_sdkguard_auto() -> None:
    result = doctor("--json", env=environment(SDKGUARD_AUTO="sometimes"))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["problems"] == [
        "environment variable SDKGUARD_AUTO='sometimes' is malformed: expected 1 (on) or 0 (off)"
    ]
    assert report["startup"]["on"] is None


def test_a_configured_tracer_provider_is_seen() -> None:
    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        from sdkguard._cli import main
        raise SystemExit(main(["doctor"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracer provider: opentelemetry.sdk.trace.TracerProvider" in result.stdout


# -- in this process ------------------------------------------------------------------------


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("SDKGUARD_", "OTEL_PYTHON_DISABLED")):
            monkeypatch.delenv(name)
    sdkguard.uninstall()
    yield
    sdkguard.uninstall()


@pytest.mark.usefixtures("clean")
def test_values_set_in_code_are_reported_as_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDKGUARD_IDLE_TIMEOUT", "30")
    monkeypatch.setenv("SDKGUARD_MAX_ATTEMPTS", "7")

    def hook(event: Any) -> None:
        pass

    sdkguard.install(max_attempts=3, on_retry=hook)
    report = collect()
    policy = report["policy"]
    assert (policy["max_attempts"]["value"], policy["max_attempts"]["source"]) == (3, "code")
    assert (policy["idle_timeout"]["value"], policy["idle_timeout"]["source"]) == (
        30.0,
        "environment",
    )
    assert policy["deadline"]["source"] == "default"
    assert policy["on_retry"]["source"] == "code"
    assert "hook" in policy["on_retry"]["display"]
    assert report["installed"] is True
    assert report["patched"]["trial"] is False
    assert report["patched"]["targets"]
    text = render(report)
    assert re.search(r"^  max_attempts +3 +code \(install\(\)\)$", text, re.MULTILINE)
    assert sdkguard.is_installed(), "the doctor leaves an installation as it found it"


@pytest.mark.usefixtures("clean")
def test_the_trial_install_is_undone() -> None:
    report = collect()
    assert report["patched"]["trial"] is True
    assert report["patched"]["targets"]
    assert not sdkguard.is_installed()
    import anthropic._base_client as base
    import wrapt

    for owner in (base.SyncAPIClient, base.AsyncAPIClient):
        for name in ("request", "_request"):
            assert not isinstance(owner.__dict__.get(name), wrapt.FunctionWrapper)


@pytest.mark.usefixtures("clean")
def test_an_unsupported_sdk_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version

    def version(name: str) -> str:
        return "0.40.1" if name == "anthropic" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    report = collect()
    assert report["ok"] is False
    assert report["anthropic"] == {
        "version": "0.40.1",
        "requirement": "anthropic>=0.93,<3",
        "supported": False,
    }
    assert report["problems"][0].startswith(
        "anthropic 0.40.1 is not supported: sdkguard supports anthropic>=0.93,<3"
    )
    assert "0.40.1: NOT SUPPORTED (anthropic>=0.93,<3)" in render(report)


@pytest.mark.usefixtures("clean")
def test_auto_on_without_the_startup_file_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDKGUARD_AUTO", "1")
    monkeypatch.setattr(_startup, "find_startup_files", list)
    report = collect()
    assert report["ok"] is False
    assert any(
        "startup file (sdkguard_startup.pth) is not installed" in p for p in report["problems"]
    )
    assert "NOT INSTALLED for" in render(report)


def test_the_cli_exit_status(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdkguard._cli import main

    monkeypatch.setattr(_doctor, "collect", lambda: {"ok": False, "problems": ["x"]})
    assert main(["doctor", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"ok": False, "problems": ["x"]}


@pytest.mark.parametrize(
    ("version", "requirement", "expected"),
    [
        ("0.93.0", "anthropic>=0.93,<3", True),
        ("0.92.9", "anthropic>=0.93,<3", False),
        ("2.14.0", "anthropic>=0.93,<3", True),
        ("3.0.0", "anthropic>=0.93,<3", False),
        ("3", "anthropic>=0.93,<3", False),
        ("2.99.1rc1", "anthropic>=0.93,<3", True),
        ("1.2.3", "anthropic~=1.2", True),
        ("2.0", "anthropic~=1.2", False),
        ("1.4.1", "anthropic==1.4.*", True),
        ("1.5", "anthropic!=1.5", False),
        ("1.0", "anthropic>=weird", None),
        ("dev", "anthropic>=1", None),
    ],
)
def test_satisfies(version: str, requirement: str, expected: bool | None) -> None:
    assert satisfies(version, requirement) is expected


@pytest.mark.parametrize("raw", ["0", "off"])
def test_a_disabled_guard_is_said_plainly(raw: str) -> None:
    # A deliberate switch, not a broken set-up: exit status 0, but no line of the report may
    # leave the reader thinking calls are guarded.
    env = environment(SDKGUARD_AUTO="1", SDKGUARD_ENABLED=raw)
    result = doctor(env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    disabled = f"sdkguard is disabled by SDKGUARD_ENABLED={raw}: no call is guarded"
    assert out.splitlines()[1] == f"DISABLED: {disabled}"
    assert row(out, "enabled") == ["off", "environment SDKGUARD_ENABLED"]
    assert out.rstrip().splitlines()[-2] == "no problems found, but no call is guarded"
    assert out.rstrip().splitlines()[-1].startswith(f"note: {disabled}")
    report = json.loads(doctor("--json", env=env).stdout)
    assert report["ok"] is True and report["policy"]["enabled"]["value"] is False
    assert report["notes"][0].startswith(disabled)


def test_a_guard_disabled_in_code_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SDKGUARD_"):
            monkeypatch.delenv(name)
    sdkguard.install(enabled=False)
    try:
        report = collect()
    finally:
        sdkguard.uninstall()
    assert report["notes"][0].startswith(
        "sdkguard is disabled by install(enabled=False): no call is guarded"
    )
    assert "no call is guarded" in render(report).splitlines()[1]
