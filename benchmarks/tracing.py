"""What sdkguard costs with OpenTelemetry tracing on: a non-streaming `messages.create()`.

    .venv/bin/python benchmarks/tracing.py                 # full size, about 1.5 minutes
    .venv/bin/python benchmarks/tracing.py --quick         # smoke run with tiny sizes
    .venv/bin/python benchmarks/tracing.py --setup-instr   # first build benchmarks/.venv-instr
    .venv/bin/python benchmarks/tracing.py --json out.json --check

Every client process sets, as the global providers, an OpenTelemetry SDK `TracerProvider`
with a `BatchSpanProcessor` that exports to a null exporter (it only counts spans) and a
`MeterProvider` with an in-memory reader. The variants, per call:

- (a) `sdk`: the plain SDK with its own tracing on (the default once a provider exists): the
  baseline;
- (b) `guarded`: sdkguard installed, SDK tracing on. The SDK's span is the call span; sdkguard
  adds one `sdkguard.attempt` span and its metrics. Goal: (b) - (a) <= 100 us per call;
- (c) `untraced`: the plain SDK with `open_telemetry=False`, for context: (a) - (c) is what
  the SDK's own tracing costs;
- (d) `guarded_untraced`: sdkguard installed, SDK tracing off. sdkguard follows the client's
  switch and records nothing: (d) - (c) is the guard alone, (b) - (a) - ((d) - (c)) is what
  sdkguard's telemetry costs;
- with `benchmarks/.venv-instr` (see `--setup-instr`), each third-party instrumentation
  alone, over the plain SDK with its own tracing on, in a process of that venv, compared
  with (a') the same process uninstrumented: `opentelemetry-instrumentation-anthropic`,
  `openinference-instrumentation-anthropic`, `opentelemetry-instrumentation-genai-anthropic`.

Method, as in `overhead.py`: the fake server runs in a separate process
(`_server_process.py`); one client process per venv (the main one for (a) to (d), one per
instrumentation), all idle but the one measuring; every round runs every variant once, in an
order that rotates (and reverses every other cycle); variants are switched (install,
uninstall, instrument, uninstrument, the client) outside the timed runs, each followed by
one untimed call; `gc.collect()` before each timed run (the collector stays on inside it);
the spans of a run are flushed after it, outside the timing, and counted, so every variant's
spans per call are checked. The rounds are shared by a few fresh sets of client processes.
Wall-clock and CPU time (the client process's, every thread) are recorded; the goal is
judged on the per-round median of CPU time (pairing within a round cancels load drift), and
the minimums and medians are shown too. See README.md ("With tracing").

Exit status 0 unless the run failed, or `--check` is given and the goal is not met.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import anthropic
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

# Importable in both venvs: sdkguard is imported only where it runs (main venv).
HERE = Path(__file__).resolve().parent
INSTR_VENV = HERE / ".venv-instr"
INSTR_STATUS = "sdkguard-instrumentations.json"  # in INSTR_VENV: what installed, what not

SDK, GUARDED, UNTRACED, GUARDED_UNTRACED = "sdk", "guarded", "untraced", "guarded_untraced"
MAIN_VARIANTS = (SDK, GUARDED, UNTRACED, GUARDED_UNTRACED)
LABELS = {
    SDK: "(a) plain SDK, SDK tracing on",
    GUARDED: "(b) sdkguard, SDK tracing on",
    UNTRACED: "(c) plain SDK, SDK tracing off",
    GUARDED_UNTRACED: "(d) sdkguard, SDK tracing off",
}
GOAL_ADDED_US = 100.0


@dataclass(frozen=True)
class Instrumentation:
    name: str
    """Short name, used in variant names: `instr:NAME`."""
    distribution: str
    module: str


INSTRUMENTATIONS = (
    Instrumentation(
        "traceloop",
        "opentelemetry-instrumentation-anthropic",
        "opentelemetry.instrumentation.anthropic",
    ),
    Instrumentation(
        "openinference",
        "openinference-instrumentation-anthropic",
        "openinference.instrumentation.anthropic",
    ),
    Instrumentation(
        "otel-genai",
        "opentelemetry-instrumentation-genai-anthropic",
        "opentelemetry.instrumentation.genai.anthropic",
    ),
)
BY_NAME = {i.name: i for i in INSTRUMENTATIONS}

MESSAGE: dict[str, Any] = {
    "model": "claude-benchmark",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Say something short."}],
}


@dataclass(frozen=True)
class Sizes:
    rounds: int
    """Rounds: each runs every variant of every process once."""
    calls: int
    """Calls per timed run."""
    processes: int
    """Fresh sets of client processes that share the rounds."""
    warmup: int
    """Untimed calls per variant when a process starts."""


FULL = Sizes(rounds=60, calls=50, processes=3, warmup=30)
QUICK = Sizes(rounds=2, calls=5, processes=1, warmup=3)


# --- the client processes (workers) --------------------------------------------------------
#
# A worker runs in the main venv (kind `main`: variants (a) to (d)) or in the instrumentation
# venv (kind `instr`: (a') and one instrumentation). It imports nothing of sdkguard unless it
# is `main`. Protocol, one JSON object per line: the worker says hello (its variants and
# versions, or an error), then answers each {"run": variant} with the timings; end of file
# on its stdin ends it.


class NullExporter(SpanExporter):
    """A span exporter that only counts (what a no-op backend would cost)."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


