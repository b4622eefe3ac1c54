"""What sdkguard costs with OpenTelemetry tracing on: a non-streaming `messages.create()`.

    .venv/bin/python benchmarks/tracing.py                 # full size, about 2.5 minutes
    .venv/bin/python benchmarks/tracing.py --quick         # smoke run with tiny sizes

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
  switch and records nothing; `stream_plain_calls` is off here, as it is in effect in (b),
  where the SDK's span keeps a plain call unconverted: (d) - (c) is the guard alone, and
  (b) - (a) - ((d) - (c)) is what sdkguard's telemetry costs;
- each third-party instrumentation of the dev dependency group alone, over the plain SDK with
  its own tracing on, in a client process of its own, compared with (a') the same process
  uninstrumented: `opentelemetry-instrumentation-anthropic`,
  `openinference-instrumentation-anthropic`, `opentelemetry-instrumentation-genai-anthropic`.
  Goal: sdkguard adds less than any of them.

Method, as in `overhead.py`: the fake server runs in a separate process; one client process
for (a) to (d) and one per instrumentation, all idle but the one measuring; every round runs
every variant once, in an order that rotates (and reverses every other cycle); variants are
switched (install, uninstall, instrument, uninstrument, the client) outside the timed runs,
each followed by one untimed call; `gc.collect()` before each timed run (the collector stays
on inside it); the spans of a run are flushed after it, outside the timing, and counted, so
every variant's spans per call are checked. The rounds are shared by a few fresh sets of
client processes. Wall-clock and CPU time (the client process's, every thread) are recorded;
the goal is judged on the per-round median of CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common as common
import anthropic
from _common import (
    MESSAGE,
    Comparison,
    Headline,
    LineProcess,
    Out,
    ServerProcess,
    Verdict,
    add_common_args,
    begin,
    cprofile,
    difference,
    finish,
    machine_line,
    make_client,
    md_table,
    out,
    policy_changes,
    profile_difference,
    profile_section,
    ratio,
    rotated,
    run_main,
    set_guard,
    split,
    status_cell,
    version,
)
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import sdkguard

SDK, GUARDED, UNTRACED, GUARDED_UNTRACED = "sdk", "guarded", "untraced", "guarded_untraced"
MAIN_VARIANTS = (SDK, GUARDED, UNTRACED, GUARDED_UNTRACED)
LABELS = {
    SDK: "(a) plain SDK, SDK tracing on",
    GUARDED: "(b) sdkguard, SDK tracing on",
    UNTRACED: "(c) plain SDK, SDK tracing off",
    GUARDED_UNTRACED: "(d) sdkguard, SDK tracing off (stream_plain_calls off)",
}
GOAL_ADDED_US = 100.0
TIMEOUT = (900.0, 180.0)


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


FULL = Sizes(rounds=30, calls=50, processes=2, warmup=30)
QUICK = Sizes(rounds=2, calls=5, processes=1, warmup=3)


# --- the client processes (workers) --------------------------------------------------------
#
# A worker runs variants (a) to (d) (kind `main`) or (a') and one instrumentation (kind
# `instr`, which never installs sdkguard). Protocol, one JSON object per line: the worker says
# hello (its variants and versions, or an error), then answers each {"run": variant} with the
# timings; end of file on its stdin ends it.


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

        # `{}` is a complete option: tracing on whatever ANTHROPIC_OPEN_TELEMETRY says.
        self.traced = make_client(url, open_telemetry={})
        self.untraced = make_client(url, open_telemetry=False)
        self.client = self.traced
        self.versions = {"anthropic": anthropic.__version__}
        for name in ("opentelemetry-sdk", "opentelemetry-api"):
            self.versions[name] = version(name)
        self.instrumentor: Any = None
        if self.kind == "main":
            self.policy = sdkguard.Policy.from_env()  # what a bare `sdkguard.install()` uses
            # (d) compares like with like: the SDK's span keeps (b)'s calls unconverted.
            self.untraced_policy = dataclasses.replace(self.policy, stream_plain_calls=False)
            self.versions["sdkguard"] = sdkguard.__version__
            self.variants: tuple[str, ...] = MAIN_VARIANTS
        else:
            instrumentation = BY_NAME[job["instrumentation"]]
            module = importlib.import_module(instrumentation.module)
            self.instrumentor = module.AnthropicInstrumentor()
            self.instr_variant = f"instr:{instrumentation.name}"
            self.versions[instrumentation.distribution] = version(instrumentation.distribution)
            self.variants = (SDK, self.instr_variant)
        self.current: str | None = None

    # -- switching variants (never timed) -----------------------------------------------------

    def switch(self, variant: str) -> None:
        if variant == self.current:
            return
        if variant not in self.variants:
            raise RuntimeError(f"unknown variant {variant!r} for a {self.kind} worker")
        if self.kind == "main":
            policy = self.untraced_policy if variant == GUARDED_UNTRACED else self.policy
            set_guard(variant in (GUARDED, GUARDED_UNTRACED), policy)
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


class WorkerProcess(LineProcess):
    """A worker as seen from the orchestrating process."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
        )
        hello = json.loads(self.readline())
        self.error: str | None = hello.get("error")
        self.variants: list[str] = hello.get("variants", [])
        self.versions: dict[str, str] = hello.get("versions", {})

    def run(self, variant: str) -> dict[str, float]:
        result: dict[str, float] = json.loads(self.request(json.dumps({"run": variant})))
        return result


