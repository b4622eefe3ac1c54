"""How fast sdkguard notices a stall and recovers from a reset, over loopback.

    .venv/bin/python benchmarks/resilience.py            # full size, about 2 minutes
    .venv/bin/python benchmarks/resilience.py --quick    # smoke run, seconds

Figures:

1. **stall detection**: a stream whose response headers arrive, then nothing (the server
   keeps the socket open and silent): with `idle_timeout` 0.2, 1 and 5 s, the time from the
   silence (the moment `create()` returned the stream) to sdkguard's retry decision (its
   `on_retry` hook), minus the limit. Goal: <= 50 ms late.
2. **recovery**: a stream reset (TCP RST) after `message_start` and `content_block_start`,
   before any content: the time to the first delivered content minus the wait sdkguard chose
   (`RetryEvent.wait`), against a clean stream of the plain SDK on a fresh connection in the
   same round (the reconnect). Goal: at most 5 ms more than the reconnect. The excess includes
   the failed first attempt itself (its connection, request and two events), so it bounds
   what recovering costs from above.
3. **timelines** for the chart (`_chart.py`): the same two faults, as the plain SDK and the
   guarded SDK live through them, at illustrative settings (`idle_timeout` 2 s, the default
   1 s backoff without jitter).

Method: the fake server in a separate process, scripted per sample; a fresh client (so a
fresh connection) per sample; `gc.collect()` before each; the stall limits and the recovery
variants interleaved in rotating order over the rounds. Waits are not CPU-bound, so the
client runs in this process and wall-clock time is what counts. The retry budget is off (a
benchmark retries on purpose, many times) and the backoff short without jitter, so that
samples are quick; the waits are subtracted exactly as sdkguard reported them.
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
import anthropic
from _common import (
    MESSAGE,
    Headline,
    Out,
    ServerProcess,
    Verdict,
    begin,
    difference,
    finish,
    make_client,
    md_table,
    rotated,
    set_guard,
    simple_main,
    status_cell,
)

import sdkguard

GOAL_LATE_S = 0.050
GOAL_RECOVERY_EXCESS_S = 0.005
TIMEOUT = (900.0, 120.0)
FAULTS = "faults"  # the scripted server
PLAIN_FRESH, GUARDED_FRESH, GUARDED_RESET = "plain_fresh", "guarded_fresh", "guarded_reset"
RECOVERY_VARIANTS = (PLAIN_FRESH, GUARDED_FRESH, GUARDED_RESET)
# The reset comes after these events (message_start, content_block_start): before content.
RESET_AFTER = 2

# sdkguard's WARNING line per retry is part of what a retry costs, but not of the output.
logging.getLogger("sdkguard").addHandler(logging.NullHandler())
logging.getLogger("sdkguard").propagate = False


@dataclass(frozen=True)
class Sizes:
    limits: tuple[float, ...]
    """The idle limits of the stall measurement, seconds."""
    stall_rounds: int
    recovery_rounds: int
    backoff: float
    """The wait before a retry in the measured samples (subtracted from the figures)."""
    timeline_idle: float
    """The idle limit of the chart's silent stream."""
    horizon: float
    """How long the chart's plain SDK is watched waiting through the silence."""


FULL = Sizes(
    limits=(0.2, 1.0, 5.0),
    stall_rounds=11,
    recovery_rounds=21,
    backoff=0.05,
    timeline_idle=2.0,
    horizon=6.0,
)
QUICK = Sizes(
    limits=(0.1, 0.2),
    stall_rounds=2,
    recovery_rounds=2,
    backoff=0.01,
    timeline_idle=0.3,
    horizon=1.0,
)


