"""What `sdkguard proxy` costs: through the proxy against direct to the fake server, and
LiteLLM's proxy under the same load, in one run (issue 14).

    .venv/bin/python benchmarks/proxy.py                 # full size, about 10 minutes
    .venv/bin/python benchmarks/proxy.py --quick         # smoke run, seconds; LiteLLM skipped
    .venv/bin/python benchmarks/proxy.py --no-litellm    # full size without LiteLLM

The client is the plain `anthropic` SDK (sdkguard not installed in the client processes: each
checks that no method of the SDK is wrapped), in fresh client processes; the fake server
(`_server_process.py`, one `FakeAnthropic`, every event of a stream one HTTP chunk, written
by a send of its own with TCP_NODELAY, as the API sends them) and each proxy run in processes
of their own. Variants: `direct` (the client to the fake server, the baseline), `sdkguard`
(`sdkguard proxy --upstream FAKE --port N`) and `litellm` (LiteLLM's proxy, its Anthropic
pass-through route `/anthropic/v1/messages`, `ANTHROPIC_API_BASE` set to the fake server).

Figures:

- (a) first content: from `messages.create(stream=True)` to the first `content_block_delta`
  the SDK yields (a three-delta answer read to the end, connections kept alive), through a
  proxy minus direct, per-round median; goal: sdkguard adds less than a fifth of what
  LiteLLM adds;
- (b) long stream: a 20,000-delta stream read to the end, client wall-clock and client CPU
  time, through sdkguard / direct, per-round median; goal <= 1.05 for both;
- (c) CPU per relayed event: the proxy process's CPU time (its process CPU clock, every
  thread; /proc/PID/stat where that cannot be read) over a stream, until it stops rising
  after the stream ended (work done after the last byte, such as logging, counts), divided
  by the events the upstream sent. At full speed (the streams of (b)) a proxy's read gets
  several events; the goal is judged on a 2,000-delta stream whose every event is a read of
  its own (`--paced-server`: the fake server's bytes, one send per event, 1 ms apart, as the
  API sends them): sdkguard spends less than a fifth of LiteLLM's;
- (d) memory per open stream: a fresh sdkguard proxy; its RSS with K streams open, each held
  after its first content event (the upstream stalls after it), minus its RSS idle after a
  few streams, divided by K; threads and file descriptors alongside (no goal);
- (e) 1,000 concurrent streams (async clients, 100 per `AsyncAnthropic` client, as in
  `concurrency.py`) through one sdkguard proxy against direct: total time, the proxy's peak
  OS threads (`/proc/PID/task`, sampled every 5 ms) against its idle count; goal: no thread
  per stream. One untimed batch of the same size first opens the connections (its time is
  reported too: that is where a small listen backlog or a slow connection set-up shows).

Method (benchmarks/README.md): interleaved rounds in an order that rotates and reverses,
`gc.collect()` before each timed run, everything on 127.0.0.1, every child process stopped
at the end (and killed with this process if it dies: PR_SET_PDEATHSIG). LiteLLM is installed
on demand, only in the full run, into a virtual environment of its own under
`.cache/bench-litellm/` (pip, its downloads cached there too); it is no dependency of
sdkguard. When a goal of (a) to (c) is missed, the sdkguard proxy is profiled (cProfile,
`python -m cProfile -m sdkguard proxy`) over a few long streams and the functions that take
the most time per event are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import itertools
import json
import os
import pstats
import re
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common as common
import anthropic
from _common import (
    API_KEY,
    MESSAGE,
    ROOT,
    Comparison,
    Headline,
    LineProcess,
    Out,
    Verdict,
    add_common_args,
    begin,
    check_loopback,
    code_block,
    difference,
    finish,
    md_table,
    out,
    ratio,
    report_progress,
    report_result,
    rotated,
    run_main,
    run_worker,
    sdk_is_plain,
    server_process,
)

from sdkguard._sdk import http  # the SDK's HTTP library (httpx or httpx2), for its Limits

DIRECT, SDKGUARD, LITELLM, RELAY = "direct", "sdkguard", "litellm", "relay"
PROXIES = (SDKGUARD, LITELLM, RELAY)
GOAL_STREAM_RATIO = 1.05
GOAL_VS_LITELLM = 0.2  # "less than a fifth"
THREADS_SLACK = 2  # "no thread per stream": at most this many threads more than idle
STREAMS_PER_CLIENT = 100  # as concurrency.py, for the same reason (httpcore's pool scan)
# Events a one-text-block stream yields to the caller besides its deltas (pings are not
# yielded): message_start, content_block_start, content_block_stop, message_delta,
# message_stop. The upstream sends one `ping` more.
FRAMING_EVENTS = 5
SENT_EVENTS_EXTRA = FRAMING_EVENTS + 1
SMALL_DELTAS = 3  # faults.ok()'s default text
# message_start, content_block_start, ping, the first content_block_delta: then silence.
HELD_AFTER = 4
WARMUP_STREAMS = 10  # before the idle RSS of the memory sample
TIMEOUT = (3600.0, 300.0)
CLIENT_TIMEOUT = 120.0
WORKER_TIMEOUT = 1200.0  # a client process's own watchdog
CLK_TCK = os.sysconf("SC_CLK_TCK")
CACHE = ROOT / ".cache"
LOGS = CACHE / "bench-proxy"
LITELLM_DIR = CACHE / "bench-litellm"
LITELLM_VENV = LITELLM_DIR / "venv"
LITELLM_SPEC = "litellm[proxy]"
PROFILE_STREAMS = 3
PACE = 0.001  # seconds between two events of the paced upstream


@dataclass(frozen=True)
class Sizes:
    first_rounds: int
    """Rounds of (a): each variant's time to the first content event, once per round."""
    deltas: int
    """Deltas of the long stream of (b) and (c)."""
    long_rounds: int
    paced_deltas: int
    """Deltas of the paced stream of (c): one event per read, PACE apart."""
    paced_rounds: int
    held: int
    """Streams held open per memory sample (d)."""
    memory_samples: int
    """Memory samples (d), each a fresh proxy process."""
    streams: int
    """Concurrent streams of (e)."""
    concurrency_rounds: int


FULL = Sizes(
    first_rounds=61,
    deltas=20_000,
    long_rounds=21,
    paced_deltas=2_000,
    paced_rounds=11,
    held=500,
    memory_samples=3,
    streams=1000,
    concurrency_rounds=5,
)
QUICK = Sizes(
    first_rounds=3,
    deltas=300,
    long_rounds=2,
    paced_deltas=50,
    paced_rounds=2,
    held=10,
    memory_samples=1,
    streams=20,
    concurrency_rounds=1,
)


# --- the processes under test, read from /proc ---------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a proxy may run workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 1000:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


_LIBC = ctypes.CDLL(None, use_errno=True)


def cpu_seconds(pids: Sequence[int]) -> float:
    """The CPU time of `pids`, every thread: the process CPU clock (clock_getcpuclockid,
    nanoseconds), or where it cannot be read, utime + stime from /proc/PID/stat (ticks)."""
    total = 0.0
    for pid in pids:
        clock = ctypes.c_int()
        if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
            with suppress(OSError):
                total += time.clock_gettime_ns(clock.value) / 1e9
                continue
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:13]) / CLK_TCK  # utime stime
    return total


