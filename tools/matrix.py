#!/usr/bin/env python3
"""Run sdkguard's own test suite against every supported anthropic release and Python.

    .venv/bin/python tools/matrix.py                 # or: make matrix
    .venv/bin/python tools/matrix.py --full          # every SDK on every Python
    .venv/bin/python tools/matrix.py --sdk 0.93.0 --python 3.10 -- -x -k frameworks
    .venv/bin/python tools/matrix.py --list          # the cells and their -m, without running

Each cell (one anthropic version on one Python) gets its own environment under
`.cache/matrix/`, built with uv from the project (editable, `dev` group), `anthropic==V`, and
the frameworks of tests/test_frameworks.py that accept that SDK and that Python. An
environment is reused while its inputs (Python, requirements, pyproject.toml) are unchanged.
Then the suite runs in it with pytest-xdist, less what a cell leaves out (`Cell.markers`:
what `make test` runs once, and in the cells of older releases the tests marked
`sdk_independent`). A summary is printed, and each cell's result is kept in
`.cache/matrix/results.json` with a digest of the sources it tested. Once every cell of the
design has a result of the current sources (from this run or earlier ones), the compatibility
table of docs/compatibility.md (between its marker comments) is rewritten from them. See that
page.

Exit status: 0 when every cell passed, 1 when a cell failed, 2 when a cell could not be built.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "matrix"
# The page that shows the compatibility table, between its markers.
PAGE = REPO / "docs" / "compatibility.md"

# The releases users run: instructor pins 0.93.0 (the oldest supported), langchain-anthropic
# needs >= 0.120 (0.125.0, the last of the httpx era), pydantic-ai >= 1.15 (httpx2, the SDK's
# own tracing), 2.0.0 (the first 2.x). "newest" is the release in the project's .venv: what
# pip picked for `anthropic>=0.93,<3` when .venv was built, which `make test` and
# `make sdk-suite` test too (in CI, a fresh build: the newest release on PyPI).
SDK_VERSIONS = ("0.93.0", "0.125.0", "1.15.0", "2.0.0", "newest")
CELL_MARKERS = "not real_clients and not docs_site and not exhaustive"
"""What every cell runs of the suite (its own `-m` replaces the selection): not the Node
clients and the documentation site (they depend on neither the SDK release nor the Python),
nor the rest of a full product whose covering design the cell runs. `make test` runs them."""
OLDER_SDK_MARKERS = "not sdk_independent"
"""What a cell of an SDK release other than the newest leaves out as well: the tests whose
result does not depend on the release (the proxy, the fake server kit, pure logic), which the
newest release's cells run on every Python."""
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
DEFAULT_PYTHON = "3.11"

# The frameworks tested under faults (tests/test_frameworks.py), each installed in every cell
# whose SDK version and Python it accepts (its current releases, as a user would install it).
FRAMEWORKS = {
    "instructor": "instructor[anthropic]>=1.17",
    "langchain-anthropic": "langchain-anthropic>=1.7",
    "pydantic-ai": "pydantic-ai-slim[anthropic]>=2.60",
}
# Per framework: the distribution whose version the table shows, and the prefix of its tests.
FRAMEWORK_DISTRIBUTIONS = {
    "instructor": "instructor",
    "langchain-anthropic": "langchain-anthropic",
    "pydantic-ai": "pydantic-ai-slim",
}
FRAMEWORK_TESTS = {
    "instructor": "::test_instructor_",
    "langchain-anthropic": "::test_langchain_",
    "pydantic-ai": "::test_pydantic_ai_",
}
# The third-party instrumentations of tests/test_instrumentations.py (in the dev group).
INSTRUMENTATIONS = (
    "opentelemetry-instrumentation-anthropic",
    "openinference-instrumentation-anthropic",
    "opentelemetry-instrumentation-genai-anthropic",
)
# Bumped when the way an environment is built changes, to rebuild existing ones.
ENV_LAYOUT = 1
TABLE_START = "<!-- compatibility-table:start (tools/matrix.py writes this) -->"
TABLE_END = "<!-- compatibility-table:end -->"


