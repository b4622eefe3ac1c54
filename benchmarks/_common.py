"""What every benchmark script shares: the server process, clients, the machine, the order of
the rounds, the statistics, client processes, and the command line.

The method (benchmarks/README.md): the fake servers run in a process of their own, on
127.0.0.1 only; the variants of a comparison run interleaved, round after round, in an order
that rotates and reverses; `gc.collect()` before each timed run; figures are ratios (or
differences) of per-variant minimums and medians, and the median of per-round ratios, which
pairing within a round makes the least sensitive to a shared machine's load drift.
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import gc
import importlib.metadata
import itertools
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, TypeVar

import anthropic
from anthropic import _base_client

import sdkguard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T = TypeVar("T")

MESSAGE: dict[str, Any] = {
    "model": "claude-benchmark",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Say something."}],
}
API_KEY = "sk-ant-benchmark-not-a-key"


def out(line: str, _stdout: IO[str] = sys.stdout) -> None:
    print(line, file=_stdout, flush=True)


Out = Callable[[str], None]


# --- child processes ------------------------------------------------------------------------


class LineProcess:
    """A child process spoken to in lines: commands on its stdin, answers on its stdout.

    End of file on its stdin is its signal to exit, so it never outlives a benchmark that
    died."""

    def __init__(self, args: Sequence[str]) -> None:
        self._proc = subprocess.Popen(
            list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a child process ended (exit status {self._proc.poll()})")
        return line

    def request(self, line: str) -> str:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        return self.readline()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def check_loopback(url: str) -> str:
    if not url.startswith("http://127.0.0.1:"):
        raise RuntimeError(f"the fake server is not on loopback: {url}")
    return url


class ServerProcess(LineProcess):
    """`_server_process.py` as a child: `servers` maps a name to its default answer spec."""

    def __init__(self, servers: dict[str, str]) -> None:
        args = [sys.executable, str(HERE / "_server_process.py")]
        for name, spec in servers.items():
            args += ["--server", f"{name}={spec}"]
        super().__init__(args)
        self.urls: dict[str, str] = {
            name: check_loopback(url) for name, url in json.loads(self.readline()).items()
        }

    def _command(self, line: str) -> None:
        answer = self.request(line).strip()
        if answer != "ok":
            raise RuntimeError(f"the server process answered {answer!r} to {line!r}")

    def clear(self) -> None:
        """Make the servers forget what they recorded (outside timed runs)."""
        self._command("clear")

    def script(self, name: str, *answers: str) -> None:
        """The next requests to server `name` get `answers` (fault specs), then its default."""
        self._command(" ".join(("script", name, *answers)))


@contextmanager
def server_process(servers: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(servers)
    try:
        yield server
    finally:
        server.close()


def run_worker(script: Path, job: dict[str, Any], out: Out) -> dict[str, Any]:
    """Run `script --worker JOB` in a fresh interpreter: its `P` lines are progress, echoed;
    its `R` line is the result."""
    proc = subprocess.Popen(
        [sys.executable, str(script), "--worker", json.dumps(job)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    found: dict[str, Any] | None = None
    with proc.stdout:
        for line in proc.stdout:
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "P":
                out(text)
            elif kind == "R":
                found = json.loads(text)
    if proc.wait() != 0 or found is None:
        raise RuntimeError(f"a client process failed (exit status {proc.returncode})")
    return found


def report_result(result: object) -> None:
    """The `R` line of a worker (see `run_worker`)."""
    print("R " + json.dumps(result), flush=True)


def report_progress(line: str) -> None:
    print("P " + line, flush=True)


# --- clients and the SDK's state ------------------------------------------------------------


def make_client(url: str, **options: Any) -> anthropic.Anthropic:
    # trust_env=False: no proxy from the environment, so requests only ever reach 127.0.0.1.
    # A finite timeout, so a broken server cannot hang the run.
    timeout = options.pop("timeout", 60.0)
    return anthropic.Anthropic(
        base_url=check_loopback(url),
        api_key=API_KEY,
        timeout=timeout,
        http_client=anthropic.DefaultHttpxClient(trust_env=False, timeout=timeout),
        **options,
    )


def make_async_client(url: str, **options: Any) -> anthropic.AsyncAnthropic:
    timeout = options.pop("timeout", 60.0)
    http_options = options.pop("http_options", {})
    return anthropic.AsyncAnthropic(
        base_url=check_loopback(url),
        api_key=API_KEY,
        timeout=timeout,
        http_client=anthropic.DefaultAsyncHttpxClient(
            trust_env=False, timeout=timeout, **http_options
        ),
        **options,
    )


def sdk_is_plain() -> bool:
    """No sdkguard wrapper on any method of the SDK's clients."""
    return not any(
        hasattr(vars(cls).get(name), "__wrapped__")
        for cls in (_base_client.SyncAPIClient, _base_client.AsyncAPIClient)
        for name in ("request", "_request")
    )


def set_guard(on: bool, policy: sdkguard.Policy) -> None:
    """Install sdkguard with `policy`, or uninstall it; check that the SDK followed."""
    if on:
        sdkguard.install(policy)
    elif sdkguard.is_installed():
        sdkguard.uninstall()
    if sdk_is_plain() == on:
        raise RuntimeError(f"the SDK is not {'guarded' if on else 'plain'} as it should be")


