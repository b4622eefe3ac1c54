"""Activation without code: `SDKGUARD_AUTO=1`, `sdkguard run`, the OpenTelemetry instrumentor.

Every test runs real Python processes of this environment (where the startup file is installed,
as `pip install --group dev -e .` puts it) against the fake server of this process. The scripts are
ordinary SDK programs that know nothing of sdkguard: `anthropic.Anthropic()` reads the base URL
and the key from `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY`.
"""

from __future__ import annotations

import os
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import sdkguard
from sdkguard import _run, _startup
from sdkguard._patch import current_policy
from sdkguard.instrumentation import ANTHROPIC_REQUIREMENT, SdkguardInstrumentor
from sdkguard.testing import FakeAnthropic, faults

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 60  # one subprocess; importing anthropic takes about a second on a slow machine

APP = """\
import anthropic

client = anthropic.Anthropic()
with client.messages.stream(
    model="claude-test",
    max_tokens=64,
    messages=[{"role": "user", "content": "Hello"}],
) as stream:
    text = "".join(stream.text_stream)
print("TEXT:", text)
"""

# A command that makes a call itself, then runs a Python child that makes one too.
PARENT = """\
import subprocess, sys

exec(open(sys.argv[1]).read())
child = subprocess.run([sys.executable, sys.argv[1]], timeout=50)
sys.exit(child.returncode)
"""

HEAVY = ("anthropic", "wrapt", "opentelemetry", "httpx", "httpx2", "sdkguard")


@pytest.fixture(autouse=True)
def _startup_file_installed() -> None:
    files = _startup.find_startup_files()
    assert any(f.complete for f in files), (
        "the sdkguard startup file is not installed in this environment: "
        "run `python -m pip install --group dev -e .`"
    )


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(APP)
    return path


def environment(server: FakeAnthropic | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any SDKGUARD_* or OTEL_* variable, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SDKGUARD_", "OTEL_", "ANTHROPIC_"))
        and name not in ("PYTHONPATH", "COVERAGE_PROCESS_START")
    }
    if server is not None:
        env["ANTHROPIC_BASE_URL"] = server.url
        env["ANTHROPIC_API_KEY"] = "test"
    env.update(extra)
    return env


FAST = {"SDKGUARD_BACKOFF_INITIAL": "0.01", "SDKGUARD_BACKOFF_MAX": "0.02"}


def run(
    args: list[str], env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def retry_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "retrying in" in line]


# -- SDKGUARD_AUTO --------------------------------------------------------------------------


def test_an_unmodified_script_fails_on_a_reset_and_survives_it_with_sdkguard_auto(
    server: FakeAnthropic, app: Path
) -> None:
    server.script(faults.reset_after(2), faults.ok())
    plain = run([sys.executable, str(app)], environment(server))
    assert plain.returncode != 0
    assert "TEXT:" not in plain.stdout
    assert "Connection reset by peer" in plain.stderr
    assert "sdkguard" not in plain.stderr

    server.script(faults.reset_after(2), faults.ok())
    guarded = run([sys.executable, str(app)], environment(server, SDKGUARD_AUTO="1", **FAST))
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout == "TEXT: Hello from the fake Anthropic server.\n"
    assert len(retry_lines(guarded.stderr)) == 1
    assert "connection reset by peer" in guarded.stderr
    assert len(server.requests) == 3  # one plain, two guarded


def test_auto_takes_the_policy_from_the_environment(server: FakeAnthropic, app: Path) -> None:
    server.script(faults.reset_after(2), faults.reset_after(2), faults.ok())
    result = run(
        [sys.executable, str(app)],
        environment(server, SDKGUARD_AUTO="1", SDKGUARD_MAX_ATTEMPTS="2", **FAST),
    )
    assert result.returncode != 0
    assert "attempt 2 of 2" in result.stderr
    assert "sdkguard gave up: all 2 attempts failed" in result.stderr
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"SDKGUARD_MAX_ATTEMPTS": "five"},
            "environment variable SDKGUARD_MAX_ATTEMPTS='five' is malformed: "
            "expected an integer >= 1",
        ),
        (
            {"SDKGUARD_IDLE_TIMEOUT": "-3"},
            "environment variable SDKGUARD_IDLE_TIMEOUT='-3' is malformed: "
            "expected a number of seconds > 0, or off",
        ),
    ],
)
def test_a_malformed_variable_leaves_the_program_running_unguarded_with_one_line(
    server: FakeAnthropic, app: Path, variables: dict[str, str], message: str
) -> None:
    server.script(faults.ok())
    result = run([sys.executable, str(app)], environment(server, SDKGUARD_AUTO="1", **variables))
    assert result.returncode == 0
    assert result.stdout == "TEXT: Hello from the fake Anthropic server.\n"
    assert result.stderr.splitlines() == [
        f"sdkguard: startup activation failed: {message}; running unguarded"
    ]

    server.script(faults.reset_after(2), faults.ok())
    result = run([sys.executable, str(app)], environment(server, SDKGUARD_AUTO="1", **variables))
    assert result.returncode != 0, "unguarded: the reset reaches the program"
    assert result.stderr.count("sdkguard: startup activation failed") == 1