def log(message: str) -> None:
    print(f"matrix: {message}", flush=True)


class BuildError(Exception):
    """An environment could not be built: exit status 2."""


# -- Pythons ------------------------------------------------------------------------------------


def _probe(executable: str) -> str | None:
    """The full version of a Python executable, or None when it does not run."""
    try:
        result = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def find_python(minor: str) -> tuple[str, str] | None:
    """(executable, full version) of a Python `minor` (e.g. "3.12"), or None.

    Looks at the interpreter running this script, `pythonX.Y` on PATH (pyenv shims that point
    at no installed version do not run, and are passed over), then pyenv's versions folder.
    """
    candidates: list[str] = []
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == minor:  # this venv's base interpreter
        candidates.append(os.path.join(sys.base_prefix, "bin", f"python{minor}"))
    on_path = shutil.which(f"python{minor}")
    if on_path:
        candidates.append(on_path)
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = glob.glob(os.path.join(pyenv_root, "versions", f"{minor}.*", "bin", f"python{minor}"))
    candidates += sorted(found, key=_version_key, reverse=True)
    candidates += [f"/usr/bin/python{minor}", f"/usr/local/bin/python{minor}"]
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        version = _probe(candidate)
        if version is not None and version.startswith(minor + "."):
            return candidate, version
    return None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


# -- the design ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    sdk: str
    """An entry of SDK_VERSIONS; "newest" is resolved into `version`."""
    version: str
    python: str
    """A minor version, "3.12"."""

    @property
    def name(self) -> str:
        return f"py{self.python}-anthropic{self.version}"

    @property
    def markers(self) -> str:
        """The `-m` expression that selects what this cell runs of the suite."""
        if self.sdk == "newest":
            return CELL_MARKERS
        return f"{CELL_MARKERS} and {OLDER_SDK_MARKERS}"


def design(full: bool) -> list[tuple[str, str]]:
    """The (sdk, python) pairs to run.

    The covering design: every SDK release on the default Python, and the oldest and the
    newest release on every Python: 11 of the 20 cells, which CI can run in its 25 minutes
    (a cell takes about two minutes on two cores); `full` gives all 20.
    """
    if full:
        return [(sdk, python) for sdk in SDK_VERSIONS for python in PYTHONS]
    oldest, newest = SDK_VERSIONS[0], SDK_VERSIONS[-1]
    pairs = {(sdk, DEFAULT_PYTHON) for sdk in SDK_VERSIONS}
    pairs |= {(sdk, python) for sdk in (oldest, newest) for python in PYTHONS}
    return sorted(pairs, key=lambda pair: (SDK_VERSIONS.index(pair[0]), pair[1]))


def newest_version() -> str:
    try:
        return metadata.version("anthropic")
    except metadata.PackageNotFoundError:
        raise BuildError("anthropic is not installed in this venv: pass --newest X.Y.Z") from None


# -- environments -------------------------------------------------------------------------------


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise BuildError("uv is not installed (it is in the dev group: make .venv/.installed)")
    return found


def run_logged(cmd: Sequence[str], logfile: Path, *, env: dict[str, str] | None = None) -> int:
    with logfile.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _uv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    # Never download a Python: the matrix runs on the Pythons the machine has.
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _accepts(env_python: Path, requirement: str, sdk: str, logfile: Path) -> bool:
    """Whether `requirement` installs next to `anthropic==sdk` here (a dry run of uv)."""
    cmd = [uv(), "pip", "install", "--dry-run", "--python", str(env_python)]
    result = subprocess.run(
        [*cmd, requirement, f"anthropic=={sdk}"], capture_output=True, text=True, env=_uv_env()
    )
    with logfile.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)} {requirement} anthropic=={sdk}\n{result.stderr}")
    if result.returncode == 0:
        return True
    if "No solution found" in result.stderr or "unsatisfiable" in result.stderr:
        return False
    raise BuildError(f"uv could not resolve {requirement}: {result.stderr.strip()[-400:]}")