class Worker:
    """The state of one client process: the providers, the clients, the current variant."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.kind: str = job["kind"]
        self.calls: int = job["calls"]
        self.exporter = NullExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        # Globals, before any client exists: a client looks its tracer up on first use.
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)
        url: str = job["url"]
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake server is not on loopback: {url}")

        def client(open_telemetry: Any) -> anthropic.Anthropic:
            # trust_env=False: no proxy from the environment, only 127.0.0.1 is reached.
            # `{}` is a complete option: tracing on whatever ANTHROPIC_OPEN_TELEMETRY says.
            return anthropic.Anthropic(
                base_url=url,
                api_key="sk-ant-benchmark-not-a-key",
                timeout=60.0,
                max_retries=anthropic.DEFAULT_MAX_RETRIES,
                http_client=anthropic.DefaultHttpxClient(trust_env=False, timeout=60.0),
                open_telemetry=open_telemetry,
            )

        self.traced = client({})
        self.untraced = client(False)
        self.client = self.traced
        self.versions = {"anthropic": anthropic.__version__, "python": platform.python_version()}
        for name in ("opentelemetry-sdk", "opentelemetry-api", "pydantic", "wrapt"):
            self.versions[name] = _version(name)
        self.instrumentor: Any = None
        if self.kind == "main":
            from anthropic import _base_client

            import sdkguard

            self.sdkguard = sdkguard
            self.sdk_class = _base_client.SyncAPIClient
            if sdkguard.is_installed():
                sdkguard.uninstall()
            self.policy = sdkguard.Policy.from_env()  # what a bare `sdkguard.install()` uses
            self.versions["sdkguard"] = sdkguard.__version__
            self.variants: tuple[str, ...] = MAIN_VARIANTS
        else:
            instrumentation = BY_NAME[job["instrumentation"]]
            module = importlib.import_module(instrumentation.module)
            self.instrumentor = module.AnthropicInstrumentor()
            self.instr_variant = f"instr:{instrumentation.name}"
            self.versions[instrumentation.distribution] = _version(instrumentation.distribution)
            self.variants = (SDK, self.instr_variant)
        self.current: str | None = None

    # -- switching variants (never timed) -----------------------------------------------------

    def switch(self, variant: str) -> None:
        if variant == self.current:
            return
        if variant not in self.variants:
            raise RuntimeError(f"unknown variant {variant!r} for a {self.kind} worker")
        if self.kind == "main":
            guarded = variant in (GUARDED, GUARDED_UNTRACED)
            if guarded and not self.sdkguard.is_installed():
                self.sdkguard.install(self.policy)
            elif not guarded and self.sdkguard.is_installed():
                self.sdkguard.uninstall()
            if self._sdk_is_plain() == guarded:
                raise RuntimeError(f"the SDK's request is not as variant {variant!r} needs")
            self.client = self.traced if variant in (SDK, GUARDED) else self.untraced
        elif variant == self.instr_variant:
            self.instrumentor.instrument(
                tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
            )
            if not self.instrumentor.is_instrumented_by_opentelemetry:
                raise RuntimeError(f"{variant} did not instrument anthropic")
        elif self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.uninstrument()
        self.current = variant

    def _sdk_is_plain(self) -> bool:
        """No sdkguard wrapper on the client's `request` or `_request`."""
        return not any(
            hasattr(vars(self.sdk_class).get(name), "__wrapped__")
            for name in ("request", "_request")
        )

    # -- one timed run ------------------------------------------------------------------------

    def call(self) -> None:
        message = self.client.messages.create(**MESSAGE)
        if message.stop_reason != "end_turn" or not message.content:
            raise RuntimeError(f"unexpected answer: {message!r}")

    def run(self, variant: str) -> dict[str, float]:
        self.switch(variant)
        self.tracer_provider.force_flush()  # what earlier calls (warm-up, switch) left queued
        before = self.exporter.count
        self.call()  # untimed: the first call after a switch
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(self.calls):
            self.call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.tracer_provider.force_flush()
        spans = (self.exporter.count - before) / (self.calls + 1)
        return {"wall": wall / self.calls, "cpu": cpu / self.calls, "spans": spans}


