"""What `stream_plain_calls` costs: a non-streaming `create()` sent as a stream, over loopback.

    .venv/bin/python benchmarks/plain_calls.py            # full size, about a minute
    .venv/bin/python benchmarks/plain_calls.py --quick    # smoke run, seconds
    .venv/bin/python benchmarks/plain_calls.py --json out.json

Three variants of the SAME non-streaming call on the same client, in one run:

- `plain`: sdkguard not installed (the SDK alone);
- `unconverted`: sdkguard installed with `stream_plain_calls=False` (the JSON answer);
- `converted`: sdkguard installed with `stream_plain_calls=True` (the answer streamed under
  the hood, the same `Message` rebuilt).

The figure is converted / unconverted: what the conversion itself costs, in CPU time and in
bytes received. Answers: `short` (the
fake server's default, one text block in 3 deltas), `typical` (one text block of about 400
tokens, 1,600 characters in 100 `text_delta` events, as the API streams a paragraph-long
answer) and `long` (1,000 deltas). Each answer is checked to be the same message in every
variant.

Method, as in `overhead.py`: the fake server runs in a process of its own (this script with
`--serve`); every round runs the three variants in a rotating order (all six orders in turn),
switched outside the timed runs and each followed by one untimed call; `gc.collect()` before
each timed block (the collector stays on inside it). Wall-clock and CPU time of the client
process are recorded; reported are the ratios of minimums, of medians, and the median of the
per-round ratios of CPU time, which a busy machine distorts least. Loopback answers arrive at
once: against the real API a call takes seconds, and only the CPU time added here is left.

Bytes: the response body of each variant's call as the SDK's HTTP client counted it
(`num_bytes_downloaded`, read in a response event hook: the JSON `Message`, or the SSE stream
the converted call reads), and the whole answer on the wire (status line, headers, chunk
framing and body, counted on a raw socket) to the same request sent with `"stream": false`
and `"stream": true`. Uncompressed, as the fake server sends them; its headers are a handful,
the API's a few dozen, the same for both forms. Bytes do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import itertools
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import anthropic

import sdkguard
from sdkguard.testing import FakeAnthropic, faults

PLAIN, UNCONVERTED, CONVERTED = "plain", "unconverted", "converted"
VARIANTS = (PLAIN, UNCONVERTED, CONVERTED)
ORDERS = list(itertools.permutations(VARIANTS))
MESSAGE: dict[str, Any] = {
    "model": "claude-benchmark",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Say something."}],
}
# answer name -> (characters, deltas)
ANSWERS = {"short": (0, 3), "typical": (1_600, 100), "long": (16_000, 1_000)}
FULL = {"rounds": 18, "calls": {"short": 40, "typical": 20, "long": 4}}
QUICK = {"rounds": 2, "calls": {"short": 3, "typical": 2, "long": 1}}


def reply(name: str) -> faults.Ok:
    chars, deltas = ANSWERS[name]
    if not chars:
        return faults.ok(message_id="msg_benchmark")
    text = ("All work and no play makes a long answer. " * (chars // 40 + 1))[:chars]
    return faults.ok(faults.text(text, deltas=deltas), message_id="msg_benchmark")


# --- the server process ---------------------------------------------------------------------


def serve() -> int:
    """`--serve`: one fake server per answer on 127.0.0.1; URLs on stdout; ends at stdin EOF."""
    with contextlib.ExitStack() as stack:
        urls = {}
        for name in ANSWERS:
            server = stack.enter_context(FakeAnthropic(host="127.0.0.1"))
            server.default(reply(name))
            urls[name] = server.url
        print(json.dumps(urls), flush=True)
        sys.stdin.read()  # until the benchmark closes it (or dies)
    return 0


@contextlib.contextmanager
def server_process() -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = json.loads(proc.stdout.readline())
        for url in urls.values():
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"the fake server is not on loopback: {url}")
        yield urls
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the variants ---------------------------------------------------------------------------


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    if name == PLAIN:
        sdkguard.uninstall()
        yield
        return
    sdkguard.install(stream_plain_calls=name == CONVERTED)
    yield


def timed(client: anthropic.Anthropic, calls: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds per call of a block of `calls` calls."""
    client.messages.create(**MESSAGE)  # untimed: the first call after a switch
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        client.messages.create(**MESSAGE)
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def wire_bytes(url: str, *, stream: bool) -> int:
    """Bytes of the whole answer to one Messages request: status line, headers, framing, body."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps({**MESSAGE, "stream": stream}).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"  # the server closes once the answer is written
    )
    total = 0
    with socket.create_connection((host, port), timeout=60.0) as sock:
        sock.sendall(head.encode() + body)
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
    return total


class BodyBytes:
    """A response event hook: the body bytes the client received since the last `take()`."""

    def __init__(self) -> None:
        self.responses: list[Any] = []
        self.on = True

    def __call__(self, response: Any) -> None:
        if self.on:
            self.responses.append(response)

    def take(self) -> int:
        total = sum(int(r.num_bytes_downloaded) for r in self.responses)
        self.responses.clear()
        return total


def measure(sizes: dict[str, Any], out: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {"anthropic": anthropic.__version__, "answers": {}}
    with server_process() as urls:
        for answer, url in urls.items():
            body_bytes = BodyBytes()
            client = anthropic.Anthropic(
                base_url=url,
                api_key="sk-ant-benchmark-not-a-key",
                timeout=60.0,
                http_client=anthropic.DefaultHttpxClient(
                    trust_env=False, timeout=60.0, event_hooks={"response": [body_bytes]}
                ),
            )
            try:
                figures = measure_answer(client, answer, sizes, out, body_bytes)
                figures["bytes"].update(
                    json_wire=wire_bytes(url, stream=False), sse_wire=wire_bytes(url, stream=True)
                )
                report_bytes(figures["bytes"], out)
                results["answers"][answer] = figures
            finally:
                client.close()
                sdkguard.uninstall()
    return results


def measure_answer(
    client: anthropic.Anthropic,
    answer: str,
    sizes: dict[str, Any],
    out: Callable[[str], None],
    body_bytes: BodyBytes,
) -> dict[str, Any]:
    messages, received = {}, {}
    for name in VARIANTS:  # warm-up, and the same message in every variant
        with variant(name):
            body_bytes.take()
            messages[name] = client.messages.create(**MESSAGE)
            received[name] = body_bytes.take()
    if not messages[PLAIN] == messages[UNCONVERTED] == messages[CONVERTED]:
        raise RuntimeError(f"{answer}: the variants did not return the same message")
    if received[PLAIN] != received[UNCONVERTED]:
        raise RuntimeError(f"{answer}: the unconverted call did not receive the plain call's body")
    body_bytes.on = False  # the timed calls keep no response
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    calls = sizes["calls"][answer]
    for r in range(sizes["rounds"]):
        for name in ORDERS[r % len(ORDERS)]:
            with variant(name):
                w, c = timed(client, calls)
            wall[name].append(w)
            cpu[name].append(c)
    deltas = ANSWERS[answer][1]
    figures: dict[str, Any] = {
        "deltas": deltas,
        "cpu_us": {name: statistics.median(cpu[name]) * 1e6 for name in VARIANTS},
        "wall_us": {name: statistics.median(wall[name]) * 1e6 for name in VARIANTS},
        "converted_vs_unconverted_cpu": compare(cpu[CONVERTED], cpu[UNCONVERTED]),
        "converted_vs_unconverted_wall": compare(wall[CONVERTED], wall[UNCONVERTED]),
        "converted_vs_plain_cpu": compare(cpu[CONVERTED], cpu[PLAIN]),
        "bytes": {"json_body": received[UNCONVERTED], "sse_body": received[CONVERTED]},
        "samples": {"cpu": cpu, "wall": wall},
    }
    ratio = figures["converted_vs_unconverted_cpu"]
    out(
        f"{answer:8} ({deltas:5,} deltas): CPU per call, median: "
        + ", ".join(f"{n} {figures['cpu_us'][n]:8.0f} us" for n in VARIANTS)
    )
    out(
        f"{'':8}   converted / unconverted, CPU: {ratio['paired_median']:.2f} per round "
        f"(by min {ratio['by_min']:.2f}, by median {ratio['by_median']:.2f}); "
        f"wall {figures['converted_vs_unconverted_wall']['paired_median']:.2f}"
    )
    return figures


def report_bytes(figures: dict[str, int], out: Callable[[str], None]) -> None:
    json_body, sse_body = figures["json_body"], figures["sse_body"]
    json_wire, sse_wire = figures["json_wire"], figures["sse_wire"]
    out(
        f"{'':8}   bytes received: body {json_body:,} as JSON, {sse_body:,} as SSE "
        f"(x{sse_body / json_body:.1f}); on the wire {json_wire:,} and {sse_wire:,} "
        f"(x{sse_wire / json_wire:.1f})"
    )


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    return {
        "by_min": min(a) / min(b),
        "by_median": statistics.median(a) / statistics.median(b),
        "paired_median": statistics.median([x / y for x, y in zip(a, b, strict=True)]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/plain_calls.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    faulthandler.dump_traceback_later(120.0 if args.quick else 900.0, exit=True)

    def out(line: str, _stdout: IO[str] = sys.stdout) -> None:
        print(line, file=_stdout, flush=True)

    sizes = QUICK if args.quick else FULL
    out(
        f"stream_plain_calls: non-streaming create(), anthropic {anthropic.__version__}, "
        f"{sizes['rounds']} rounds, variants in rotating order, server in its own process"
    )
    try:
        results = measure(sizes, out)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        out(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