def policy_changes(policy: sdkguard.Policy) -> dict[str, str]:
    """The fields of `policy` that differ from the defaults (from SDKGUARD_* variables)."""
    default = sdkguard.Policy()
    return {
        f.name: repr(getattr(policy, f.name))
        for f in fields(policy)
        if getattr(policy, f.name) != getattr(default, f.name)
    }


# --- the machine ----------------------------------------------------------------------------


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    http_name = "httpx2" if "httpx2" in vars(_base_client) else "httpx"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "anthropic": anthropic.__version__,
        "http": f"{http_name} {version(http_name)}",
        "pydantic": version("pydantic"),
        "wrapt": version("wrapt"),
        "sdkguard": sdkguard.__version__,
        "load_before": loadavg(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['processor']}, {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['platform']}; "
        f"{m['python']}; anthropic {m['anthropic']} ({m['http']}, pydantic {m['pydantic']}); "
        f"sdkguard {m['sdkguard']}; load average {m['load_before']} -> {m.get('load_after')}"
    )


# --- rounds ---------------------------------------------------------------------------------


def rotated(units: Sequence[T], index: int) -> list[T]:
    """Round `index`'s order: rotate by one per round, reverse every other cycle.

    Every unit runs in every position, before and after every other: for three units the
    first six rounds are the six permutations, for two they alternate."""
    n = len(units)
    order = [*units[index % n :], *units[: index % n]]
    return order[::-1] if (index // n) % 2 else order


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """`range(total)` in `parts` consecutive slices, as (start, stop)."""
    parts = max(1, min(parts, total))
    bounds = [total * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


# --- statistics -----------------------------------------------------------------------------


@dataclass
class Stats:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(min(values), statistics.median(values), max(values))


@dataclass
class Comparison:
    """Variant `a` against the baseline `b`, as a ratio or a difference."""

    by_min: float
    """min(a) against min(b)."""
    by_median: float
    """median(a) against median(b)."""
    paired_median: float
    """Median over rounds of each round's `a` against the same round's `b`."""

    def text(self, fmt: str) -> str:
        return (
            f"{fmt.format(self.paired_median)} per-round median (by min "
            f"{fmt.format(self.by_min)}, by median {fmt.format(self.by_median)})"
        )


def ratio(a: Sequence[float], b: Sequence[float]) -> Comparison:
    return Comparison(
        min(a) / min(b),
        statistics.median(a) / statistics.median(b),
        statistics.median([x / y for x, y in zip(a, b, strict=True)]),
    )


def difference(a: Sequence[float], b: Sequence[float], scale: float = 1.0) -> Comparison:
    a, b = [x * scale for x in a], [y * scale for y in b]
    return Comparison(
        min(a) - min(b),
        statistics.median(a) - statistics.median(b),
        statistics.median([x - y for x, y in zip(a, b, strict=True)]),
    )


@dataclass
class Verdict:
    goal: str
    limit: float
    judged_on: str
    value: float
    """The per-round median: each round's variant against the same round's baseline, which
    cancels the drift of a shared machine's load between rounds."""
    by_min: float
    by_median: float
    status: str
    """`met` or `not met`, by `value`."""
    agree: bool
    """Whether the ratio (or difference) of minimums and of medians fall on the same side."""

    @classmethod
    def judge(cls, goal: str, limit: float, judged_on: str, comparison: Comparison) -> Verdict:
        met = comparison.paired_median <= limit
        agree = all((x <= limit) == met for x in (comparison.by_min, comparison.by_median))
        return cls(
            goal,
            limit,
            judged_on,
            comparison.paired_median,
            comparison.by_min,
            comparison.by_median,
            "met" if met else "not met",
            agree,
        )

    @property
    def noise(self) -> str:
        return "" if self.agree else ", within the noise (minimums and medians disagree)"

    def line(self, fmt: str) -> str:
        agreement = "agree" if self.agree else "disagree: within the noise"
        return (
            f"{self.goal} <= {fmt.format(self.limit)} ({self.judged_on}): {self.status.upper()}, "
            f"{fmt.format(self.value)} per-round median (by min {fmt.format(self.by_min)}, "
            f"by median {fmt.format(self.by_median)}: {agreement})"
        )


# --- profiles: where a difference comes from -----------------------------------------------


def cprofile(work: Callable[[], object]) -> pstats.Stats:
    """`work` under cProfile, after one untimed run (imports, caches, connections).

    The garbage collector is off while profiling: a collection would be charged to whatever
    function happened to allocate when it ran, which says nothing about that function."""
    work()
    gc.collect()
    gc.disable()
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        work()
        profiler.disable()
    finally:
        gc.enable()
    return pstats.Stats(profiler)


def _func_name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    short = filename.split("site-packages/")[-1].removeprefix(f"{ROOT}/")
    return f"{short}:{line}({name})" if line else name


def profile_difference(
    a: pstats.Stats, b: pstats.Stats, units: int, unit: str, top: int = 30
) -> list[str]:
    """The functions `a` calls more (or less) often than `b`, per `unit`, heaviest first.

    Call counts are exact; the time is the count difference times the function's own time
    per call (in the run that calls it more), so scheduling noise is not subtracted into it.
    """
    counts = [
        {_func_name(func): (row[1], row[2]) for func, row in stats.stats.items()}  # type: ignore[attr-defined]
        for stats in (a, b)
    ]
    rows = []
    for func in set(counts[0]) | set(counts[1]):
        (a_calls, a_time), (b_calls, b_time) = (c.get(func, (0, 0.0)) for c in counts)
        if a_calls == b_calls:
            continue
        calls, own = (a_calls, a_time) if a_calls > b_calls else (b_calls, b_time)
        extra = (a_calls - b_calls) * own / calls
        rows.append(((a_calls - b_calls) / units, extra / units * 1e6, func))
    rows.sort(key=lambda row: -row[1])
    total = sum(micros for _, micros, _ in rows)
    lines = [
        f"calls per {unit} that differ, x own time per call: {total:+.1f} us per {unit} in all "
        "(cProfile inflates small functions; garbage collector off)"
    ]
    lines += [f"{n:+9.2f} calls {micros:+9.2f} us  {func}" for n, micros, func in rows[:top]]
    return lines


# --- results for RESULTS.md -----------------------------------------------------------------


@dataclass
class Headline:
    """One row of RESULTS.md's summary table (the issue's table, with the results)."""

    figure: str
    how: str
    goal: str
    result: str
    status: str
    """`met`, `not met`, or `-` (context, no goal)."""


def status_cell(status: str) -> str:
    return {"met": "met", "not met": "**not met**"}.get(status, status)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def code_block(text: str) -> str:
    return f"```\n{text.rstrip()}\n```"


@dataclass
class Results:
    """What every benchmark script measures, reports and writes with --json (subclassed with
    each script's samples and figures, every field with a default)."""

    mode: str
    """`full` or `quick`."""
    sizes: Any
    machine: dict[str, Any]
    seconds: float = 0.0
    headlines: list[Headline] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    """When a goal is missed: the summarized profile that shows why."""
    markdown: str = ""
    """This script's section of RESULTS.md."""


R = TypeVar("R", bound=Results)


def begin(cls: type[R], title: str, sizes: Any, mode: str, out: Out) -> R:
    """A script's results, the machine recorded, and the first lines of its report."""
    results = cls(mode=mode, sizes=sizes, machine=machine_info())
    out(f"{title} ({mode})\nmachine: {machine_line(results.machine)}")
    return results


def finish(results: R, started: float, markdown: Callable[[R], str]) -> R:
    """The load after the run, how long it took, and the RESULTS.md section."""
    results.machine["load_after"] = loadavg()
    results.seconds = time.perf_counter() - started
    results.markdown = markdown(results)
    return results


def profile_section(intro: str, lines: Sequence[str]) -> list[str]:
    """A RESULTS.md paragraph with a summarized profile, or none when there is no profile."""
    if not lines:
        return []
    return [f"**Profile** (the goal is not met): {intro}\n\n" + code_block("\n".join(lines))]


# --- the command line -----------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, timeout: tuple[float, float]) -> None:
    """--quick, --json, --check, --timeout (full, quick default) and the hidden --worker."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        help="write the results (samples, figures, verdicts, a RESULTS.md section) as JSON",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 unless every goal is met")
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"abort with every thread's stack after this many seconds "
        f"(full: {timeout[0]:.0f}, quick: {timeout[1]:.0f})",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a client process


def run_main(
    args: argparse.Namespace,
    timeout: tuple[float, float],
    measure: Callable[[], Any],
    report: Callable[[Any, Out], None],
) -> int:
    """Measure under a watchdog, print the report, write --json; the exit status."""
    # The script ends by itself: a watchdog dumps every thread's stack and exits if stuck (the
    # child processes then see the end of their stdin and exit too).
    faulthandler.dump_traceback_later(args.timeout or timeout[args.quick], exit=True)
    try:
        results = measure()
        report(results, out)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
            out(f"results written to {args.json}")
    finally:
        faulthandler.cancel_dump_traceback_later()
    missed = [h.figure for h in results.headlines if h.status == "not met"]
    if args.check and missed:
        out(f"--check: goal not met: {', '.join(missed)}")
        return 1
    return 0


def simple_main(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    timeout: tuple[float, float],
    sizes: tuple[Any, Any],
    measure: Callable[[Any, str, Out], Any],
    report: Callable[[Any, Out], None],
    worker: Callable[[dict[str, Any]], object] | None = None,
) -> int:
    """The command line of a script with only the common options: `sizes` is (full, quick);
    `worker`, if any, runs a client process's job and returns its result."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common_args(parser, timeout)
    args = parser.parse_args(argv)
    if args.worker and worker is not None:
        report_result(worker(json.loads(args.worker)))
        return 0
    mode = "quick" if args.quick else "full"
    return run_main(args, timeout, lambda: measure(sizes[args.quick], mode, out), report)
