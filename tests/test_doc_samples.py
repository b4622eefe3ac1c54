"""Every Python code block of README.md and docs/**/*.md, run as written against the fake server.

Each ```python block is a sample, run in a fresh Python process of its own, in an empty
temporary directory, with the environment pointed at a `sdkguard.testing` server started by
the test: `ANTHROPIC_BASE_URL` is its URL, `ANTHROPIC_API_KEY` a dummy key, and the
`SDKGUARD_*` variables of `SAMPLE_POLICY` shorten sdkguard's waits and limits (every other
`SDKGUARD_*`, `ANTHROPIC_*`, `OTEL_*` and `PYTEST_*` variable is removed). A sample passes when
it exits with status 0 and prints no traceback. A block that defines a top-level `test_...`
function is a pytest module: it is run with pytest, in its own process and directory.

Markers are HTML comments (invisible once rendered) on the line or lines right before a
fence, `<!-- sample: DIRECTIVE -->`; several directives may share one comment, separated by
`;`. The directives:

- `continues`: the block is appended to the previous Python block of the same file, and the
  two (or more) run as one script: a definition, then its use.
- `with server`: the block is a fragment of a running example that names `server` (a started
  `FakeAnthropic`) and `client` (an `anthropic.Anthropic` pointed at it); a prelude defines
  them, and `anthropic`, `FakeAnthropic` and `faults`, before the block runs.
- `answers SPEC...`: the environment's server answers the sample's requests with these, in
  order (the command line server's `--fault` syntax, e.g. `answers reset_after:3`); the test
  checks that the sample used them all.
- `needs MODULE`: the sample is skipped, saying so, when MODULE cannot be imported;
  `needs DISTRIBUTION>=X.Y` when that distribution is older (`anthropic>=1.0`: the SDK raises
  `httpx2` errors from 1.0, `httpx` errors before; the version matrix runs 0.93).
- `skip (REASON)`: the block is not run; the reason is required and shown by `pytest -ra`.
  For what cannot run here (a signature, a remote collector); keep them few.
- `output`, before a ```text block: every line of that block must appear in what the previous
  Python sample of the file printed (stdout, then stderr), numbers aside (a retry's wait
  differs from run to run).

Blocks that are not Python are written with their own fence language (```sh, ```text,
```console): a block without one fails `test_every_code_block_names_its_language`, so that no
Python block can hide from this module under a bare fence.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sdkguard.testing import FakeAnthropic
from sdkguard.testing.__main__ import parse_fault

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # the site's pages too
PYTHON = frozenset({"python", "py"})

# What the environment of every sample holds: sdkguard's waits in hundredths of a second, its
# limits in seconds (not minutes), so that a fault costs a sample no visible time.
SAMPLE_POLICY = {
    "SDKGUARD_BACKOFF_INITIAL": "0.01",
    "SDKGUARD_BACKOFF_MAX": "0.02",
    "SDKGUARD_JITTER": "0",
    "SDKGUARD_CONNECT_TIMEOUT": "5",
    "SDKGUARD_RESPONSE_TIMEOUT": "5",
    "SDKGUARD_IDLE_TIMEOUT": "5",
    "SDKGUARD_DEADLINE": "30",
}
API_KEY = "sk-ant-doc-sample-not-a-key"
# Below the project's pytest timeout, so that a hanging sample fails with its own output.
SAMPLE_TIMEOUT = 45.0

PRELUDE_WITH_SERVER = """\
import atexit

import anthropic
from sdkguard.testing import FakeAnthropic, faults

server = FakeAnthropic().start()
atexit.register(server.stop)
client = anthropic.Anthropic(base_url=server.url, api_key="test")
atexit.register(client.close)  # registered last: closed first
"""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*sample:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^skip\s*\((?P<reason>.*\S.*)\)$")
_TEST_FUNCTION = re.compile(r"^(async\s+)?def\s+test_", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass
class Block:
    """One fenced code block of a markdown file."""

    path: str  # relative to the project root
    line: int  # of the opening fence, from 1
    language: str
    source: str
    directives: list[str]


@dataclass
class Sample:
    """One Python sample: a block, with the blocks that continue it."""

    path: str
    line: int
    source: str
    skip: str | None = None
    needs: list[str] = field(default_factory=list)
    with_server: bool = False
    answers: list[str] = field(default_factory=list)
    expected_output: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_pytest_module(self) -> bool:
        return _TEST_FUNCTION.search(self.source) is not None


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, indented ones included, with their markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start, indent, fence = i, opening["indent"], opening["fence"]
        directives: list[str] = []
        j = i - 1
        while j >= 0 and (marker := _MARKER.match(lines[j])):
            directives[:0] = [d.strip() for d in marker["body"].split(";") if d.strip()]
            j -= 1
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        info = opening["info"].strip()
        blocks.append(
            Block(
                path=path.relative_to(ROOT).as_posix(),
                line=start + 1,
                language=info.split()[0].lower() if info else "",
                source="\n".join(body) + "\n",
                directives=directives,
            )
        )
        i += 1
    return blocks


def marker_errors(block: Block) -> list[str]:
    """What is wrong with a block's markers (unknown directives, misplaced ones)."""
    errors = []
    python = block.language in PYTHON
    for directive in block.directives:
        word = directive.split()[0]
        if word == "skip":
            ok = python and _SKIP.match(directive) is not None
        elif word in ("needs", "answers"):
            ok = python and len(directive.split()) > 1
        elif directive in ("continues", "with server"):
            ok = python
        elif directive == "output":
            ok = not python
        else:
            ok = False
        if not ok:
            errors.append(
                f"{block.path}:{block.line}: {directive!r} (see tests/test_doc_samples.py)"
            )
    if python and "continues" in block.directives and len(block.directives) > 1:
        errors.append(f"{block.path}:{block.line}: a continuation takes no other directive")
    return errors


