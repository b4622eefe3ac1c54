#!/usr/bin/env python3
"""Run the anthropic SDK's own test suite with and without sdkguard, and compare.

    .venv/bin/python tools/sdk_suite.py            # or: make sdk-suite

1. Downloads the sdist of the installed `anthropic` version (`pip download --no-binary
   :all:`) into `.cache/sdk-suite/` and unpacks it (both reused when present).
2. Builds `.cache/sdk-suite/venv-<version>` with the sdist's test dependencies, the released
   `anthropic==<version>` and this checkout of sdkguard (editable); reused while its
   requirements are unchanged.
3. Runs the sdist's offline tests (`tests/` without `tests/api_resources`) twice in the
   unpacked sdist, with its own pytest configuration: plain, then with `-p sdk_suite_plugin`,
   which installs sdkguard with millisecond waits. Both runs import the installed anthropic.
4. Re-runs every test that failed only with sdkguard, both ways, to tell real differences
   from flaky or order-dependent ones.
5. Prints a summary (also written to `.cache/sdk-suite/report-<version>.txt`): totals of
   both runs, the intended differences listed in `tools/sdk_suite_expected.txt`, and every
   other test that fails only with sdkguard, with the first lines of its failure.

Exit status: 0 when no test fails only with sdkguard except the intended ones, 1 when one
does (reproduced on its re-run), 2 when the suite itself could not run. See docs/sdk-suite.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project venv is 3.11+; pip vendors a tomli for 3.10
    try:
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        from pip._vendor import tomli as tomllib  # type: ignore[import-untyped, no-redef, unused-ignore]

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
CACHE = REPO / ".cache" / "sdk-suite"
EXPECTED_FILE = TOOLS / "sdk_suite_expected.txt"
PLUGIN = "sdk_suite_plugin"

Mode = Literal["plain", "guarded"]
Outcome = Literal["passed", "failed", "error", "skipped"]
BAD: frozenset[str] = frozenset({"failed", "error"})

# Bumped when the way the venv is built changes, to force a rebuild of existing ones.
VENV_LAYOUT = 1
# Dev dependencies of the SDK that its tests do not need (linters, type checkers, stubs).
NOT_FOR_TESTS = re.compile(r"^(pyright|mypy|ruff|nox|black|isort|types-.*|.*-stubs)$")
# Used when the sdist names no dev dependencies (older releases used other tools).
FALLBACK_TEST_DEPS = (
    "pytest",
    "pytest-asyncio",
    "pytest-xdist",
    "respx",
    "time-machine",
    "dirty-equals",
    "inline-snapshot",
    "hypothesis",
    "rich",
    "nest_asyncio",
    "importlib-metadata",
    "opentelemetry-sdk",
)
# What this script itself needs in the suite venv, besides the SDK's own test dependencies.
SUITE_DEPS = ("pytest-timeout", "wrapt>=1.16", "opentelemetry-api>=1.20")
# Tests that need the network or things an sdist does not ship.
IGNORED_PATHS = ("tests/api_resources",)


def log(message: str) -> None:
    print(f"sdk-suite: {message}", flush=True)


class SuiteError(Exception):
    """The suite could not run (download, install, pytest crashed): exit status 2."""


# -- 1. the sdist -----------------------------------------------------------------------------


def installed_version() -> str:
    try:
        return metadata.version("anthropic")
    except metadata.PackageNotFoundError:
        raise SuiteError("anthropic is not installed here; pass --version") from None


def run_quiet(cmd: Sequence[str], logfile: Path, *, cwd: Path | None = None) -> None:
    """Run `cmd` with its output appended to `logfile`; on failure show the tail, raise."""
    with logfile.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if code != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-30:]
        raise SuiteError(
            f"command failed ({code}): {' '.join(cmd)}\n  "
            + "\n  ".join(tail)
            + f"\n(see {logfile})"
        )


def fetch_sdist(version: str) -> Path:
    """The unpacked sdist of `anthropic==version`, downloading and unpacking it when needed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    unpacked = CACHE / f"anthropic-{version}"
    if (unpacked / ".sdk-suite-unpacked").exists():
        return unpacked
    archive = CACHE / f"anthropic-{version}.tar.gz"
    if not archive.exists():
        log(f"downloading the sdist of anthropic {version}")
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            run_quiet(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-binary",
                    ":all:",
                    "--no-deps",
                    "--disable-pip-version-check",
                    f"anthropic=={version}",
                    "-d",
                    tmp,
                ],
                CACHE / f"install-{version}.log",
            )
            found = sorted(Path(tmp).glob("anthropic-*.tar.gz"))
            if not found:
                raise SuiteError(f"pip download left no anthropic-*.tar.gz in {tmp}")
            shutil.move(str(found[0]), archive)
    log(f"unpacking {archive.name}")
    shutil.rmtree(unpacked, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # pragma: no cover - Python without PEP 706
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise SuiteError(f"unsafe path in {archive}: {member.name}")
            tar.extractall(tmp)
        tops = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "tests").is_dir():
            raise SuiteError(f"{archive} does not hold one project folder with tests/")
        shutil.move(str(tops[0]), unpacked)
    (unpacked / ".sdk-suite-unpacked").write_text(version + "\n")
    return unpacked