def proc_status(pids: Sequence[int]) -> dict[str, int]:
    """VmRSS and VmHWM (kB), Threads and open file descriptors, summed over `pids`."""
    found = {"VmRSS": 0, "VmHWM": 0, "Threads": 0, "fds": 0}
    for pid in pids:
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in found:
                    found[key] += int(value.split()[0])
            found["fds"] += len(os.listdir(f"/proc/{pid}/fd"))
    return found


def settle_cpu(pids: Sequence[int], quiet: float = 0.05, limit: float = 3.0) -> float:
    """The CPU time of `pids` once it stopped rising for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pids)
        if now == last:
            break
        last = now
    return last


# --- starting and stopping the proxies ------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark process ends, however it ends."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """A proxy in a process of its own, listening on 127.0.0.1:`port`; stopped by `stop()`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        log: Path,
        *,
        path: str = "",
        key: str = API_KEY,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_within: float = 60.0,
    ) -> None:
        self.name, self.port, self.key, self.log = name, port, key, log
        self.command = list(command)
        self.url = check_loopback(f"http://127.0.0.1:{port}{path}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                preexec_fn=_die_with_parent,
            )
        started = time.monotonic()
        try:
            self._wait_ready(ready_within)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        self.pids = tree(self.proc.pid)

    def _wait_ready(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} before listening; "
                    f"its output ({self.log}) ends with:\n{self.tail()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within {limit:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def target(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.key, "pids": self.pids}


def sdkguard_command(args: argparse.Namespace, sizes: Sizes) -> list[str]:
    """`sdkguard proxy`, its limit of requests at once (default 64, more get 429) raised for
    the held and concurrent streams; its other settings are its defaults."""
    if args.proxy_command:
        return shlex.split(args.proxy_command)
    script = Path(sys.executable).with_name("sdkguard")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sdkguard"]
    return [*command, "proxy", *_limits(sizes)]


def _limits(sizes: Sizes) -> list[str]:
    return ["--max-concurrency", str(max(sizes.held, sizes.streams) + WARMUP_STREAMS)]


@contextmanager
def sdkguard_proxy(command: Sequence[str], upstream: str, log: Path) -> Iterator[Served]:
    port = free_port()
    full = [*command, "--upstream", check_loopback(upstream), "--port", str(port)]
    served = Served(SDKGUARD, full, port, log)
    try:
        yield served
    finally:
        served.stop()


def litellm_version() -> str:
    found = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m;print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return found.stdout.strip() or "?"


def install_litellm(spec: str, out: Out) -> str | None:
    """LiteLLM's proxy in its own venv (installed once); None, or why it cannot be had."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return None
    out(f"installing {spec} into {LITELLM_VENV} (once; pip's cache in {LITELLM_DIR / 'pip'}) ...")
    LITELLM_DIR.mkdir(parents=True, exist_ok=True)
    log = LITELLM_DIR / "install.log"
    try:
        with log.open("w") as sink:
            for command in (
                [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
                [
                    str(LITELLM_VENV / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--cache-dir",
                    str(LITELLM_DIR / "pip"),
                    spec,
                ],
            ):
                subprocess.run(
                    command, stdout=sink, stderr=subprocess.STDOUT, check=True, timeout=1200
                )
    except (OSError, subprocess.SubprocessError) as e:
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        return f"`pip install {spec}` failed ({e}); {log} ends with: " + " / ".join(tail)
    return None if exe.exists() else f"{exe} missing after installing {spec}"


@contextmanager
def litellm_proxy(upstream: str) -> Iterator[Served]:
    """LiteLLM's proxy, one worker, its defaults; the Anthropic pass-through to `upstream`.

    It refuses to start without a master key, so one is made up for the run and the clients
    send it as their API key; the upstream gets ANTHROPIC_API_KEY."""
    key = "sk-" + secrets.token_hex(24)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("ANTHROPIC_", "LITELLM_"))
    }
    env.update(
        {
            "ANTHROPIC_API_BASE": check_loopback(upstream),
            "ANTHROPIC_API_KEY": API_KEY,
            "LITELLM_MASTER_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the model cost map
            "NO_PROXY": "127.0.0.1",
        }
    )
    port = free_port()
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--host", "127.0.0.1", "--port", str(port)]
    served = Served(
        LITELLM,
        command,
        port,
        LITELLM_DIR / "litellm.log",
        path="/anthropic",
        key=key,
        env=env,
        cwd=LITELLM_DIR,
        ready_within=180.0,
    )
    try:
        yield served
    finally:
        served.stop()


@contextmanager
def bare_relay(upstream: str) -> Iterator[Served]:
    """A reference for (c): a bare asyncio byte relay (no HTTP parsing, nothing held), the
    least any proxy on Python's asyncio spends per read."""
    port = free_port()
    spec = json.dumps({"upstream": check_loopback(upstream), "port": port})
    command = [sys.executable, str(Path(__file__)), "--bare-relay", spec]
    served = Served(RELAY, command, port, LOGS / "bare-relay.log")
    try:
        yield served
    finally:
        served.stop()


async def _serve_bare_relay(upstream: str, port: int) -> None:
    host, upstream_port = upstream.removeprefix("http://").split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(upstream_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the client processes (the plain SDK) ---------------------------------------------------


def _client(target: dict[str, Any]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=check_loopback(target["url"]),
        api_key=target["key"],
        max_retries=0,  # a failure shows; no request is sent twice
        timeout=CLIENT_TIMEOUT,
        http_client=anthropic.DefaultHttpxClient(trust_env=False, timeout=CLIENT_TIMEOUT),
    )


def _async_client(target: dict[str, Any], connections: int) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=check_loopback(target["url"]),
        api_key=target["key"],
        max_retries=0,
        timeout=CLIENT_TIMEOUT,
        http_client=anthropic.DefaultAsyncHttpxClient(
            trust_env=False,
            timeout=CLIENT_TIMEOUT,
            limits=http.Limits(max_connections=connections, max_keepalive_connections=connections),
        ),
    )


def first_content(client: anthropic.Anthropic) -> float:
    """Seconds from create() to the first content event; the stream is read to the end."""
    gc.collect()
    started = time.perf_counter()
    first = 0.0
    count = 0
    with client.messages.create(stream=True, **MESSAGE) as stream:
        for event in stream:
            count += 1
            if not first and event.type == "content_block_delta":
                first = time.perf_counter() - started
    if count != SMALL_DELTAS + FRAMING_EVENTS or not first:
        raise RuntimeError(f"the stream yielded {count} events, expected the small answer")
    return first


def long_stream(client: anthropic.Anthropic, pids: Sequence[int], deltas: int) -> dict[str, float]:
    gc.collect()
    proxy_before = cpu_seconds(pids) if pids else 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    with client.messages.create(stream=True, **MESSAGE) as stream:
        for _ in stream:
            count += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if count != deltas + FRAMING_EVENTS:
        raise RuntimeError(f"the stream yielded {count} events, expected {deltas + FRAMING_EVENTS}")
    sample = {"wall": wall, "cpu": cpu}
    if pids:
        sample["proxy_cpu"] = settle_cpu(pids) - proxy_before
    return sample