@dataclasses.dataclass
class Env:
    path: Path
    frameworks: dict[str, str]
    """Framework name -> its installed version."""
    versions: dict[str, str]
    """Distribution -> installed version, for the report."""

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def build_env(cell: Cell, executable: str, *, rebuild: bool) -> Env:
    """Create or reuse the environment of `cell`."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / cell.name
    logfile = CACHE / f"{cell.name}.install.log"
    spec = {
        "layout": ENV_LAYOUT,
        "python": _probe(executable),
        "anthropic": cell.version,
        "frameworks": FRAMEWORKS,
        "pyproject": hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    stamp = path / ".matrix-env"
    python = path / "bin" / "python"
    if rebuild or not (stamp.exists() and stamp.read_text() == digest and python.exists()):
        started = time.monotonic()
        log(f"{cell.name}: building the environment (log: {logfile.relative_to(REPO)})")
        logfile.write_text("")
        shutil.rmtree(path, ignore_errors=True)
        env = _uv_env()
        if run_logged([uv(), "venv", "-q", "--python", executable, str(path)], logfile, env=env):
            raise BuildError(f"{cell.name}: uv venv failed (see {logfile})")
        base = [uv(), "pip", "install", "-q", "--python", str(python)]
        dev = ["--group", f"{REPO / 'pyproject.toml'}:dev"]  # PEP 735 group
        pins = ["-e", str(REPO), *dev, f"anthropic=={cell.version}"]
        if run_logged([*base, *pins], logfile, env=env):
            raise BuildError(f"{cell.name}: installing the project failed (see {logfile})")
        accepted = [
            requirement
            for requirement in FRAMEWORKS.values()
            if _accepts(python, requirement, cell.version, logfile)
        ]
        if accepted and run_logged([*base, *pins, *accepted], logfile, env=env):
            raise BuildError(f"{cell.name}: installing {accepted} failed (see {logfile})")
        stamp.write_text(digest)
        log(f"{cell.name}: built in {time.monotonic() - started:.0f} s")
    return Env(path, *_installed(python))


def _installed(python: Path) -> tuple[dict[str, str], dict[str, str]]:
    names = [
        "anthropic",
        "httpx",
        "httpx2",
        "pydantic",
        *FRAMEWORK_DISTRIBUTIONS.values(),
        *INSTRUMENTATIONS,
    ]
    code = (
        "import json, sys\nfrom importlib import metadata\nfound = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: found[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError: pass\n"
        "print(json.dumps(found))"
    )
    result = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{python} does not run: {result.stderr}")
    versions: dict[str, str] = json.loads(result.stdout)
    frameworks = {
        name: versions[dist] for name, dist in FRAMEWORK_DISTRIBUTIONS.items() if dist in versions
    }
    return frameworks, versions


# -- running ------------------------------------------------------------------------------------


@dataclasses.dataclass
class CellResult:
    cell: str
    sdk: str
    version: str
    python: str
    python_version: str
    counts: dict[str, int]
    seconds: float
    exit_code: int
    failed: list[str]
    sources: str
    """Digest of the sources tested (sdkguard, tests, pyproject.toml)."""
    versions: dict[str, str]
    frameworks: dict[str, str]
    """Framework -> version, for those whose tests all passed here."""
    instrumentations: dict[str, str]
    """Instrumentation -> version, for those whose tests all passed here."""
    flaky: list[str] = dataclasses.field(default_factory=list)
    """Failed in the full run, passed when run again alone."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failed


