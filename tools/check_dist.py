"""Prove the built distributions work: `make dist-check` (CI runs it after `make test`).

1. builds the sdist and, from it, the wheel (`uv build`) into `.cache/dist-check/dist/`;
2. `twine check --strict` on both, and looks inside them: the wheel holds LICENSE, py.typed,
   the startup files (.pth, .start and their module) and Metadata-Version 2.4 with the
   version of `sdkguard/_version.py`; the sdist holds what building and testing need and no
   caches;
3. makes a fresh virtual environment, `.cache/dist-check/venv` (never the project's), and
   installs the wheel and pytest into it with pip (downloads cached in `.cache/dist-check/pip`);
4. from a directory outside the source tree, with nothing of it on `sys.path`, runs what the
   README promises:
   a. the quick start: `SDKGUARD_AUTO=1 python -c ...` has the guard installed by the startup
      file, and a call whose first attempts meet a 529 and a reset succeeds;
   b. the console script: `sdkguard --version`, `sdkguard doctor` (exit 0, instrumentor
      registered) and `sdkguard run -- python ...` against `python -m sdkguard.testing serve`
      with a fault that is retried;
   c. the pytest plugin: a test file using the `fake_anthropic` fixture.

Needs only the standard library, `uv` and `twine` (the `dev` group) and the package registry.
Exit status 0 when everything holds, 1 otherwise.

    .venv/bin/python tools/check_dist.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".cache" / "dist-check"
STARTED = time.monotonic()

WHEEL_FILES = (
    "sdkguard/__init__.py",
    "sdkguard/py.typed",
    "sdkguard/testing/__init__.py",
    "sdkguard_startup.pth",
    "sdkguard_startup.start",
    "_sdkguard_startup.py",
)
SDIST_FILES = ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO")
SDIST_DIRS = ("sdkguard/", "startup/", "tests/")
SDIST_JUNK = (".cache/", ".venv/", ".hypothesis/", "__pycache__/", "benchmarks/results/", ".git/")

# A guarded call under SDKGUARD_AUTO=1: the startup file installs the guard when anthropic is
# imported; the fake server in this process fails the first two attempts.
QUICK_START = """
import sys

import anthropic
import sdkguard
from sdkguard.testing import FakeAnthropic, faults

