"""What a continuation costs (`resume`, issue 15), over loopback.

    .venv/bin/python benchmarks/continuation.py            # full size, about a minute
    .venv/bin/python benchmarks/continuation.py --quick    # smoke run, seconds

Figures (no goal: reported):

1. **latency**: a stream reset after content (`message_start`, `content_block_start`, the
   ping and a few deltas) and continued, against a stream reset before content
   (`message_start`, `content_block_start`) and restarted: the time from sdkguard's decision
   (its `on_retry` hook, as the break is read) to the first content delta of the new attempt
   reaching the consumer, minus the wait sdkguard chose (the backoff is 0). The continued
   attempt builds the continuation request (the delivered part as an assistant turn), the
   server answers with the rest, and the splice drops its `message_start` and holds its text
   until the repeated tail is ruled out; the restart re-sends the original request. The
   difference is what continuing costs over a plain restart.
2. **client CPU**: the same message read to the end, continued once (the reset after content)
   against uninterrupted, both with `resume` on: the client's CPU time (the server is in
   another process), as a difference and a ratio.

Method: the fake server in a process of its own (`_server_process.py`, the message played by
`faults.continuable`: N words, a delta each), scripted per sample; a fresh client (so a
fresh connection) per sample, as in `resilience.py`; `gc.collect()` before each; the three
variants (uninterrupted, restarted, continued) interleaved in rotating order over the
rounds, so the figures are paired per round, after one untimed sample of each. The retry
budget is off and the backoff 0 without jitter; the wait is subtracted anyway as sdkguard
reported it. Every sample checks that the consumer read exactly the scripted text and one
`message_start`.
"""

from __future__ import annotations

import gc
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import _common as common
from _common import (
    MESSAGE,
    Headline,
    Out,
    ServerProcess,
    begin,
    difference,
    finish,
    make_client,
    md_table,
    ratio,
    rotated,
    set_guard,
    simple_main,
)

import sdkguard

TIMEOUT = (900.0, 120.0)
SERVER = "continuable"
UNINTERRUPTED, RESTARTED, CONTINUED = "uninterrupted", "restarted", "continued"
VARIANTS = (UNINTERRUPTED, RESTARTED, CONTINUED)
# message_start, content_block_start: the reset comes before content (a restart).
RESTART_AFTER = 2
# message_start, content_block_start, ping, then deltas: the reset comes after content.
CONTINUE_AFTER = 6

# sdkguard's WARNING line per retry is part of what a retry costs, but not of the output.
logging.getLogger("sdkguard").addHandler(logging.NullHandler())
logging.getLogger("sdkguard").propagate = False


@dataclass(frozen=True)
class Sizes:
    rounds: int
    deltas: int
    """Words in the message, one delta each."""


FULL = Sizes(rounds=41, deltas=200)
QUICK = Sizes(rounds=3, deltas=20)