class RetryClock:
    """An `on_retry` hook that notes when sdkguard decided to retry, and why."""

    def __init__(self) -> None:
        self.events: list[tuple[float, sdkguard.RetryEvent]] = []

    def __call__(self, event: sdkguard.RetryEvent) -> None:
        self.events.append((time.perf_counter(), event))

    def only(self, reason: str) -> tuple[float, sdkguard.RetryEvent]:
        """The one retry of a sample, which must be for `reason`."""
        if len(self.events) != 1 or self.events[0][1].reason != reason:
            seen = [e.reason for _, e in self.events]
            raise RuntimeError(f"expected one retry for {reason}, got {seen}")
        return self.events[0]


def policy(clock: RetryClock, **fields: Any) -> sdkguard.Policy:
    return sdkguard.Policy(jitter=0.0, retry_budget=False, on_retry=(clock,), **fields)


# --- samples --------------------------------------------------------------------------------


def stall_sample(server: ServerProcess, limit: float, backoff: float) -> dict[str, float]:
    """One silent stream under `idle_timeout=limit`: seconds from the silence to the retry."""
    clock = RetryClock()
    set_guard(True, policy(clock, idle_timeout=limit, backoff_initial=backoff))
    server.script(FAULTS, "stall_after:0")  # headers, then silence; the retry gets `ok`
    client = make_client(server.urls[FAULTS])
    try:
        gc.collect()
        start = time.perf_counter()
        with client.messages.create(stream=True, **MESSAGE) as stream:
            silence = time.perf_counter()  # the headers are in: the body is silent from here
            events = sum(1 for _ in stream)
        end = time.perf_counter()
    finally:
        client.close()
    detected, event = clock.only("stall_idle")
    if events < 3:
        raise RuntimeError(f"the retried stream delivered {events} events")
    return {
        "late": detected - silence - limit,
        "silence": silence - start,
        "detected": detected - start,
        "wait": event.wait,
        "end": end - start,
    }


def recovery_sample(server: ServerProcess, variant: str, backoff: float) -> dict[str, float]:
    """Seconds from `create()` to the first delivered content, on a fresh connection."""
    clock = RetryClock()
    set_guard(variant != PLAIN_FRESH, policy(clock, backoff_initial=backoff))
    if variant == GUARDED_RESET:
        server.script(FAULTS, f"reset_after:{RESET_AFTER}")
    client = make_client(server.urls[FAULTS])
    try:
        gc.collect()
        start = time.perf_counter()
        with client.messages.create(stream=True, **MESSAGE) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    break
        first = time.perf_counter() - start
    finally:
        client.close()
    if variant != GUARDED_RESET:
        if clock.events:
            raise RuntimeError(f"a clean stream was retried: {clock.events}")
        return {"first": first, "wait": 0.0, "detected": 0.0}
    detected, event = clock.only("connection_reset")
    return {
        "first": first,
        "wait": event.wait,
        "detected": detected - start,
        "after_retry": first - (detected - start) - event.wait,
    }


# --- timelines for the chart ----------------------------------------------------------------


Timeline = list[tuple[float, str]]
"""(seconds since the call started, what the caller or sdkguard saw)."""


def watch(
    client: anthropic.Anthropic, clock: RetryClock | None, stop_after: float | None = None
) -> Timeline:
    """One streamed call, as its caller lives it: when each kind of event first arrived, when
    sdkguard decided to retry, how it ended. `stop_after`: stop watching once an event arrives
    this late (the plain SDK, silent for longer than the chart shows)."""
    seen: Timeline = [(0.0, "request")]
    start = time.perf_counter()
    try:
        with client.messages.create(stream=True, **MESSAGE) as stream:
            seen.append((time.perf_counter() - start, "headers"))
            kinds: set[str] = set()
            for event in stream:
                now = time.perf_counter() - start
                if stop_after is not None and now > stop_after:
                    seen.append((now, "still waiting"))
                    break
                if event.type not in kinds:
                    kinds.add(event.type)
                    seen.append((now, event.type))
            else:
                seen.append((time.perf_counter() - start, "complete"))
    except Exception as error:  # the plain SDK's fate under a reset: the call is lost
        seen.append(
            (
                time.perf_counter() - start,
                f"raised {type(error).__module__}.{type(error).__qualname__}",
            )
        )
    for at, event in clock.events if clock else ():
        seen += [
            (at - start, f"retry decided: {event.reason}"),
            (at - start + event.wait, "retry sent"),
        ]
    return sorted(seen)


