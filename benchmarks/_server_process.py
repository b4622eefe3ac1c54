"""The fake Anthropic servers of `overhead.py`, in a process of their own.

    python benchmarks/_server_process.py --deltas 20000

Starts three `FakeAnthropic` servers on 127.0.0.1 and prints one JSON line with their URLs:

- `stream`: every Messages request gets one text block in `--deltas` `text_delta` events
  (as a non-streaming `Message` too, but the benchmark only streams from it);
- `small`: every Messages request gets the default short reply (three deltas);
- `memory`: the same short reply, its body sent `--memory-body-delay` seconds after its
  headers (`stall_after(0, delay)`), so that a client can hold many streams open whose
  bodies have all arrived before it reads them.

Then it reads commands, one per line, from stdin: `clear` forgets what the servers recorded
(every event of every stream is kept otherwise: about 1.3 MB per 20,000-event stream) and
answers `ok`; end of file (the benchmark ended, or died) stops the servers and the process.
A process of its own: the server threads never compete with the client for the GIL.

The command-line `python -m sdkguard.testing serve` cannot build a reply with 20,000 deltas,
hence this helper.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence

from sdkguard.testing import FakeAnthropic, faults


def _clear(server: FakeAnthropic) -> None:
    # Plain list operations are atomic under the GIL; a request recorded meanwhile only gets
    # another message id.
    del server.requests[:]
    del server.sent[:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--deltas", type=int, default=20_000, help="deltas of the long stream")
    parser.add_argument(
        "--memory-body-delay", type=float, default=0.02, help="seconds (the memory server)"
    )
    args = parser.parse_args(argv)
    long_reply = faults.ok(faults.text("x" * args.deltas, deltas=args.deltas))
    servers = {name: FakeAnthropic(host="127.0.0.1") for name in ("stream", "small", "memory")}
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(server)
        servers["stream"].default(long_reply)
        servers["small"].default(faults.ok())
        servers["memory"].default(faults.stall_after(0, args.memory_body_delay))
        print(json.dumps({name: server.url for name, server in servers.items()}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "clear":
                for server in servers.values():
                    _clear(server)
                print("ok", flush=True)
            elif command:
                print(f"error: unknown command {command!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