def collect_samples() -> list[Sample]:
    samples: list[Sample] = []
    for path in DOCS:
        last: Sample | None = None
        for block in read_blocks(path):
            if block.language not in PYTHON:
                if "output" in block.directives and last is not None:
                    last.expected_output += [ln for ln in block.source.splitlines() if ln.strip()]
                continue
            if "continues" in block.directives and last is not None:
                last.source += "\n" + block.source
                continue
            last = Sample(path=block.path, line=block.line, source=block.source)
            for directive in block.directives:
                word, _, rest = directive.partition(" ")
                if skip := _SKIP.match(directive):
                    last.skip = skip["reason"]
                elif word == "needs":
                    last.needs += rest.replace(",", " ").split()
                elif word == "answers":
                    last.answers += rest.split()
                elif directive == "with server":
                    last.with_server = True
            samples.append(last)
    return samples


SAMPLES = collect_samples()


def sample_environment(base_url: str) -> dict[str, str]:
    stripped = ("SDKGUARD_", "ANTHROPIC_", "OTEL_", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(stripped)}
    env.update(SAMPLE_POLICY)
    env.update(
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY=API_KEY,
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
    )
    return env


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def normalized(text: str) -> str:
    return _NUMBER.sub("N", text).strip()


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample_runs_as_written(sample: Sample, server: FakeAnthropic, tmp_path: Path) -> None:
    if sample.skip is not None:
        pytest.skip(f"marked: {sample.skip}")
    for need in sample.needs:
        name, _, floor = need.partition(">=")
        if floor:
            have = importlib.metadata.version(name)
            if _release(have) < _release(floor):
                pytest.skip(f"needs {need}, {name} {have} is installed here")
        elif importlib.util.find_spec(need) is None:
            pytest.skip(f"needs {need}, which is not installed here")
    if sample.answers:
        server.script(*(parse_fault(spec) for spec in sample.answers))
    env = sample_environment(server.url)
    if sample.is_pytest_module:
        (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the root: no project config
        (tmp_path / "test_sample.py").write_text(sample.source, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"]
    else:
        script = (PRELUDE_WITH_SERVER + "\n" if sample.with_server else "") + sample.source
        (tmp_path / "sample.py").write_text(script, encoding="utf-8")
        command = [sys.executable, "sample.py"]
    try:
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=SAMPLE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"{sample.id} still ran after {SAMPLE_TIMEOUT:.0f} s:\n{e.stdout!r}\n{e.stderr!r}"
        )
    report = (
        f"{sample.id}, exit status {done.returncode}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    assert done.returncode == 0, report
    assert "Traceback (most recent call last)" not in done.stderr, report
    if sample.answers:
        assert server.pending_answers == 0, f"the sample did not use every answer\n{report}"
    printed = normalized(done.stdout + "\n" + done.stderr)
    for line in sample.expected_output:
        assert normalized(line) in printed, f"documented output not printed: {line!r}\n{report}"


def test_every_code_block_names_its_language() -> None:
    bare = [f"{b.path}:{b.line}" for path in DOCS for b in read_blocks(path) if not b.language]
    assert not bare, f"code blocks without a fence language (```python, ```sh, ```text): {bare}"


def test_markers_are_known_and_in_place() -> None:
    errors = [e for path in DOCS for b in read_blocks(path) for e in marker_errors(b)]
    assert not errors, "sample markers not understood:\n" + "\n".join(errors)


def test_the_docs_have_samples_and_few_skips() -> None:
    assert len(SAMPLES) >= 10
    skipped = [s.id for s in SAMPLES if s.skip is not None]
    assert len(skipped) <= len(SAMPLES) // 5, f"too many samples skipped: {skipped}"