def test_a_malformed_sdkguard_auto_is_reported_and_ignored(
    server: FakeAnthropic, app: Path
) -> None:
    server.script(faults.ok())
    result = run([sys.executable, str(app)], environment(server, SDKGUARD_AUTO="maybe"))
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "sdkguard: startup activation failed: environment variable SDKGUARD_AUTO='maybe' is "
        "malformed: expected 1 (on) or 0 (off); running unguarded"
    ]


def test_a_failed_import_leaves_the_program_running_with_one_line(
    server: FakeAnthropic, app: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "wrapt.py").write_text("raise ImportError('wrapt is broken here')\n")
    server.script(faults.ok())
    result = run(
        [sys.executable, str(app)],
        environment(server, SDKGUARD_AUTO="1", PYTHONPATH=str(broken)),
    )
    assert result.returncode == 0
    assert result.stdout == "TEXT: Hello from the fake Anthropic server.\n"
    assert result.stderr.splitlines() == [
        "sdkguard: startup activation failed: cannot import sdkguard "
        "(ImportError: wrapt is broken here); running unguarded"
    ]


def imported_modules(env: Mapping[str, str], code: str = "pass") -> set[str]:
    result = run([sys.executable, "-X", "importtime", "-c", code], env)
    assert result.returncode == 0, result.stderr
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", result.stderr, re.MULTILINE)
    assert "site" in names
    return set(names)


def heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in HEAVY}


def test_without_sdkguard_auto_start_up_imports_nothing() -> None:
    modules = imported_modules(environment())
    assert heavy(modules) == set()
    assert "_sdkguard_startup" not in modules
    for value in ("0", "off"):
        modules = imported_modules(environment(SDKGUARD_AUTO=value))
        assert heavy(modules) == set()


def test_install_leaves_the_metrics_api_unloaded_until_a_call_may_record() -> None:
    # Start-up: the metrics API costs milliseconds to import, and no meter provider can be set
    # before something imports it. A provider set afterwards is still found (test_telemetry).
    code = "import anthropic, sdkguard; sdkguard.install()"
    modules = imported_modules(environment(), code)
    assert "sdkguard._telemetry" in modules
    assert "opentelemetry.metrics" not in modules


def test_with_sdkguard_auto_a_process_that_does_not_use_the_sdk_loads_nothing_heavy() -> None:
    modules = imported_modules(environment(SDKGUARD_AUTO="1"))
    assert "_sdkguard_startup" in modules
    assert heavy(modules) == set()