def _suite_env() -> dict[str, str]:
    """The environment of a run: nothing inherited that changes the SDK or sdkguard."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SDKGUARD_", "ANTHROPIC_", "PYTEST_", "OTEL_", "VIRTUAL_ENV"))
        and name not in ("PYTHONPATH", "PYTHONHOME")
    }


def _outcomes(junit: Path) -> dict[str, str]:
    """node id -> passed / failed / skipped, from pytest's JUnit XML."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = case.get("name", "")
        # A module that failed to import is a case with no class, named by its dotted path.
        node = f"{module}.py::{name}" if module else name.replace(".", "/") + ".py"
        tags = {child.tag for child in case}
        outcome = (
            "failed"
            if tags & {"failure", "error"}
            else "skipped"
            if "skipped" in tags
            else "passed"
        )
        if outcomes.get(node) != "failed":
            outcomes[node] = outcome
    return outcomes


def _all_passed(outcomes: dict[str, str], file: str, marker: str) -> bool:
    """Whether tests of `file` whose id names `marker` ran, and none failed (some may be
    skipped: the modes that need the SDK's own tracing, say)."""
    found = [o for node, o in outcomes.items() if node.startswith(file) and marker in node]
    return "passed" in found and "failed" not in found


# The id each test file uses for an instrumentation.
_INSTRUMENTATION_IDS = {
    "opentelemetry-instrumentation-anthropic": "traceloop",
    "openinference-instrumentation-anthropic": "openinference",
    "opentelemetry-instrumentation-genai-anthropic": "otel-genai",
}


def source_digest() -> str:
    """What a result is a result of: the tested sources, so results of runs made at different
    times (another part of the design, a resumed run) are combined only when they agree."""
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", *REPO.glob("sdkguard/**/*.py"), *REPO.glob("tests/*.py")]
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _pytest(
    env: Env, args: Sequence[str], junit: Path, logfile: Path
) -> tuple[int, dict[str, str]]:
    """One pytest run in `env` from the checkout, appended to `logfile`: (exit code, outcomes)."""
    junit.unlink(missing_ok=True)
    cmd = [str(env.python), "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    cmd += [f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.call(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=_suite_env()
        )
    return code, _outcomes(junit) if junit.exists() else {}


# Re-run at most this many failed tests; more is not a flake.
MAX_RERUN = 30


def recheck(cell: Cell, env: Env, failed: list[str]) -> tuple[list[str], list[str]]:
    """Run `failed` again, alone: (still failing, flaky).

    A test that fails under load (the suite's limits are tenths of a second) and passes when
    run again by itself is reported as flaky, as tools/sdk_suite.py does, not as a failure.
    """
    if not failed or len(failed) > MAX_RERUN or not all("::" in node for node in failed):
        return failed, []
    log(f"{cell.name}: re-running the {len(failed)} failed test(s) without xdist")
    logfile = CACHE / f"{cell.name}.pytest.log"
    again = CACHE / f"{cell.name}.rerun.junit.xml"
    _, rerun = _pytest(env, ["-p", "no:xdist", *failed], again, logfile)
    flaky = [node for node in failed if rerun.get(node) == "passed"]
    return [node for node in failed if node not in flaky], flaky


def run_cell(cell: Cell, env: Env, python_version: str, args: argparse.Namespace) -> CellResult:
    junit = CACHE / f"{cell.name}.junit.xml"
    logfile = CACHE / f"{cell.name}.pytest.log"
    logfile.write_text("")
    log(f"{cell.name}: running the suite (log: {logfile.relative_to(REPO)})")
    started = time.monotonic()
    # What depends on neither the SDK release nor the Python runs once, in `make test`; what
    # depends on the Python only, in the newest release's cells (minutes of CI saved).
    select = [] if "-m" in args.pytest_args else ["-m", cell.markers]
    code, outcomes = _pytest(
        env, ["-n", str(args.workers), *select, *args.pytest_args], junit, logfile
    )
    return _result(cell, env, python_version, code, outcomes, started)


def _result(
    cell: Cell,
    env: Env,
    python_version: str,
    code: int,
    outcomes: dict[str, str],
    started: float,
) -> CellResult:
    """The result of a cell from its run's outcomes, its failed tests run again alone."""
    logfile = CACHE / f"{cell.name}.pytest.log"
    failed = sorted(node for node, outcome in outcomes.items() if outcome == "failed")
    failed, flaky = recheck(cell, env, failed)
    if flaky:
        outcomes.update(dict.fromkeys(flaky, "passed"))
        code = 1 if failed else 0
    seconds = time.monotonic() - started
    counts = {key: 0 for key in ("passed", "failed", "skipped")}
    for outcome in outcomes.values():
        counts[outcome] += 1
    if code not in (0, 1) and not failed:
        failed = [f"pytest exited with {code} (see {logfile})"]
    frameworks = {
        name: version
        for name, version in env.frameworks.items()
        if _all_passed(outcomes, "tests/test_frameworks.py", FRAMEWORK_TESTS[name])
    }
    instrumentations = {
        name: env.versions[name]
        for name in INSTRUMENTATIONS
        if name in env.versions
        and _all_passed(outcomes, "tests/test_instrumentations.py", _INSTRUMENTATION_IDS[name])
    }
    result = CellResult(
        cell=cell.name,
        sdk=cell.sdk,
        version=cell.version,
        python=cell.python,
        python_version=python_version,
        counts=counts,
        seconds=round(seconds, 1),
        exit_code=code,
        failed=failed,
        flaky=flaky,
        sources=source_digest(),
        versions=env.versions,
        frameworks=frameworks,
        instrumentations=instrumentations,
    )
    verdict = "ok" if result.ok else f"FAILED ({len(failed)})"
    log(
        f"{cell.name}: {verdict}: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped in {seconds:.0f} s"
    )
    return result


def _collect(
    cells: list[Cell], interpreters: dict[str, tuple[str, str] | None]
) -> list[CellResult]:
    """Results from the JUnit files of `cells` that the current sources produced."""
    newest_source = max(
        path.stat().st_mtime
        for path in [
            REPO / "pyproject.toml",
            *REPO.glob("sdkguard/**/*.py"),
            *REPO.glob("tests/*.py"),
        ]
    )
    collected = []
    for cell in cells:
        junit = CACHE / f"{cell.name}.junit.xml"
        if not junit.exists() or junit.stat().st_mtime <= newest_source:
            continue
        executable, python_version = interpreters[cell.python]  # type: ignore[misc]
        env = build_env(cell, executable, rebuild=False)
        outcomes = _outcomes(junit)
        code = 1 if "failed" in outcomes.values() else 0
        collected.append(_result(cell, env, python_version, code, outcomes, time.monotonic()))
    return collected


