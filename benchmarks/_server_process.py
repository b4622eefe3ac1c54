"""The fake Anthropic servers of the benchmarks, in a process of their own.

    python benchmarks/_server_process.py --server stream=ok:20000 --server small=ok

Starts one `FakeAnthropic` on 127.0.0.1 per `--server NAME=ANSWER` and prints one JSON line
with their URLs. ANSWER is what every Messages request gets (the server's default), written
as for `python -m sdkguard.testing serve --fault` (`reset_after:3`, `stall_after:0,0.02`,
...), plus `ok:N`: one text block in N `text_delta` events, and `continuable:N` /
`continuable_reset_after:K,N`: N words a delta each, as `faults.continuable` answers.

Then it reads commands, one per line, from stdin, and answers `ok` to each:

- `clear`: forget what the servers recorded (every event of every stream is kept otherwise:
  about 1.3 MB per 20,000-event stream);
- `script NAME ANSWER [ANSWER ...]`: the next requests to server NAME get these answers, in
  order, then its default again;
- end of file (the benchmark ended, or died): stop the servers and exit.

A process of its own: the server threads never compete with the client for the GIL. The
command-line `python -m sdkguard.testing serve` cannot build a reply with 20,000 deltas and
takes no commands, hence this helper.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence

from sdkguard.testing import FakeAnthropic, faults
from sdkguard.testing.__main__ import parse_fault
from sdkguard.testing.faults import Answer


def continuable(deltas: int) -> faults.Continuable:
    """One text block of `deltas` words, a delta each, answered as a model continues it."""
    return faults.continuable(faults.ok(faults.text("word " * deltas, deltas=deltas)))


def parse_answer(spec: str) -> Answer:
    """`ok:N` (one text block in N deltas), `continuable:N` (N words, a delta each, continued
    as `faults.continuable` does), `continuable_reset_after:K,N` (that answer reset after K
    events), or any fault spec of `sdkguard.testing serve`."""
    name, _, count = spec.partition(":")
    if name == "ok" and count:
        deltas = int(count)
        return faults.ok(faults.text("x" * deltas, deltas=deltas))
    if name == "continuable":
        return continuable(int(count))
    if name == "continuable_reset_after":
        after, deltas = (int(x) for x in count.split(","))
        return faults.reset_after(after, reply=continuable(deltas))
    return parse_fault(spec)


def _clear(server: FakeAnthropic) -> None:
    # Plain list operations are atomic under the GIL; a request recorded meanwhile only gets
    # another message id.
    del server.requests[:]
    del server.sent[:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=ANSWER",
        help="a server and what it answers by default (repeatable)",
    )
    args = parser.parse_args(argv)
    defaults = dict(spec.split("=", 1) for spec in args.server)
    servers = {name: FakeAnthropic(host="127.0.0.1") for name in defaults}
    with contextlib.ExitStack() as stack:
        for name, server in servers.items():
            stack.enter_context(server)
            server.default(parse_answer(defaults[name]))
        print(json.dumps({name: server.url for name, server in servers.items()}), flush=True)
        for line in sys.stdin:
            command, *words = line.split()
            if command == "clear":
                for server in servers.values():
                    _clear(server)
            elif command == "script" and words and words[0] in servers:
                servers[words[0]].script(*(parse_answer(spec) for spec in words[1:]))
            else:
                print(f"error: unknown command {line.strip()!r}", flush=True)
                continue
            print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
