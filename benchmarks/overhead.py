"""What sdkguard costs: guarded vs plain anthropic SDK, over loopback, in one run.

    .venv/bin/python benchmarks/overhead.py            # full size, about 3 minutes
    .venv/bin/python benchmarks/overhead.py --quick    # smoke run with tiny sizes, seconds
    .venv/bin/python benchmarks/overhead.py --profile call|stream|memory

Variants of the SAME client object:

- `plain`: sdkguard NOT installed (`uninstall()` restores the SDK's own methods): the
  baseline every ratio is taken against;
- `guarded`: `install()` with the default policy (plus any `SDKGUARD_*` variables); for the
  non-streaming call with `stream_plain_calls=False`, so that its figure is the guard's own
  cost (`plain_calls.py` prices sending the call as a stream);
- `disabled`: installed, inside `with sdkguard.policy(enabled=False)` (should cost nothing);
- for the non-streaming call only, what users write by hand instead (sdkguard not
  installed): `tenacity`, the call under `@tenacity.retry(...)`, and `stamina`, under
  `@stamina.retry(...)`, both set up like sdkguard's default policy (5 attempts, 1 s to 8 s).

Figures: (1) a 20,000-delta stream (`messages.create(stream=True)`) read to the end,
guarded / plain, goal <= 1.02; (2) a non-streaming `messages.create()`, microseconds added per
call, goal <= 30 us, and (3) guarded against tenacity and stamina, goal: no slower (ratio
<= 1.00); (4) tracemalloc bytes per open stream whose first content event was read, goal
<= 2 KB more than plain.

Method (benchmarks/README.md): the fake servers run in a separate process; every round runs
the variants in an order that rotates and reverses (`_common.rotated`), `gc.collect()` before
each timed run, install/uninstall outside the timed runs; the timed rounds are shared by a
few fresh client processes (a process's memory layout alone moves its timings by a percent
or so). Wall-clock and client CPU time are recorded; goals are judged on the per-round median
of CPU time (the guard adds work, never waiting, on the success path; pairing within a round
cancels load drift).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import linecache
import pstats
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common as common
import anthropic
import stamina
import tenacity
from _common import (
    MESSAGE,
    Comparison,
    Headline,
    Out,
    ServerProcess,
    Stats,
    Verdict,
    add_common_args,
    begin,
    code_block,
    cprofile,
    difference,
    finish,
    make_client,
    md_table,
    out,
    policy_changes,
    profile_difference,
    ratio,
    report_progress,
    report_result,
    rotated,
    run_main,
    run_worker,
    set_guard,
    split,
    status_cell,
)

import sdkguard
from sdkguard._stream import guard_of

HERE = Path(__file__).resolve().parent
PLAIN, GUARDED, DISABLED, TENACITY, STAMINA = "plain", "guarded", "disabled", "tenacity", "stamina"
VARIANTS = (PLAIN, GUARDED, DISABLED)
CALL_VARIANTS = (PLAIN, GUARDED, DISABLED, TENACITY, STAMINA)
NAIVE = (TENACITY, STAMINA)

# Events a stream of one text block yields to the caller, besides its deltas (pings are not
# yielded): message_start, content_block_start, content_block_stop, message_delta, message_stop.
FRAMING_EVENTS = 5
# The memory server sends each body this long after its headers (see open_streams).
MEMORY_BODY_DELAY = 0.02
# What a hand-written retry retries: connection errors and timeouts (APITimeoutError is an
# APIConnectionError), 429 and 5xx (529 is an InternalServerError).
RETRYABLE = (anthropic.APIConnectionError, anthropic.RateLimitError, anthropic.InternalServerError)

if sdkguard.is_installed():
    sdkguard.uninstall()

# Goals (guarded vs plain) and what counts as negligible for `disabled` vs plain.
GOAL_STREAM_RATIO = 1.02
GOAL_CALL_ADDED_US = 30.0
GOAL_NAIVE_RATIO = 1.0
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
    deltas=20_000, rounds=12, call_rounds=40, calls=50, streams=200, memory_rounds=6, processes=3
)
QUICK = Sizes(
    deltas=300, rounds=3, call_rounds=3, calls=10, streams=10, memory_rounds=2, processes=1
)


def servers(deltas: int) -> dict[str, str]:
    """`stream`: one text block in `deltas` deltas; `small`: the default three-delta reply;
    `memory`: that reply, its body sent a moment after its headers (see open_streams)."""
    return {"stream": f"ok:{deltas}", "small": "ok", "memory": f"stall_after:0,{MEMORY_BODY_DELAY}"}


# --- the variants ---------------------------------------------------------------------------


Create = Callable[..., Any]


def naive_retry(client: anthropic.Anthropic, name: str) -> Create:
    """`client.messages.create` under a hand-written retry, as users write it: 5 attempts,
    exponential waits from 1 s to 8 s with jitter, on connection errors, 429 and 5xx."""

    def create(**kwargs: Any) -> Any:
        return client.messages.create(**kwargs)

    if name == TENACITY:
        return tenacity.retry(
            stop=tenacity.stop_after_attempt(5),
            wait=tenacity.wait_random_exponential(multiplier=1, max=8),
            retry=tenacity.retry_if_exception_type(RETRYABLE),
            reraise=True,
        )(create)
    return stamina.retry(on=RETRYABLE, attempts=5, wait_initial=1.0, wait_max=8.0)(create)


@contextmanager
def variant(name: str, policy: sdkguard.Policy, client: anthropic.Anthropic) -> Iterator[Create]:
    """Put the SDK in the state of variant `name` for the block; yields its `create`."""
    set_guard(name in (GUARDED, DISABLED), policy)
    if name in NAIVE:
        yield naive_retry(client, name)
    elif name == DISABLED:
        with sdkguard.policy(enabled=False):
            yield client.messages.create
    else:
        yield client.messages.create


def policy_for(phase: str) -> sdkguard.Policy:
    """What a bare `sdkguard.install()` uses; for the non-streaming call, without
    `stream_plain_calls`: the figure is the guard's own cost, and what sending the call as a
    stream costs is `plain_calls.py`'s figure (mostly the SDK's own stream parsing)."""
    policy = sdkguard.Policy.from_env()
    return dataclasses.replace(policy, stream_plain_calls=False) if phase == "call" else policy


# --- one sample of each measurement ---------------------------------------------------------


@dataclass
class Timing:
    wall: float
    cpu: float


def run_stream(create: Create, expected: int) -> Timing:
    """One long stream, created and read to the end."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    with create(stream=True, **MESSAGE) as stream:
        for _ in stream:
            count += 1
    timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
    if count != expected:
        raise RuntimeError(f"the stream yielded {count} events, expected {expected}")
    return timing