# --- the run -------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    policy: dict[str, str] = field(default_factory=dict)
    """Policy fields of variant (b) that differ from the defaults (SDKGUARD_* variables)."""
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per client process kind: the versions it runs."""
    skipped: list[str] = field(default_factory=list)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """`wall` / `cpu` / `spans` -> variant -> one value per round (seconds per call, or spans
    per call). Variant `instr:NAME` comes with `sdk@NAME`, the plain SDK in the same process."""
    figures: dict[str, Any] = field(default_factory=dict)
    goal: Verdict | None = None
    less_than_every_instrumentation: bool = False
    markdown: str = ""


def key_of(worker_index: int, variant: str, names: Sequence[str]) -> str:
    """The sample key of `variant` in worker `worker_index` (0 is the main worker)."""
    if worker_index == 0:
        return variant
    return variant if variant.startswith("instr:") else f"sdk@{names[worker_index]}"


def measure(sizes: Sizes, mode: str, out: Out, *, instr: bool) -> Results:
    started = time.perf_counter()
    results = begin(Results, "sdkguard with OpenTelemetry tracing", sizes, mode, out)
    results.policy = policy_changes(sdkguard.Policy.from_env())
    wanted = INSTRUMENTATIONS if instr else ()
    if not instr:
        out("skipped the third-party instrumentations: --no-instr")
    server = ServerProcess({"small": "ok"})
    try:
        for set_index, (first, stop) in enumerate(split(sizes.rounds, sizes.processes)):
            jobs: list[tuple[dict[str, Any], str]] = [({"kind": "main"}, "main")]
            jobs += [
                ({"kind": "instr", "instrumentation": i.name}, i.name)
                for i in wanted
                if i.name not in results.skipped
            ]
            workers: list[WorkerProcess] = []
            names: list[str] = []
            try:
                for job, name in jobs:
                    job = {
                        **job,
                        "url": server.urls["small"],
                        "calls": sizes.calls,
                        "warmup": sizes.warmup,
                    }
                    worker = WorkerProcess(job)
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
                    if (index + 1) % 10 == 0 or index + 1 == stop:
                        out(f"  round {index + 1}/{sizes.rounds}")
            finally:
                for worker in workers:
                    worker.close()
            server.clear()
        derive(results)
        if results.goal is not None and results.goal.status != "met":
            out("\nprofiling (b) against (a): the goal is not met ...")
            results.profile = profile(server.urls["small"], sizes.calls * 10)
    finally:
        server.close()
    return finish(results, started, markdown)


def profile(url: str, calls: int, top: int = 16) -> list[str]:
    """cProfile (b) and (a) in this process (a `main` worker's state): what sdkguard adds."""
    worker = Worker({"kind": "main", "url": url, "calls": calls})

    def calls_in_a_row() -> None:
        for _ in range(calls):
            worker.call()

    profiles = {}
    for variant in (GUARDED, SDK):
        worker.switch(variant)
        profiles[variant] = cprofile(calls_in_a_row)
    worker.switch(SDK)
    worker.tracer_provider.shutdown()
    worker.meter_provider.shutdown()
    return profile_difference(profiles[GUARDED], profiles[SDK], calls, "call", top)


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
            "cpu_added_us": asdict(difference(cpu[a], cpu[b], 1e6)),
            "cpu_ratio": asdict(ratio(cpu[a], cpu[b])),
            "wall_added_us": asdict(difference(wall[a], wall[b], 1e6)),
        }
    added = Comparison(**figures["guarded_vs_sdk"]["cpu_added_us"])
    figures["sdkguard_telemetry_us"] = (
        added.paired_median - figures["guard_alone"]["cpu_added_us"]["paired_median"]
    )
    verdict = Verdict.judge(
        "sdkguard added over (a), CPU per call, us", GOAL_ADDED_US, "client CPU time", added
    )
    others = {
        k: Comparison(**figures[f"{k}_vs_sdk"]["cpu_added_us"]).paired_median
        for k in cpu
        if k.startswith("instr:")
    }
    cheapest = min(others.values(), default=float("inf"))
    results.figures = figures
    results.goal = verdict
    results.less_than_every_instrumentation = added.paired_median < cheapest
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
    others_text = ", ".join(
        f"{BY_NAME[k[6:]].distribution.removesuffix('-anthropic')} {v:+.0f} us"
        for k, v in others.items()
    )
    less = results.less_than_every_instrumentation
    results.headlines = [
        Headline(
            "with tracing",
            "provider + batch span processor: guarded vs plain SDK with its own tracing; "
            "vs the third-party instrumentations",
            "sdkguard adds <= 100 us, less than any of them",
            f"{added.paired_median:+.0f} us; they add: {others_text or 'not measured'}",
            "met" if verdict.status == "met" and (less or not others) else "not met",
        )
    ]


