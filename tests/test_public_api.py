"""The public names of docs/versioning.md exist, are what the docs say, and stay cheap to import.

`sdkguard.doctor` and `sdkguard.instrumentation` are the public homes of the doctor's report
and the OpenTelemetry instrumentor; the docs name them, never the underscored modules.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sdkguard
import sdkguard.testing
from sdkguard import _instrumentor
from sdkguard.doctor import Report, collect, render
from sdkguard.instrumentation import ANTHROPIC_REQUIREMENT, SdkguardInstrumentor
from sdkguard.testing import FakeAnthropic

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return result.stdout


def test_every_name_of_all_exists() -> None:
    for module in (sdkguard, sdkguard.testing, sdkguard.doctor, sdkguard.instrumentation):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{module.__name__}.__all__ names what it lacks: {missing}"


def test_version_is_the_distribution_s_and_has_a_changelog_section() -> None:
    assert sdkguard.__version__ == importlib.metadata.version("sdkguard")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{sdkguard.__version__}]" in changelog
    assert "## [Unreleased]" in changelog


def test_doctor_collect_returns_the_documented_report() -> None:
    report = collect(environ={})
    assert set(report) == set(Report.__annotations__)
    assert isinstance(report["ok"], bool)
    assert report["ok"] == (report["problems"] == [])
    assert report["sdkguard"]["version"] == sdkguard.__version__
    json.dumps(report)  # JSON-able, as `sdkguard doctor --json` prints it
    text = render(report)
    assert text.startswith(f"sdkguard {sdkguard.__version__} on Python ")


def test_doctor_collect_sees_a_malformed_variable() -> None:
    report = collect(environ={"SDKGUARD_MAX_ATTEMPTS": "five"})
    assert report["ok"] is False
    assert any("SDKGUARD_MAX_ATTEMPTS" in problem for problem in report["problems"])


def test_instrumentation_is_the_registered_instrumentor() -> None:
    assert SdkguardInstrumentor is _instrumentor.SdkguardInstrumentor
    assert ANTHROPIC_REQUIREMENT == "anthropic >= 0.93, < 3"
    (entry_point,) = [
        ep
        for ep in importlib.metadata.entry_points(group="opentelemetry_instrumentor")
        if ep.name == "sdkguard"
    ]
    assert entry_point.load() is SdkguardInstrumentor


def test_instrumentor_installs_and_uninstalls() -> None:
    instrumentor = SdkguardInstrumentor()
    instrumentor.instrument(max_attempts=2)
    try:
        assert sdkguard.is_installed()
    finally:
        instrumentor.uninstrument()
    assert not sdkguard.is_installed()


def test_pytest_fixture_is_registered(fake_anthropic: FakeAnthropic) -> None:
    assert isinstance(fake_anthropic, FakeAnthropic)
    assert fake_anthropic.url.startswith("http://127.0.0.1:")


def test_cli_commands_and_exit_statuses() -> None:
    out = _run("import sdkguard._cli as c, sys; sys.argv[0] = 'sdkguard'; c.main(['--help'])")
    assert all(command in out for command in ("run", "doctor", "demo"))
    command = [sys.executable, "-c", "raise SystemExit(3)"]
    result = subprocess.run(
        [sys.executable, "-m", "sdkguard", "run", "--", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 3, result.stderr


@pytest.mark.parametrize("module", ["sdkguard", "sdkguard.doctor", "sdkguard.instrumentation"])
def test_public_modules_import_cheaply(module: str) -> None:
    loaded = json.loads(_run(f"import sys, {module}, json; print(json.dumps(sorted(sys.modules)))"))
    heavy = {"anthropic", "opentelemetry.sdk", "sdkguard._doctor", "httpx", "httpx2"}
    assert heavy.isdisjoint(loaded), heavy & set(loaded)
    if module == "sdkguard":
        assert not {"sdkguard.doctor", "sdkguard.instrumentation"} & set(loaded)


def test_docs_name_public_paths_only() -> None:
    documents = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    private = re.compile(r"sdkguard\._(?:doctor|instrumentor)\b")
    named = {path.name: private.findall(path.read_text()) for path in documents if path.is_file()}
    assert {name: found for name, found in named.items() if found} == {}
    versioning = (ROOT / "docs" / "versioning.md").read_text()
    for public in ("sdkguard.doctor", "sdkguard.instrumentation", "fake_anthropic"):
        assert public in versioning