assert sdkguard.is_installed(), "SDKGUARD_AUTO=1: the startup file did not install the guard"
assert sdkguard.__file__.startswith(sys.prefix), f"sdkguard imported from {sdkguard.__file__}"
with FakeAnthropic() as server:
    server.script(faults.status(529), faults.reset_before_headers(), faults.ok())
    client = anthropic.Anthropic(base_url=server.url, api_key="test")
    message = client.messages.create(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.content[0].text == "Hello from the fake Anthropic server.", message
    assert len(server.requests) == 3, server.requests
print(f"sdkguard {sdkguard.__version__}: 3 attempts (529, reset, ok), one clean message")
"""

# Run by `sdkguard run` against `python -m sdkguard.testing serve` (its URL in SERVER_URL).
UNDER_RUN = """
import os

import anthropic
import sdkguard

assert sdkguard.is_installed(), "sdkguard run: the guard is not installed in the child"
client = anthropic.Anthropic(base_url=os.environ["SERVER_URL"], api_key="test")
with client.messages.stream(
    model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
) as stream:
    text = stream.get_final_text()
assert text == "Hello from the fake Anthropic server.", text
print("guarded stream under sdkguard run: retried, complete")
"""

FIXTURE_TEST = """
import anthropic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults


@pytest.fixture
def guard():
    sdkguard.install(backoff_initial=0.05, jitter=0.0)
    yield
    sdkguard.uninstall()


def test_the_fixture_is_a_started_server(fake_anthropic):
    assert isinstance(fake_anthropic, FakeAnthropic)
    assert fake_anthropic.url.startswith("http://127.0.0.1:")


def test_a_retried_overload(fake_anthropic, guard):
    fake_anthropic.script(faults.status(529), faults.ok())
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="test")
    client.messages.create(
        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert [sent.status for sent in fake_anthropic.sent] == [529, 200]
"""


class CheckFailed(Exception):
    pass


def step(message: str) -> None:
    print(f"[dist-check {time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    expect: int = 0,
    timeout: float = 300,
) -> str:
    """Run `cmd`; its output (stdout and stderr) when it exits with `expect`, else fail."""
    args = [str(part) for part in cmd]
    result = subprocess.run(
        args,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if result.returncode != expect:
        raise CheckFailed(
            f"`{' '.join(args)}` exited {result.returncode}, expected {expect}:\n"
            + textwrap.indent(result.stdout.rstrip(), "    | ")
        )
    return result.stdout


def tool(name: str) -> str:
    """An executable of this environment (the `dev` group's uv and twine), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise CheckFailed(f"{name} is not installed (the dev group has it: make .venv/.installed)")
    return found


def project_version() -> str:
    text = (REPO / "sdkguard" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise CheckFailed("no __version__ in sdkguard/_version.py")
    return match[1]


# -- 1, 2: build and inspect ----------------------------------------------------------------


def build(dist: Path) -> tuple[Path, Path]:
    shutil.rmtree(dist, ignore_errors=True)
    step("building the sdist, then the wheel from it (uv build)")
    run([tool("uv"), "build", "--quiet", "--out-dir", dist, REPO], cwd=REPO)
    sdists = sorted(dist.glob("sdkguard-*.tar.gz"))
    wheels = sorted(dist.glob("sdkguard-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise CheckFailed(
            f"expected one sdist and one wheel in {dist}, found {sorted(dist.iterdir())}"
        )
    for path in (*sdists, *wheels):
        step(f"  built {path.relative_to(REPO)} ({path.stat().st_size / 1024:.0f} KiB)")
    return sdists[0], wheels[0]


def check_metadata(sdist: Path, wheel: Path, version: str) -> None:
    step("twine check --strict on both")
    out = run([tool("twine"), "check", "--strict", sdist, wheel])
    if out.count("PASSED") != 2:
        raise CheckFailed(f"twine check did not pass both:\n{out}")

    step("looking inside the wheel")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"sdkguard-{version}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    missing = [name for name in (*WHEEL_FILES, f"{info}/licenses/LICENSE") if name not in names]
    if missing:
        raise CheckFailed(f"the wheel lacks {missing}")
    found = re.search(r"^Metadata-Version: (\d+)\.(\d+)$", metadata, re.MULTILINE)
    if found is None or (int(found[1]), int(found[2])) < (2, 4):
        raise CheckFailed(f"Metadata-Version {found and found[0]}: License-Expression needs 2.4")
    expected_headers = (
        f"Version: {version}",
        "License-Expression: MIT",
        "License-File: LICENSE",
    )
    absent = [header for header in expected_headers if header not in metadata.splitlines()]
    if absent:
        raise CheckFailed(f"the wheel's METADATA lacks {absent}")
    if "dev" in re.findall(r"^Provides-Extra: (.+)$", metadata, re.MULTILINE):
        raise CheckFailed("the wheel publishes a `dev` extra: development tools are a group")
    for group in ("[console_scripts]", "[pytest11]", "[opentelemetry_instrumentor]"):
        if group not in entry_points:
            raise CheckFailed(f"the wheel's entry_points.txt lacks {group}")
    step(f"  {len(names)} files; LICENSE, py.typed, .pth, .start; {found[0]}")

    step("looking inside the sdist")
    with tarfile.open(sdist) as archive:
        root = f"sdkguard-{version}/"
        members = [name.removeprefix(root) for name in archive.getnames()]
    missing = [name for name in SDIST_FILES if name not in members]
    missing += [d for d in SDIST_DIRS if not any(m.startswith(d) for m in members)]
    if missing:
        raise CheckFailed(f"the sdist lacks {missing}")
    junk = sorted({j for j in SDIST_JUNK for m in members if m.startswith(j) or f"/{j}" in m})
    if junk:
        raise CheckFailed(f"the sdist ships {junk}")
    step(f"  {len(members)} entries; no caches, virtual environments or recorded results")


# -- 3: a fresh environment -------------------------------------------------------------------


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell with `venv` activated, and nothing of this project."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SDKGUARD_", "PYTHON", "PIP_", "OTEL_", "VIRTUAL_ENV", "UV_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_CACHE_DIR"] = str(OUT / "pip")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def make_venv(venv: Path, wheel: Path) -> Path:
    shutil.rmtree(venv, ignore_errors=True)
    step(f"creating a fresh virtual environment: {venv.relative_to(REPO)}")
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    step("installing the wheel and pytest into it (pip)")
    run(
        [python, "-m", "pip", "install", "--quiet", wheel, "pytest"],
        env=clean_env(venv),
        timeout=600,
    )
    return python


# -- 4: the quick start, the console script, the fixture -------------------------------------


@contextmanager
def serve(python: Path, env: Mapping[str, str], *faults: str) -> Iterator[str]:
    """`python -m sdkguard.testing serve` with `faults`; yields its URL."""
    args = [str(python), "-m", "sdkguard.testing", "serve"]
    for fault in faults:
        args += ["--fault", fault]
    server = subprocess.Popen(args, env=dict(env), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise CheckFailed(f"`{' '.join(args)}` printed {url!r}, not its URL")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def check_installed(venv: Path, python: Path, version: str, work: Path) -> None:
    bin_dir = venv / "bin"
    fast = {"SDKGUARD_BACKOFF_INITIAL": "0.05", "SDKGUARD_JITTER": "0"}

    step(f"(a) quick start, from {work}: SDKGUARD_AUTO=1 python -c ... (529, reset, then ok)")
    out = run([python, "-c", QUICK_START], cwd=work, env=clean_env(venv, SDKGUARD_AUTO="1", **fast))
    retries = [line for line in out.splitlines() if "retrying in" in line]
    if len(retries) != 2:
        raise CheckFailed(f"expected two retries on the sdkguard logger, got:\n{out}")
    step(f"  {out.splitlines()[-1]}")

    step("(b) console script: sdkguard --version, doctor, run")
    out = run([bin_dir / "sdkguard", "--version"], cwd=work, env=clean_env(venv))
    if out.strip() != f"sdkguard {version}":
        raise CheckFailed(f"sdkguard --version printed {out!r}")
    run([bin_dir / "sdkguard", "doctor"], cwd=work, env=clean_env(venv))
    report = json.loads(
        run([bin_dir / "sdkguard", "doctor", "--json"], cwd=work, env=clean_env(venv))
    )
    if not (report["ok"] and report["opentelemetry"]["instrumentor"]["entry_point"]):
        raise CheckFailed(f"sdkguard doctor --json: {json.dumps(report, indent=2)}")
    step(f"  sdkguard doctor: exit 0, anthropic {report['anthropic']['version']}, no problems")
    with serve(python, clean_env(venv), "status:529", "reset_after:2") as url:
        env = clean_env(venv, SERVER_URL=url)
        command: list[str | Path] = [
            bin_dir / "sdkguard",
            "run",
            "--backoff-initial",
            "0.05",
            "--jitter",
            "0",
        ]
        out = run([*command, "--", python, "-c", UNDER_RUN], cwd=work, env=env)
    if len([line for line in out.splitlines() if "retrying in" in line]) != 2:
        raise CheckFailed(f"sdkguard run: expected two retries, got:\n{out}")
    exits_3: list[str | Path] = [
        bin_dir / "sdkguard",
        "run",
        "--",
        python,
        "-c",
        "raise SystemExit(3)",
    ]
    run(exits_3, cwd=work, env=clean_env(venv), expect=3)
    step("  sdkguard run: guarded child retried a 529 and a reset; the command's exit status")

    step("(c) pytest plugin: a test file using the fake_anthropic fixture")
    (work / "test_with_sdkguard.py").write_text(FIXTURE_TEST)
    out = run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_with_sdkguard.py"],
        cwd=work,
        env=clean_env(venv),
    )
    if "2 passed" not in out:
        raise CheckFailed(f"pytest:\n{out}")
    step(f"  {out.strip().splitlines()[-1]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args(argv)
    version = project_version()
    try:
        sdist, wheel = build(OUT / "dist")
        check_metadata(sdist, wheel, version)
        python = make_venv(OUT / "venv", wheel)
        with tempfile.TemporaryDirectory(prefix="sdkguard-dist-check-") as work:
            if Path(work).resolve().is_relative_to(REPO):
                raise CheckFailed(f"the temporary directory {work} is inside the source tree")
            check_installed(OUT / "venv", python, version, Path(work))
    except (CheckFailed, subprocess.TimeoutExpired) as error:
        step(f"FAILED: {error}")
        return 1
    step(f"OK: sdkguard {version} builds, passes twine check, and works installed from its wheel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