# -- 2. the venv ------------------------------------------------------------------------------


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def test_requirements(sdist: Path) -> tuple[list[str], list[str]]:
    """(dev requirements the tests need, the SDK's extras) read from the sdist's pyproject."""
    pyproject = tomllib.loads((sdist / "pyproject.toml").read_text())
    groups: dict[str, Any] = pyproject.get("dependency-groups", {})
    tool: dict[str, Any] = pyproject.get("tool", {})
    dev: list[Any] = (
        groups.get("dev")
        or tool.get("uv", {}).get("dev-dependencies")
        or tool.get("rye", {}).get("dev-dependencies")
        or tool.get("pdm", {}).get("dev-dependencies", {}).get("dev")
        or list(FALLBACK_TEST_DEPS)
    )
    requirements = [
        req
        for req in dev
        if isinstance(req, str) and not NOT_FOR_TESTS.match(_requirement_name(req))
    ]
    extras = sorted(pyproject.get("project", {}).get("optional-dependencies", {}))
    return requirements, extras


def lock_constraints(sdist: Path) -> list[str]:
    """The pins of the sdist's `requirements-dev.lock`, as pip constraints."""
    lock = sdist / "requirements-dev.lock"
    if not lock.exists():
        return []
    pins = []
    for raw in lock.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "-")) or "==" not in line:
            continue
        if _requirement_name(line) == "anthropic":
            continue
        pins.append(line)
    return pins