def worker_main(job: dict[str, Any]) -> int:
    """A client process: hello, then one answer per command, until end of file."""
    out = sys.stdout
    try:
        worker = Worker(job)
        for variant in worker.variants:  # warm-up, and a first check of every variant
            worker.switch(variant)
            for _ in range(job["warmup"]):
                worker.call()
    except Exception as error:  # reported, and that worker's variants are skipped
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), file=out, flush=True)
        return 1
    hello = {"variants": list(worker.variants), "versions": worker.versions, "pid": os.getpid()}
    print(json.dumps(hello), file=out, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        print(json.dumps(worker.run(command["run"])), file=out, flush=True)
    return 0


class WorkerProcess:
    """A worker as seen from the orchestrating process."""

    def __init__(self, python: Path, job: dict[str, Any]) -> None:
        self.job = job
        self._proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--worker", json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        hello = json.loads(self._readline())
        self.error: str | None = hello.get("error")
        self.variants: list[str] = hello.get("variants", [])
        self.versions: dict[str, str] = hello.get("versions", {})

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a client process ended (exit status {self._proc.poll()})")
        return line

    def run(self, variant: str) -> dict[str, float]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"run": variant}) + "\n")
        self._proc.stdin.flush()
        result: dict[str, float] = json.loads(self._readline())
        return result

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()  # end of file: the worker exits
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class ServerProcess:
    """`_server_process.py` as a child; only its `small` server (the default short reply)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "_server_process.py"), "--deltas", "3"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process ended (exit status {self._proc.poll()})")
        self.url: str = json.loads(line)["small"]
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake server is not on loopback: {self.url}")

    def clear(self) -> None:
        """Make the servers forget the requests they recorded (between sets of processes)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("clear\n")
        self._proc.stdin.flush()
        if self._proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the server process did not acknowledge `clear`")

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


# --- the instrumentation venv --------------------------------------------------------------


def instr_python() -> Path:
    return INSTR_VENV / "bin" / "python"


