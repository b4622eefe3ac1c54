"""What sdkguard costs: guarded vs plain anthropic SDK, over loopback, in one run.

    .venv/bin/python benchmarks/overhead.py            # full size (make bench), ~1.5 minutes
    .venv/bin/python benchmarks/overhead.py --quick    # smoke run with tiny sizes, seconds
    .venv/bin/python benchmarks/overhead.py --json out.json --check

Three variants of the SAME client object are compared:

- `plain`: sdkguard NOT installed (`uninstall()` restores the SDK's own `request`): the
  baseline every ratio is taken against;
- `guarded`: `install()` with the default policy (plus any `SDKGUARD_*` variables);
- `disabled`: installed, inside `with sdkguard.policy(enabled=False)` (should cost nothing).

Figures: (1) a long stream (`messages.create(stream=True)`, 20,000 deltas) read to the end,
guarded / plain time, goal <= 1.02; (2) a non-streaming `messages.create()`, microseconds
added per call, goal <= 30 us; (3) tracemalloc bytes per open stream whose first content event was
read, goal <= 2 KB more than plain.

Method: the fake servers run in a separate process (`_server_process.py`), so the server
threads never take the client's GIL; every round runs the three variants in a rotating order
(all six orders in turn), with `gc.collect()` before each timed run (the collector stays on
inside it: the garbage a variant makes is part of its cost); install/uninstall toggles happen
outside the timed runs. The timed rounds are shared by a few fresh client processes (a
process's memory layout alone moves its timings by a percent or so). Each timed run records
wall-clock time and the client process's CPU time. Reported: the ratio (or difference) of
per-variant minimums and of medians, and the median of the per-round ratios. Goals are judged
on the per-round median of CPU time, which a busy machine distorts least (the guard adds no
waiting, only work; pairing within a round cancels load drift); the minimums, the medians
and the wall-clock figures are printed too.
`--profile stream|call|memory` shows where the guard's cost comes from. See README.md.

Exit status 0 unless the run itself failed, or `--check` is given and a goal is not met.
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import gc
import importlib.metadata
import io
import itertools
import json
import linecache
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import anthropic
from anthropic import _base_client

import sdkguard
from sdkguard._sdk import request_method

HERE = Path(__file__).resolve().parent
PLAIN, GUARDED, DISABLED = "plain", "guarded", "disabled"
VARIANTS = (PLAIN, GUARDED, DISABLED)
ORDERS = list(itertools.permutations(VARIANTS))  # round r runs ORDERS[r % 6]

MESSAGE: dict[str, Any] = {
    "model": "claude-benchmark",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Say something long."}],
}
# Events a stream of one text block yields to the caller, besides its deltas (pings are not
# yielded): message_start, content_block_start, content_block_stop, message_delta, message_stop.
FRAMING_EVENTS = 5
# The memory server sends each body this long after its headers (see open_streams).
MEMORY_BODY_DELAY = 0.02

if sdkguard.is_installed():
    sdkguard.uninstall()
# The SDK method sdkguard patches (`_request` from 1.14, `request` before), captured before
# anything is installed: `plain` runs must see it.
_PATCHED_METHOD = request_method(_base_client.SyncAPIClient)
_SDK_REQUEST = vars(_base_client.SyncAPIClient)[_PATCHED_METHOD]
if hasattr(_SDK_REQUEST, "__wrapped__"):
    raise RuntimeError(
        f"SyncAPIClient.{_PATCHED_METHOD} is already wrapped: cannot measure the plain SDK"
    )

# Goals (guarded vs plain) and what counts as negligible for `disabled` vs plain.
GOAL_STREAM_RATIO = 1.02
GOAL_CALL_ADDED_US = 30.0
GOAL_MEMORY_ADDED_BYTES = 2048.0
NEGLIGIBLE_STREAM_RATIO = 1.01
NEGLIGIBLE_CALL_ADDED_US = 5.0
NEGLIGIBLE_MEMORY_ADDED_BYTES = 256.0


@dataclass(frozen=True)
class Sizes:
    deltas: int
    """Deltas of the long stream."""
    rounds: int
    """Rounds of the stream measurement (each runs every variant once)."""
    call_rounds: int
    """Rounds of the non-streaming measurement: many short blocks, so noise hits all variants."""
    calls: int
    """Non-streaming calls per timed block."""
    streams: int
    """Streams held open per memory sample."""
    memory_rounds: int
    processes: int
    """Fresh client processes that share the rounds of each timed measurement."""


FULL = Sizes(
    deltas=20_000, rounds=12, call_rounds=60, calls=50, streams=200, memory_rounds=6, processes=3
)
QUICK = Sizes(
    deltas=300, rounds=3, call_rounds=3, calls=10, streams=10, memory_rounds=2, processes=1
)


# --- the server process ---------------------------------------------------------------------


class ServerProcess:
    """`_server_process.py` as a child: two fake servers on 127.0.0.1, URLs read from stdout."""

    def __init__(self, deltas: int) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_server_process.py"),
                "--deltas",
                str(deltas),
                "--memory-body-delay",
                str(MEMORY_BODY_DELAY),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        urls = json.loads(self._readline())
        self.stream_url: str = urls["stream"]
        self.small_url: str = urls["small"]
        self.memory_url: str = urls["memory"]
        for url in (self.stream_url, self.small_url, self.memory_url):
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"the fake server is not on loopback: {url}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process ended (exit status {self._proc.poll()})")
        return line

    def clear(self) -> None:
        """Make the servers forget what they recorded (outside timed runs)."""
        assert self._proc.stdin is not None
        self._proc.stdin.write("clear\n")
        self._proc.stdin.flush()
        if self._readline().strip() != "ok":
            raise RuntimeError("the server process did not acknowledge `clear`")

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()  # end of file: the child stops its servers and exits
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def make_client(url: str) -> anthropic.Anthropic:
    # trust_env=False: no proxy from the environment, so requests only ever reach 127.0.0.1.
    # A finite timeout, so a broken server cannot hang the run.
    return anthropic.Anthropic(
        base_url=url,
        api_key="sk-ant-benchmark-not-a-key",
        timeout=60.0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False, timeout=60.0),
    )


# --- the variants ---------------------------------------------------------------------------


def sdk_request_is_plain() -> bool:
    return vars(_base_client.SyncAPIClient)[_PATCHED_METHOD] is _SDK_REQUEST


@contextmanager
def variant(name: str, policy: sdkguard.Policy) -> Iterator[None]:
    """Put the SDK in the state of variant `name` for the block."""
    if name == PLAIN:
        sdkguard.uninstall()
        if not sdk_request_is_plain():
            raise RuntimeError("uninstall() did not restore the SDK's own request")
        yield
        return
    sdkguard.install(policy)
    if sdk_request_is_plain():
        raise RuntimeError(f"install() did not patch SyncAPIClient.{_PATCHED_METHOD}")
    if name == DISABLED:
        with sdkguard.policy(enabled=False):
            yield
    else:
        yield


# --- one sample of each measurement ---------------------------------------------------------


@dataclass
class Timing:
    wall: float
    cpu: float


def run_stream(client: anthropic.Anthropic, expected: int) -> Timing:
    """One long stream, created and read to the end."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    with client.messages.create(stream=True, **MESSAGE) as stream:
        for _ in stream:
            count += 1
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
    if count != expected:
        raise RuntimeError(f"the stream yielded {count} events, expected {expected}")
    return timing