def _recheck_recorded(
    cells: list[Cell], interpreters: dict[str, tuple[str, str] | None]
) -> list[CellResult]:
    """`recheck` the recorded failures of `cells`: their updated results."""
    path = CACHE / "results.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    sources = source_digest()
    updated = []
    for cell in cells:
        item = recorded.get(cell.name)
        if item is None or item.get("sources") != sources or not item.get("failed"):
            continue
        result = CellResult(**item)
        executable = interpreters[cell.python][0]  # type: ignore[index]
        env = build_env(cell, executable, rebuild=False)
        result.failed, flaky = recheck(cell, env, result.failed)
        result.flaky += flaky
        result.counts["failed"] -= len(flaky)
        result.counts["passed"] += len(flaky)
        if not result.failed:
            result.exit_code = 0
        updated.append(result)
    return updated


def _merge_results(results: list[CellResult]) -> dict[str, CellResult]:
    """Add `results` to those of `.cache/matrix/results.json` (one per cell); all of them."""
    path = CACHE / "results.json"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "results.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # runs of other parts of the design may write too
        return _merge_locked(path, results)


def _merge_locked(path: Path, results: list[CellResult]) -> dict[str, CellResult]:
    recorded: dict[str, CellResult] = {}
    if path.exists():
        try:
            for item in json.loads(path.read_text()).values():
                recorded[item["cell"]] = CellResult(**item)
        except (ValueError, TypeError, KeyError, AttributeError):
            recorded = {}  # an older layout: start again
    for result in results:
        recorded[result.cell] = result
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({name: dataclasses.asdict(r) for name, r in recorded.items()}, indent=1)
    )
    return recorded


