"""What a continuation costs (`resume`, issue 15), over loopback.

    .venv/bin/python benchmarks/continuation.py            # full size, about two minutes
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
3. **held blocks**: what holding back the blocks that are not text costs a stream that does
   not break. With `resume` on, a thinking block reaches the consumer only when the answer's
   text begins, and a tool call at the end of a message only with `message_delta`
   (`_continuation.Holder`). A message written at a model's pace (`_paced_server.py`: a delta
   every 25 ms) of a thinking block (40 deltas: a second of thinking) then a short text, and
   one of a short text then a tool call (20 deltas of JSON input): the time from the request
   to the first thinking (or tool input) delta the consumer sees, and to the first text
   delta, `resume` on minus off, for the library (the sync client's
   `messages.create(stream=True)`) and for `sdkguard proxy` (`--resume` / `--no-resume`)
   read by the plain SDK (sdkguard uninstalled, checked). Expected: the held block is seen
   as late as the event that releases it (thinking: the thinking time, 40 x 25 ms; the tool
   call: its input's 19 pauses), the text not later.

Method: the fake server in a process of its own (`_server_process.py`, the message played by
`faults.continuable`: N words, a delta each), scripted per sample; a fresh client (so a
fresh connection) per sample, as in `resilience.py`; `gc.collect()` before each; the three
variants (uninterrupted, restarted, continued) interleaved in rotating order over the
rounds, so the figures are paired per round, after one untimed sample of each. The retry
budget is off and the backoff 0 without jitter; the wait is subtracted anyway as sdkguard
reported it. Every sample checks that the consumer read exactly the scripted text and one
`message_start`. The held blocks' four variants (library and proxy, `resume` on and off) are
interleaved the same way, both messages in every round, and every sample checks that the
consumer read exactly the events the server sent (but the ping), in their order.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import _common as common
import _paced_server
from _common import (
    HERE,
    MESSAGE,
    ROOT,
    Headline,
    LineProcess,
    Out,
    ServerProcess,
    begin,
    check_loopback,
    difference,
    finish,
    make_client,
    md_table,
    ratio,
    rotated,
    set_guard,
    simple_main,
)
from proxy import Served, free_port

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
    held_rounds: int
    """Rounds of the held blocks (figure 3): every variant once per message."""
    thinking_deltas: int
    tool_deltas: int
    """Deltas of the tool call's JSON input."""
    text_deltas: int
    """Deltas of the text after the thinking block, and before the tool call."""
    pace: float
    """Seconds before each delta of the paced messages."""


FULL = Sizes(
    rounds=41,
    deltas=200,
    held_rounds=11,
    thinking_deltas=40,
    tool_deltas=20,
    text_deltas=5,
    pace=0.025,
)
QUICK = Sizes(
    rounds=3, deltas=20, held_rounds=2, thinking_deltas=8, tool_deltas=4, text_deltas=2, pace=0.025
)


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
                    text.append(getattr(event.delta, "text", ""))  # typed per SDK release
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


# --- blocks held back while `resume` is on ---------------------------------------------------

THINKING, TOOL = "thinking", "tool"
MESSAGES = (THINKING, TOOL)
HELD_DELTA = {THINKING: "thinking_delta", TOOL: "input_json_delta"}
"""The first delta of the block held back, per message."""
LIBRARY, PROXY = "library", "proxy"
FRONTS = (LIBRARY, PROXY)
OFF, ON = "off", "on"
HELD_VARIANTS = tuple(f"{front} {mode}" for front in FRONTS for mode in (OFF, ON))
MARKS = ("first_event", "held", "text", "end")
"""Seconds from the request to: the first event the consumer sees (`message_start`), the held
block's first delta, the first text delta, `message_stop`."""
PROXY_LOGS = ROOT / ".cache" / "bench-continuation"


def model(message: str) -> str:
    """The model a paced message is asked for: the paced server answers by it."""
    return f"claude-benchmark-{message}"


def paced_specs(sizes: Sizes) -> dict[str, str]:
    """message -> its `_paced_server.py` answer."""
    return {
        THINKING: f"thinking:{sizes.thinking_deltas},{sizes.text_deltas}",
        TOOL: f"tool:{sizes.text_deltas},{sizes.tool_deltas}",
    }