def run_calls(create: Create, calls: int) -> Timing:
    """A block of `calls` non-streaming calls; per call."""
    create(**MESSAGE)  # untimed: the first call after a toggle
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        create(**MESSAGE)
    return Timing((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls)


def open_streams(create: Create, n: int) -> float:
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
            streams_append(create(stream=True, **MESSAGE))
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


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    policy: dict[str, str] = field(default_factory=dict)
    """Policy fields that differ from the defaults (from SDKGUARD_* variables)."""
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """measure -> variant -> one value per round (seconds, or bytes per stream)."""
    figures: dict[str, Any] = field(default_factory=dict)
    goals: list[Verdict] = field(default_factory=list)
    disabled_negligible: list[Verdict] = field(default_factory=list)
    profiles: dict[str, list[str]] = field(default_factory=dict)
    """`stream`, `call`, `memory` -> a summarized profile, when a goal of that figure is missed."""


MEASURES = {
    "stream_wall": VARIANTS,
    "stream_cpu": VARIANTS,
    "call_wall": CALL_VARIANTS,
    "call_cpu": CALL_VARIANTS,
    "memory": VARIANTS,
}


def measure(sizes: Sizes, mode: str, out: Out) -> Results:
    started = time.perf_counter()
    policy = sdkguard.Policy.from_env()  # what a bare `sdkguard.install()` uses
    results = begin(Results, "sdkguard overhead benchmark", sizes, mode, out)
    results.policy = policy_changes(policy)
    results.samples = {key: {name: [] for name in names} for key, names in MEASURES.items()}
    samples = results.samples
    server = ServerProcess(servers(sizes.deltas))
    try:
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
                job = WorkerJob(phase, server.urls, sizes, start, stop)
                found = run_worker(Path(__file__), asdict(job), out)
                for key, values in found.items():
                    for name, value in values.items():
                        samples[key][name].extend(value)
                server.clear()

        out(
            f"\n[3/3] memory: {sizes.streams} open streams x {sizes.memory_rounds} rounds "
            "(tracemalloc, bytes per stream) ..."
        )
        client = make_client(server.urls["memory"])
        tracemalloc.start()
        try:
            for name in VARIANTS:  # warm-up: first-use caches
                with variant(name, policy, client) as create:
                    open_streams(create, min(sizes.streams, 10))
            for r in range(sizes.memory_rounds):
                for name in rotated(VARIANTS, r):
                    with variant(name, policy, client) as create:
                        samples["memory"][name].append(open_streams(create, sizes.streams))
                server.clear()
                out(progress(r, sizes.memory_rounds, samples["memory"], 1.0, "B"))
        finally:
            tracemalloc.stop()
            client.close()
        derive(results)
        explain(results, server, policy, out)
    finally:
        sdkguard.uninstall()
        server.close()
    return finish(results, started, markdown)


def explain(results: Results, server: ServerProcess, policy: sdkguard.Policy, out: Out) -> None:
    """For each goal missed, the profile that shows where the cost comes from (RESULTS.md)."""
    missed = {v.goal for v in results.goals if v.status != "met"}
    wanted = [
        (what, url)
        for what, url, goals in (
            ("stream", "stream", ("stream time",)),
            ("call", "small", ("create() time",)),
            ("memory", "memory", ("memory added",)),
        )
        if any(goal.startswith(goals) for goal in missed)
    ]
    for what, url in wanted:
        out(f"\nprofiling {what}: a goal is not met ...")
        client = make_client(server.urls[url])
        try:
            if what == "memory":
                lines: list[str] = []
                profile_memory(client, policy, results.sizes.streams, lines.append)
                results.profiles[what] = [line for line in lines if line.strip()][1:]
            else:
                results.profiles[what] = profile_time(
                    client, policy, what, results.sizes, out, top=14, full=False
                )
        finally:
            sdkguard.uninstall()
            client.close()
        server.clear()


# --- the client processes of the timed measurements -----------------------------------------


@dataclass
class WorkerJob:
    """Rounds `start` to `stop` of one timed measurement, for a fresh client process.

    Several processes share the rounds: a process's memory layout shifts its timings by up
    to a percent or two for its whole life, so one process's luck must not decide a goal.
    """

    phase: str
    """`stream` or `call`."""
    urls: dict[str, str]
    sizes: Sizes
    start: int
    stop: int


def worker(job: WorkerJob) -> None:
    """The body of a client process: warm up, then the rounds of `job`; prints P and R lines."""
    sizes = job.sizes
    policy = policy_for(job.phase)
    names = VARIANTS if job.phase == "stream" else CALL_VARIANTS
    samples: dict[str, dict[str, list[float]]] = {
        key: {name: [] for name in names} for key in (f"{job.phase}_wall", f"{job.phase}_cpu")
    }
    wall, cpu = samples[f"{job.phase}_wall"], samples[f"{job.phase}_cpu"]
    expected = sizes.deltas + FRAMING_EVENTS
    client = make_client(job.urls["stream" if job.phase == "stream" else "small"])
    try:

        def once(create: Create, calls: int) -> Timing:
            if job.phase == "stream":
                return run_stream(create, expected)
            return run_calls(create, calls)

        for name in names:  # warm-up: connection, imports, caches, specialisation
            with variant(name, policy, client) as create:
                once(create, 5)
        total = sizes.rounds if job.phase == "stream" else sizes.call_rounds
        for r in range(job.start, job.stop):
            for name in rotated(names, r):
                with variant(name, policy, client) as create:
                    timing = once(create, sizes.calls)
                wall[name].append(timing.wall)
                cpu[name].append(timing.cpu)
            if job.phase == "stream":
                line = progress(r, total, wall, 1e3, "ms")
            elif (r + 1) % 6 == 0 or r + 1 == job.stop:
                line = progress(r, total, wall, 1e6, "us")
            else:
                continue
            report_progress(line)
    finally:
        sdkguard.uninstall()
        client.close()
    report_result(samples)


def progress(r: int, rounds: int, samples: dict[str, list[float]], scale: float, unit: str) -> str:
    values = "  ".join(f"{name} {values[-1] * scale:8.1f}" for name, values in samples.items())
    return f"  round {r + 1:2d}/{rounds} ({unit}): {values}"


def derive(results: Results) -> None:
    s, f = results.samples, results.figures
    events = results.sizes.deltas + FRAMING_EVENTS
    for key, names in MEASURES.items():
        f[key] = {name: asdict(Stats.of(s[key][name])) for name in names}
    compared: dict[str, Comparison] = {}
    for name in (GUARDED, DISABLED):
        compared[f"stream_wall_ratio_{name}"] = ratio(
            s["stream_wall"][name], s["stream_wall"][PLAIN]
        )
        compared[f"stream_cpu_ratio_{name}"] = ratio(s["stream_cpu"][name], s["stream_cpu"][PLAIN])
        compared[f"stream_cpu_added_us_per_event_{name}"] = difference(
            s["stream_cpu"][name], s["stream_cpu"][PLAIN], 1e6 / events
        )
        compared[f"memory_added_bytes_{name}"] = difference(s["memory"][name], s["memory"][PLAIN])
    for name in (GUARDED, DISABLED, *NAIVE):
        for clock in ("wall", "cpu"):
            compared[f"call_{clock}_added_us_{name}"] = difference(
                s[f"call_{clock}"][name], s[f"call_{clock}"][PLAIN], 1e6
            )
            compared[f"call_{clock}_ratio_{name}"] = ratio(
                s[f"call_{clock}"][name], s[f"call_{clock}"][PLAIN]
            )
    for name in NAIVE:
        for clock in ("wall", "cpu"):
            compared[f"call_{clock}_guarded_vs_{name}"] = ratio(
                s[f"call_{clock}"][GUARDED], s[f"call_{clock}"][name]
            )
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
        *(
            Verdict.judge(
                f"create() time, guarded/{name}",
                GOAL_NAIVE_RATIO,
                "client CPU time",
                compared[f"call_cpu_guarded_vs_{name}"],
            )
            for name in NAIVE
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
    stream_goal, call_goal, tenacity_goal, stamina_goal, memory_goal = results.goals
    plain_call = f["call_cpu"][PLAIN]["median"] * 1e6
    per_event = f["stream_cpu_added_us_per_event_guarded"]["paired_median"]
    call_ratio = f["call_cpu_ratio_guarded"]["paired_median"]
    results.headlines = [
        Headline(
            "stream overhead",
            f"{results.sizes.deltas:,}-event stream, guarded / plain (CPU)",
            "<= 1.02",
            f"x{stream_goal.value:.4f} ({per_event:+.2f} us/event)",
            stream_goal.status,
        ),
        Headline(
            "call overhead",
            "non-streaming create(), the guard alone (stream_plain_calls off), us added (CPU)",
            "<= 30 us",
            f"{call_goal.value:+.1f} us (x{call_ratio:.3f} of {plain_call:.0f} us)",
            call_goal.status,
        ),
        Headline(
            "naive retry",
            "the same call under tenacity / stamina: guarded / theirs (CPU)",
            "no slower than either",
            f"x{tenacity_goal.value:.3f} of tenacity, x{stamina_goal.value:.3f} of stamina",
            "met" if tenacity_goal.status == stamina_goal.status == "met" else "not met",
        ),
        Headline(
            "memory",
            "bytes per open guarded stream, more than plain (tracemalloc)",
            "<= 2 KB",
            f"{memory_goal.value:+,.0f} B",
            memory_goal.status,
        ),
    ]


# --- the report -----------------------------------------------------------------------------


def header(results: Results, out: Out) -> None:
    m = results.machine
    load, cpus = m["load_before"], m["cpus_usable"] or m["cpus"] or 1
    if load and load[0] > max(cpus - 1, 0.5):
        out(
            f"WARNING:  the machine is busy (load {load[0]} on {cpus} CPUs): wall-clock figures "
            "are noisy; goals are judged on CPU time"
        )
    out("server:   3 FakeAnthropic servers on 127.0.0.1 in a separate process")
    out("baseline: plain = sdkguard not installed (uninstall() before every plain run)")
    policy = ", ".join(f"{k}={v}" for k, v in results.policy.items()) or "the default policy"
    out(f"guarded:  install() with {policy}")
    out("disabled: installed, calls made inside `with sdkguard.policy(enabled=False)`")
    out("tenacity, stamina: not installed, the call under a hand-written retry (create() only)")
    out(
        f"method:   variants interleaved in rotating order; timed rounds shared by "
        f"{results.sizes.processes} fresh client process(es); gc.collect() before each run"
    )


def _table(
    out: Out,
    stats: dict[str, dict[str, float]],
    scale: float,
    unit: str,
    extra: Callable[[str], str] | None = None,
) -> None:
    out(f"    {'':<9}{'min':>13}{'median':>13}{'max':>13}")
    for name, st in stats.items():
        cells = "".join(f"{st[k] * scale:10.1f} {unit:<2}" for k in ("min", "median", "max"))
        out(f"    {name:<9}{cells}{extra(name) if extra else ''}".rstrip())


def _cmp(c: dict[str, float], fmt: str) -> str:
    return Comparison(**c).text(fmt)


def _verdict_line(v: Verdict, fmt: str) -> str:
    return f"  => GOAL {v.line(fmt)}"


def report(results: Results, out: Out) -> None:
    f, s = results.figures, results.sizes
    events = s.deltas + FRAMING_EVENTS
    stream_goal, call_goal, tenacity_goal, stamina_goal, memory_goal = results.goals

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
    out(f"  disabled/plain, CPU   {_cmp(f['stream_cpu_ratio_disabled'], '{:.4f}')}")
    out(_verdict_line(stream_goal, "{:.4f}"))

    out(f"\n2. non-streaming create(), per call: {s.calls} calls x {s.call_rounds} rounds")
    out("  wall-clock:")
    _table(out, f["call_wall"], 1e6, "us")
    out("  client CPU time:")
    _table(out, f["call_cpu"], 1e6, "us")
    for name in (GUARDED, DISABLED, *NAIVE):
        out(f"  {name} added, CPU   {_cmp(f[f'call_cpu_added_us_{name}'], '{:+.1f} us')}")
        out(f"  {name} added, wall  {_cmp(f[f'call_wall_added_us_{name}'], '{:+.1f} us')}")
    out(_verdict_line(call_goal, "{:.1f}"))
    for name, goal in ((TENACITY, tenacity_goal), (STAMINA, stamina_goal)):
        out(f"  guarded/{name}, wall  {_cmp(f[f'call_wall_guarded_vs_{name}'], '{:.4f}')}")
        out(_verdict_line(goal, "{:.4f}"))

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
    out(f"\nthe run took {results.seconds:.0f} s")
    out("SUMMARY: " + "; ".join(f"{v.goal}: {v.status}" for v in results.goals))


def markdown(results: Results) -> str:
    """This benchmark's section of RESULTS.md."""
    f, s = results.figures, results.sizes
    stream_goal, call_goal, tenacity_goal, stamina_goal, memory_goal = results.goals
    events = s.deltas + FRAMING_EVENTS
    best = f["stream_cpu"][PLAIN]["min"]

    def cell(key: str, fmt: str) -> str:
        c = Comparison(**f[key])
        return f"{fmt.format(c.paired_median)} ({fmt.format(c.by_min)} / {fmt.format(c.by_median)})"

    def verdict(v: Verdict) -> str:
        return status_cell(v.status) + v.noise

    rows = [
        [
            f"{s.deltas:,}-event stream, CPU",
            f"{best * 1e3:.1f} ms ({best / events * 1e6:.2f} us/event)",
            "x" + cell("stream_cpu_ratio_guarded", "{:.4f}"),
            "<= 1.02",
            verdict(stream_goal),
        ],
        [
            f"{s.deltas:,}-event stream, wall",
            f"{f['stream_wall'][PLAIN]['min'] * 1e3:.1f} ms",
            "x" + cell("stream_wall_ratio_guarded", "{:.4f}"),
            "",
            "",
        ],
        [
            "`create()`, CPU",
            f"{f['call_cpu'][PLAIN]['min'] * 1e6:.0f} us per call",
            cell("call_cpu_added_us_guarded", "{:+.1f} us"),
            "<= 30 us",
            verdict(call_goal),
        ],
        [
            "`create()`, wall",
            f"{f['call_wall'][PLAIN]['min'] * 1e6:.0f} us per call",
            cell("call_wall_added_us_guarded", "{:+.1f} us"),
            "",
            "",
        ],
        [
            "memory per open stream",
            f"{f['memory'][PLAIN]['median']:,.0f} B",
            cell("memory_added_bytes_guarded", "{:+,.0f} B"),
            "<= 2,048 B",
            verdict(memory_goal),
        ],
    ]
    naive_rows = [
        [
            f"`{name}`",
            cell(f"call_cpu_added_us_{name}", "{:+.1f} us"),
            "x" + cell(f"call_cpu_guarded_vs_{name}", "{:.4f}"),
            "x" + cell(f"call_wall_guarded_vs_{name}", "{:.4f}"),
            verdict(goal),
        ]
        for name, goal in ((TENACITY, tenacity_goal), (STAMINA, stamina_goal))
    ]
    disabled_rows = [
        ["stream, disabled / plain", "x" + cell("stream_cpu_ratio_disabled", "{:.4f}")],
        ["`create()`, added by disabled", cell("call_cpu_added_us_disabled", "{:+.1f} us")],
        ["memory, added by disabled", cell("memory_added_bytes_disabled", "{:+,.0f} B")],
    ]
    policy = ", ".join(f"{k}={v}" for k, v in results.policy.items()) or "the default policy"
    return "\n\n".join(
        [
            "## Overhead: stream, call, memory, naive retry (`overhead.py`)",
            f"Guarded = `install()` with {policy}, for the non-streaming call with "
            "`stream_plain_calls=False` (the guard's own cost; sending the call as a stream "
            "is priced by `benchmarks/plain_calls.py`); plain = sdkguard not installed. "
            f"{s.rounds} rounds of one {s.deltas:,}-event stream, {s.call_rounds} rounds of "
            f"{s.calls} calls, {s.memory_rounds} rounds of {s.streams} open streams; the timed "
            f"rounds shared by {s.processes} fresh client processes. Each cell: per-round "
            "median (by minimum / by median).",
            md_table(["figure", "plain (best)", "guarded", "goal", "verdict"], rows),
            "**Naive retry.** The same non-streaming call, sdkguard not installed, under "
            "`@tenacity.retry(stop_after_attempt(5), wait_random_exponential(1, max=8), "
            "retry_if_exception_type(...))` and `@stamina.retry(on=..., attempts=5, "
            "wait_initial=1.0, wait_max=8.0)`: what users write by hand. Goal: guarded no "
            "slower than either (ratio <= 1.00).",
            md_table(
                [
                    "wrapper",
                    "its cost over plain (CPU)",
                    "guarded / it, CPU",
                    "guarded / it, wall",
                    "verdict",
                ],
                naive_rows,
            ),
            "**Installed but disabled** (`with sdkguard.policy(enabled=False)`) against not "
            "installed:",
            md_table(["figure", "disabled"], disabled_rows),
            *(
                f"**Profile, {PROFILE_TITLES[what]}** (a goal is not met; "
                f"`python benchmarks/overhead.py --profile {what}` shows more):\n\n"
                + code_block("\n".join(lines))
                for what, lines in results.profiles.items()
            ),
        ]
    )


PROFILE_TITLES = {
    "stream": "long stream, guarded against plain (cProfile)",
    "call": "non-streaming call, guarded against plain (cProfile)",
    "memory": "memory per open stream (tracemalloc, by the sdkguard line that allocated it)",
}


# --- profiling: where the guard's cost comes from -------------------------------------------


def profile(what: str, sizes: Sizes, out: Out) -> None:
    """`stream`/`call`: cProfile guarded and plain; `memory`: who allocates what a stream keeps."""
    policy = policy_for(what)
    server = ServerProcess(servers(sizes.deltas))
    try:
        client = make_client(server.urls[{"stream": "stream", "call": "small"}.get(what, "memory")])
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
    out: Out,
    *,
    top: int = 30,
    full: bool = True,
) -> list[str]:
    """cProfile guarded and plain; print their top functions (`full`) and return the lines
    of the functions the guard calls more often than the plain SDK."""
    per = sizes.deltas + FRAMING_EVENTS if what == "stream" else sizes.calls * 10
    unit = "stream" if what == "stream" else "call"
    profiles: dict[str, pstats.Stats] = {}
    for name in (GUARDED, PLAIN):
        with variant(name, policy, client) as create:
            profiles[name] = stats = cprofile(
                (lambda: run_stream(create, per))
                if what == "stream"
                else (lambda: run_calls(create, per))
            )
        if not full:
            continue
        buffer = io.StringIO()
        stats.stream = buffer  # type: ignore[attr-defined]
        buffer.write(f"\n===== cProfile, {name}, {what}: top functions by own time =====\n")
        stats.sort_stats("tottime").print_stats(15)
        if name == GUARDED:
            buffer.write("----- guarded: sdkguard's functions by cumulative time -----\n")
            stats.sort_stats("cumulative").print_stats(r"/sdkguard/(?!testing)", 25)
        out(buffer.getvalue().rstrip())
    done = 1 if what == "stream" else per + 1  # run_calls makes one more, untimed, call
    lines = profile_difference(profiles[GUARDED], profiles[PLAIN], done, unit, top)
    if full:
        out("\n===== guarded - plain: " + "\n".join(lines))
    return lines


def profile_memory(client: anthropic.Anthropic, policy: sdkguard.Policy, n: int, out: Out) -> None:
    """Bytes a guarded stream keeps beyond a plain one, by the sdkguard line that allocated
    them, and what the guard holds on to that the plain SDK would have freed."""
    tracemalloc.start(64)
    try:
        snapshots: dict[str, tracemalloc.Snapshot] = {}
        kept: dict[str, float] = {}
        for name in (PLAIN, GUARDED, PLAIN, GUARDED):  # the first two are warm-ups
            with variant(name, policy, client) as create:
                streams: list[anthropic.Stream[Any]] = []
                gc.collect()
                tracemalloc.clear_traces()
                for _ in range(n):
                    streams.append(create(stream=True, **MESSAGE))
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
                probe(guard_of(stream))
        except AttributeError:
            freed[f"{label} (not measured: internals changed)"] = 0.0
            continue
        gc.collect()
        freed[label] = (before - tracemalloc.get_traced_memory()[0]) / n
    return freed


def _drop_options(guard: Any) -> None:
    guard.call.options = None


def _drop_blocks(guard: Any) -> None:
    guard.protocol.message = None
    guard.protocol.blocks = {}


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/overhead.py",
        description="sdkguard's overhead vs the plain anthropic SDK, over loopback.",
    )
    add_common_args(parser, TIMEOUT)
    parser.add_argument(
        "--rounds", type=int, help="rounds of the stream measurement (full: 12, at least 11)"
    )
    parser.add_argument("--deltas", type=int, help="override the stream length (full: 20,000)")
    parser.add_argument("--call-rounds", type=int, help="override create() rounds (full: 40)")
    parser.add_argument("--calls", type=int, help="override calls per block (full: 50)")
    parser.add_argument("--streams", type=int, help="override open streams (full: 200)")
    parser.add_argument(
        "--processes", type=int, help="client processes sharing the timed rounds (full: 3)"
    )
    parser.add_argument(
        "--profile",
        choices=("stream", "call", "memory"),
        help="instead of measuring: cProfile guarded and plain (stream, call), or attribute the "
        "memory a guarded stream keeps (memory)",
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
        worker(WorkerJob(**{**job, "sizes": Sizes(**job["sizes"])}))
        return 0
    if args.profile:
        profile(args.profile, sizes, out)
        return 0
    return run_main(
        args, TIMEOUT, lambda: measure(sizes, "quick" if args.quick else "full", out), report
    )


TIMEOUT = (900.0, 120.0)

if __name__ == "__main__":
    sys.exit(main())
