"""`python -m sdkguard.testing serve`: run the fake Anthropic server standalone.

    python -m sdkguard.testing serve --port 8080 --fault reset_after:3 --fault ok

Prints the base URL on stdout, then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from sdkguard.testing import faults
from sdkguard.testing._server import FakeAnthropic
from sdkguard.testing.faults import Answer


def _seconds(value: str) -> float | None:
    """A duration; "" or "forever" / "none" mean forever."""
    return None if value.lower() in ("", "forever", "none", "inf") else float(value)


def _str(value: str) -> str:
    return value


# name -> (constructor, converters of its positional arguments, required count)
_FAULTS: dict[str, tuple[Callable[..., Answer], tuple[Callable[[str], Any], ...], int]] = {
    "ok": (faults.ok, (), 0),
    "reset_before_headers": (faults.reset_before_headers, (), 0),
    "reset_after": (faults.reset_after, (int,), 1),
    "stall_before_headers": (faults.stall_before_headers, (_seconds,), 0),
    "stall_after": (faults.stall_after, (int, _seconds), 1),
    "pings_only_after": (faults.pings_only_after, (int, float, _seconds), 2),
    "trickle": (faults.trickle, (float,), 1),
    "status": (faults.status, (int,), 1),
    "sse_error_after": (faults.sse_error_after, (int, _str, _str), 1),
    "truncate_after": (faults.truncate_after, (int,), 1),
    "close_after": (faults.close_after, (int,), 1),
    "malformed_after": (faults.malformed_after, (int,), 1),
    "vanish_before_headers": (faults.vanish_before_headers, (), 0),
    "vanish_after": (faults.vanish_after, (int,), 1),
    "unknown_event_after": (faults.unknown_event_after, (int, _str), 1),
    "huge_line": (faults.huge_line, (int,), 0),
    "invalid_utf8_after": (faults.invalid_utf8_after, (int,), 1),
    "proxy_error": (faults.proxy_error, (int,), 0),
    "wrong_content_type": (faults.wrong_content_type, (_str,), 0),
    "reset_at_byte": (faults.reset_at_byte, (int,), 1),
}


def parse_fault(spec: str) -> Answer:
    """An answer from `NAME[:ARG,ARG...]`, e.g. `reset_after:3`, `stall_after:2,5`, `status:529`."""
    name, _, rest = spec.partition(":")
    name = name.strip().replace("-", "_")
    if name not in _FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(_FAULTS))}")
    make, converters, required = _FAULTS[name]
    args = [a.strip() for a in rest.split(",")] if rest else []
    if not required <= len(args) <= len(converters):
        expected = (
            str(required) if required == len(converters) else f"{required} to {len(converters)}"
        )
        raise ValueError(f"{name} takes {expected} argument(s), got {len(args)}: {spec!r}")
    return make(*(convert(arg) for convert, arg in zip(converters[: len(args)], args, strict=True)))


def _fault_arg(spec: str) -> Answer:
    try:
        return parse_fault(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdkguard.testing",
        description="A fake Anthropic Messages API server that injects network faults.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server until Ctrl-C or SIGTERM",
        description=(
            "Serve the fake Anthropic Messages API. Each Messages request takes the next "
            "--fault in order; then every request gets --default. Faults: "
            + ", ".join(sorted(_FAULTS))
            + "."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port; 0 (default) picks a free one")
    serve.add_argument(
        "--fault",
        action="append",
        type=_fault_arg,
        default=[],
        metavar="NAME[:ARG,...]",
        help="an answer for the next request, e.g. reset_after:3, status:529, stall_after:2,5",
    )
    serve.add_argument(
        "--default",
        type=_fault_arg,
        default=None,
        metavar="NAME[:ARG,...]",
        help="the answer once the --fault list is used up (ok)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, on_signal)
    with FakeAnthropic(host=args.host, port=args.port) as server:
        server.script(*args.fault)
        if args.default is not None:
            server.default(args.default)
        print(server.url, flush=True)
        # A timed wait, so signal handlers get to run on every platform.
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