# -- the compatibility table --------------------------------------------------------------------


def table(results: list[CellResult], date: str) -> str:
    """The compatibility table (Markdown) from a result of every cell of the design."""
    by_version: dict[str, list[CellResult]] = {}
    for result in results:
        by_version.setdefault(result.version, []).append(result)
    pythons = sorted({r.python for r in results}, key=_version_key)
    header = ["anthropic", "HTTP library", *(f"Python {p}" for p in pythons)]
    header += ["frameworks under faults", "instrumentations side by side"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for version in sorted(by_version, key=_version_key):
        cells = {r.python: r for r in by_version[version]}
        http = "httpx" if version.startswith("0.") else "httpx2"  # the SDK's, from 1.0 on
        row = [version, _union({http: r.versions.get(http, "?")} for r in by_version[version])]
        for python in pythons:
            found = cells.get(python)
            if found is None:
                row.append("")
            else:
                row.append("✓" if found.ok else f"✗ ({len(found.failed)} failed)")
        row.append(_union(r.frameworks for r in by_version[version]))
        row.append(_union(r.instrumentations for r in by_version[version]))
        lines.append("| " + " | ".join(row) + " |")
    exact = ", ".join(sorted({r.python_version for r in results}, key=_version_key))
    lines += [
        "",
        f"Generated by `make matrix` on {date} from {len(results)} environments "
        f"(Python {exact}); ✓: the cell's selection of sdkguard's suite passed "
        f"([what a cell leaves out](#what-a-cell-leaves-out)), {_passed_range(results)} tests "
        "each (the rest skipped where a package or an SDK feature is absent"
        f"{_flaky_note(results)}). A blank cell is "
        "not in the covering design "
        "([the design](#the-design-11-of-20-cells)); a framework or instrumentation "
        "is listed with the releases where its tests ran and passed.",
    ]
    return "\n".join(lines)


def _flaky_note(results: list[CellResult]) -> str:
    flaky = sum(len(r.flaky) for r in results)
    return f"; {flaky} failures under load passed when run again alone" if flaky else ""


def _passed_range(results: list[CellResult]) -> str:
    counts = sorted(r.counts["passed"] for r in results)
    return f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]} to {counts[-1]}"


def _union(mappings: Any) -> str:
    merged: dict[str, set[str]] = {}
    for mapping in mappings:
        for name, version in mapping.items():
            merged.setdefault(name, set()).add(version)
    if not merged:
        return "none accepts this SDK"
    return ", ".join(
        f"{name} {'/'.join(sorted(versions, key=_version_key))}"
        for name, versions in sorted(merged.items())
    )


def replace_table(text: str, new_table: str) -> str:
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise BuildError(f"{PAGE} has no {TABLE_START} ... {TABLE_END} markers")
    return text[: start + len(TABLE_START)] + "\n" + new_table + "\n" + text[end:]


def current_table(text: str) -> str:
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    return text[start + len(TABLE_START) : end].strip() if 0 <= start < end else ""