def _label(results: Results, key: str) -> str:
    if key.startswith("sdk@"):
        return f"(a') plain SDK, SDK tracing on [{key[4:]} process]"
    if key.startswith("instr:"):
        i = BY_NAME[key[6:]]
        return f"   + {i.distribution} {results.versions.get(i.name, {}).get(i.distribution, '')}"
    return LABELS[key]


def _rows(results: Results) -> list[tuple[str, str]]:
    f = results.figures
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
    return rows


def _keys(results: Results) -> list[str]:
    order = [*MAIN_VARIANTS]
    for i in INSTRUMENTATIONS:
        order += [f"sdk@{i.name}", f"instr:{i.name}"]
    return [k for k in order if k in results.figures]


def report(results: Results, out: Out) -> None:
    s, f = results.sizes, results.figures
    out("\n== sdkguard with OpenTelemetry tracing: non-streaming messages.create(), per call ==")
    out(f"machine: {machine_line(results.machine)}")
    out(f"policy changes: {results.policy or 'none'}")
    out(
        f"sizes: {s.rounds} rounds x {s.calls} calls per run, {s.processes} set(s) of client "
        f"processes, {s.warmup} warm-up calls per variant ({results.mode})"
    )
    width = 56
    out(f"\n{'variant':{width}} {'CPU min':>9} {'CPU median':>11} {'wall median':>12} {'spans':>6}")
    for key in _keys(results):
        row = f[key]
        out(
            f"{_label(results, key):{width}} {row['cpu_min_us']:7.1f}us "
            f"{row['cpu_median_us']:9.1f}us {row['wall_median_us']:10.1f}us "
            f"{row['spans_per_call']:6.1f}"
        )
    out("\nadded per call, CPU time: per-round median (by min, by median) [wall]")
    for label, key in _rows(results):
        added = Comparison(**f[key]["cpu_added_us"])
        r = Comparison(**f[key]["cpu_ratio"]).paired_median
        wall = Comparison(**f[key]["wall_added_us"]).paired_median
        out(f"  {label:{width - 2}} {added.text('{:+.1f} us')} x{r:.3f} [wall {wall:+.1f} us]")
    label = "((b)-(a))-((d)-(c)) sdkguard telemetry"
    out(f"  {label:{width - 2}} {f['sdkguard_telemetry_us']:+7.1f} us")
    for name in results.skipped:
        out(f"  not measured: {BY_NAME[name].distribution}")
    assert results.goal is not None
    out(f"\nGOAL {results.goal.line('{:.1f}')}")
    out(f"less than every instrumentation: {results.less_than_every_instrumentation}")
    out(f"the run took {results.seconds:.0f} s")