def setup_instr(out: Callable[[str], None]) -> None:
    """Build `benchmarks/.venv-instr`: the main venv's versions of everything they share,
    plus each instrumentation, installed one by one (one that fails is recorded, not fatal)."""
    if not instr_python().exists():
        out(f"creating {INSTR_VENV.relative_to(HERE.parent)} ...")
        subprocess.run([sys.executable, "-m", "venv", str(INSTR_VENV)], check=True)
    # Never committed, whatever the repository's .gitignore says.
    (INSTR_VENV / ".gitignore").write_text("*\n")
    constraints = INSTR_VENV / "constraints.txt"
    constraints.write_text(
        "".join(
            f"{dist.metadata['Name']}=={dist.version}\n"
            for dist in importlib.metadata.distributions()
            if dist.metadata["Name"] and dist.metadata["Name"].lower() != "sdkguard"
        )
    )

    def pip(*names: str) -> subprocess.CompletedProcess[str]:
        command = [str(instr_python()), "-m", "pip", "install", "-q", "-c", str(constraints)]
        return subprocess.run(
            [*command, *names], capture_output=True, text=True, timeout=600, check=False
        )

    base = pip("anthropic", "opentelemetry-sdk", "opentelemetry-api")
    if base.returncode != 0:
        raise RuntimeError(f"could not install the base packages:\n{base.stderr[-2000:]}")
    status: dict[str, str] = {}
    for instrumentation in INSTRUMENTATIONS:
        started = time.perf_counter()
        result = pip(instrumentation.distribution)
        seconds = time.perf_counter() - started
        if result.returncode == 0:
            status[instrumentation.name] = "installed"
            out(f"  installed {instrumentation.distribution} ({seconds:.0f} s)")
        else:
            lines = [x for x in result.stderr.splitlines() if "is ignored" not in x]
            status[instrumentation.name] = "failed: " + " | ".join(lines[-3:])
            out(f"  skipped {instrumentation.distribution}: pip failed: {lines[-1:]}")
    (INSTR_VENV / INSTR_STATUS).write_text(json.dumps(status, indent=2) + "\n")


def instr_available(out: Callable[[str], None], wanted: bool) -> list[Instrumentation]:
    """The instrumentations to measure; a printed line for each one that is not."""
    if not wanted:
        out("skipped the third-party instrumentations: --no-instr")
        return []
    if not instr_python().exists():
        out(
            f"skipped the third-party instrumentations: {INSTR_VENV.relative_to(HERE.parent)} "
            "does not exist (build it with --setup-instr)"
        )
        return []
    try:
        status = json.loads((INSTR_VENV / INSTR_STATUS).read_text())
    except (OSError, ValueError):
        status = {}
    available = []
    for instrumentation in INSTRUMENTATIONS:
        state = status.get(instrumentation.name, "not installed (run --setup-instr)")
        if state == "installed":
            available.append(instrumentation)
        else:
            out(f"skipped {instrumentation.distribution}: {state}")
    return available


# --- statistics ----------------------------------------------------------------------------


@dataclass
class Comparison:
    """Variant `a` against baseline `b`: a difference in microseconds, and a ratio."""

    added_us: float
    """Median over rounds of (a - b): each round's run against the same round's baseline."""
    added_us_by_min: float
    added_us_by_median: float
    ratio: float
    """Median over rounds of a / b."""
    ratio_by_min: float
    ratio_by_median: float

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float]) -> Comparison:
        pairs = list(zip(a, b, strict=True))
        return cls(
            statistics.median([x - y for x, y in pairs]) * 1e6,
            (min(a) - min(b)) * 1e6,
            (statistics.median(a) - statistics.median(b)) * 1e6,
            statistics.median([x / y for x, y in pairs]),
            min(a) / min(b),
            statistics.median(a) / statistics.median(b),
        )

    def text(self) -> str:
        return (
            f"{self.added_us:+7.1f} us x{self.ratio:.3f}   "
            f"(by min {self.added_us_by_min:+.1f} us x{self.ratio_by_min:.3f}, "
            f"by median {self.added_us_by_median:+.1f} us x{self.ratio_by_median:.3f})"
        )