def timelines(server: ServerProcess, sizes: Sizes) -> dict[str, dict[str, Timeline]]:
    """The chart's two faults, plain and guarded, one run each."""
    url = server.urls[FAULTS]
    found: dict[str, dict[str, Timeline]] = {"stall": {}, "reset": {}}
    # The plain SDK's own default timeout (600 s per read): the silence outlasts the chart.
    plain = make_client(url, timeout=anthropic.DEFAULT_TIMEOUT)
    clock = RetryClock()
    guarded_policy = policy(clock, idle_timeout=sizes.timeline_idle)
    guarded = make_client(url)
    try:
        set_guard(False, guarded_policy)
        server.script(FAULTS, f"stall_after:3,{sizes.horizon + 0.5}")
        found["stall"]["plain"] = watch(plain, None, stop_after=sizes.horizon)
        server.script(FAULTS, f"reset_after:{RESET_AFTER}")
        found["reset"]["plain"] = watch(plain, None)
        set_guard(True, guarded_policy)
        server.script(FAULTS, "stall_after:3")
        found["stall"]["guarded"] = watch(guarded, clock)
        clock.events.clear()
        server.script(FAULTS, f"reset_after:{RESET_AFTER}")
        found["reset"]["guarded"] = watch(guarded, clock)
    finally:
        set_guard(False, guarded_policy)
        plain.close()
        guarded.close()
    return found


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    stall: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """limit (as text) -> one sample per round."""
    recovery: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """variant -> one sample per round."""
    timelines: dict[str, dict[str, Timeline]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    goals: list[Verdict] = field(default_factory=list)
    markdown: str = ""


def measure(sizes: Sizes, mode: str, out: Out) -> Results:
    started = time.perf_counter()
    results = begin(Results, "resilience benchmark", sizes, mode, out)
    server = ServerProcess({FAULTS: "ok"})
    try:
        out(f"\n[1/3] stall detection: idle limits {sizes.limits} s x {sizes.stall_rounds} rounds")
        for r in range(sizes.stall_rounds):
            for limit in rotated(sizes.limits, r):
                sample = stall_sample(server, limit, sizes.backoff)
                results.stall.setdefault(f"{limit:g}", []).append(sample)
            lates = "  ".join(
                f"{k} s: {v[-1]['late'] * 1e3:+6.1f} ms" for k, v in results.stall.items()
            )
            out(f"  round {r + 1:2d}/{sizes.stall_rounds}: late by {lates}")
            server.clear()
        out(f"\n[2/3] recovery from a reset before content: {sizes.recovery_rounds} rounds")
        for r in range(sizes.recovery_rounds):
            for variant in rotated(RECOVERY_VARIANTS, r):
                sample = recovery_sample(server, variant, sizes.backoff)
                results.recovery.setdefault(variant, []).append(sample)
            firsts = "  ".join(
                f"{k} {v[-1]['first'] * 1e3:6.2f} ms" for k, v in results.recovery.items()
            )
            out(f"  round {r + 1:2d}/{sizes.recovery_rounds}: first content {firsts}")
            server.clear()
        out("\n[3/3] timelines for the chart (plain and guarded, one run each) ...")
        results.timelines = timelines(server, sizes)
    finally:
        sdkguard.uninstall()
        server.close()
    derive(results)
    return finish(results, started, markdown)


def _absolute(goal: str, limit: float, values: Sequence[float]) -> Verdict:
    """A verdict on an absolute figure, judged on its median (`by_min`, `by_median` hold the
    minimum and the maximum, shown for context)."""
    median = statistics.median(values)
    status = "met" if median <= limit else "not met"
    return Verdict(goal, limit, "wall-clock", median, min(values), max(values), status, True)


def derive(results: Results) -> None:
    f = results.figures
    for limit, samples in results.stall.items():
        late = [s["late"] for s in samples]
        f[f"stall_{limit}"] = {
            "late_ms_min": min(late) * 1e3,
            "late_ms_median": statistics.median(late) * 1e3,
            "late_ms_max": max(late) * 1e3,
            "detected_s_median": statistics.median(s["detected"] for s in samples),
        }
    rec = results.recovery
    first = {v: [s["first"] for s in rec[v]] for v in RECOVERY_VARIANTS}
    recovered = [s["first"] - s["wait"] for s in rec[GUARDED_RESET]]
    f["recovery_ms"] = {
        "first_minus_wait": asdict(_stats_ms(recovered)),
        **{v: asdict(_stats_ms(values)) for v, values in first.items()},
        "wait_s": statistics.median(s["wait"] for s in rec[GUARDED_RESET]),
        "detected_ms_median": statistics.median(s["detected"] for s in rec[GUARDED_RESET]) * 1e3,
        "after_retry_ms_median": statistics.median(s["after_retry"] for s in rec[GUARDED_RESET])
        * 1e3,
    }
    excess = difference(recovered, first[PLAIN_FRESH], 1e3)
    f["recovery_excess_ms"] = asdict(excess)
    f["guarded_fresh_added_ms"] = asdict(difference(first[GUARDED_FRESH], first[PLAIN_FRESH], 1e3))
    results.goals = [
        _absolute(
            f"stall detection at {limit} s, ms late",
            GOAL_LATE_S * 1e3,
            [s["late"] * 1e3 for s in samples],
        )
        for limit, samples in results.stall.items()
    ]
    results.goals.append(
        Verdict.judge(
            "recovery, ms over a fresh connection's first content",
            GOAL_RECOVERY_EXCESS_S * 1e3,
            "wall-clock",
            excess,
        )
    )
    stall_goals, recovery_goal = results.goals[:-1], results.goals[-1]
    reconnect = f["recovery_ms"][PLAIN_FRESH]["median"]
    results.headlines = [
        Headline(
            "stall detection",
            "idle limits "
            + ", ".join(f"{k} s" for k in results.stall)
            + " against a silent stream: silence to retry, minus the limit",
            "<= 50 ms late",
            ", ".join(
                f"{k} s: {v.value:+.1f} ms" for k, v in zip(results.stall, stall_goals, strict=True)
            )
            + " (median)",
            "met" if all(v.status == "met" for v in stall_goals) else "not met",
        ),
        Headline(
            "recovery",
            "reset before content: first delivered content minus the wait, "
            "over a fresh plain stream's",
            "<= 5 ms plus reconnect",
            f"{excess.paired_median:+.2f} ms (reconnect: {reconnect:.2f} ms)",
            recovery_goal.status,
        ),
    ]


@dataclass
class _Ms:
    min: float
    median: float
    max: float


def _stats_ms(values: Sequence[float]) -> _Ms:
    return _Ms(min(values) * 1e3, statistics.median(values) * 1e3, max(values) * 1e3)


def report(results: Results, out: Out) -> None:
    f = results.figures
    out("\n" + "=" * 80)
    out("1. stall detection: silence to retry decision, minus the idle limit (ms)")
    for limit in results.stall:
        s = f[f"stall_{limit}"]
        out(
            f"  idle_timeout={limit} s: min {s['late_ms_min']:+.1f}  "
            f"median {s['late_ms_median']:+.1f}  max {s['late_ms_max']:+.1f}"
        )
    for v in results.goals[:-1]:
        out(f"  => GOAL {v.line('{:.1f}')}")
    r = f["recovery_ms"]
    out("\n2. recovery from a reset before content (ms; min / median / max)")
    for key in (PLAIN_FRESH, GUARDED_FRESH, GUARDED_RESET, "first_minus_wait"):
        out(f"  {key:18} {r[key]['min']:7.2f} {r[key]['median']:7.2f} {r[key]['max']:7.2f}")
    out(
        f"  wait chosen: {r['wait_s']:.3f} s; reset detected after "
        f"{r['detected_ms_median']:.2f} ms (median)"
    )
    out(f"  => GOAL {results.goals[-1].line('{:.2f}')}")
    out("\n3. timelines (s)")
    for scenario, rows in results.timelines.items():
        for variant, timeline in rows.items():
            out(
                f"  {scenario:5} {variant:7} "
                + ", ".join(f"{t:.3f} {what}" for t, what in timeline)
            )
    out(f"\nthe run took {results.seconds:.0f} s")


def markdown(results: Results) -> str:
    f, s = results.figures, results.sizes
    stall_rows = [
        [
            f"`idle_timeout={limit}`",
            f"{f[f'stall_{limit}']['late_ms_median']:+.1f} ms",
            f"{v.by_min:+.1f} / {v.by_median:+.1f} ms",
            "<= 50 ms",
            status_cell(v.status),
        ]
        for limit, v in zip(results.stall, results.goals[:-1], strict=True)
    ]
    r = f["recovery_ms"]
    labels = {
        PLAIN_FRESH: "plain SDK, clean stream, fresh connection (the reconnect)",
        GUARDED_FRESH: "sdkguard, clean stream, fresh connection",
        GUARDED_RESET: "sdkguard, reset before content, then a clean stream",
        "first_minus_wait": "the same, minus the wait sdkguard chose",
    }
    recovery_rows = [
        [label, f"{r[key]['median']:.2f} ms", f"{r[key]['min']:.2f} / {r[key]['max']:.2f} ms"]
        for key, label in labels.items()
    ]
    goal = results.goals[-1]
    excess = f["recovery_excess_ms"]
    return "\n\n".join(
        [
            "## Stall detection and recovery (`resilience.py`)",
            f"**Stall detection.** The server sends the response headers, then nothing, the "
            f"socket open. Time from the silence (when `create()` returned the stream) to "
            f"sdkguard's retry decision (its `on_retry` hook), minus the idle limit; "
            f"{s.stall_rounds} rounds, the limits interleaved.",
            md_table(["limit", "late (median)", "min / max", "goal", "verdict"], stall_rows),
            f"**Recovery.** The server resets the connection (TCP RST) after `message_start` and "
            f"`content_block_start`, before any content; the retry gets a clean stream. Time "
            f"from `create()` to the first content event, each sample on a fresh connection, "
            f"{s.recovery_rounds} rounds, the three variants interleaved. The wait before the "
            f"retry (here {r['wait_s'] * 1e3:.0f} ms, set short) is subtracted as sdkguard "
            "reported it.",
            md_table(["time to first content", "median", "min / max"], recovery_rows),
            f"Recovery minus the reconnect: {excess['paired_median']:+.2f} ms per-round median "
            f"(by min {excess['by_min']:+.2f}, by median {excess['by_median']:+.2f}); goal "
            f"<= 5 ms: {status_cell(goal.status)}{goal.noise}. This includes the failed "
            "attempt itself (its connection, request and two events), so it bounds what "
            "recovering costs from above. Where the time goes (medians): the failed attempt "
            f"until sdkguard decided to retry, {r['detected_ms_median']:.2f} ms; then the wait; "
            f"then {r['after_retry_ms_median']:.2f} ms from the end of the wait to the first "
            f"content, against {r[PLAIN_FRESH]['median']:.2f} ms for a fresh plain stream.",
        ]
    )


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    return simple_main(
        argv,
        "benchmarks/resilience.py",
        "How fast sdkguard detects a stall and recovers from a reset, over loopback.",
        TIMEOUT,
        (FULL, QUICK),
        measure,
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