def markdown(results: Results) -> str:
    s, f = results.sizes, results.figures
    variant_rows = [
        [
            _label(results, key).strip(),
            f"{f[key]['cpu_min_us']:.0f} us",
            f"{f[key]['cpu_median_us']:.0f} us",
            f"{f[key]['wall_median_us']:.0f} us",
            f"{f[key]['spans_per_call']:.0f}",
        ]
        for key in _keys(results)
    ]
    added_rows = []
    for label, key in _rows(results):
        added = Comparison(**f[key]["cpu_added_us"])
        added_rows.append(
            [
                label,
                f"{added.paired_median:+.0f} us ({added.by_min:+.0f} / {added.by_median:+.0f})",
                f"x{Comparison(**f[key]['cpu_ratio']).paired_median:.3f}",
                f"{Comparison(**f[key]['wall_added_us']).paired_median:+.0f} us",
            ]
        )
    added_rows.append(
        [
            "sdkguard's telemetry alone, ((b)-(a))-((d)-(c))",
            f"{f['sdkguard_telemetry_us']:+.0f} us",
            "",
            "",
        ]
    )
    g = results.goal
    assert g is not None
    return "\n\n".join(
        [
            "## With tracing (`tracing.py`)",
            "Non-streaming `create()`, every client process with a global `TracerProvider` + "
            "`BatchSpanProcessor` (null exporter) and a `MeterProvider` (in-memory reader). "
            f"{s.rounds} rounds x {s.calls} calls, {s.processes} sets of client processes; "
            "each instrumentation alone in a process of its own, against (a') the plain SDK "
            "in that process.",
            md_table(
                ["variant", "CPU min", "CPU median", "wall median", "spans/call"], variant_rows
            ),
            md_table(
                ["added per call", "CPU: per-round median (min / median)", "ratio", "wall"],
                added_rows,
            ),
            f"Goal: sdkguard adds <= 100 us over (a): {status_cell(g.status)}{g.noise}, "
            f"{g.value:+.0f} us; less than every third-party instrumentation: "
            f"{'yes' if results.less_than_every_instrumentation else '**no**'}.",
        ]
        + ([f"Not measured: {', '.join(results.skipped)}."] if results.skipped else [])
        + profile_section("(b) against (a) in one process, cProfile:", results.profile)
    )


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/tracing.py",
        description="sdkguard's per-call cost with OpenTelemetry tracing on, and the "
        "third-party Anthropic instrumentations', over loopback.",
    )
    add_common_args(parser, TIMEOUT)
    parser.add_argument("--rounds", type=int, help="rounds (full: 30; keep it at 11 or more)")
    parser.add_argument("--calls", type=int, help="calls per timed run (full: 50)")
    parser.add_argument("--processes", type=int, help="sets of client processes (full: 2)")
    parser.add_argument(
        "--no-instr", action="store_true", help="leave the third-party instrumentations out"
    )
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        rounds=args.rounds or base.rounds,
        calls=args.calls or base.calls,
        processes=args.processes or base.processes,
        warmup=base.warmup,
    )
    mode = "quick" if args.quick else "full"
    return run_main(
        args, TIMEOUT, lambda: measure(sizes, mode, out, instr=not args.no_instr), report
    )


if __name__ == "__main__":
    sys.exit(main())