def _rows(text: str) -> list[str]:
    """The table's rows: what a check compares (the note under it has a date and counts)."""
    return [line for line in text.splitlines() if line.startswith("|")]


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="matrix.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every SDK on every Python")
    parser.add_argument(
        "--sdk", action="append", metavar="VERSION", help=f"only these ({', '.join(SDK_VERSIONS)})"
    )
    parser.add_argument(
        "--python", action="append", metavar="X.Y", help=f"only these ({', '.join(PYTHONS)})"
    )
    parser.add_argument("--newest", metavar="X.Y.Z", help="the release that 'newest' means")
    parser.add_argument(
        "-n", "--workers", type=int, default=3, help="pytest-xdist workers per cell (default 3)"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the cells and their selection, and stop"
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run nothing new: re-run alone the failed tests of the chosen cells' recorded "
        "results (of the current sources), to tell flakes from failures",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing new: record the chosen cells' last JUnit files that are newer than "
        "every tested source (runs that were stopped before they recorded their results)",
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="run nothing: write docs/compatibility.md's table from the results recorded earlier",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the environments")
    parser.add_argument(
        "--check-readme",
        action="store_true",
        help="when the design is complete, say (without failing) whether docs/compatibility.md's "
        "table is the one generated from the results, instead of rewriting it",
    )
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        newest = args.newest or newest_version()
        pairs = design(args.full)
        chosen = [
            (sdk, python)
            for sdk, python in pairs
            if (not args.sdk or sdk in args.sdk or (sdk == "newest" and newest in args.sdk))
            and (not args.python or python in args.python)
        ]
        interpreters: dict[str, tuple[str, str] | None] = {
            python: find_python(python) for python in sorted({p for _, p in chosen})
        }
        for python, found in interpreters.items():
            if found is None:
                log(f"Python {python}: not found on this machine; its cells are skipped")
            else:
                log(f"Python {python}: {found[0]} ({found[1]})")
        cells = [
            Cell(sdk, newest if sdk == "newest" else sdk, python)
            for sdk, python in chosen
            if interpreters[python] is not None
        ]
        log(f"newest = anthropic {newest}; {len(cells)} cells of {len(pairs)} in the design")
        if args.table:
            cells = []
        if args.list:
            for cell in cells:
                print(f'{cell.name:32} -m "{cell.markers}"')
            return 0
        results: list[CellResult] = []
        if args.recheck:
            results = _recheck_recorded(cells, interpreters)
            cells = []
        if args.collect:
            results = _collect(cells, interpreters)
            cells = []
        for cell in cells:
            executable, python_version = interpreters[cell.python]  # type: ignore[misc]
            env = build_env(cell, executable, rebuild=args.rebuild)
            results.append(run_cell(cell, env, python_version, args))
            if not args.pytest_args:  # kept at once: a stopped run keeps its finished cells
                _merge_results(results[-1:])
    except BuildError as err:
        log(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 2
    # Only whole suites are results of a cell; a selection of tests is not.
    recorded = _merge_results([] if args.pytest_args else results)
    failed = [r for r in results if not r.ok]
    print()
    for result in results:
        mark = "ok    " if result.ok else "FAILED"
        counts = result.counts
        print(
            f"{mark} {result.cell:32} {counts['passed']:4} passed {counts['failed']:3} failed "
            f"{counts['skipped']:3} skipped {result.seconds:6.0f} s"
        )
        for node in result.failed[:20]:
            print(f"         {node}")
        for node in result.flaky:
            print(f"         flaky (passed when run again alone): {node}")
    print(
        f"matrix: {len(results) - len(failed)} of {len(results)} cells passed "
        f"in {time.monotonic() - started:.0f} s"
    )
    # The table needs a result of every cell of the design, of these sources, whole suites.
    sources = source_digest()
    design_results = [
        recorded[cell.name]
        for cell in (Cell(s, newest if s == "newest" else s, p) for s, p in pairs)
        if cell.name in recorded and recorded[cell.name].sources == sources
    ]
    if len(design_results) == len(pairs) and (results or args.table):
        date = datetime.date.today().isoformat()
        new_table = table(design_results, date)
        (CACHE / "compatibility.md").write_text(new_table + "\n")
        text = PAGE.read_text()
        if args.check_readme:
            same = _rows(current_table(text)) == _rows(new_table)
            log(
                "docs/compatibility.md's table is what this run generated"
                if same
                else "docs/compatibility.md's table differs from this run's "
                "(.cache/matrix/compatibility.md): run `make matrix` and commit the page"
            )
        elif all(r.ok for r in design_results):
            PAGE.write_text(replace_table(text, new_table))
            log("docs/compatibility.md: table rewritten from the results of the design")
    elif results or args.table:
        log(
            f"{len(design_results)} of {len(pairs)} cells of the design have results of these "
            "sources: docs/compatibility.md's table is left as it is"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