def run_calls(client: anthropic.Anthropic, calls: int) -> Timing:
    """A block of `calls` non-streaming calls; per call."""
    client.messages.create(**MESSAGE)  # untimed: the first call after a toggle
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        client.messages.create(**MESSAGE)
    return Timing((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls)


def open_streams(client: anthropic.Anthropic, n: int) -> float:
    """Bytes tracemalloc sees per stream while `n` streams are open, first content event read.

    The memory server sends the body of each reply a moment after its headers, and the
    streams are all opened before any is read: by then every body has arrived, so the first
    read of every stream gets all of it, whatever the timing (otherwise how much of a body sits
    in the client's buffers, counted, or still in the kernel's, not counted, varies by run).
    """
    streams: list[anthropic.Stream[Any]] = []
    streams_append = streams.append
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    try:
        for _ in range(n):
            streams_append(client.messages.create(stream=True, **MESSAGE))
        time.sleep(MEMORY_BODY_DELAY * 5)
        for stream in streams:
            # Up to the first content event: the guard holds message_start and
            # content_block_start back until then (its commit point), so an earlier sample
            # would count, on its side only, events the plain SDK parses a moment later.
            while next(stream).type != "content_block_delta":
                pass
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        for stream in streams:
            stream.close()
    return (after - before) / n


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
    """The per-round median: each round's variant against the same round's plain run, which
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

    def line(self, fmt: str) -> str:
        agreement = "agree" if self.agree else "disagree: within the noise"
        return (
            f"{self.goal} <= {fmt.format(self.limit)} ({self.judged_on}): {self.status.upper()}, "
            f"{fmt.format(self.value)} per-round median (by min {fmt.format(self.by_min)}, "
            f"by median {fmt.format(self.by_median)}: {agreement})"
        )


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    mode: str
    sizes: Sizes
    machine: dict[str, Any]
    policy: dict[str, str]
    """Policy fields that differ from the defaults (from SDKGUARD_* variables)."""
    baseline: str
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """measure -> variant -> one value per round (seconds, or bytes per stream)."""
    figures: dict[str, Any] = field(default_factory=dict)
    goals: list[Verdict] = field(default_factory=list)
    disabled_negligible: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0


MEASURES = ("stream_wall", "stream_cpu", "call_wall", "call_cpu", "memory")


def machine_info() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

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
        "load_before": _loadavg(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def policy_changes(policy: sdkguard.Policy) -> dict[str, str]:
    """The fields of `policy` that differ from the defaults."""
    default = sdkguard.Policy()
    return {
        f.name: repr(getattr(policy, f.name))
        for f in fields(policy)
        if getattr(policy, f.name) != getattr(default, f.name)
    }


def measure(sizes: Sizes, mode: str, out: Callable[[str], None]) -> Results:
    started = time.perf_counter()
    policy = sdkguard.Policy.from_env()  # what a bare `sdkguard.install()` uses
    results = Results(
        mode=mode,
        sizes=sizes,
        machine=machine_info(),
        policy=policy_changes(policy),
        baseline="plain = sdkguard not installed (uninstall() before every plain run)",
        samples={key: {name: [] for name in VARIANTS} for key in MEASURES},
    )
    samples = results.samples
    server = ServerProcess(sizes.deltas)
    try:
        results.machine["server_pid"] = server.pid
        header(results, out)
        for phase, rounds, title in (
            ("stream", sizes.rounds, f"{sizes.deltas:,}-event stream, wall-clock per stream"),
            (
                "call",
                sizes.call_rounds,
                f"non-streaming create(), wall-clock per call ({sizes.calls} calls per run)",
            ),
        ):
            out(
                f"\n[{1 if phase == 'stream' else 2}/3] {title}: {rounds} rounds in "
                f"{sizes.processes} client process(es) ..."
            )
            for start, stop in split(rounds, sizes.processes):
                job = WorkerJob(phase, server.stream_url, server.small_url, sizes, start, stop)
                for key, values in run_worker(job, out).items():
                    for name in VARIANTS:
                        samples[key][name].extend(values[name])
                server.clear()

        out(
            f"\n[3/3] memory: {sizes.streams} open streams x {sizes.memory_rounds} rounds "
            "(tracemalloc, bytes per stream) ..."
        )
        client = make_client(server.memory_url)
        tracemalloc.start()
        try:
            for name in VARIANTS:  # warm-up: first-use caches
                with variant(name, policy):
                    open_streams(client, min(sizes.streams, 10))
            for r in range(sizes.memory_rounds):
                for name in ORDERS[r % len(ORDERS)]:
                    with variant(name, policy):
                        samples["memory"][name].append(open_streams(client, sizes.streams))
                server.clear()
                out(progress(r, sizes.memory_rounds, samples["memory"], 1.0, "B"))
        finally:
            tracemalloc.stop()
            client.close()
    finally:
        sdkguard.uninstall()
        server.close()
    results.machine["load_after"] = _loadavg()
    results.seconds = time.perf_counter() - started
    derive(results)
    return results


def split(rounds: int, parts: int) -> list[tuple[int, int]]:
    """`range(rounds)` in `parts` consecutive slices, as (start, stop)."""
    parts = max(1, min(parts, rounds))
    bounds = [rounds * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


# --- the client processes of the timed measurements -----------------------------------------


@dataclass
class WorkerJob:
    """Rounds `start` to `stop` of one timed measurement, for a fresh client process.

    Several processes share the rounds: a process's memory layout shifts its timings by up
    to a percent or two for its whole life, so one process's luck must not decide a goal.
    """

    phase: str
    """`stream` or `call`."""
    stream_url: str
    small_url: str
    sizes: Sizes
    start: int
    stop: int


def run_worker(job: WorkerJob, out: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """Run `job` in a fresh interpreter; echo its progress; return its samples."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(job))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    found: dict[str, dict[str, list[float]]] | None = None
    with proc.stdout:
        for line in proc.stdout:
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "P":
                out(text)
            elif kind == "R":
                found = json.loads(text)
    if proc.wait() != 0 or found is None:
        raise RuntimeError(f"the client process failed (exit status {proc.returncode})")
    return found


def worker(job: WorkerJob) -> None:
    """The body of a client process: warm up, then the rounds of `job`; prints P and R lines."""
    sizes = job.sizes
    policy = sdkguard.Policy.from_env()
    samples: dict[str, dict[str, list[float]]] = {
        key: {name: [] for name in VARIANTS} for key in (f"{job.phase}_wall", f"{job.phase}_cpu")
    }
    wall, cpu = samples[f"{job.phase}_wall"], samples[f"{job.phase}_cpu"]
    expected = sizes.deltas + FRAMING_EVENTS
    client = make_client(job.stream_url if job.phase == "stream" else job.small_url)
    try:

        def once(calls: int) -> Timing:
            if job.phase == "stream":
                return run_stream(client, expected)
            return run_calls(client, calls)

        for name in VARIANTS:  # warm-up: connection, imports, caches, specialisation
            with variant(name, policy):
                once(5)
        total = sizes.rounds if job.phase == "stream" else sizes.call_rounds
        for r in range(job.start, job.stop):
            for name in ORDERS[r % len(ORDERS)]:
                with variant(name, policy):
                    timing = once(sizes.calls)
                wall[name].append(timing.wall)
                cpu[name].append(timing.cpu)
            if job.phase == "stream":
                line = progress(r, total, wall, 1e3, "ms")
            elif (r + 1) % 6 == 0 or r + 1 == job.stop:
                line = progress(r, total, wall, 1e6, "us")
            else:
                continue
            print("P " + line, flush=True)
    finally:
        sdkguard.uninstall()
        client.close()
    print("R " + json.dumps(samples), flush=True)


def progress(r: int, rounds: int, samples: dict[str, list[float]], scale: float, unit: str) -> str:
    values = "  ".join(f"{name} {samples[name][-1] * scale:9.1f} {unit}" for name in VARIANTS)
    return f"  round {r + 1:2d}/{rounds}: {values}"


def derive(results: Results) -> None:
    s, f = results.samples, results.figures
    events = results.sizes.deltas + FRAMING_EVENTS
    for key in MEASURES:
        f[key] = {name: asdict(Stats.of(s[key][name])) for name in VARIANTS}
    compared: dict[str, Comparison] = {}
    for name in (GUARDED, DISABLED):
        compared[f"stream_wall_ratio_{name}"] = ratio(
            s["stream_wall"][name], s["stream_wall"][PLAIN]
        )
        compared[f"stream_cpu_ratio_{name}"] = ratio(s["stream_cpu"][name], s["stream_cpu"][PLAIN])
        compared[f"stream_cpu_added_us_per_event_{name}"] = difference(
            s["stream_cpu"][name], s["stream_cpu"][PLAIN], 1e6 / events
        )
        for clock in ("wall", "cpu"):
            compared[f"call_{clock}_added_us_{name}"] = difference(
                s[f"call_{clock}"][name], s[f"call_{clock}"][PLAIN], 1e6
            )
            compared[f"call_{clock}_ratio_{name}"] = ratio(
                s[f"call_{clock}"][name], s[f"call_{clock}"][PLAIN]
            )
        compared[f"memory_added_bytes_{name}"] = difference(s["memory"][name], s["memory"][PLAIN])
    f.update({key: asdict(value) for key, value in compared.items()})
    results.goals = [
        Verdict.judge(
            "stream time, guarded/plain",
            GOAL_STREAM_RATIO,
            "client CPU time",
            compared["stream_cpu_ratio_guarded"],
        ),
        Verdict.judge(
            "create() time added per call, us",
            GOAL_CALL_ADDED_US,
            "client CPU time",
            compared["call_cpu_added_us_guarded"],
        ),
        Verdict.judge(
            "memory added per open stream, bytes",
            GOAL_MEMORY_ADDED_BYTES,
            "tracemalloc",
            compared["memory_added_bytes_guarded"],
        ),
    ]
    results.disabled_negligible = [
        Verdict.judge(
            "stream time, disabled/plain",
            NEGLIGIBLE_STREAM_RATIO,
            "client CPU time",
            compared["stream_cpu_ratio_disabled"],
        ),
        Verdict.judge(
            "create() time added per call by disabled, us",
            NEGLIGIBLE_CALL_ADDED_US,
            "client CPU time",
            compared["call_cpu_added_us_disabled"],
        ),
        Verdict.judge(
            "memory added per open stream by disabled, bytes",
            NEGLIGIBLE_MEMORY_ADDED_BYTES,
            "tracemalloc",
            compared["memory_added_bytes_disabled"],
        ),
    ]


# --- the report -----------------------------------------------------------------------------


def header(results: Results, out: Callable[[str], None]) -> None:
    m = results.machine
    out(f"sdkguard overhead benchmark ({results.mode})")
    out(f"machine:  {m['platform']}, {m['processor']}")
    out(f"          {m['cpus']} CPUs ({m['cpus_usable']} usable), load average {m['load_before']}")
    load, cpus = m["load_before"], m["cpus_usable"] or m["cpus"] or 1
    if load and load[0] > max(cpus - 1, 0.5):
        out(
            f"WARNING:  the machine is busy (load {load[0]} on {cpus} CPUs): wall-clock figures "
            "are noisy; goals are judged on CPU time"
        )
    out(
        f"software: {m['python']}; anthropic {m['anthropic']} ({m['http']}, pydantic "
        f"{m['pydantic']}); sdkguard {m['sdkguard']}; wrapt {m['wrapt']}"
    )
    out(
        "server:   3 FakeAnthropic servers on 127.0.0.1 in a separate process "
        f"(pid {m['server_pid']})"
    )
    out(f"baseline: {results.baseline}")
    policy = ", ".join(f"{k}={v}" for k, v in results.policy.items()) or "the default policy"
    out(f"guarded:  install() with {policy}")
    out("disabled: installed, calls made inside `with sdkguard.policy(enabled=False)`")
    out(
        "method:   each round runs plain, guarded and disabled on the same client, in rotating "
        f"order ({len(ORDERS)} orders);"
    )
    out(
        f"          timed rounds shared by {results.sizes.processes} fresh client process(es); "
        "gc.collect() before each timed run"
    )


def _table(
    out: Callable[[str], None],
    stats: dict[str, dict[str, float]],
    scale: float,
    unit: str,
    extra: Callable[[str], str] | None = None,
) -> None:
    out(f"    {'':<9}{'min':>13}{'median':>13}{'max':>13}")
    for name in VARIANTS:
        st = stats[name]
        cells = "".join(f"{st[k] * scale:10.1f} {unit:<2}" for k in ("min", "median", "max"))
        out(f"    {name:<9}{cells}{extra(name) if extra else ''}".rstrip())


def _cmp(c: dict[str, float], fmt: str) -> str:
    by_min, by_median, paired = (fmt.format(c[k]) for k in ("by_min", "by_median", "paired_median"))
    return f"{by_min} by min, {by_median} by median, {paired} median per round"


def _verdict_line(v: Verdict, fmt: str) -> str:
    return f"  => GOAL {v.line(fmt)}"


def report(results: Results, out: Callable[[str], None]) -> None:
    f, s = results.figures, results.sizes
    events = s.deltas + FRAMING_EVENTS
    stream_goal, call_goal, memory_goal = results.goals

    out("\n" + "=" * 80)
    out(f"1. {s.deltas:,}-event stream: create(stream=True) read to the end, {s.rounds} rounds")
    out("  wall-clock:")
    _table(
        out,
        f["stream_wall"],
        1e3,
        "ms",
        lambda n: f"   {events / f['stream_wall'][n]['min']:,.0f} events/s at best",
    )
    out("  client CPU time:")
    _table(
        out,
        f["stream_cpu"],
        1e3,
        "ms",
        lambda n: f"   {f['stream_cpu'][n]['min'] / events * 1e6:.2f} us/event at best",
    )
    out(f"  guarded/plain, wall   {_cmp(f['stream_wall_ratio_guarded'], '{:.4f}')}")
    out(f"  guarded/plain, CPU    {_cmp(f['stream_cpu_ratio_guarded'], '{:.4f}')}")
    out(f"  guarded, CPU/event    {_cmp(f['stream_cpu_added_us_per_event_guarded'], '{:+.3f} us')}")
    out(f"  disabled/plain, wall  {_cmp(f['stream_wall_ratio_disabled'], '{:.4f}')}")
    out(f"  disabled/plain, CPU   {_cmp(f['stream_cpu_ratio_disabled'], '{:.4f}')}")
    out(_verdict_line(stream_goal, "{:.4f}"))

    out(f"\n2. non-streaming create(), per call: {s.calls} calls x {s.call_rounds} rounds")
    out("  wall-clock:")
    _table(out, f["call_wall"], 1e6, "us")
    out("  client CPU time:")
    _table(out, f["call_cpu"], 1e6, "us")
    out(f"  guarded added, wall   {_cmp(f['call_wall_added_us_guarded'], '{:+.1f} us')}")
    out(f"  guarded added, CPU    {_cmp(f['call_cpu_added_us_guarded'], '{:+.1f} us')}")
    out(f"  guarded/plain, wall   {_cmp(f['call_wall_ratio_guarded'], '{:.4f}')}")
    out(f"  guarded/plain, CPU    {_cmp(f['call_cpu_ratio_guarded'], '{:.4f}')}")
    out(f"  disabled added, wall  {_cmp(f['call_wall_added_us_disabled'], '{:+.1f} us')}")
    out(f"  disabled added, CPU   {_cmp(f['call_cpu_added_us_disabled'], '{:+.1f} us')}")
    out(_verdict_line(call_goal, "{:.1f}"))

    out(
        f"\n3. memory per open stream, first content event read: {s.streams} streams x "
        f"{s.memory_rounds} rounds (tracemalloc)"
    )
    _table(out, f["memory"], 1.0, "B")
    out(f"  guarded added         {_cmp(f['memory_added_bytes_guarded'], '{:+.0f} B')}")
    out(f"  disabled added        {_cmp(f['memory_added_bytes_disabled'], '{:+.0f} B')}")
    out(_verdict_line(memory_goal, "{:.0f}"))

    out("\nenabled=False (installed) vs not installed: negligible?")
    for v, fmt in zip(results.disabled_negligible, ("{:.4f}", "{:.1f}", "{:.0f}"), strict=True):
        out(f"  {v.line(fmt)}")
    out(
        f"\nload average {results.machine['load_before']} -> {results.machine['load_after']}; "
        f"the run took {results.seconds:.0f} s"
    )
    out("SUMMARY: " + "; ".join(f"{v.goal}: {v.status}" for v in results.goals))


# --- profiling: where the guard's cost comes from -------------------------------------------


def profile(what: str, sizes: Sizes, out: Callable[[str], None]) -> None:
    """`stream`/`call`: cProfile guarded and plain; `memory`: who allocates what a stream keeps."""
    policy = sdkguard.Policy.from_env()
    server = ServerProcess(sizes.deltas)
    try:
        urls = {"stream": server.stream_url, "call": server.small_url}
        client = make_client(urls.get(what, server.memory_url))
        if what == "memory":
            profile_memory(client, policy, sizes.streams, out)
        else:
            profile_time(client, policy, what, sizes, out)
        client.close()
    finally:
        sdkguard.uninstall()
        server.close()


def profile_time(
    client: anthropic.Anthropic,
    policy: sdkguard.Policy,
    what: str,
    sizes: Sizes,
    out: Callable[[str], None],
) -> None:
    per = sizes.deltas + FRAMING_EVENTS if what == "stream" else sizes.calls * 10
    unit = "stream" if what == "stream" else "call"
    profiles: dict[str, pstats.Stats] = {}
    for name in (GUARDED, PLAIN):
        with variant(name, policy):
            work: Callable[[], object] = (
                (lambda: run_stream(client, per))
                if what == "stream"
                else (lambda: run_calls(client, per))
            )
            work()
            profiler = cProfile.Profile()
            profiler.enable()
            work()
            profiler.disable()
        buffer = io.StringIO()
        profiles[name] = stats = pstats.Stats(profiler, stream=buffer)
        buffer.write(f"\n===== cProfile, {name}, {what}: top functions by own time =====\n")
        stats.sort_stats("tottime").print_stats(15)
        if name == GUARDED:
            buffer.write("----- guarded: sdkguard's functions by cumulative time -----\n")
            stats.sort_stats("cumulative").print_stats(r"/sdkguard/(?!testing)", 25)
        out(buffer.getvalue().rstrip())
    # The functions the guard calls more (or less) often than the plain SDK: call counts are
    # exact; the time is the count difference times the function's own time per call (in the
    # run that calls it more), so scheduling noise is not subtracted into it.
    counts = {
        name: {
            _func_name(func): (row[1], row[2])
            for func, row in stats.stats.items()  # type: ignore[attr-defined]
        }
        for name, stats in profiles.items()
    }
    done = 1 if what == "stream" else per + 1  # run_calls makes one more, untimed, call
    rows = []
    for func in set(counts[GUARDED]) | set(counts[PLAIN]):
        (g_calls, g_time), (p_calls, p_time) = (
            counts[GUARDED].get(func, (0, 0.0)),
            counts[PLAIN].get(func, (0, 0.0)),
        )
        if g_calls == p_calls:
            continue
        calls, own = (g_calls, g_time) if g_calls > p_calls else (p_calls, p_time)
        extra = (g_calls - p_calls) * own / calls
        rows.append(((g_calls - p_calls) / done, extra / done * 1e6, func))
    rows.sort(key=lambda row: -row[1])
    out(
        f"\n===== guarded - plain: calls per {unit} that differ, x own time per call "
        "(under cProfile, which inflates small functions) ====="
    )
    for n_calls, micros, func in rows[:30]:
        out(f"  {n_calls:+10.2f} calls {micros:+10.3f} us  {func}")


def _func_name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    short = filename.split("site-packages/")[-1].removeprefix(f"{HERE.parent}/")
    return f"{short}:{line}({name})" if line else name


def profile_memory(
    client: anthropic.Anthropic, policy: sdkguard.Policy, n: int, out: Callable[[str], None]
) -> None:
    """Bytes a guarded stream keeps beyond a plain one, by the sdkguard line that allocated
    them, and what the guard holds on to that the plain SDK would have freed."""
    tracemalloc.start(64)
    try:
        snapshots: dict[str, tracemalloc.Snapshot] = {}
        kept: dict[str, float] = {}
        for name in (PLAIN, GUARDED, PLAIN, GUARDED):  # the first two are warm-ups
            with variant(name, policy):
                streams: list[anthropic.Stream[Any]] = []
                gc.collect()
                tracemalloc.clear_traces()
                for _ in range(n):
                    streams.append(client.messages.create(stream=True, **MESSAGE))
                time.sleep(MEMORY_BODY_DELAY * 5)  # as in open_streams
                for stream in streams:
                    while next(stream).type != "content_block_delta":
                        pass
                gc.collect()
                snapshots[name] = tracemalloc.take_snapshot()
                if name == GUARDED:
                    kept = _held_by_guard(streams, n)
                for stream in streams:
                    stream.close()
                del streams
    finally:
        tracemalloc.stop()
    size = {name: sum(t.size for t in snap.traces) / n for name, snap in snapshots.items()}
    out(f"\n===== memory per open stream, first content event read ({n} streams) =====")
    out(f"  plain {size[PLAIN]:.0f} B, guarded {size[GUARDED]:.0f} B")
    out(f"  guarded - plain: {size[GUARDED] - size[PLAIN]:+.0f} B, of which:")
    direct: dict[str, int] = {}
    for trace in snapshots[GUARDED].traces:
        frame = trace.traceback[-1]  # the most recent frame: the allocating line
        if "/sdkguard/" in frame.filename and "/testing/" not in frame.filename:
            key = f"{frame.filename.rsplit('/sdkguard/', 1)[1]}:{frame.lineno}"
            direct[key] = direct.get(key, 0) + trace.size
    out(f"  - allocated on sdkguard's own lines: {sum(direct.values()) / n:.0f} B")
    for key, total in sorted(direct.items(), key=lambda kv: -kv[1])[:20]:
        line = linecache.getline(
            str(Path(sdkguard.__file__).parent / key.split(":")[0]), int(key.split(":")[1])
        )
        out(f"      {total / n:6.0f} B  sdkguard/{key}  {line.strip()}")
    for label, freed in kept.items():
        out(f"  - {label}: {freed:.0f} B")
    out(
        "  - the rest: SDK objects the guard keeps alive or reads ahead of the caller (events "
        "parsed up to the first content event and held until it is delivered)"
    )


def _held_by_guard(streams: Sequence[Any], n: int) -> dict[str, float]:
    """What dropping each of the guard's references would free, per stream (probes private
    attributes; the streams are closed right after)."""
    freed: dict[str, float] = {}
    probes: list[tuple[str, Callable[[Any], None]]] = [
        ("freed by dropping the call's original request options", _drop_options),
        ("freed by dropping the delivered message and blocks", _drop_blocks),
    ]
    for label, probe in probes:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        try:
            for stream in streams:
                probe(stream._sdkguard)
        except AttributeError:
            freed[f"{label} (not measured: internals changed)"] = 0.0
            continue
        gc.collect()
        freed[label] = (before - tracemalloc.get_traced_memory()[0]) / n
    return freed


def _drop_options(guard: Any) -> None:
    guard.call.options = None


def _drop_blocks(guard: Any) -> None:
    guard.delivery.blocks = {}


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/overhead.py",
        description="sdkguard's overhead vs the plain anthropic SDK, over loopback.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every goal is met")
    parser.add_argument(
        "--rounds", type=int, help="rounds of the stream measurement (full: 12, at least 11)"
    )
    parser.add_argument("--deltas", type=int, help="override the stream length (full: 20,000)")
    parser.add_argument("--call-rounds", type=int, help="override create() rounds (full: 60)")
    parser.add_argument("--calls", type=int, help="override calls per block (full: 50)")
    parser.add_argument("--streams", type=int, help="override open streams (full: 200)")
    parser.add_argument(
        "--processes", type=int, help="client processes sharing the timed rounds (full: 3)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a client process (run_worker)
    parser.add_argument(
        "--profile",
        choices=("stream", "call", "memory"),
        help="instead of measuring: cProfile guarded and plain (stream, call), or attribute the "
        "memory a guarded stream keeps (memory)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="abort with a traceback after this many seconds (full: 900, quick: 120)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        deltas=args.deltas or base.deltas,
        rounds=args.rounds or base.rounds,
        call_rounds=args.call_rounds or base.call_rounds,
        calls=args.calls or base.calls,
        streams=args.streams or base.streams,
        memory_rounds=base.memory_rounds,
        processes=args.processes or base.processes,
    )
    if args.worker:
        job = json.loads(args.worker)
        faulthandler.dump_traceback_later(args.timeout or 600.0, exit=True)
        worker(WorkerJob(**{**job, "sizes": Sizes(**job["sizes"])}))
        return 0
    # The script ends by itself: a watchdog dumps every thread's stack and exits if stuck
    # (the server process then sees the end of its stdin and exits too).
    faulthandler.dump_traceback_later(args.timeout or (120.0 if args.quick else 900.0), exit=True)

    def out(line: str, _stdout: IO[str] = sys.stdout) -> None:
        print(line, file=_stdout, flush=True)

    try:
        if args.profile:
            profile(args.profile, sizes, out)
            return 0
        results = measure(sizes, "quick" if args.quick else "full", out)
        report(results, out)
        if args.json:
            args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
            out(f"results written to {args.json}")
    finally:
        faulthandler.cancel_dump_traceback_later()
    if args.check and any(v.status != "met" for v in results.goals):
        out("--check: a goal is not met")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
