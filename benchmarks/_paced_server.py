"""A fake Anthropic server that writes at a model's pace, in a process of its own.

    python benchmarks/_paced_server.py --pace 0.025 --answer m-think=thinking:40,5

Starts one HTTP server on 127.0.0.1 and prints its URL as one JSON line. A streaming Messages
request whose `model` is NAME (`--answer NAME=ANSWER`, repeatable) gets ANSWER's events, the
kit's own
(`sdkguard.testing`'s wire format), each one HTTP chunk written by a send of its own
(TCP_NODELAY), with `--pace` seconds before every delta that carries generated content
(`thinking_delta`, `text_delta`, `input_json_delta`); the other events (`message_start`,
block starts and stops, the ping, `signature_delta`, `message_delta`, `message_stop`) follow
the event before them at once. The pauses keep to a schedule from the first event, so a
sleep that oversleeps does not add up. ANSWER is

- `thinking:T,X`: a thinking block of T deltas, then a text block of X deltas;
- `tool:X,U`: a text block of X deltas, then a tool_use block whose JSON input comes in U
  deltas (the message ends in the tool call).

The process exits when its stdin ends (the benchmark ended, or died).

`sdkguard.testing` paces no events: `faults.trickle` paces bytes, `faults.fragmented` pauses
at byte offsets of the whole answer (the status line and headers included), which the
answer's ids make vary; hence this helper.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sdkguard.testing import faults
from sdkguard.testing._sse import LAST_CHUNK, Event, stream_events

PACED_DELTAS = frozenset({"thinking_delta", "text_delta", "input_json_delta"})
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\nrequest-id: req_paced\r\n\r\n"
)


def answer(spec: str) -> faults.Ok:
    """The reply an ANSWER spec names (see the module's docstring)."""
    kind, _, counts = spec.partition(":")
    first, second = (int(n) for n in counts.split(","))
    if kind == "thinking":
        return faults.ok(
            faults.thinking("think " * first, signature="sig-paced", deltas=first),
            faults.text("word " * second, deltas=second),
        )
    if kind == "tool":
        # Ten characters of input a delta, so that no delta is empty.
        return faults.ok(
            faults.text("word " * first, deltas=first),
            faults.tool_use(
                "lookup", {"query": "q" * 10 * second}, id="toolu_paced", deltas=second
            ),
        )
    raise ValueError(f"unknown answer {spec!r}")


def events(spec: str, model: str) -> list[Event]:
    """The events of `spec`'s stream, as the server writes them (pings included)."""
    return stream_events(answer(spec), message_id="msg_paced", model=model)


def schedule(spec: str, model: str, pace: float) -> list[tuple[float, bytes]]:
    """(seconds after the first event, the event's HTTP chunk) for every event of `spec`."""
    out: list[tuple[float, bytes]] = []
    at = 0.0
    for name, data, chunk in events(spec, model):
        if name == "content_block_delta" and data["delta"]["type"] in PACED_DELTAS:
            at += pace
        out.append((at, chunk))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API
    disable_nagle_algorithm = True  # every event a segment of its own, as the API sends them
    server: PacedServer

    def do_POST(self) -> None:
        length = self.headers.get("content-length")
        if length is None:  # the SDK and the proxy send a length; nothing else is expected
            self.send_error(411)
            return
        model = json.loads(self.rfile.read(int(length))).get("model")
        paced = self.server.answers.get(model)
        if paced is None:
            self.send_error(404, f"no answer for the model {model!r}")
            return
        self.wfile.write(HEAD)
        start = time.monotonic()
        for at, chunk in paced:
            wait = start + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.wfile.write(chunk)
        self.wfile.write(LAST_CHUNK)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request on stderr would only be noise


class PacedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answers: dict[str, list[tuple[float, bytes]]]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answers = answers
        """model -> its answer's schedule."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pace", type=float, required=True, help="seconds before each delta")
    parser.add_argument(
        "--answer",
        action="append",
        default=[],
        metavar="NAME=ANSWER",
        help="what requests for the model NAME get (repeatable)",
    )
    args = parser.parse_args(argv)
    answers = dict(a.split("=", 1) for a in args.answer)
    server = PacedServer(
        {model: schedule(spec, model, args.pace) for model, spec in answers.items()}
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"url": server.url}), flush=True)
    for _ in sys.stdin:  # until end of file
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