@dataclass
class Results:
    mode: str
    sizes: Sizes
    machine: dict[str, Any]
    policy: dict[str, str]
    """Policy fields of variant (b) that differ from the defaults (SDKGUARD_* variables)."""
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per client process kind: the versions it runs."""
    skipped: list[str] = field(default_factory=list)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """`wall` / `cpu` / `spans` -> variant -> one value per round (seconds per call, or spans
    per call). Variant `instr:NAME` comes with `sdk@NAME`, the plain SDK in the same process."""
    figures: dict[str, Any] = field(default_factory=dict)
    goal: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def rotated(units: Sequence[tuple[int, str]], index: int) -> list[tuple[int, str]]:
    """Round `index`'s order: rotate by one per round, reverse every other cycle."""
    n = len(units)
    order = [*units[index % n :], *units[: index % n]]
    return order[::-1] if (index // n) % 2 else order


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """`total` rounds in `parts` contiguous slices, as even as can be."""
    parts = max(1, min(parts, total))
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


# --- the run -------------------------------------------------------------------------------


def _version(name: str) -> str:
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


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_before": _loadavg(),
    }


def key_of(worker_index: int, variant: str, names: Sequence[str]) -> str:
    """The sample key of `variant` in worker `worker_index` (0 is the main worker)."""
    if worker_index == 0:
        return variant
    return variant if variant.startswith("instr:") else f"sdk@{names[worker_index]}"


def measure(sizes: Sizes, mode: str, out: Callable[[str], None], *, instr: bool) -> Results:
    started = time.perf_counter()
    import sdkguard  # the orchestrator runs in the main venv

    default = sdkguard.Policy()
    policy = sdkguard.Policy.from_env()
    results = Results(
        mode=mode,
        sizes=sizes,
        machine=machine_info(),
        policy={
            f: repr(getattr(policy, f))
            for f in default.__dataclass_fields__
            if getattr(policy, f) != getattr(default, f)
        },
    )
    instrumentations = instr_available(out, instr)
    results.skipped = [i.name for i in INSTRUMENTATIONS if i not in instrumentations]
    server = ServerProcess()
    try:
        for set_index, (first, stop) in enumerate(split(sizes.rounds, sizes.processes)):
            jobs: list[tuple[Path, dict[str, Any], str]] = [
                (Path(sys.executable), {"kind": "main"}, "main")
            ]
            jobs += [
                (instr_python(), {"kind": "instr", "instrumentation": i.name}, i.name)
                for i in instrumentations
                if i.name not in results.skipped
            ]
            workers: list[WorkerProcess] = []
            names: list[str] = []
            try:
                for python, job, name in jobs:
                    job = {**job, "url": server.url, "calls": sizes.calls, "warmup": sizes.warmup}
                    worker = WorkerProcess(python, job)
                    if worker.error is not None:
                        worker.close()
                        if name == "main":
                            raise RuntimeError(f"the main client process failed: {worker.error}")
                        out(f"skipped {BY_NAME[name].distribution}: {worker.error}")
                        results.skipped.append(name)
                        continue
                    workers.append(worker)
                    names.append(name)
                    results.versions.setdefault(name, worker.versions)
                units = [(w, v) for w, worker in enumerate(workers) for v in worker.variants]
                out(
                    f"client process set {set_index + 1}/{min(sizes.processes, sizes.rounds)}: "
                    f"rounds {first + 1}-{stop}, {len(units)} runs of {sizes.calls} calls each"
                )
                for index in range(first, stop):
                    for w, variant in rotated(units, index):
                        result = workers[w].run(variant)
                        key = key_of(w, variant, names)
                        for measure_name in ("wall", "cpu", "spans"):
                            results.samples.setdefault(measure_name, {}).setdefault(key, []).append(
                                result[measure_name]
                            )
            finally:
                for worker in workers:
                    worker.close()
            server.clear()
    finally:
        server.close()
    results.machine["load_after"] = _loadavg()
    results.seconds = time.perf_counter() - started
    derive(results)
    return results