@dataclasses.dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def build_venv(version: str, sdist: Path, *, rebuild: bool) -> Venv:
    """Create or reuse `.cache/sdk-suite/venv-<version>`; idempotent, quiet (output in a log)."""
    venv = Venv(CACHE / f"venv-{version}")
    logfile = CACHE / f"install-{version}.log"
    requirements, extras = test_requirements(sdist)
    constraints = lock_constraints(sdist)
    anthropic_req = (
        f"anthropic[{','.join(extras)}]=={version}" if extras else f"anthropic=={version}"
    )
    spec = {
        "layout": VENV_LAYOUT,
        "python": sys.version.split()[0],
        "anthropic": anthropic_req,
        "requirements": [*requirements, *SUITE_DEPS],
        "constraints": constraints,
    }
    stamp = venv.path / ".sdk-suite-deps"
    if rebuild:
        shutil.rmtree(venv.path, ignore_errors=True)
    if not (stamp.exists() and stamp.read_text() == _digest(spec) and venv.python.exists()):
        started = time.monotonic()
        log(f"installing the test dependencies into {venv.path.relative_to(REPO)} (log: {logfile})")
        shutil.rmtree(venv.path, ignore_errors=True)
        run_quiet([sys.executable, "-m", "venv", str(venv.path)], logfile)
        pip = [str(venv.python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
        run_quiet([*pip, "install", "-q", "--upgrade", "pip"], logfile)
        install = [*pip, "install", "-q", anthropic_req, *requirements, *SUITE_DEPS]
        constraints_file = venv.path / "constraints.txt"
        constraints_file.write_text("\n".join(constraints) + "\n")
        try:
            run_quiet([*install, "-c", str(constraints_file)], logfile)
        except SuiteError:
            # The lock's pins can conflict with an extra's own needs: take PyPI's choice.
            log("the sdist's lock pins did not resolve; installing without them")
            run_quiet(install, logfile)
        stamp.write_text(_digest(spec))
        (venv.path / ".sdk-suite-sdkguard").unlink(missing_ok=True)
        log(f"test dependencies installed in {time.monotonic() - started:.0f} s")
    # sdkguard, editable: the suite always tests this checkout. Re-installed when its
    # packaging (entry points, startup files) changes.
    pyproject = (REPO / "pyproject.toml").read_bytes()
    guard_stamp = venv.path / ".sdk-suite-sdkguard"
    guard_digest = hashlib.sha256(pyproject).hexdigest()[:16]
    if not (guard_stamp.exists() and guard_stamp.read_text() == guard_digest):
        log("installing sdkguard (editable) into the suite venv")
        run_quiet(
            [
                str(venv.python),
                "-m",
                "pip",
                "--disable-pip-version-check",
                "install",
                "-q",
                "--no-deps",
                "-e",
                str(REPO),
            ],
            logfile,
        )
        guard_stamp.write_text(guard_digest)
    return venv


def suite_env(mode: Mode, policy: Sequence[str]) -> dict[str, str]:
    """The environment of a test run: nothing inherited that changes the SDK or sdkguard."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SDKGUARD_", "ANTHROPIC_", "PYTEST_", "VIRTUAL_ENV"))
        and name not in ("PYTHONPATH", "PYTHONHOME", "TEST_API_BASE_URL")
    }
    env["PYTHONPATH"] = str(TOOLS)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if mode == "guarded":
        for item in policy:
            name, _, value = item.partition("=")
            env[f"SDKGUARD_{name.strip().upper()}"] = value.strip()
    return env


def check_import_origin(venv: Venv, sdist: Path) -> str:
    """Where the test runs import anthropic from: must be the venv, never the sdist's src/."""
    code = "import anthropic, sdkguard; print(anthropic.__file__); print(anthropic.__version__)"
    result = subprocess.run(
        [str(venv.python), "-c", code],
        cwd=sdist,
        env=suite_env("plain", ()),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SuiteError(f"the suite venv cannot import anthropic and sdkguard:\n{result.stderr}")
    origin, version = result.stdout.split()
    if not Path(origin).resolve().is_relative_to(venv.path.resolve()):
        raise SuiteError(f"the tests would import anthropic from {origin}, not from {venv.path}")
    return f"anthropic {version} from {Path(origin).parent}"


# -- 3. the runs ------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    outcome: Outcome
    message: str = ""


@dataclasses.dataclass
class Run:
    mode: Mode
    results: dict[str, Result]
    seconds: float
    exit_code: int

    def totals(self) -> dict[str, int]:
        counts = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
        for result in self.results.values():
            counts[result.outcome] += 1
        return counts

    def describe(self) -> str:
        counts = self.totals()
        parts = [f"{counts[key]} {key}" for key in ("passed", "failed", "error", "skipped")]
        return f"{', '.join(parts)} ({len(self.results)} tests, {self.seconds:.0f} s)"


def _node_id(sdist: Path, classname: str, name: str) -> str:
    """Rebuild a pytest node id from a JUnit `classname` (`tests.lib.test_x.TestY`) and name."""
    parts = classname.split(".") if classname else []
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (sdist / path).is_file():
            return "::".join([path, *parts[cut:], name])
    return "::".join([*parts, name]) if parts else name


def _first_lines(text: str, count: int = 3, width: int = 220) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    cut = [line if len(line) <= width else line[: width - 3] + "..." for line in lines[:count]]
    return "\n".join(cut)


def parse_junit(sdist: Path, xml_file: Path) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for case in ET.parse(xml_file).getroot().iter("testcase"):
        node = _node_id(sdist, case.get("classname", ""), case.get("name", ""))
        outcome: Outcome = "passed"
        message = ""
        for child in case:
            if child.tag in ("failure", "error"):
                # A teardown error after a failure keeps "failed": the test's own verdict.
                if outcome != "failed":
                    outcome = "failed" if child.tag == "failure" else "error"
                text = child.get("message") or child.text or ""
                message = message or _first_lines(text)
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        previous = results.get(node)
        if previous is None or (outcome in BAD and previous.outcome not in BAD):
            results[node] = Result(outcome, message)
    return results


_PROGRESS = re.compile(r"\[\s*(\d+)%\]\s*$")


def run_pytest(
    venv: Venv,
    sdist: Path,
    mode: Mode,
    *,
    label: str,
    selection: Sequence[str],
    workers: int,
    timeout: float,
    keyword: str | None,
    policy: Sequence[str],
    extra_args: Sequence[str],
) -> Run:
    """One pytest run in the sdist; per-test outcomes from its JUnit XML."""
    version = sdist.name.removeprefix("anthropic-")
    junit = CACHE / f"junit-{version}-{label}.xml"
    logfile = CACHE / f"pytest-{version}-{label}.log"
    junit.unlink(missing_ok=True)
    cmd = [
        str(venv.python),
        "-m",
        "pytest",
        *selection,
        *(f"--ignore={path}" for path in IGNORED_PATHS),
        # sdkguard's own pytest11 plugin stays out of both runs: only -p sdk_suite_plugin
        # may install sdkguard.
        "-p",
        "no:sdkguard",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        f"--timeout={timeout:g}",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit2",
        "-o",
        "junit_logging=no",
    ]
    cmd += ["-n", str(workers)] if workers > 0 else ["-n", "0"]
    if mode == "guarded":
        cmd += ["-p", PLUGIN]
    if keyword:
        cmd += ["-k", keyword]
    cmd += extra_args
    log(f"{label}: running pytest ({mode}) - output in {logfile.relative_to(REPO)}")
    started = time.monotonic()
    shown = -10
    with logfile.open("w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=sdist,
            env=suite_env(mode, policy),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            match = _PROGRESS.search(line)
            if match and int(match.group(1)) >= shown + 10:
                shown = int(match.group(1))
                log(f"{label}: {shown}% after {time.monotonic() - started:.0f} s")
        code = proc.wait()
    seconds = time.monotonic() - started
    # 0 all passed, 1 some failed, 5 nothing collected; anything else: pytest itself broke.
    if code not in (0, 1, 5) or not junit.exists():
        tail = "\n  ".join(logfile.read_text(errors="replace").splitlines()[-25:])
        raise SuiteError(f"{label}: pytest exited with {code}:\n  {tail}\n(see {logfile})")
    results = parse_junit(sdist, junit) if junit.exists() else {}
    return Run(mode, results, seconds, code)


# -- 4. comparison ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Expected:
    pattern: str
    reason: str
    regex: re.Pattern[str]

    def matches(self, node: str) -> bool:
        return self.regex.fullmatch(node) is not None


def load_expected(path: Path = EXPECTED_FILE) -> list[Expected]:
    """`node id | reason` lines; `*` in a node id matches anything; `#` starts a comment."""
    entries: list[Expected] = []
    if not path.exists():
        return entries
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition(" | ")
        if not sep or not reason.strip():
            raise SuiteError(f"{path}:{number}: expected `node id | reason`, got {line!r}")
        regex = re.compile(".*".join(re.escape(part) for part in pattern.strip().split("*")))
        entries.append(Expected(pattern.strip(), reason.strip(), regex))
    return entries


def intended_reason(expected: Iterable[Expected], node: str) -> str | None:
    for entry in expected:
        if entry.matches(node):
            return entry.reason
    return None


@dataclasses.dataclass
class Comparison:
    guard_only: list[str]
    """Failed or errored with sdkguard, passed without."""
    plain_only: list[str]
    """Failed or errored without sdkguard, passed with it."""
    both: list[str]
    """Failed either way: not sdkguard's doing."""
    missing: list[str]
    """Ran in one run only (collection differs)."""


def compare(plain: Run, guarded: Run) -> Comparison:
    guard_only, plain_only, both, missing = [], [], [], []
    for node in sorted(set(plain.results) | set(guarded.results)):
        p, g = plain.results.get(node), guarded.results.get(node)
        if p is None or g is None:
            missing.append(node)
        elif g.outcome in BAD and p.outcome == "passed":
            guard_only.append(node)
        elif p.outcome in BAD and g.outcome == "passed":
            plain_only.append(node)
        elif p.outcome in BAD and g.outcome in BAD:
            both.append(node)
    return Comparison(guard_only, plain_only, both, missing)


# -- 5. the report ----------------------------------------------------------------------------


def _indent(text: str, prefix: str = "      ") -> str:
    return (
        "\n".join(prefix + line for line in text.splitlines()) if text else prefix + "(no message)"
    )


def report(
    *,
    version: str,
    origin: str,
    plain: Run | None,
    guarded: Run | None,
    expected: list[Expected],
    confirmed: list[str] | None,
    unconfirmed: list[str],
    wall: float,
) -> tuple[str, int]:
    """The summary text and the exit status."""
    lines = [f"anthropic SDK test suite, {origin}", ""]
    for run in (plain, guarded):
        if run is not None:
            lines.append(f"{run.mode + ':':9}{run.describe()}")
    lines.append(f"wall time: {wall:.0f} s")
    status = 0
    if plain is None or guarded is None:
        run = plain or guarded
        assert run is not None
        bad = sorted(node for node, r in run.results.items() if r.outcome in BAD)
        lines += ["", f"failing in the {run.mode} run ({len(bad)}):"]
        for node in bad:
            lines += [f"  {node}", _indent(run.results[node].message)]
        return "\n".join(lines) + "\n", status
    comparison = compare(plain, guarded)
    intended = [n for n in comparison.guard_only if intended_reason(expected, n) is not None]
    unexpected = [n for n in comparison.guard_only if n not in intended]
    lines += [
        "",
        f"fail only with sdkguard: {len(comparison.guard_only)} "
        f"({len(intended)} intended, {len(unexpected)} not)",
        f"fail only without sdkguard: {len(comparison.plain_only)}",
        f"fail either way (not sdkguard's doing): {len(comparison.both)}",
    ]
    if comparison.missing:
        lines.append(f"ran in one run only: {len(comparison.missing)}")
    real = unexpected if confirmed is None else confirmed
    if real:
        status = 1
        lines += ["", f"FAIL ONLY WITH SDKGUARD, NOT INTENDED ({len(real)}):"]
        for node in real:
            lines += [f"  {node}", _indent(guarded.results[node].message)]
    if unconfirmed:
        lines += [
            "",
            f"failed only with sdkguard once, but not again on a re-run ({len(unconfirmed)};"
            " flaky or order-dependent, not counted):",
        ]
        for node in unconfirmed:
            lines += [f"  {node}", _indent(guarded.results[node].message)]
    if intended:
        lines += ["", f"intended differences ({len(intended)}, tools/sdk_suite_expected.txt):"]
        for node in intended:
            lines.append(f"  {node}\n      -> {intended_reason(expected, node)}")
    stale = [
        e.pattern
        for e in expected
        if any(e.matches(n) for n in guarded.results)
        and not any(e.matches(n) for n in comparison.guard_only)
    ]
    if stale:
        lines += ["", f"listed as intended but no longer failing with sdkguard ({len(stale)}):"]
        lines += [f"  {pattern}" for pattern in stale]
    if comparison.plain_only:
        lines += ["", f"fail only without sdkguard ({len(comparison.plain_only)}):"]
        for node in comparison.plain_only:
            lines += [f"  {node}", _indent(plain.results[node].message)]
    if comparison.both:
        lines += ["", f"fail either way ({len(comparison.both)}):"]
        for node in comparison.both:
            first = plain.results[node].message.splitlines()[:1]
            lines.append(f"  {node}  [{first[0] if first else plain.results[node].outcome}]")
    if comparison.missing:
        lines += ["", "ran in one run only:"]
        lines += [
            f"  {node} ({'plain' if node in plain.results else 'guarded'})"
            for node in comparison.missing
        ]
    verdict = "FAILED" if status else "OK"
    lines += ["", f"sdk-suite: {verdict}: {len(real)} unintended sdkguard-only failure(s)"]
    return "\n".join(lines) + "\n", status


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sdk_suite.py",
        description="Run the anthropic SDK's own tests with and without sdkguard, and compare.",
    )
    parser.add_argument(
        "--version",
        action="append",
        help="anthropic version: X.Y.Z, `newest` (the installed one, the default) or `all` "
        "(every release of tools/matrix.py); repeatable, each version in turn",
    )
    parser.add_argument("--only", choices=("plain", "guarded"), help="run one side only")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k expression")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="when one run breaks (pytest crashes or writes no results), go on with the other "
        "and report what there is instead of stopping with exit status 2",
    )
    parser.add_argument(
        "-n",
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="pytest-xdist workers (0: no xdist; default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="per-test timeout in s (default 60)"
    )
    parser.add_argument(
        "--reuse-plain",
        action="store_true",
        help="reuse the last plain run's results of this version and -k (the plain results "
        "do not depend on sdkguard)",
    )
    parser.add_argument(
        "--no-confirm", action="store_true", help="do not re-run sdkguard-only failures"
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an sdkguard policy field for the guarded run (SDKGUARD_<FIELD>); repeatable",
    )
    parser.add_argument("--rebuild", action="store_true", help="recreate the suite venv")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    return parser.parse_args(argv)


def _plain_cache_key(version: str, args: argparse.Namespace, venv: Venv) -> str:
    stamp = (venv.path / ".sdk-suite-deps").read_text()
    return _digest([version, args.keyword, args.pytest_args, stamp])


def confirm(
    venv: Venv,
    sdist: Path,
    nodes: list[str],
    args: argparse.Namespace,
) -> tuple[list[str], list[str]]:
    """Re-run `nodes` both ways: (still failing only with sdkguard, not reproduced)."""
    if not nodes:
        return [], []
    args_file = CACHE / "confirm-nodes.txt"
    args_file.write_text("\n".join(nodes) + "\n")
    workers = args.workers if len(nodes) > 20 else 0
    runs: dict[Mode, Run] = {}
    for mode in ("plain", "guarded"):
        runs[mode] = run_pytest(
            venv,
            sdist,
            mode,
            label=f"recheck-{mode}",
            selection=[f"@{args_file}"],
            workers=workers,
            timeout=args.timeout,
            keyword=None,
            policy=args.policy,
            extra_args=args.pytest_args,
        )
    still = set(compare(runs["plain"], runs["guarded"]).guard_only)
    return [n for n in nodes if n in still], [n for n in nodes if n not in still]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        versions = expand_versions(args.version or ["newest"])
    except SuiteError as err:
        log(f"error: {err}")
        return 2
    # The worst status of all: a version that could not run (2) outweighs a failure (1).
    return max(run_version(version, args) for version in versions)


def expand_versions(names: Sequence[str]) -> list[str]:
    from matrix import SDK_VERSIONS  # tools/ is this script's folder

    versions: list[str] = []
    for name in names:
        for version in SDK_VERSIONS if name == "all" else [name]:
            version = installed_version() if version == "newest" else version
            if version not in versions:
                versions.append(version)
    return versions


def run_version(version: str, args: argparse.Namespace) -> int:
    """The comparison for one SDK version: its exit status."""
    started = time.monotonic()
    try:
        sdist = fetch_sdist(version)
        venv = build_venv(version, sdist, rebuild=args.rebuild)
        origin = check_import_origin(venv, sdist)
        log(f"testing {origin}")
        expected = load_expected()
        selection = ["tests"]
        common: dict[str, Any] = {
            "selection": selection,
            "workers": args.workers,
            "timeout": args.timeout,
            "keyword": args.keyword,
            "policy": args.policy,
            "extra_args": args.pytest_args,
        }
        runs: dict[Mode, Run | None] = {"plain": None, "guarded": None}
        for mode in ("plain", "guarded"):
            if args.only and args.only != mode:
                continue
            saved = CACHE / f"plain-{version}.json"
            if mode == "plain" and args.reuse_plain and saved.exists():
                data = json.loads(saved.read_text())
                if data.get("key") == _plain_cache_key(version, args, venv):
                    results = {k: Result(**v) for k, v in data["results"].items()}
                    runs[mode] = Run("plain", results, data["seconds"], data["exit_code"])
                    log("plain: reusing the last plain run's results")
                    continue
            try:
                run = run_pytest(venv, sdist, mode, label=mode, **common)
            except SuiteError as err:
                if not args.keep_going:
                    raise
                log(f"{err}\n(--keep-going: reporting without the {mode} run)")
                continue
            runs[mode] = run
            log(f"{mode}: {run.describe()}")
            if mode == "plain":
                saved.write_text(
                    json.dumps(
                        {
                            "key": _plain_cache_key(version, args, venv),
                            "seconds": run.seconds,
                            "exit_code": run.exit_code,
                            "results": {k: dataclasses.asdict(v) for k, v in run.results.items()},
                        }
                    )
                )
        plain, guarded = runs["plain"], runs["guarded"]
        if plain is None and guarded is None:
            raise SuiteError("no run produced results")
        confirmed: list[str] | None = None
        unconfirmed: list[str] = []
        if plain is not None and guarded is not None and not args.no_confirm:
            comparison = compare(plain, guarded)
            unexpected = [n for n in comparison.guard_only if intended_reason(expected, n) is None]
            if unexpected:
                log(f"re-running the {len(unexpected)} unintended sdkguard-only failure(s)")
                confirmed, unconfirmed = confirm(venv, sdist, unexpected, args)
        text, status = report(
            version=version,
            origin=origin,
            plain=plain,
            guarded=guarded,
            expected=expected,
            confirmed=confirmed,
            unconfirmed=unconfirmed,
            wall=time.monotonic() - started,
        )
    except SuiteError as err:
        log(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 2
    report_file = CACHE / f"report-{version}.txt"
    report_file.write_text(text)
    print()
    print(text, end="")
    print(f"(report written to {report_file.relative_to(REPO)})")
    return status


if __name__ == "__main__":
    sys.exit(main())