def test_auto_installs_just_before_anthropic_is_imported() -> None:
    code = textwrap.dedent(
        """
        import sys, _sdkguard_startup as startup
        print(startup.status, "sdkguard" in sys.modules)
        import anthropic, sdkguard
        from sdkguard import _patch
        print(startup.status, sdkguard.is_installed(), len(_patch._state.originals) > 0)
        """
    )
    result = run([sys.executable, "-c", code], environment(SDKGUARD_AUTO="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["armed False", "on True True"]
    assert result.stderr == ""


def test_the_programs_own_install_wins_over_auto() -> None:
    code = textwrap.dedent(
        """
        import sdkguard
        sdkguard.install(max_attempts=3)
        import anthropic, _sdkguard_startup as startup
        from sdkguard._patch import current_policy
        print(startup.status, current_policy().max_attempts, current_policy().idle_timeout)
        sdkguard.uninstall()
        """
    )
    env = environment(SDKGUARD_AUTO="1", SDKGUARD_MAX_ATTEMPTS="7", SDKGUARD_IDLE_TIMEOUT="30")
    result = run([sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["on", "3", "30.0"]


def test_a_users_own_sitecustomize_still_runs(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nos.environ['MY_SITECUSTOMIZE'] = 'ran'\n"
    )
    code = (
        "import os, anthropic, sdkguard; "
        "print(os.environ.get('MY_SITECUSTOMIZE'), sdkguard.is_installed())"
    )
    result = run(
        [sys.executable, "-c", code],
        environment(SDKGUARD_AUTO="1", PYTHONPATH=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ran", "True"]


def test_the_start_file_matches_the_pth_file_and_names_the_activation_entry_point() -> None:
    pth = (ROOT / "startup" / _startup.PTH_NAME).read_text()
    start = (ROOT / "startup" / _startup.START_NAME).read_text()
    assert Path(_startup.PTH_NAME).stem == Path(_startup.START_NAME).stem  # PEP 829: one wins
    imports = [line for line in pth.splitlines() if line.startswith("import ")]
    assert len(imports) == 1
    assert "SDKGUARD_AUTO" in imports[0] and _startup.MODULE_NAME in imports[0]
    entries = [line for line in start.splitlines() if line.strip() and not line.startswith("#")]
    assert entries == [f"{_startup.MODULE_NAME}:activate"]
    # The name sorts after the editable-install files that put sdkguard on sys.path.
    assert (
        sorted([_startup.PTH_NAME, "_editable_impl_sdkguard.pth", "__editable__.x.pth"])[-1]
        == _startup.PTH_NAME
    )


def test_the_start_files_entry_point_activates_as_python_3_15_would_call_it() -> None:
    # Python 3.15+ resolves the entry point with pkgutil.resolve_name and calls it: emulate
    # that in a process where the .pth line found SDKGUARD_AUTO unset.
    code = textwrap.dedent(
        f"""
        import os, pkgutil, sys
        import _sdkguard_startup
        assert _sdkguard_startup.status == "not run", _sdkguard_startup.status
        os.environ["SDKGUARD_AUTO"] = "1"
        pkgutil.resolve_name({f"{_startup.MODULE_NAME}:activate"!r})()
        import anthropic, sdkguard
        print(_sdkguard_startup.status, sdkguard.is_installed())
        """
    )
    result = run([sys.executable, "-c", code], environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["on", "True"]
    assert callable(pkgutil.resolve_name("_sdkguard_startup:activate"))


# -- sdkguard run ---------------------------------------------------------------------------


def test_sdkguard_run_guards_the_command_and_its_python_children(
    server: FakeAnthropic, app: Path, tmp_path: Path
) -> None:
    parent = tmp_path / "parent.py"
    parent.write_text(PARENT)
    command = [sys.executable, str(parent), str(app)]

    server.script(faults.reset_after(2), faults.ok())
    plain = run(command, environment(server))
    assert plain.returncode != 0
    assert "TEXT:" not in plain.stdout

    server.script(faults.reset_after(2), faults.ok(), faults.reset_after(2), faults.ok())
    sdkguard_script = BIN / "sdkguard"
    result = run(
        [str(sdkguard_script), "run", "--backoff-initial", "0.01", "--", *command],
        environment(server),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("TEXT: Hello from the fake Anthropic server.") == 2
    assert len(retry_lines(result.stderr)) == 2, "one retry in the command, one in its child"


def test_python_m_sdkguard_run_passes_the_policy_options_on() -> None:
    code = (
        "import anthropic; from sdkguard._patch import current_policy as p; "
        "print(p().max_attempts, p().idle_timeout, p().deadline, p().enabled)"
    )
    result = run(
        [
            sys.executable,
            "-m",
            "sdkguard",
            "run",
            "--max-attempts",
            "8",
            "--idle-timeout",
            "30",
            "--deadline",
            "off",
            "--enabled",
            "on",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        environment(SDKGUARD_DEADLINE="100"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8", "30.0", "None", "True"]


def test_sdkguard_run_exits_with_the_commands_status() -> None:
    result = run(
        [
            sys.executable,
            "-m",
            "sdkguard",
            "run",
            "--",
            sys.executable,
            "-c",
            "raise SystemExit(7)",
        ],
        environment(),
    )
    assert result.returncode == 7
    sh = shutil.which("sh")
    if sh is not None:  # without "--" too, and a non-Python command
        result = run([sys.executable, "-m", "sdkguard", "run", sh, "-c", "exit 3"], environment())
        assert result.returncode == 3


def test_sdkguard_run_rejects_malformed_options_and_variables() -> None:
    result = run(
        [sys.executable, "-m", "sdkguard", "run", "--max-attempts", "five", "--", "true"],
        environment(),
    )
    assert result.returncode == 2
    assert "argument --max-attempts: 'five' is malformed: expected an integer >= 1" in (
        result.stderr
    )
    result = run(
        [sys.executable, "-m", "sdkguard", "run", "--", "true"],
        environment(SDKGUARD_JITTER="2"),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sdkguard run: environment variable SDKGUARD_JITTER='2' is malformed: "
        "expected a number between 0 and 1"
    )
    # ... unless an option replaces the malformed value
    result = run(
        [
            sys.executable,
            "-m",
            "sdkguard",
            "run",
            "--jitter",
            "0.5",
            "--",
            sys.executable,
            "-c",
            "",
        ],
        environment(SDKGUARD_JITTER="2"),
    )
    assert result.returncode == 0, result.stderr


def test_sdkguard_run_without_a_command_or_with_a_missing_one() -> None:
    result = run([sys.executable, "-m", "sdkguard", "run"], environment())
    assert result.returncode == 2
    assert "no command given" in result.stderr
    result = run(
        [sys.executable, "-m", "sdkguard", "run", "--", "no-such-command-sdkguard"], environment()
    )
    assert result.returncode == 127
    assert "sdkguard run: command not found: no-such-command-sdkguard" in result.stderr


def test_child_environment() -> None:
    env = _run.child_environment({"max_attempts": "3"}, {"PATH": "/bin", "SDKGUARD_AUTO": "0"})
    assert env == {"PATH": "/bin", "SDKGUARD_AUTO": "1", "SDKGUARD_MAX_ATTEMPTS": "3"}


# -- OpenTelemetry instrumentor -------------------------------------------------------------


def test_opentelemetry_instrument_finds_the_instrumentor(server: FakeAnthropic, app: Path) -> None:
    instrument = BIN / "opentelemetry-instrument"
    if not instrument.exists():
        pytest.skip("opentelemetry-instrumentation is not installed (the dev extra has it)")
    otel = {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **FAST,
    }
    server.script(faults.reset_after(2), faults.ok())
    result = run([str(instrument), sys.executable, str(app)], environment(server, **otel))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "TEXT: Hello from the fake Anthropic server.\n"
    assert len(retry_lines(result.stderr)) == 1

    server.script(faults.reset_after(2), faults.ok())
    disabled = environment(server, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sdkguard", **otel)
    result = run([str(instrument), sys.executable, str(app)], disabled)
    assert result.returncode != 0
    assert "TEXT:" not in result.stdout


@pytest.fixture
def clean_guard() -> Iterator[None]:
    sdkguard.uninstall()
    yield
    SdkguardInstrumentor().uninstrument()
    sdkguard.uninstall()


@pytest.mark.usefixtures("clean_guard")
def test_instrumentor_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDKGUARD_MAX_ATTEMPTS", raising=False)
    instrumentor = SdkguardInstrumentor()
    assert instrumentor is SdkguardInstrumentor()
    assert tuple(instrumentor.instrumentation_dependencies()) == ("anthropic >= 0.93, < 3",)
    instrumentor.instrument(max_attempts=3, tracer_provider=None)
    assert sdkguard.is_installed()
    assert current_policy().max_attempts == 3
    instrumentor.uninstrument()
    assert not sdkguard.is_installed()
    instrumentor.instrument()
    assert current_policy().max_attempts == 5


def test_the_supported_range_is_the_one_of_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dependencies = [d.replace(" ", "") for d in project["project"]["dependencies"]]
    assert ANTHROPIC_REQUIREMENT.replace(" ", "") in dependencies
    scripts = project["project"]["entry-points"]["opentelemetry_instrumentor"]
    assert scripts == {"sdkguard": "sdkguard.instrumentation:SdkguardInstrumentor"}
    include = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert sorted(include.values()) == sorted(
        [_startup.PTH_NAME, _startup.START_NAME, _startup.MODULE_NAME + ".py"]
    )