def derive(results: Results) -> None:
    cpu, wall, spans = (results.samples[k] for k in ("cpu", "wall", "spans"))
    figures: dict[str, Any] = {}
    for key in cpu:
        figures[key] = {
            "cpu_min_us": min(cpu[key]) * 1e6,
            "cpu_median_us": statistics.median(cpu[key]) * 1e6,
            "wall_min_us": min(wall[key]) * 1e6,
            "wall_median_us": statistics.median(wall[key]) * 1e6,
            "spans_per_call": statistics.median(spans[key]),
        }
    pairs = {
        "guarded_vs_sdk": (GUARDED, SDK),
        "sdk_tracing_cost": (SDK, UNTRACED),
        "guard_alone": (GUARDED_UNTRACED, UNTRACED),
    }
    pairs.update(
        {f"{k}_vs_sdk": (k, f"sdk@{k.split(':', 1)[1]}") for k in cpu if k.startswith("instr:")}
    )
    for name, (a, b) in pairs.items():
        figures[name] = {
            "cpu": asdict(Comparison.of(cpu[a], cpu[b])),
            "wall": asdict(Comparison.of(wall[a], wall[b])),
        }
    guard = figures["guarded_vs_sdk"]["cpu"]
    telemetry = guard["added_us"] - figures["guard_alone"]["cpu"]["added_us"]
    figures["sdkguard_telemetry_us"] = telemetry
    met = guard["added_us"] <= GOAL_ADDED_US
    agree = all(
        (guard[k] <= GOAL_ADDED_US) == met for k in ("added_us_by_min", "added_us_by_median")
    )
    results.figures = figures
    results.goal = {
        "goal": "sdkguard added over (a), CPU per call",
        "limit_us": GOAL_ADDED_US,
        "value_us": guard["added_us"],
        "status": "met" if met else "not met",
        "minimums_and_medians_agree": agree,
    }
    # The measurement is wrong unless every variant made the spans it should.
    expected = {SDK: 1.0, GUARDED: 2.0, UNTRACED: 0.0, GUARDED_UNTRACED: 0.0}
    for key, value in expected.items():
        if figures[key]["spans_per_call"] != value:
            raise RuntimeError(
                f"variant {key} made {figures[key]['spans_per_call']} spans per call, "
                f"expected {value}: tracing is not set up as the benchmark needs"
            )
    for key in cpu:
        if key.startswith("instr:") and not (
            figures[key]["spans_per_call"] > figures[f"sdk@{key[6:]}"]["spans_per_call"]
        ):
            raise RuntimeError(f"{key} made no spans of its own: it did not instrument")


