"""1,000 concurrent async streams, guarded vs plain: throughput, threads, memory.

    .venv/bin/python benchmarks/concurrency.py            # full size, about 2 minutes
    .venv/bin/python benchmarks/concurrency.py --quick    # smoke run, seconds

1,000 streams opened at once (`asyncio.gather`) in one event loop, 100 per `AsyncAnthropic`
client (see STREAMS_PER_CLIENT), each `messages.create(stream=True)` read to the end.
Figures, guarded against plain: the time for all of them (client CPU time, which judges the
goal, and wall-clock throughput in events per second): goal <= 1.05; the peak number of OS
threads of the client process while they run (goal: no thread per stream); its peak resident
memory (VmHWM).

Method: every sample is a fresh client process (a peak is a property of a whole process), the
fake server in another one; each round runs plain and guarded, in alternating order;
within a process, one untimed batch first opens the connections (kept alive for the timed
batch: the server's listen backlog is not what is measured) and warms up, then
`gc.collect()`, then the timed batch, while an asyncio task samples `/proc/self/status`
every 5 ms.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common as common
from _common import (
    MESSAGE,
    Headline,
    Out,
    ServerProcess,
    Verdict,
    begin,
    cprofile,
    finish,
    make_async_client,
    md_table,
    profile_difference,
    profile_section,
    ratio,
    rotated,
    run_worker,
    set_guard,
    simple_main,
    status_cell,
)

import sdkguard
from sdkguard._sdk import http

PLAIN, GUARDED = "plain", "guarded"
VARIANTS = (PLAIN, GUARDED)
GOAL_RATIO = 1.05
WARMUP = 20  # streams of the untimed first batch
# httpcore's pool scans every connection of a client for every request it assigns: with
# 1,000 connections in one client that scan is over half the client's CPU time (cProfile),
# the same with or without sdkguard, and would hide what the guard costs. So the 1,000
# streams share 10 clients, in one event loop.
STREAMS_PER_CLIENT = 100
THREADS_SLACK = 2  # "no thread per stream": at most this many threads more than plain
TIMEOUT = (900.0, 120.0)
FRAMING_EVENTS = 5  # message_start, content_block_start, content_block_stop, message_delta, stop


@dataclass(frozen=True)
class Sizes:
    streams: int
    deltas: int
    rounds: int


FULL = Sizes(streams=1000, deltas=10, rounds=11)
QUICK = Sizes(streams=50, deltas=5, rounds=2)


# --- a client process -----------------------------------------------------------------------


def _status() -> dict[str, int]:
    """Threads, VmRSS and VmHWM (kB) of this process (Linux)."""
    found: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


async def _batch(clients: Sequence[Any], n: int) -> int:
    """`n` streams at once, spread over `clients`, each read to the end; the events read."""

    async def one(client: Any) -> int:
        count = 0
        async with await client.messages.create(stream=True, **MESSAGE) as stream:
            async for _ in stream:
                count += 1
        return count

    return sum(await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(n))))


async def _sample(job: dict[str, Any]) -> dict[str, float]:
    sizes = Sizes(**job["sizes"])
    set_guard(job["variant"] == GUARDED, sdkguard.Policy.from_env())
    n = sizes.streams
    per_client = min(n, STREAMS_PER_CLIENT)
    limits = http.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    clients = [
        make_async_client(job["url"], http_options={"limits": limits})
        for _ in range(-(-n // per_client))
    ]
    expected = n * (sizes.deltas + FRAMING_EVENTS)
    try:
        await _batch(clients, min(n, WARMUP))  # untimed: imports, caches, first connections
        peak = {"threads": 0}

        async def watch() -> None:
            while True:
                peak["threads"] = max(peak["threads"], _status()["Threads"])
                await asyncio.sleep(0.005)

        before = _status()
        gc.collect()
        watcher = asyncio.create_task(watch())
        wall, cpu = time.perf_counter(), time.process_time()
        events = await _batch(clients, n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        watcher.cancel()
        after = _status()
    finally:
        for client in clients:
            await client.close()
    if events != expected:
        raise RuntimeError(f"{events} events delivered, expected {expected}")
    return {
        "wall": wall,
        "cpu": cpu,
        "events": events,
        "threads": max(peak["threads"], after["Threads"]),
        "threads_before": before["Threads"],
        "hwm_kb": after["VmHWM"],
        "rss_before_kb": before["VmRSS"],
    }


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """variant -> one sample (a fresh process) per round."""
    figures: dict[str, Any] = field(default_factory=dict)
    goal: Verdict | None = None
    markdown: str = ""


def measure(sizes: Sizes, mode: str, out: Out) -> Results:
    started = time.perf_counter()
    results = begin(Results, "concurrency benchmark", sizes, mode, out)
    out(
        f"{sizes.streams} concurrent async streams of {sizes.deltas} deltas, "
        f"{sizes.rounds} rounds, a fresh client process per sample"
    )
    server = ServerProcess({"streams": f"ok:{sizes.deltas}"})
    try:
        for r in range(sizes.rounds):
            for variant in rotated(VARIANTS, r):
                job = {"variant": variant, "url": server.urls["streams"], "sizes": asdict(sizes)}
                sample = run_worker(Path(__file__), job, out)
                results.samples.setdefault(variant, []).append(sample)
                server.clear()
            cells = "  ".join(
                f"{v} {s[-1]['cpu']:.2f} s CPU {s[-1]['threads']:.0f} threads "
                f"{s[-1]['hwm_kb'] / 1024:.0f} MB"
                for v, s in results.samples.items()
            )
            out(f"  round {r + 1:2d}/{sizes.rounds}: {cells}")
        derive(results)
        if results.headlines[0].status != "met":
            out("\nprofiling guarded against plain: the goal is not met ...")
            results.profile = profile(server.urls["streams"], min(sizes.streams, PROFILE_STREAMS))
    finally:
        server.close()
    return finish(results, started, markdown)


PROFILE_STREAMS = 200


def profile(url: str, n: int, top: int = 16) -> list[str]:
    """cProfile a batch of `n` concurrent streams, guarded and plain, in this process."""
    policy = sdkguard.Policy.from_env()

    async def batch() -> None:
        clients = [make_async_client(url) for _ in range(-(-n // STREAMS_PER_CLIENT))]
        try:
            await _batch(clients, n)
        finally:
            for client in clients:
                await client.close()

    profiles = {}
    for variant in VARIANTS:
        set_guard(variant == GUARDED, policy)
        profiles[variant] = cprofile(lambda: asyncio.run(batch()))
    set_guard(False, policy)
    return profile_difference(profiles[GUARDED], profiles[PLAIN], n, "stream", top)


def derive(results: Results) -> None:
    s, f = results.samples, results.figures
    for variant in VARIANTS:
        rows = s[variant]
        f[variant] = {
            "cpu_s_median": statistics.median(x["cpu"] for x in rows),
            "wall_s_median": statistics.median(x["wall"] for x in rows),
            "events_per_s_median": statistics.median(x["events"] / x["wall"] for x in rows),
            "threads_max": max(x["threads"] for x in rows),
            "threads_before": statistics.median(x["threads_before"] for x in rows),
            "hwm_mb_median": statistics.median(x["hwm_kb"] for x in rows) / 1024,
            "rss_before_mb_median": statistics.median(x["rss_before_kb"] for x in rows) / 1024,
        }
    cpu = ratio([x["cpu"] for x in s[GUARDED]], [x["cpu"] for x in s[PLAIN]])
    wall = ratio([x["wall"] for x in s[GUARDED]], [x["wall"] for x in s[PLAIN]])
    f["cpu_ratio"], f["wall_ratio"] = asdict(cpu), asdict(wall)
    extra_threads = f[GUARDED]["threads_max"] - f[PLAIN]["threads_max"]
    hwm_added = f[GUARDED]["hwm_mb_median"] - f[PLAIN]["hwm_mb_median"]
    f["threads_added"], f["hwm_mb_added"] = extra_threads, hwm_added
    f["hwm_kb_added_per_stream"] = hwm_added * 1024 / results.sizes.streams
    results.goal = Verdict.judge(
        f"{results.sizes.streams} async streams, time guarded/plain",
        GOAL_RATIO,
        "client CPU time",
        cpu,
    )
    no_thread_per_stream = extra_threads <= THREADS_SLACK
    f["no_thread_per_stream"] = no_thread_per_stream
    status = "met" if results.goal.status == "met" and no_thread_per_stream else "not met"
    results.headlines = [
        Headline(
            "concurrency",
            f"{results.sizes.streams:,} concurrent async guarded streams vs plain: "
            "throughput ratio, peak threads, peak RSS",
            "<= 1.05, no thread per stream",
            f"x{cpu.paired_median:.3f} (CPU; wall x{wall.paired_median:.3f}); peak threads "
            f"{f[GUARDED]['threads_max']:.0f} vs {f[PLAIN]['threads_max']:.0f}; peak RSS "
            f"{hwm_added:+.1f} MB ({f[GUARDED]['hwm_mb_median']:.0f} vs "
            f"{f[PLAIN]['hwm_mb_median']:.0f} MB)",
            status,
        )
    ]


def report(results: Results, out: Out) -> None:
    f = results.figures
    out("\n" + "=" * 80)
    for variant in VARIANTS:
        v = f[variant]
        out(
            f"  {variant:8} CPU {v['cpu_s_median']:.3f} s, wall {v['wall_s_median']:.3f} s, "
            f"{v['events_per_s_median']:,.0f} events/s, peak threads {v['threads_max']:.0f} "
            f"(before {v['threads_before']:.0f}), peak RSS {v['hwm_mb_median']:.1f} MB "
            f"(before {v['rss_before_mb_median']:.1f} MB)"
        )
    assert results.goal is not None
    out(f"  guarded/plain, wall: x{f['wall_ratio']['paired_median']:.4f}")
    out(f"  => GOAL {results.goal.line('{:.4f}')}")
    out(
        f"  => no thread per stream: {f['no_thread_per_stream']} "
        f"({f['threads_added']:+.0f} threads); peak RSS {f['hwm_mb_added']:+.1f} MB "
        f"({f['hwm_kb_added_per_stream']:+.2f} kB per stream)"
    )
    out(f"the run took {results.seconds:.0f} s")


def markdown(results: Results) -> str:
    f, s = results.figures, results.sizes
    rows = [
        [
            variant,
            f"{f[variant]['cpu_s_median']:.3f} s",
            f"{f[variant]['wall_s_median']:.3f} s",
            f"{f[variant]['events_per_s_median']:,.0f}",
            f"{f[variant]['threads_max']:.0f} (idle: {f[variant]['threads_before']:.0f})",
            f"{f[variant]['hwm_mb_median']:.1f} MB "
            f"(idle: {f[variant]['rss_before_mb_median']:.1f})",
        ]
        for variant in VARIANTS
    ]
    goal = results.goal
    assert goal is not None
    cpu, wall = f["cpu_ratio"], f["wall_ratio"]
    return "\n\n".join(
        [
            "## Concurrency (`concurrency.py`)",
            f"{s.streams:,} concurrent async streams of {s.deltas} deltas (`asyncio.gather`, one "
            f"event loop, {STREAMS_PER_CLIENT} streams per `AsyncAnthropic` client: with "
            "1,000 connections in one client, httpcore's pool scans them all for every "
            "request, over half the client's CPU time with or without sdkguard), read to the "
            f"end; {s.rounds} rounds, each sample a fresh client process; medians.",
            md_table(
                ["variant", "CPU", "wall", "events/s (wall)", "peak threads", "peak RSS"], rows
            ),
            f"Guarded / plain time: x{cpu['paired_median']:.3f} CPU per-round median (by min "
            f"x{cpu['by_min']:.3f}, by median x{cpu['by_median']:.3f}), wall "
            f"x{wall['paired_median']:.3f}; goal <= 1.05: {status_cell(goal.status)}"
            f"{goal.noise}. Threads: {f['threads_added']:+.0f} at the peak, so "
            f"{'no' if f['no_thread_per_stream'] else '**a**'} thread per stream. Peak RSS "
            f"{f['hwm_mb_added']:+.1f} MB ({f['hwm_kb_added_per_stream']:+.2f} kB per open "
            "stream, everything included).",
            *profile_section(
                f"{PROFILE_STREAMS} concurrent streams, guarded against plain, in one process, "
                "cProfile:",
                results.profile,
            ),
        ]
    )


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    return simple_main(
        argv,
        "benchmarks/concurrency.py",
        "1,000 concurrent async streams, guarded vs plain, over loopback.",
        TIMEOUT,
        (FULL, QUICK),
        measure,
        report,
        worker=lambda job: asyncio.run(_sample(job)),
    )


if __name__ == "__main__":
    sys.exit(main())