def expected_delay_ms(message: str, sizes: Sizes) -> float:
    """How much later the held block's first delta should be seen with `resume` on: the
    pauses from it to the event that releases it (the first text delta; `message_delta`,
    right after the tool call's last delta)."""
    pauses = sizes.thinking_deltas if message == THINKING else sizes.tool_deltas - 1
    return pauses * sizes.pace * 1e3


class PacedServerProcess(LineProcess):
    """`_paced_server.py` as a child: one URL, answering each message by its model."""

    def __init__(self, sizes: Sizes) -> None:
        args = [sys.executable, str(HERE / "_paced_server.py"), "--pace", str(sizes.pace)]
        for message, spec in paced_specs(sizes).items():
            args += ["--answer", f"{model(message)}={spec}"]
        super().__init__(args)
        self.url = check_loopback(json.loads(self.readline())["url"])


@contextmanager
def proxies(upstream: str) -> Iterator[dict[str, str]]:
    """`sdkguard proxy --resume` and `--no-resume` in front of `upstream`: mode -> URL."""
    with ExitStack() as stack:
        urls = {}
        for mode, flag in ((ON, "--resume"), (OFF, "--no-resume")):
            port = free_port()
            command = [sys.executable, "-m", "sdkguard", "proxy", flag]
            command += ["--upstream", upstream, "--port", str(port)]
            log = PROXY_LOGS / f"sdkguard-proxy-resume-{mode}.log"
            served = Served(f"sdkguard proxy {flag}", command, port, log)
            stack.callback(served.stop)
            urls[mode] = served.url
        yield urls