def worker_first(job: dict[str, Any]) -> dict[str, list[float]]:
    clients = {name: _client(target) for name, target in job["targets"].items()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for _ in range(3):  # warm-up: connections, imports, caches
            for client in clients.values():
                first_content(client)
        rounds = job["rounds"]
        for r in range(rounds):
            for name in rotated(list(clients), r):
                samples[name].append(first_content(clients[name]))
            if (r + 1) % 10 == 0 or r + 1 == rounds:
                cells = "  ".join(f"{n} {v[-1] * 1e3:7.2f}" for n, v in samples.items())
                report_progress(f"  round {r + 1:2d}/{rounds} (ms): {cells}")
    finally:
        for client in clients.values():
            client.close()
    return samples


def worker_long(job: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    targets = job["targets"]
    clients = {name: _client(target) for name, target in targets.items()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
    deltas = job["deltas"]
    try:
        for name, client in clients.items():  # warm-up, one long stream each
            long_stream(client, targets[name]["pids"], deltas)
        rounds = job["rounds"]
        for r in range(rounds):
            for name in rotated(list(clients), r):
                samples[name].append(long_stream(clients[name], targets[name]["pids"], deltas))
            cells = "  ".join(
                f"{n} {v[-1]['wall'] * 1e3:6.0f} ms"
                + (
                    f" (proxy CPU {v[-1]['proxy_cpu'] * 1e3:5.0f} ms)"
                    if "proxy_cpu" in v[-1]
                    else ""
                )
                for n, v in samples.items()
            )
            report_progress(f"  round {r + 1:2d}/{rounds}: {cells}")
    finally:
        for client in clients.values():
            client.close()
    return samples


async def _held(job: dict[str, Any]) -> dict[str, Any]:
    target, n = job["target"], job["held"]
    pids = target["pids"]
    clients = [
        _async_client(target, STREAMS_PER_CLIENT) for _ in range(-(-n // STREAMS_PER_CLIENT))
    ]
    streams: list[Any] = []
    try:
        for _ in range(WARMUP_STREAMS):
            async with await clients[0].messages.create(stream=True, **MESSAGE) as stream:
                async for _ in stream:
                    pass
        await asyncio.sleep(0.5)
        idle = proc_status(pids)

        async def hold(client: anthropic.AsyncAnthropic) -> None:
            stream = await client.messages.create(stream=True, **MESSAGE)
            streams.append(stream)
            for _ in range(HELD_AFTER):
                event = await stream.__anext__()
                if event.type == "content_block_delta":
                    return
            raise RuntimeError("no content event among the first events of a held stream")

        counters = tcp_counters()
        found = await asyncio.gather(
            *(hold(clients[i % len(clients)]) for i in range(n)), return_exceptions=True
        )
        counters = {k: v - counters[k] for k, v in tcp_counters().items()}
        failed = [_error_name(x) for x in found if isinstance(x, BaseException)]
        await asyncio.sleep(0.5)
        held = proc_status(pids)
    finally:
        for stream in streams:
            await stream.close()
        for client in clients:
            await client.close()
    return {
        "held": n - len(failed),
        "failed": failed,
        "tcp": counters,
        "idle_rss_kb": idle["VmRSS"],
        "held_rss_kb": held["VmRSS"],
        "idle_threads": idle["Threads"],
        "held_threads": held["Threads"],
        "idle_fds": idle["fds"],
        "held_fds": held["fds"],
    }


TCP_COUNTERS = ("ListenOverflows", "SyncookiesSent", "SyncookiesFailed")


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters of full accept and SYN queues (the whole machine): a
    connection dropped by a full accept queue costs its client a SYN retransmission, a second
    or more; a SYN cookie that fails to validate answers the client's request with a reset."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            found = dict(zip(names.split(), values.split(), strict=True))
            return {name: int(found.get(name, 0)) for name in TCP_COUNTERS}
    return dict.fromkeys(TCP_COUNTERS, 0)


async def _batch(clients: Sequence[anthropic.AsyncAnthropic], n: int) -> tuple[int, list[str]]:
    """`n` streams at once, read to the end: the events read, and the streams that failed."""

    async def one(client: anthropic.AsyncAnthropic) -> int:
        count = 0
        async with await client.messages.create(stream=True, **MESSAGE) as stream:
            async for _ in stream:
                count += 1
        return count

    found = await asyncio.gather(
        *(one(clients[i % len(clients)]) for i in range(n)), return_exceptions=True
    )
    failed = [_error_name(x) for x in found if isinstance(x, BaseException)]
    return sum(x for x in found if isinstance(x, int)), failed


def _error_name(error: BaseException) -> str:
    """The exception and its causes: `APIConnectionError <- ReadError <- ReadError`."""
    names: list[str] = []
    while error is not None and len(names) < 5:
        names.append(type(error).__name__)
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return " <- ".join(names)


async def _concurrent(job: dict[str, Any]) -> dict[str, Any]:
    target, n = job["target"], job["streams"]
    pids = target["pids"]
    per_client = min(n, STREAMS_PER_CLIENT)
    clients = [_async_client(target, per_client) for _ in range(-(-n // per_client))]
    per_stream = SMALL_DELTAS + FRAMING_EVENTS
    peak = {"threads": 0, "rss_kb": 0}

    async def watch() -> None:
        while True:
            found = proc_status(pids)
            peak["threads"] = max(peak["threads"], found["Threads"])
            peak["rss_kb"] = max(peak["rss_kb"], found["VmRSS"])
            await asyncio.sleep(0.005)

    try:
        idle = proc_status(pids) if pids else {"Threads": 0, "VmRSS": 0}
        counters = tcp_counters()
        started = time.perf_counter()
        first, first_failed = await _batch(clients, n)  # untimed: opens every connection
        first_wall = time.perf_counter() - started
        first_counters = {k: v - counters[k] for k, v in tcp_counters().items()}
        gc.collect()
        watcher = asyncio.create_task(watch()) if pids else None
        proxy_before = cpu_seconds(pids) if pids else 0.0
        counters = tcp_counters()
        wall, cpu = time.perf_counter(), time.process_time()
        events, failed = await _batch(clients, n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        counters = {k: v - counters[k] for k, v in tcp_counters().items()}
        if watcher is not None:
            watcher.cancel()
        proxy_cpu = settle_cpu(pids) - proxy_before if pids else 0.0
    finally:
        for client in clients:
            await client.close()
    for delivered, lost in ((first, first_failed), (events, failed)):
        if delivered != (n - len(lost)) * per_stream:
            raise RuntimeError(f"{delivered} events delivered by {n - len(lost)} streams")
    return {
        "wall": wall,
        "cpu": cpu,
        "first_wall": first_wall,
        "events": events,
        "failed": [*first_failed, *failed],
        "tcp": counters,
        "first_tcp": first_counters,
        "proxy_cpu": proxy_cpu,
        "idle_threads": idle["Threads"],
        "peak_threads": peak["threads"],
        "idle_rss_kb": idle["VmRSS"],
        "peak_rss_kb": peak["rss_kb"],
    }


def worker(job: dict[str, Any]) -> object:
    import faulthandler

    faulthandler.dump_traceback_later(WORKER_TIMEOUT, exit=True)
    if not sdk_is_plain():
        raise RuntimeError("sdkguard is installed in the client process (SDKGUARD_AUTO?)")
    kind = job["kind"]
    if kind == "first":
        return worker_first(job)
    if kind == "long":
        return worker_long(job)
    if kind == "held":
        return asyncio.run(_held(job))
    return asyncio.run(_concurrent(job))


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results(common.Results):
    proxy_command: list[str] = field(default_factory=list)
    proxy_version: str = ""
    """The commit the proxy ran from (`+changes`: sdkguard/ had uncommitted changes)."""
    litellm: dict[str, Any] = field(default_factory=dict)
    """`version`, `command`, `ready_seconds`, or `skipped`: why it did not run."""
    samples: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    goals: list[Verdict] = field(default_factory=list)


def measure(sizes: Sizes, mode: str, args: argparse.Namespace, out: Out) -> Results:
    started = time.perf_counter()
    results = begin(Results, "sdkguard proxy benchmark", sizes, mode, out)
    command = sdkguard_command(args, sizes)
    results.proxy_command = command
    results.proxy_version = proxy_version()
    out(f"sdkguard at {results.proxy_version}")
    skipped = (
        "skipped in --quick mode (CI's smoke run: installing LiteLLM takes minutes)"
        if mode == "quick"
        else "skipped: --no-litellm"
        if args.no_litellm
        else install_litellm(args.litellm_spec, out)
    )
    if skipped:
        results.litellm = {"skipped": skipped}
        out(f"LiteLLM: {skipped}")
    s = results.samples
    with ExitStack() as stack:
        # `held` stalls after the first content event of every answer, until the client
        # leaves (the held streams of (d)); its first answers are scripted whole (warm-up).
        server = stack.enter_context(
            server_process({"api": "ok", "held": f"stall_after:{HELD_AFTER}"})
        )
        upstream = server.urls["api"]
        sdk = stack.enter_context(sdkguard_proxy(command, upstream, LOGS / "sdkguard-proxy.log"))
        out(
            f"sdkguard proxy: {' '.join(command)} at {sdk.url}, listening after "
            f"{sdk.ready_seconds:.1f} s"
        )
        direct = {"url": upstream, "key": API_KEY, "pids": []}
        targets = {DIRECT: direct, SDKGUARD: sdk.target()}
        with ExitStack() as litellm_stack:
            if not skipped:
                lite = litellm_stack.enter_context(litellm_proxy(upstream))
                results.litellm = {
                    "version": litellm_version(),
                    "command": ["litellm", *lite.command[1:]],
                    "ready_seconds": lite.ready_seconds,
                }
                out(
                    f"LiteLLM {results.litellm['version']}: {lite.url}, listening after "
                    f"{lite.ready_seconds:.1f} s (log: {lite.log})"
                )
                targets[LITELLM] = lite.target()
            s["variants"] = list(targets)

            out(f"\n[1/5] time to the first content event: {sizes.first_rounds} rounds ...")
            job = {"kind": "first", "targets": targets, "rounds": sizes.first_rounds}
            s["first"] = run_worker(Path(__file__), job, out)
            server.clear()

            out(
                f"\n[2/5] a {sizes.deltas:,}-delta stream at full speed: "
                f"{sizes.long_rounds} rounds ..."
            )
            server.script("api", *[f"ok:{sizes.deltas}"] * ((sizes.long_rounds + 1) * len(targets)))
            job = {
                "kind": "long",
                "targets": targets,
                "rounds": sizes.long_rounds,
                "deltas": sizes.deltas,
            }
            s["long"] = run_worker(Path(__file__), job, out)
            server.clear()

        out(
            f"\n[3/5] a {sizes.paced_deltas:,}-delta stream, each event {PACE * 1e3:.0f} ms after "
            f"the last (a read per event): {sizes.paced_rounds} rounds ..."
        )
        s["paced"] = paced(command, sizes, skipped is None, out)

        out(
            f"\n[4/5] memory: {sizes.held} streams held open after their first content event, "
            f"{sizes.memory_samples} sample(s), each a fresh sdkguard proxy ..."
        )
        s["memory"] = []
        for i in range(sizes.memory_samples):
            server.script("held", *["ok"] * WARMUP_STREAMS)
            held_upstream = server.urls["held"]
            with sdkguard_proxy(
                command, held_upstream, LOGS / "sdkguard-proxy-memory.log"
            ) as fresh:
                job = {"kind": "held", "target": fresh.target(), "held": sizes.held}
                sample = run_worker(Path(__file__), job, out)
            s["memory"].append(sample)
            server.clear()
            per = (sample["held_rss_kb"] - sample["idle_rss_kb"]) * 1024 / max(1, sample["held"])
            out(
                f"  sample {i + 1}/{sizes.memory_samples}: RSS {sample['idle_rss_kb'] / 1024:.1f} "
                f"-> {sample['held_rss_kb'] / 1024:.1f} MB, {per / 1024:.1f} kB per stream; "
                f"threads {sample['idle_threads']} -> {sample['held_threads']}; "
                f"fds {sample['idle_fds']} -> {sample['held_fds']}; failed "
                f"{len(sample['failed'])} {sorted(set(sample['failed']))}; {sample['tcp']}"
            )

        out(
            f"\n[5/5] {sizes.streams:,} concurrent async streams: {sizes.concurrency_rounds} "
            "rounds, a fresh client process per sample ..."
        )
        s["concurrency"] = {DIRECT: [], SDKGUARD: []}
        for r in range(sizes.concurrency_rounds):
            for name in rotated([DIRECT, SDKGUARD], r):
                job = {"kind": "concurrency", "target": targets[name], "streams": sizes.streams}
                s["concurrency"][name].append(run_worker(Path(__file__), job, out))
                server.clear()
            cells = "  ".join(
                f"{n} {c[-1]['wall']:.2f} s (first batch {c[-1]['first_wall']:.2f} s)"
                for n, c in s["concurrency"].items()
            )
            peak = s["concurrency"][SDKGUARD][-1]
            out(
                f"  round {r + 1}/{sizes.concurrency_rounds}: {cells}; proxy threads "
                f"{peak['idle_threads']} -> {peak['peak_threads']}"
            )

        derive(results)
        if any(h.status == "not met" for h in results.headlines[:3]) and not (
            args.no_profile or args.proxy_command or mode == "quick"
        ):
            out(
                f"\nprofiling the sdkguard proxy (cProfile, {PROFILE_STREAMS} streams of "
                f"{sizes.deltas:,} deltas, then {PROFILE_STREAMS} paced streams) ..."
            )
            server.script("api", *[f"ok:{sizes.deltas}"] * (PROFILE_STREAMS + 1))
            results.profile = profile(upstream, sizes.deltas, "full speed")
            server.clear()
            paced_server = PacedServer(sizes.paced_deltas, PACE)
            try:
                results.profile += ["", *profile(paced_server.url, sizes.paced_deltas, "paced")]
            finally:
                paced_server.close()
    return finish(results, started, markdown)


def paced(command: Sequence[str], sizes: Sizes, litellm: bool, out: Out) -> Any:
    """The long-stream rounds against the paced server, a proxy of each kind started for it
    (LiteLLM takes its upstream from its environment)."""
    server = PacedServer(sizes.paced_deltas, PACE)
    try:
        out(f"  paced server: {server.url}, {server.events:,} events a stream, a pause before each")
        with ExitStack() as stack:
            sdk = stack.enter_context(
                sdkguard_proxy(command, server.url, LOGS / "sdkguard-proxy-paced.log")
            )
            targets = {DIRECT: {"url": server.url, "key": API_KEY, "pids": []}}
            targets[SDKGUARD] = sdk.target()
            if litellm:
                targets[LITELLM] = stack.enter_context(litellm_proxy(server.url)).target()
            relay = stack.enter_context(bare_relay(server.url))
            targets[RELAY] = relay.target()
            job = {
                "kind": "long",
                "targets": targets,
                "rounds": sizes.paced_rounds,
                "deltas": sizes.paced_deltas,
            }
            return run_worker(Path(__file__), job, out)
    finally:
        server.close()


class PacedServer(LineProcess):
    """`proxy.py --paced-server`: the fake server's answer of `deltas` deltas, replayed with
    one send per event (one HTTP chunk each, TCP_NODELAY) and `pause` seconds before each, so
    that every event reaches the proxy in a read of its own, as the API's events do.

    The bytes are the kit's (`FakeAnthropic`, `faults.ok`), recorded once off a raw socket;
    only the pacing is this server's. The kit's own `faults.fragmented` pauses inside a send,
    which leaves two writes per pause (the rest of one event, the first piece of the next):
    about 1.5 reads per event. Every answer is the same, request-id and message id included.
    """

    def __init__(self, deltas: int, pause: float) -> None:
        spec = json.dumps({"deltas": deltas, "pause": pause})
        super().__init__([sys.executable, str(Path(__file__)), "--paced-server", spec])
        found = json.loads(self.readline())
        self.url: str = check_loopback(found["url"])
        self.events: int = found["events"]


def _raw_stream(url: str) -> bytes:
    """One streaming Messages request on a raw socket: the answer's bytes as sent."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({**MESSAGE, "stream": True}).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json"
        f"\r\nx-api-key: {API_KEY}\r\nanthropic-version: 2023-06-01\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        for _ in range(100_000):
            chunk = sock.recv(1 << 16)
            received += chunk
            if not chunk or received.endswith(b"\r\n0\r\n\r\n"):
                break
    return received


def _read_request(conn: socket.socket, buffered: bytes) -> bytes | None:
    """Read one request (Content-Length or chunked body); what follows it, or None at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(1 << 16)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = head.decode("latin-1").lower()
    length = re.search(r"\ncontent-length: *(\d+)", headers)
    if length:
        while len(rest) < int(length.group(1)):
            chunk = conn.recv(1 << 16)
            if not chunk:
                return None
            rest += chunk
        return rest[int(length.group(1)) :]
    if "transfer-encoding: chunked" in headers:
        while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
            chunk = conn.recv(1 << 16)
            if not chunk:
                return None
            rest += chunk
        return (b"\r\n" + rest).split(b"\r\n0\r\n\r\n", 1)[1]
    return rest


def serve_paced(deltas: int, pause: float) -> int:
    """The body of `PacedServer`'s process: serves until its stdin ends."""
    import threading

    from sdkguard.testing import FakeAnthropic, faults

    with FakeAnthropic(host="127.0.0.1") as fake:
        fake.default(faults.ok(faults.text("x" * deltas, deltas=deltas)))
        raw = _raw_stream(fake.url)
    # Each event's HTTP chunk starts with its size line; the head ends before the first.
    starts = [m.start() for m in re.finditer(rb"(?<=\r\n)[0-9a-fA-F]+\r\nevent: ", raw)]
    if len(starts) != deltas + SENT_EVENTS_EXTRA:
        raise RuntimeError(f"{len(starts)} events found in the fake server's answer")
    head = raw[: starts[0]]
    pieces = [raw[a:b] for a, b in zip(starts, [*starts[1:], len(raw)], strict=True)]

    def answer(conn: socket.socket) -> None:
        with conn, suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffered: bytes | None = b""
            for _ in range(100_000):  # requests on this connection (keep-alive)
                buffered = _read_request(conn, buffered or b"")
                if buffered is None:
                    return
                conn.sendall(head)
                for piece in pieces:
                    time.sleep(pause)
                    conn.sendall(piece)

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def accept() -> None:
        with suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    print(json.dumps({"url": url, "events": len(pieces)}), flush=True)
    for _ in sys.stdin:  # until end of file: the benchmark ended
        pass
    listener.close()
    return 0


def profile(upstream: str, deltas: int, label: str, top: int = 16) -> list[str]:
    """The sdkguard proxy under cProfile over a few long streams: where its CPU time goes.

    cProfile's clock is the process's CPU time (time waiting in epoll is not counted); the
    proxy is stopped with SIGINT, then the profile written; the first stream is a warm-up,
    counted too (the profile runs from the proxy's start)."""
    target = LOGS / "proxy.prof"
    with suppress(FileNotFoundError):
        target.unlink()
    command = [sys.executable, str(Path(__file__)), "--profiled-proxy", str(target)]
    with sdkguard_proxy(command, upstream, LOGS / "sdkguard-proxy-profile.log") as proxy:
        job = {
            "kind": "long",
            "targets": {SDKGUARD: proxy.target()},
            "rounds": PROFILE_STREAMS,
            "deltas": deltas,
        }
        run_worker(Path(__file__), job, lambda line: None)
        proxy.stop(signal.SIGINT)
    if not target.exists():
        return [f"{label}: no profile (the proxy wrote no {target.name} on SIGINT)"]
    stats = pstats.Stats(str(target))
    events = (PROFILE_STREAMS + 1) * (deltas + SENT_EVENTS_EXTRA)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    total = sum(row[2] for _, row in rows)
    lines = [
        f"{label}: {events:,} events relayed, {total / events * 1e6:.2f} us of CPU time per "
        "event in all (cProfile inflates small functions); the heaviest by own time:",
        "  calls/event  own us/event  cum us/event  function",
    ]
    for func, (_, calls, own, cum, _) in rows[:top]:
        lines.append(
            f"  {calls / events:11.2f} {own / events * 1e6:13.2f} {cum / events * 1e6:13.2f}  "
            f"{common._func_name(func)}"
        )
    return lines


def _per_event(samples: Sequence[dict[str, float]], events: int) -> list[float]:
    return [s["proxy_cpu"] / events for s in samples]


def derive(results: Results) -> None:
    s, f, sizes = results.samples, results.figures, results.sizes
    have_litellm = LITELLM in s["variants"]
    first = s["first"]
    f["first_ms"] = {
        name: {"min": min(v) * 1e3, "median": statistics.median(v) * 1e3}
        for name, v in first.items()
    }
    added = {name: difference(first[name], first[DIRECT], 1e3) for name in first if name != DIRECT}
    f["first_added_ms"] = {name: asdict(c) for name, c in added.items()}
    goals: list[Verdict] = []
    if have_litellm:
        a_sdk = [x - y for x, y in zip(first[SDKGUARD], first[DIRECT], strict=True)]
        a_lite = [x - y for x, y in zip(first[LITELLM], first[DIRECT], strict=True)]
        share = Comparison(
            added[SDKGUARD].by_min / added[LITELLM].by_min,
            added[SDKGUARD].by_median / added[LITELLM].by_median,
            statistics.median([x / y for x, y in zip(a_sdk, a_lite, strict=True)]),
        )
        f["first_share"] = asdict(share)
        goals.append(
            Verdict.judge(
                "added to the first content event, sdkguard / LiteLLM",
                GOAL_VS_LITELLM,
                "wall-clock, added over direct",
                share,
            )
        )

    for key, deltas in (("long", sizes.deltas), ("paced", sizes.paced_deltas)):
        long = s[key]
        events = deltas + SENT_EVENTS_EXTRA
        for kind in ("wall", "cpu"):
            for name in [n for n in PROXIES if n in long]:
                c = ratio([x[kind] for x in long[name]], [x[kind] for x in long[DIRECT]])
                f[f"{key}_{kind}_{name}"] = asdict(c)
                if key == "long" and name == SDKGUARD:
                    goals.append(
                        Verdict.judge(
                            f"{sizes.deltas:,}-delta stream {kind}, through / direct",
                            GOAL_STREAM_RATIO,
                            "client wall-clock" if kind == "wall" else "client CPU",
                            c,
                        )
                    )
        f[f"{key}_ms"] = {
            name: {k: statistics.median(x[k] for x in v) * 1e3 for k in v[0]}
            for name, v in long.items()
        }
        f[f"{key}_cpu_per_event_us"] = {
            name: {
                "min": min(_per_event(long[name], events)) * 1e6,
                "median": statistics.median(_per_event(long[name], events)) * 1e6,
            }
            for name in PROXIES
            if name in long
        }
        if have_litellm:
            share = ratio(_per_event(long[SDKGUARD], events), _per_event(long[LITELLM], events))
            f[f"{key}_cpu_share"] = asdict(share)
            if key == "paced":
                goals.append(
                    Verdict.judge(
                        "CPU per relayed event (a read per event), sdkguard / LiteLLM",
                        GOAL_VS_LITELLM,
                        "proxy process CPU",
                        share,
                    )
                )

    memory = s["memory"]
    per_stream = [(m["held_rss_kb"] - m["idle_rss_kb"]) * 1024 / max(1, m["held"]) for m in memory]
    f["memory"] = {
        "bytes_per_stream_median": statistics.median(per_stream),
        "bytes_per_stream_min": min(per_stream),
        "idle_rss_mb": statistics.median(m["idle_rss_kb"] for m in memory) / 1024,
        "held_rss_mb": statistics.median(m["held_rss_kb"] for m in memory) / 1024,
        "idle_threads": max(m["idle_threads"] for m in memory),
        "held_threads": max(m["held_threads"] for m in memory),
        "fds_per_stream": statistics.median(
            (m["held_fds"] - m["idle_fds"]) / max(1, m["held"]) for m in memory
        ),
        "failed": sum(len(m["failed"]) for m in memory),
        "failures": sorted({e for m in memory for e in m["failed"]}),
        "tcp": {k: sum(m["tcp"][k] for m in memory) / len(memory) for k in TCP_COUNTERS},
    }

    conc = s["concurrency"]
    wall = ratio([x["wall"] for x in conc[SDKGUARD]], [x["wall"] for x in conc[DIRECT]])
    cpu = ratio([x["cpu"] for x in conc[SDKGUARD]], [x["cpu"] for x in conc[DIRECT]])
    first_batch = ratio(
        [x["first_wall"] for x in conc[SDKGUARD]], [x["first_wall"] for x in conc[DIRECT]]
    )
    idle_threads = max(x["idle_threads"] for x in conc[SDKGUARD])
    peak_threads = max(x["peak_threads"] for x in conc[SDKGUARD])
    f["concurrency"] = {
        "wall": asdict(wall),
        "client_cpu": asdict(cpu),
        "first_batch_wall": asdict(first_batch),
        "wall_s": {n: statistics.median(x["wall"] for x in v) for n, v in conc.items()},
        "first_batch_s": {
            n: statistics.median(x["first_wall"] for x in v) for n, v in conc.items()
        },
        "proxy_cpu_s": statistics.median(x["proxy_cpu"] for x in conc[SDKGUARD]),
        "proxy_cpu_per_stream_us": statistics.median(
            x["proxy_cpu"] / sizes.streams for x in conc[SDKGUARD]
        )
        * 1e6,
        "idle_threads": idle_threads,
        "peak_threads": peak_threads,
        "idle_rss_mb": statistics.median(x["idle_rss_kb"] for x in conc[SDKGUARD]) / 1024,
        "peak_rss_mb": statistics.median(x["peak_rss_kb"] for x in conc[SDKGUARD]) / 1024,
        "no_thread_per_stream": peak_threads - idle_threads <= THREADS_SLACK,
        "failed": {n: sum(len(x["failed"]) for x in v) for n, v in conc.items()},
        "failures": sorted({e for x in conc[SDKGUARD] for e in x["failed"]}),
        "samples": {n: len(v) for n, v in conc.items()},
        "tcp": {
            n: {
                batch: {
                    counter: sum(x[key][counter] for x in v) / len(v) for counter in TCP_COUNTERS
                }
                for batch, key in (("first_batch", "first_tcp"), ("timed_batch", "tcp"))
            }
            for n, v in conc.items()
        },
    }
    results.goals = goals
    results.headlines = headlines(results)


def _goal(results: Results, prefix: str) -> Verdict | None:
    return next((g for g in results.goals if g.goal.startswith(prefix)), None)


def headlines(results: Results) -> list[Headline]:
    f, sizes = results.figures, results.sizes
    skipped = results.litellm.get("skipped")
    rows = []
    a = f["first_added_ms"][SDKGUARD]
    share = _goal(results, "added to the first")
    lite = f["first_added_ms"].get(LITELLM)
    rows.append(
        Headline(
            "proxy: first content",
            "time to the first content event through `sdkguard proxy` minus direct, against "
            "LiteLLM's proxy (Anthropic pass-through)",
            "< 1/5 of LiteLLM's",
            f"+{a['paired_median']:.2f} ms"
            + (
                f" vs LiteLLM +{lite['paired_median']:.2f} ms: x{share.value:.3f}"
                if share and lite
                else f" (LiteLLM: {skipped})"
            ),
            share.status if share else "-",
        )
    )
    wall, cpu = (
        _goal(results, f"{sizes.deltas:,}-delta stream wall"),
        _goal(results, f"{sizes.deltas:,}-delta stream cpu"),
    )
    assert wall is not None and cpu is not None
    rows.append(
        Headline(
            "proxy: long stream",
            f"a {sizes.deltas:,}-delta stream through `sdkguard proxy` / direct, client time",
            "<= 1.05",
            f"x{wall.value:.3f} wall, x{cpu.value:.3f} client CPU",
            "met" if wall.status == cpu.status == "met" else "not met",
        )
    )
    paced, full = f["paced_cpu_per_event_us"], f["long_cpu_per_event_us"]
    cshare = _goal(results, "CPU per relayed event")
    lite_full = (
        f" (at full speed, several events a read: {full[SDKGUARD]['median']:.1f} vs "
        f"{full[LITELLM]['median']:.1f} us)"
        if LITELLM in full
        else f" (at full speed: {full[SDKGUARD]['median']:.1f} us)"
    )
    rows.append(
        Headline(
            "proxy: CPU per event",
            "the proxy process's CPU time per relayed event, each event one HTTP chunk in a "
            f"read of its own ({PACE * 1e3:.0f} ms apart), against LiteLLM's",
            "< 1/5 of LiteLLM's",
            f"{paced[SDKGUARD]['median']:.1f} us"
            + (
                f" vs LiteLLM {paced[LITELLM]['median']:.1f} us: x{cshare.value:.3f}"
                if cshare
                else f" (LiteLLM: {skipped})"
            )
            + lite_full
            + (
                f"; a bare asyncio byte relay: {paced[RELAY]['median']:.1f} us"
                if RELAY in paced
                else ""
            ),
            cshare.status if cshare else "-",
        )
    )
    m = f["memory"]
    rows.append(
        Headline(
            "proxy: memory",
            f"the proxy's RSS with {sizes.held} streams held after their first content event, "
            "minus idle, per stream",
            "-",
            f"{m['bytes_per_stream_median'] / 1024:.1f} kB per stream (idle "
            f"{m['idle_rss_mb']:.0f} MB); threads {m['idle_threads']} -> {m['held_threads']}"
            + (f"; {m['failed']} streams failed to open" if m["failed"] else ""),
            "-",
        )
    )
    c = f["concurrency"]
    rows.append(
        Headline(
            "proxy: concurrency",
            f"{sizes.streams:,} concurrent async streams through one `sdkguard proxy` vs direct: "
            "time, the proxy's threads",
            "no thread per stream, no stream lost",
            f"x{c['wall']['paired_median']:.2f} wall ({c['wall_s'][SDKGUARD]:.2f} vs "
            f"{c['wall_s'][DIRECT]:.2f} s); proxy threads {c['idle_threads']} -> "
            f"{c['peak_threads']}; streams failed {c['failed'][SDKGUARD]} through, "
            f"{c['failed'][DIRECT]} direct (of {2 * sizes.streams * c['samples'][DIRECT]:,} each)",
            "met"
            if c["no_thread_per_stream"] and c["failed"][SDKGUARD] <= c["failed"][DIRECT]
            else "not met",
        )
    )
    return rows


# --- reports --------------------------------------------------------------------------------


def _cmp(c: dict[str, float], fmt: str) -> str:
    return (
        f"{fmt.format(c['paired_median'])} per-round median (by min {fmt.format(c['by_min'])}, "
        f"by median {fmt.format(c['by_median'])})"
    )


def _tcp(counters: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in counters.items())


def _held_failures(m: dict[str, Any]) -> str:
    return (
        f"streams that failed to open: {m['failed']}"
        + (f" ({'; '.join(m['failures'])})" if m["failures"] else "")
        + f"; the kernel's counters while they opened, mean per sample: {_tcp(m['tcp'])}"
    )


def _failures(c: dict[str, Any]) -> str:
    tcp = c["tcp"]
    return (
        f"streams failed: {c['failed'][SDKGUARD]} through the proxy"
        + (f" ({'; '.join(c['failures'])})" if c["failures"] else "")
        + f", {c['failed'][DIRECT]} direct; the kernel's counters of full listen queues "
        "(/proc/net/netstat, the whole machine), mean per sample: first batch through "
        f"{_tcp(tcp[SDKGUARD]['first_batch'])}, direct {_tcp(tcp[DIRECT]['first_batch'])}; "
        f"timed batch through {_tcp(tcp[SDKGUARD]['timed_batch'])}, direct "
        f"{_tcp(tcp[DIRECT]['timed_batch'])}"
    )


def report(results: Results, out: Out) -> None:
    f, sizes = results.figures, results.sizes
    out("\n" + "=" * 80)
    out(f"(a) time to the first content event ({sizes.first_rounds} rounds):")
    for name, v in f["first_ms"].items():
        added = f["first_added_ms"].get(name)
        extra = f"; added over direct {_cmp(added, '{:+.2f} ms')}" if added else ""
        out(f"  {name:9} min {v['min']:.2f} ms, median {v['median']:.2f} ms{extra}")
    for key, title in (
        ("long", f"(b) {sizes.deltas:,}-delta stream at full speed"),
        ("paced", f"(c) {sizes.paced_deltas:,}-delta stream, a read per event"),
    ):
        rounds = sizes.long_rounds if key == "long" else sizes.paced_rounds
        out(f"{title}, medians ({rounds} rounds):")
        for name, v in f[f"{key}_ms"].items():
            proxy = (
                f", proxy CPU {v['proxy_cpu']:.1f} ms "
                f"({f[f'{key}_cpu_per_event_us'][name]['median']:.2f} us per event)"
                if "proxy_cpu" in v
                else ""
            )
            out(f"  {name:9} wall {v['wall']:.0f} ms, client CPU {v['cpu']:.0f} ms{proxy}")
        for name in [n for n in PROXIES if f"{key}_wall_{n}" in f]:
            out(
                f"  {name} / direct: wall {_cmp(f[f'{key}_wall_{name}'], 'x{:.3f}')}; client "
                f"CPU {_cmp(f[f'{key}_cpu_{name}'], 'x{:.3f}')}"
            )
        if f"{key}_cpu_share" in f:
            out(
                "  proxy CPU per event, sdkguard / LiteLLM: "
                + _cmp(f[f"{key}_cpu_share"], "x{:.3f}")
            )
    m = f["memory"]
    out(
        f"(d) memory: {m['bytes_per_stream_median'] / 1024:.1f} kB per held stream (min "
        f"{m['bytes_per_stream_min'] / 1024:.1f}); RSS {m['idle_rss_mb']:.1f} -> "
        f"{m['held_rss_mb']:.1f} MB; threads {m['idle_threads']} -> {m['held_threads']}; "
        f"{m['fds_per_stream']:.2f} file descriptors per stream; {_held_failures(m)}"
    )
    c = f["concurrency"]
    out(
        f"(e) {sizes.streams:,} concurrent streams: wall {c['wall_s'][SDKGUARD]:.2f} s through, "
        f"{c['wall_s'][DIRECT]:.2f} s direct: {_cmp(c['wall'], 'x{:.3f}')}; client CPU "
        f"{_cmp(c['client_cpu'], 'x{:.3f}')}; first batch (connections opened) "
        f"{c['first_batch_s'][SDKGUARD]:.2f} vs {c['first_batch_s'][DIRECT]:.2f} s; proxy CPU "
        f"{c['proxy_cpu_s']:.2f} s ({c['proxy_cpu_per_stream_us']:.0f} us per stream); proxy "
        f"threads {c['idle_threads']} idle, {c['peak_threads']} at the peak; proxy RSS "
        f"{c['idle_rss_mb']:.0f} -> {c['peak_rss_mb']:.0f} MB; {_failures(c)}"
    )
    if results.litellm.get("skipped"):
        out(f"LiteLLM: {results.litellm['skipped']}")
    for goal in results.goals:
        out(f"  => GOAL {goal.line('{:.4f}')}")
    for h in results.headlines:
        if h.figure == "proxy: concurrency":
            out(f"  => no thread per stream, no stream lost: {h.status.upper()} ({h.result})")
    if results.profile:
        out("\n".join(["profile of the sdkguard proxy:", *results.profile]))
    out(f"the run took {results.seconds:.0f} s")


def markdown(results: Results) -> str:
    f, sizes = results.figures, results.sizes
    lite = results.litellm
    if lite.get("skipped"):
        litellm_line = f"LiteLLM's proxy: {lite['skipped']}."
    else:
        litellm_line = (
            f"LiteLLM {lite['version']} (`litellm[proxy]` from PyPI, in its own virtual "
            "environment under `.cache/bench-litellm/`, installed by the benchmark): one "
            "worker, its defaults, a master key made up for the run (it refuses to start "
            "without one), `ANTHROPIC_API_BASE` set to the fake server, clients on its "
            "Anthropic pass-through route `/anthropic/v1/messages`."
        )
    first_rows = [
        [
            name,
            f"{v['min']:.2f} ms",
            f"{v['median']:.2f} ms",
            _cmp(f["first_added_ms"][name], "{:+.2f} ms") if name in f["first_added_ms"] else "-",
        ]
        for name, v in f["first_ms"].items()
    ]

    def stream_rows(key: str) -> list[list[str]]:
        return [
            [
                name,
                f"{v['wall']:.0f} ms",
                f"{v['cpu']:.0f} ms",
                _cmp(f[f"{key}_wall_{name}"], "x{:.3f}") if name != DIRECT else "-",
                _cmp(f[f"{key}_cpu_{name}"], "x{:.3f}") if name != DIRECT else "-",
                f"{v['proxy_cpu']:.1f} ms, "
                f"{f[f'{key}_cpu_per_event_us'][name]['median']:.2f} us per event"
                if name != DIRECT
                else "-",
            ]
            for name, v in f[f"{key}_ms"].items()
        ]

    stream_header = [
        "variant",
        "wall",
        "client CPU",
        "wall / direct",
        "client CPU / direct",
        "proxy CPU",
    ]
    m, c = f["memory"], f["concurrency"]
    goals = "\n".join(f"- {g.line('{:.3f}')}" for g in results.goals)
    parts = [
        "## The proxy (`proxy.py`)",
        f"`{' '.join(Path(x).name if i == 0 else x for i, x in enumerate(results.proxy_command))}"
        f" --upstream FAKE --port N` (sdkguard {results.proxy_version}) against the plain "
        "`anthropic` SDK going direct to the fake "
        "server (sdkguard not installed in the client processes), and " + litellm_line,
        f"**(a) Time to the first content event**, a three-delta answer read to the end, "
        f"{sizes.first_rounds} interleaved rounds:",
        md_table(["variant", "min", "median", "added over direct"], first_rows),
        f"**(b) A {sizes.deltas:,}-delta stream at full speed**, read to the end, "
        f"{sizes.long_rounds} interleaved rounds, medians; the proxy's CPU time (its process "
        "CPU clock) until it stops rising after the stream, per event the upstream sent "
        f"({sizes.deltas + SENT_EVENTS_EXTRA:,}, one HTTP chunk each, but at full speed a "
        "proxy's read gets several):",
        md_table(stream_header, stream_rows("long")),
        f"**(c) A {sizes.paced_deltas:,}-delta stream, a read per event**: the fake server's "
        f"answer replayed one send per event, {PACE * 1e3:.0f} ms before each, so each event "
        "reaches the proxy on its own, as the API's do (`--paced-server`); "
        f"{sizes.paced_rounds} interleaved rounds, medians. "
        "`relay` is a reference: a bare asyncio byte relay (`--bare-relay`: no HTTP parsing, "
        "nothing held), the least a proxy on Python's asyncio spends per read:",
        md_table(stream_header, stream_rows("paced")),
        f"**(d) Memory**: a fresh proxy, {WARMUP_STREAMS} streams, then {sizes.held} streams "
        f"held open after their first content event; {sizes.memory_samples} sample(s): "
        f"{m['bytes_per_stream_median'] / 1024:.1f} kB of RSS per stream (RSS "
        f"{m['idle_rss_mb']:.1f} -> {m['held_rss_mb']:.1f} MB), threads {m['idle_threads']} -> "
        f"{m['held_threads']}, {m['fds_per_stream']:.2f} file descriptors per stream; "
        f"{_held_failures(m)}.",
        f"**(e) {sizes.streams:,} concurrent async streams** ({STREAMS_PER_CLIENT} per "
        f"`AsyncAnthropic` client, a fresh client process per sample, {sizes.concurrency_rounds} "
        f"rounds, after an untimed batch that opens the connections): "
        f"{c['wall_s'][SDKGUARD]:.2f} s through the proxy, {c['wall_s'][DIRECT]:.2f} s direct, "
        f"{_cmp(c['wall'], 'x{:.3f}')}; client CPU {_cmp(c['client_cpu'], 'x{:.3f}')}; the "
        f"first batch {c['first_batch_s'][SDKGUARD]:.2f} vs {c['first_batch_s'][DIRECT]:.2f} s. "
        f"The proxy: {c['proxy_cpu_s']:.2f} s of CPU ({c['proxy_cpu_per_stream_us']:.0f} us per "
        f"stream), {c['idle_threads']} threads idle and {c['peak_threads']} at the peak "
        f"({'no' if c['no_thread_per_stream'] else '**a**'} thread per stream), RSS "
        f"{c['idle_rss_mb']:.0f} -> {c['peak_rss_mb']:.0f} MB. {_failures(c).capitalize()}.",
    ]
    if goals:
        parts.append("Goals:\n\n" + goals)
    if results.profile:
        parts.append(
            "**Profile** (a goal is not met): the sdkguard proxy under cProfile, "
            f"{PROFILE_STREAMS + 1} streams of {sizes.deltas:,} deltas:\n\n"
            + code_block("\n".join(results.profile))
        )
    return "\n\n".join(parts)


# --- command line ---------------------------------------------------------------------------


def profiled_proxy(target: str, argv: Sequence[str]) -> int:
    """`sdkguard proxy ARGV` under cProfile timed by the process CPU clock; the profile is
    written to `target` when the proxy stops (SIGINT)."""
    import cProfile

    from sdkguard._cli import main as sdkguard_main

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        return sdkguard_main(["proxy", *argv])
    finally:
        profiler.disable()
        profiler.dump_stats(target)


def proxy_version() -> str:
    """The commit of the working tree the proxy runs from, `+changes` when sdkguard/ differs."""

    def git(*args: str) -> str:
        found = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return found.stdout.strip()

    with suppress(OSError, subprocess.SubprocessError):
        dirty = git("status", "--porcelain", "--", "sdkguard")
        return git("rev-parse", "--short", "HEAD") + (" +changes" if dirty else "")
    return "?"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--profiled-proxy"] and len(args_list) > 1:
        return profiled_proxy(args_list[1], args_list[2:])
    parser = argparse.ArgumentParser(
        prog="benchmarks/proxy.py",
        description="sdkguard proxy vs direct, and LiteLLM's proxy, over loopback.",
    )
    add_common_args(parser, TIMEOUT)
    parser.add_argument(
        "--no-litellm",
        action="store_true",
        help="leave LiteLLM out (it is always out with --quick)",
    )
    parser.add_argument(
        "--litellm-spec",
        default=LITELLM_SPEC,
        help=f"what pip installs into {LITELLM_VENV} when it has no litellm yet "
        f"(default {LITELLM_SPEC!r}); delete the venv to reinstall",
    )
    parser.add_argument(
        "--proxy-command",
        help="the proxy command to measure instead of `sdkguard proxy` (given --upstream URL "
        "--port N)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="no cProfile run when a goal is missed"
    )
    parser.add_argument("--paced-server", help=argparse.SUPPRESS)  # PacedServer's process
    parser.add_argument("--bare-relay", help=argparse.SUPPRESS)  # bare_relay's process
    args = parser.parse_args(argv)
    if args.worker:
        report_result(worker(json.loads(args.worker)))
        return 0
    if args.paced_server:
        return serve_paced(**json.loads(args.paced_server))
    if args.bare_relay:
        with suppress(KeyboardInterrupt):
            asyncio.run(_serve_bare_relay(**json.loads(args.bare_relay)))
        return 0
    # The client processes get the plain SDK, whatever this shell set.
    os.environ.pop("SDKGUARD_AUTO", None)
    mode = "quick" if args.quick else "full"
    sizes = QUICK if args.quick else FULL
    return run_main(args, TIMEOUT, lambda: measure(sizes, mode, args, out), report)


if __name__ == "__main__":
    sys.exit(main())