def report(results: Results, out: Callable[[str], None]) -> None:
    m, s, f = results.machine, results.sizes, results.figures
    main = results.versions.get("main", {})
    out("\n== sdkguard with OpenTelemetry tracing: non-streaming messages.create(), per call ==")
    out(
        f"machine: {m['processor']}, {m['cpus']} CPUs ({m['cpus_usable']} usable), "
        f"{m['platform']}, {m['python']}"
    )
    out(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in main.items() if k != "python")
        + f"; policy changes: {results.policy or 'none'}"
    )
    out(
        f"sizes: {s.rounds} rounds x {s.calls} calls per run, {s.processes} set(s) of client "
        f"processes, {s.warmup} warm-up calls per variant ({results.mode})"
    )
    out("tracing: global TracerProvider + BatchSpanProcessor (null exporter), MeterProvider")
    out("         (in-memory reader); spans flushed and counted after each run, untimed")
    width = 56
    out(f"\n{'variant':{width}} {'CPU min':>9} {'CPU median':>11} {'wall median':>12} {'spans':>6}")
    labels = dict(LABELS)
    for instrumentation in INSTRUMENTATIONS:
        name, distribution = instrumentation.name, instrumentation.distribution
        if f"instr:{name}" in f:
            version = results.versions.get(name, {}).get(distribution, "")
            labels[f"sdk@{name}"] = f"(a') plain SDK, SDK tracing on [{name} process]"
            labels[f"instr:{name}"] = f"   + {distribution} {version}"
    for key, label in labels.items():
        row = f[key]
        out(
            f"{label:{width}} {row['cpu_min_us']:7.1f}us {row['cpu_median_us']:9.1f}us "
            f"{row['wall_median_us']:10.1f}us {row['spans_per_call']:6.1f}"
        )
    out("\nadded per call, CPU time: per-round median (by min, by median) [wall: per-round median]")
    rows = [
        ("(b)-(a) sdkguard over the SDK's tracing", "guarded_vs_sdk"),
        ("(a)-(c) the SDK's own tracing", "sdk_tracing_cost"),
        ("(d)-(c) sdkguard, nothing traced", "guard_alone"),
    ]
    rows += [
        (f"{i.distribution} over (a')", f"instr:{i.name}_vs_sdk")
        for i in INSTRUMENTATIONS
        if f"instr:{i.name}_vs_sdk" in f
    ]
    for label, key in rows:
        cpu, wall = Comparison(**f[key]["cpu"]), Comparison(**f[key]["wall"])
        out(f"  {label:{width - 2}} {cpu.text()} [wall {wall.added_us:+.1f} us]")
    telemetry = f["sdkguard_telemetry_us"]
    out(f"  {'((b)-(a))-((d)-(c)) sdkguard telemetry':{width - 2}} {telemetry:+7.1f} us")
    for name in results.skipped:
        out(f"  not measured: {BY_NAME[name].distribution}")
    g = results.goal
    agreement = "agree" if g["minimums_and_medians_agree"] else "disagree: within the noise"
    out(
        f"\nGOAL sdkguard adds <= {g['limit_us']:.0f} us over (a) (CPU, per-round median): "
        f"{g['status'].upper()}, {g['value_us']:+.1f} us (minimums and medians {agreement})"
    )
    load = f"load average {m['load_before']} -> {m['load_after']}"
    out(f"{load}; the run took {results.seconds:.0f} s")


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/tracing.py",
        description="sdkguard's per-call cost with OpenTelemetry tracing on, and the "
        "third-party Anthropic instrumentations', over loopback.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the goal is met")
    parser.add_argument("--rounds", type=int, help="rounds (full: 60; keep it at 11 or more)")
    parser.add_argument("--calls", type=int, help="calls per timed run (full: 50)")
    parser.add_argument("--processes", type=int, help="sets of client processes (full: 3)")
    parser.add_argument(
        "--setup-instr",
        action="store_true",
        help=f"build {INSTR_VENV.relative_to(HERE.parent)} from PyPI first (about 30 s)",
    )
    parser.add_argument(
        "--no-instr", action="store_true", help="leave the third-party instrumentations out"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="abort with a traceback after this many seconds (full: 900, quick: 180)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a client process
    args = parser.parse_args(argv)
    if args.worker:
        faulthandler.dump_traceback_later(args.timeout or 1200.0, exit=True)
        return worker_main(json.loads(args.worker))
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        rounds=args.rounds or base.rounds,
        calls=args.calls or base.calls,
        processes=args.processes or base.processes,
        warmup=base.warmup,
    )

    def out(line: str, _stdout: IO[str] = sys.stdout) -> None:
        print(line, file=_stdout, flush=True)

    if args.setup_instr:
        setup_instr(out)
    # The script ends by itself: a watchdog dumps every thread's stack and exits if stuck (the
    # child processes then see the end of their stdin and exit too).
    faulthandler.dump_traceback_later(args.timeout or (180.0 if args.quick else 900.0), exit=True)
    try:
        results = measure(sizes, "quick" if args.quick else "full", out, instr=not args.no_instr)
        report(results, out)
        if args.json:
            args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")
            out(f"results written to {args.json}")
    finally:
        faulthandler.cancel_dump_traceback_later()
    if args.check and results.goal["status"] != "met":
        out("--check: the goal is not met")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