class RetryClock:
    """An `on_retry` hook that notes when sdkguard decided to retry (or continue)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, sdkguard.RetryEvent]] = []

    def __call__(self, event: sdkguard.RetryEvent) -> None:
        self.events.append((time.perf_counter(), event))


def policy(clock: RetryClock) -> sdkguard.Policy:
    return sdkguard.Policy(
        backoff_initial=0.0,
        backoff_max=0.0,
        jitter=0.0,
        retry_budget=False,
        resume=True,
        on_retry=(clock,),
    )


def sample(server: ServerProcess, variant: str, deltas: int) -> dict[str, float]:
    """One stream read to the end: client CPU, and the latency after the break."""
    clock = RetryClock()
    set_guard(True, policy(clock))
    if variant == RESTARTED:
        server.script(SERVER, f"continuable_reset_after:{RESTART_AFTER},{deltas}")
    elif variant == CONTINUED:
        server.script(SERVER, f"continuable_reset_after:{CONTINUE_AFTER},{deltas}")
    client = make_client(server.urls[SERVER])
    text: list[str] = []
    arrivals: list[float] = []
    starts = 0
    try:
        gc.collect()
        cpu = time.process_time()
        start = time.perf_counter()
        with client.messages.create(stream=True, **MESSAGE) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    arrivals.append(time.perf_counter())
                    text.append(event.delta.text)  # type: ignore[union-attr]
                elif event.type == "message_start":
                    starts += 1
        end = time.perf_counter()
        cpu = time.process_time() - cpu
    finally:
        client.close()
    if "".join(text) != "word " * deltas or starts != 1:
        raise RuntimeError(f"{variant}: the consumer did not read the scripted message")
    found = {"cpu": cpu, "wall": end - start}
    if variant == UNINTERRUPTED:
        if clock.events:
            raise RuntimeError(f"a clean stream was retried: {clock.events}")
        return found
    if len(clock.events) != 1:
        raise RuntimeError(f"{variant}: expected one retry, got {len(clock.events)}")
    decided, event = clock.events[0]
    if event.continued != (variant == CONTINUED) or event.reason != "connection_reset":
        raise RuntimeError(f"{variant}: unexpected retry {event}")
    first = next(t for t in arrivals if t > decided)
    before = sum(1 for t in arrivals if t <= decided)
    if (before > 0) != (variant == CONTINUED):
        raise RuntimeError(f"{variant}: {before} deltas before the break")
    return {**found, "latency": first - decided - event.wait, "wait": event.wait}


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """variant -> one sample per round."""
    figures: dict[str, Any] = field(default_factory=dict)


def measure(sizes: Sizes, mode: str, out: Out) -> Results:
    started = time.perf_counter()
    results = begin(Results, "continuation benchmark", sizes, mode, out)
    server = ServerProcess({SERVER: f"continuable:{sizes.deltas}"})
    try:
        for variant in VARIANTS:  # untimed: imports, caches, the first continuation request
            sample(server, variant, sizes.deltas)
        server.clear()
        out(f"\n{sizes.rounds} rounds of {', '.join(VARIANTS)} ({sizes.deltas} deltas)")
        for r in range(sizes.rounds):
            for variant in rotated(VARIANTS, r):
                results.samples.setdefault(variant, []).append(
                    sample(server, variant, sizes.deltas)
                )
            s = results.samples
            out(
                f"  round {r + 1:2d}/{sizes.rounds}: after the break restarted "
                f"{s[RESTARTED][-1]['latency'] * 1e3:6.2f} ms, continued "
                f"{s[CONTINUED][-1]['latency'] * 1e3:6.2f} ms; client CPU "
                + "  ".join(f"{v} {s[v][-1]['cpu'] * 1e3:6.2f}" for v in VARIANTS)
                + " ms"
            )
            server.clear()
    finally:
        sdkguard.uninstall()
        server.close()
    derive(results)
    return finish(results, started, markdown)


def _stats_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": min(values) * 1e3,
        "median": statistics.median(values) * 1e3,
        "max": max(values) * 1e3,
    }


def derive(results: Results) -> None:
    s, f = results.samples, results.figures
    latency = {v: [x["latency"] for x in s[v]] for v in (RESTARTED, CONTINUED)}
    cpu = {v: [x["cpu"] for x in s[v]] for v in VARIANTS}
    f["latency_ms"] = {v: _stats_ms(values) for v, values in latency.items()}
    f["cpu_ms"] = {v: _stats_ms(values) for v, values in cpu.items()}
    f["wait_s_max"] = max(x["wait"] for v in (RESTARTED, CONTINUED) for x in s[v])
    f["latency_difference_ms"] = asdict(difference(latency[CONTINUED], latency[RESTARTED], 1e3))
    f["latency_ratio"] = asdict(ratio(latency[CONTINUED], latency[RESTARTED]))
    f["cpu_difference_ms"] = asdict(difference(cpu[CONTINUED], cpu[UNINTERRUPTED], 1e3))
    f["cpu_ratio"] = asdict(ratio(cpu[CONTINUED], cpu[UNINTERRUPTED]))
    lat_d, lat_r = f["latency_difference_ms"], f["latency_ratio"]
    cpu_d, cpu_r = f["cpu_difference_ms"], f["cpu_ratio"]
    results.headlines = [
        Headline(
            "continuation: latency",
            "a stream reset after content and continued vs reset before content and "
            "restarted: from sdkguard's decision to the new attempt's first content delta "
            "at the consumer, backoff 0",
            "none: reported",
            f"{lat_d['paired_median']:+.2f} ms, x{lat_r['paired_median']:.2f} "
            f"({f['latency_ms'][CONTINUED]['median']:.2f} vs "
            f"{f['latency_ms'][RESTARTED]['median']:.2f} ms, medians)",
            "-",
        ),
        Headline(
            "continuation: client CPU",
            f"a {results.sizes.deltas}-delta stream continued once vs uninterrupted "
            "(`resume` on both), client CPU time",
            "none: reported",
            f"{cpu_d['paired_median']:+.2f} ms, x{cpu_r['paired_median']:.2f}",
            "-",
        ),
    ]


def report(results: Results, out: Out) -> None:
    f = results.figures
    out("\nlatency after the break, minus the wait (ms; min / median / max)")
    for v in (RESTARTED, CONTINUED):
        x = f["latency_ms"][v]
        out(f"  {v:13} {x['min']:7.2f} {x['median']:7.2f} {x['max']:7.2f}")
    out(f"  wait chosen: at most {f['wait_s_max'] * 1e3:.3f} ms")
    out("client CPU of the whole stream (ms; min / median / max)")
    for v in VARIANTS:
        x = f["cpu_ms"][v]
        out(f"  {v:13} {x['min']:7.2f} {x['median']:7.2f} {x['max']:7.2f}")
    lat_d, lat_r = f["latency_difference_ms"], f["latency_ratio"]
    cpu_d, cpu_r = f["cpu_difference_ms"], f["cpu_ratio"]
    out(
        f"\ncontinued - restarted, latency: {lat_d['paired_median']:+.2f} ms per-round median "
        f"(by min {lat_d['by_min']:+.2f}, by median {lat_d['by_median']:+.2f}); "
        f"x{lat_r['paired_median']:.2f} (by min x{lat_r['by_min']:.2f}, by median "
        f"x{lat_r['by_median']:.2f}); goal: none, reported"
    )
    out(
        f"continued - uninterrupted, client CPU: {cpu_d['paired_median']:+.2f} ms per-round "
        f"median (by min {cpu_d['by_min']:+.2f}, by median {cpu_d['by_median']:+.2f}); "
        f"x{cpu_r['paired_median']:.2f} (by min x{cpu_r['by_min']:.2f}, by median "
        f"x{cpu_r['by_median']:.2f}); goal: none, reported"
    )
    out(f"\nthe run took {results.seconds:.0f} s")


def markdown(results: Results) -> str:
    f, s = results.figures, results.sizes
    labels = {
        RESTARTED: "reset before content, restarted",
        CONTINUED: "reset after content, continued",
    }
    latency_rows = [
        [label, f"{f['latency_ms'][v]['median']:.2f} ms", _range(f["latency_ms"][v])]
        for v, label in labels.items()
    ]
    cpu_rows = [[v, f"{f['cpu_ms'][v]['median']:.2f} ms", _range(f["cpu_ms"][v])] for v in VARIANTS]
    lat_d, lat_r = f["latency_difference_ms"], f["latency_ratio"]
    cpu_d, cpu_r = f["cpu_difference_ms"], f["cpu_ratio"]
    return "\n\n".join(
        [
            "## What a continuation costs (`continuation.py`)",
            f"A message of {s.deltas} words, a delta each, played by `faults.continuable`; "
            f"{s.rounds} rounds, the three variants interleaved, a fresh connection per "
            "sample, `resume` on, the backoff 0. **Latency**: from sdkguard's decision "
            "(`on_retry`) to the new attempt's first content delta at the consumer, minus "
            "the wait.",
            md_table(["after the break", "median", "min / max"], latency_rows),
            f"Continued minus restarted: {lat_d['paired_median']:+.2f} ms per-round median "
            f"(by min {lat_d['by_min']:+.2f}, by median {lat_d['by_median']:+.2f}), "
            f"x{lat_r['paired_median']:.2f}; no goal: reported.",
            "**Client CPU** of the whole stream:",
            md_table(["variant", "median", "min / max"], cpu_rows),
            f"Continued minus uninterrupted: {cpu_d['paired_median']:+.2f} ms per-round "
            f"median (by min {cpu_d['by_min']:+.2f}, by median {cpu_d['by_median']:+.2f}), "
            f"x{cpu_r['paired_median']:.2f}; no goal: reported.",
        ]
    )


def _range(x: dict[str, float]) -> str:
    return f"{x['min']:.2f} / {x['max']:.2f} ms"


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    return simple_main(
        argv,
        "benchmarks/continuation.py",
        "What a continuation costs: latency after the break and client CPU, over loopback.",
        TIMEOUT,
        (FULL, QUICK),
        measure,
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