def _shape(data: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the consumer must read of an event: its type, index, block or delta type, and
    the delta's content."""
    kind = data["type"]
    if kind == "content_block_start":
        return (kind, data["index"], data["content_block"]["type"])
    if kind == "content_block_delta":
        delta = data["delta"]
        key = next(k for k in ("text", "thinking", "partial_json", "signature") if k in delta)
        return (kind, data["index"], delta["type"], delta[key])
    if kind == "content_block_stop":
        return (kind, data["index"])
    return (kind,)


def expected_shapes(sizes: Sizes) -> dict[str, list[tuple[Any, ...]]]:
    """message -> what its consumer must read: every event the server sends, but the ping
    (the SDK yields none)."""
    return {
        message: [
            _shape(data)
            for name, data, _ in _paced_server.events(spec, model(message))
            if name != "ping"
        ]
        for message, spec in paced_specs(sizes).items()
    }


def held_sample(url: str, message: str, expected: list[tuple[Any, ...]]) -> dict[str, float]:
    """One paced message read to the end: the MARKS, in seconds from the request."""
    client = make_client(url)
    seen: list[tuple[float, Any]] = []
    try:
        gc.collect()
        start = time.perf_counter()
        with client.messages.create(stream=True, **{**MESSAGE, "model": model(message)}) as stream:
            # Nothing but the clock in the loop: the events a release hands over at once
            # are timed as they reach the consumer, not after checking each of them.
            for event in stream:
                seen.append((time.perf_counter(), event))
    finally:
        client.close()
    shapes = [_shape(event.model_dump()) for _, event in seen]
    if shapes != expected:
        raise RuntimeError(f"{message}: the consumer did not read the events sent: {shapes}")
    first: dict[str, float] = {}
    for at, event in seen:
        key = event.delta.type if event.type == "content_block_delta" else event.type
        first.setdefault(key, at - start)
    return {
        "first_event": first["message_start"],
        "held": first[HELD_DELTA[message]],
        "text": first["text_delta"],
        "end": first["message_stop"],
    }


def measure_held(sizes: Sizes, results: Results, out: Out) -> None:
    """Figure 3: the paced messages, library and proxy, `resume` on and off."""
    expected = expected_shapes(sizes)
    server = PacedServerProcess(sizes)
    try:
        with proxies(server.url) as proxy_urls:

            def one(variant: str, message: str) -> dict[str, float]:
                front, mode = variant.split()
                if front == LIBRARY:
                    set_guard(True, sdkguard.Policy(resume=mode == ON))
                    url = server.url
                else:  # the proxy's client: the plain SDK
                    set_guard(False, sdkguard.Policy())
                    url = proxy_urls[mode]
                return held_sample(url, message, expected[message])

            for message in MESSAGES:  # untimed: imports, connections, the proxies' first call
                for variant in HELD_VARIANTS:
                    one(variant, message)
            out(
                f"\n{sizes.held_rounds} rounds of {', '.join(HELD_VARIANTS)} (resume), each "
                f"message: a thinking block of {sizes.thinking_deltas} deltas then "
                f"{sizes.text_deltas} text deltas; {sizes.text_deltas} text deltas then a tool "
                f"call of {sizes.tool_deltas}; a delta every {sizes.pace * 1e3:.0f} ms"
            )
            for r in range(sizes.held_rounds):
                for message in MESSAGES:
                    samples = results.held.setdefault(message, {})
                    for variant in rotated(HELD_VARIANTS, r):
                        samples.setdefault(variant, []).append(one(variant, message))
                    out(
                        f"  round {r + 1:2d}/{sizes.held_rounds} {message:8}: first "
                        f"{HELD_DELTA[message]} / text_delta (ms) "
                        + "  ".join(
                            f"{v} {samples[v][-1]['held'] * 1e3:6.1f} / "
                            f"{samples[v][-1]['text'] * 1e3:6.1f}"
                            for v in HELD_VARIANTS
                        )
                    )
    finally:
        server.close()


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """variant -> one sample per round."""
    held: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    """The held blocks: message -> variant -> one sample (the MARKS) per round."""
    figures: dict[str, Any] = field(default_factory=dict)


def measure(sizes: Sizes, mode: str, out: Out) -> Results:
    started = time.perf_counter()
    results = begin(Results, "continuation benchmark", sizes, mode, out)
    try:
        measure_continued(sizes, results, out)
        measure_held(sizes, results, out)
    finally:
        sdkguard.uninstall()
    derive(results)
    return finish(results, started, markdown)


def measure_continued(sizes: Sizes, results: Results, out: Out) -> None:
    """Figures 1 and 2: a stream broken and continued, restarted, or uninterrupted."""
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
        server.close()


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
    derive_held(results)


BLOCK = {THINKING: "thinking", TOOL: "tool call"}
FIRST_HELD = {THINKING: "first thinking delta", TOOL: "the tool call's first input delta"}
RELEASED_TO = {THINKING: "text", TOOL: "end"}
"""The last mark a release hands over: the first text delta; `message_stop`."""
RELEASE_LABEL = {THINKING: "the first text delta", TOOL: "`message_stop`"}


def derive_held(results: Results) -> None:
    """Figure 3: per message, each variant's medians, and on minus off per front."""
    sizes: Sizes = results.sizes
    held = results.figures["held"] = {}
    for message in MESSAGES:
        samples = results.held[message]
        marks = {v: {m: [x[m] for x in samples[v]] for m in MARKS} for v in HELD_VARIANTS}
        held[message] = {
            "expected_ms": expected_delay_ms(message, sizes),
            "ms": {v: {m: _stats_ms(marks[v][m]) for m in MARKS} for v in HELD_VARIANTS},
            "on_minus_off_ms": {
                front: {
                    m: asdict(
                        difference(marks[f"{front} {ON}"][m], marks[f"{front} {OFF}"][m], 1e3)
                    )
                    for m in MARKS
                }
                for front in FRONTS
            },
            # Within a sample with `resume` on, free of the server's pacing jitter: from the
            # held block's first delta to the last event of the same release.
            "release_ms": {
                front: _stats_ms(
                    [x[RELEASED_TO[message]] - x["held"] for x in samples[f"{front} {ON}"]]
                )
                for front in FRONTS
            },
        }

    def result(message: str) -> str:
        d, r = held[message]["on_minus_off_ms"], held[message]["release_ms"]
        return (
            f"{FIRST_HELD[message]}: library {d[LIBRARY]['held']['paired_median']:+.0f} "
            f"ms, proxy {d[PROXY]['held']['paired_median']:+.0f} ms (expected "
            f"{held[message]['expected_ms']:+.0f}); first text delta: library "
            f"{d[LIBRARY]['text']['paired_median']:+.1f} ms, proxy "
            f"{d[PROXY]['text']['paired_median']:+.1f} ms; the release itself "
            f"{r[LIBRARY]['median']:.2f} / {r[PROXY]['median']:.2f} ms"
        )

    pace = f"{sizes.pace * 1e3:.0f} ms apart"
    fronts = (
        "from the request, at the consumer, the library (sync `messages.create(stream=True)`) "
        "and `sdkguard proxy` (the plain SDK as client)"
    )
    results.headlines += [
        Headline(
            "continuation: held thinking",
            f"`resume` on minus off, a stream that does not break: a thinking block of "
            f"{sizes.thinking_deltas} deltas {pace}, then {sizes.text_deltas} text deltas; "
            f"the first thinking and the first text delta, {fronts}",
            "none: reported",
            result(THINKING),
            "-",
        ),
        Headline(
            "continuation: held tool call",
            f"the same for {sizes.text_deltas} text deltas, then a tool call whose input "
            f"comes in {sizes.tool_deltas} deltas {pace} (the message's end): its first "
            "input delta and the first text delta",
            "none: reported",
            result(TOOL),
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
    for message in MESSAGES:
        h = f["held"][message]
        out(
            f"\n{message}: from the request, at the consumer (ms; median, min / max): "
            "first event, first held delta, first text delta, message_stop"
        )
        for v in HELD_VARIANTS:
            out(
                f"  {v:12}"
                + "".join(
                    f"  {h['ms'][v][m]['median']:7.1f} ({h['ms'][v][m]['min']:.1f} / "
                    f"{h['ms'][v][m]['max']:.1f})"
                    for m in MARKS
                )
            )
        for front in FRONTS:
            d = h["on_minus_off_ms"][front]
            out(
                f"  {front} on - off, per-round median (by min, by median): "
                + ", ".join(f"{m} {_difference(d[m])}" for m in MARKS)
            )
        out(f"  expected for the held delta: {h['expected_ms']:+.0f} ms; goal: none, reported")
        out(
            f"  the release, resume on: from the held delta to {RELEASE_LABEL[message]} "
            + ", ".join(
                f"{front} {h['release_ms'][front]['median']:.2f} ms "
                f"({h['release_ms'][front]['min']:.2f} / {h['release_ms'][front]['max']:.2f})"
                for front in FRONTS
            )
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
            *held_markdown(results),
        ]
    )


def held_markdown(results: Results) -> list[str]:
    f, s = results.figures["held"], results.sizes
    columns = ["first event", "first held delta", "first text delta", "`message_stop`"]
    rows = [
        [BLOCK[message], v, *(f"{f[message]['ms'][v][m]['median']:.1f} ms" for m in MARKS)]
        for message in MESSAGES
        for v in HELD_VARIANTS
    ]
    differences = [
        [
            BLOCK[message],
            front,
            *(_difference(f[message]["on_minus_off_ms"][front][m]) for m in MARKS),
            f"{f[message]['expected_ms']:+.0f} ms",
        ]
        for message in MESSAGES
        for front in FRONTS
    ]
    return [
        "### Blocks held back while `resume` is on",
        f"A stream that does not break, written at a model's pace (`_paced_server.py`: "
        f"{s.pace * 1e3:.0f} ms before each delta): a thinking block of {s.thinking_deltas} "
        f"deltas then {s.text_deltas} text deltas (**thinking**), and {s.text_deltas} text "
        f"deltas then a tool call whose input comes in {s.tool_deltas} deltas (**tool "
        "call**). Read by the sync client's `messages.create(stream=True)`, sdkguard "
        "installed (**library**), or by the plain SDK through `sdkguard proxy` (**proxy**), "
        f"`resume` on and off; {s.held_rounds} rounds, the four variants interleaved, a fresh "
        "connection per sample. Times from the request to what the consumer sees; the held "
        "delta is the block's first (`thinking_delta`, `input_json_delta`). Medians:",
        md_table(["message", "variant", *columns], rows),
        "`resume` on minus off, per-round median (by min, by median); expected: the pauses "
        "from the held block's first delta to the event that releases it (the first text "
        "delta; `message_delta`, right after the tool call's last delta):",
        md_table(["message", "front", *columns, "expected (held)"], differences),
        "The release itself, free of the server's pacing jitter: with `resume` on, from the "
        "held block's first delta to the last event handed over with it (median, min / max): "
        + "; ".join(
            f"{BLOCK[message]}, to {RELEASE_LABEL[message]}: "
            + ", ".join(
                f"{front} {f[message]['release_ms'][front]['median']:.2f} ms "
                f"({_range(f[message]['release_ms'][front])})"
                for front in FRONTS
            )
            for message in MESSAGES
        )
        + ". Through the proxy the client gets the held events in one read and parses them "
        "all before the text; in the library they were parsed as they came.",
    ]


def _difference(d: dict[str, float]) -> str:
    return f"{d['paired_median']:+.1f} ms ({d['by_min']:+.1f}, {d['by_median']:+.1f})"


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
