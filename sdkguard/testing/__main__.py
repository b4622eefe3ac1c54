"""`python -m sdkguard.testing serve`: run the fake Anthropic server standalone.

    python -m sdkguard.testing serve --port 8080 --fault reset_after:3 --fault ok

Prints the base URL on stdout, then serves until Ctrl-C or SIGTERM. A bad argument (a port
that is taken or impossible, a fault that does not parse) is one line on stderr, naming the
argument and its accepted form, and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NamedTuple, NoReturn

from sdkguard.testing import faults
from sdkguard.testing._server import FakeAnthropic
from sdkguard.testing.faults import Answer


def _seconds(value: str) -> float | None:
    """A duration; "" or "forever" / "none" mean forever."""
    return None if value.lower() in ("", "forever", "none", "inf") else float(value)


class _Kind(NamedTuple):
    convert: Callable[[str], Any]
    what: str
    """What a value must be, for an error message."""


_INT = _Kind(int, "an integer")
_NUMBER = _Kind(float, "a number")
_SECONDS = _Kind(_seconds, "a number of seconds or 'forever'")
_TEXT = _Kind(str, "text")

# What each positional argument of a fault is, by its name in the fault's signature.
_ARGUMENTS: dict[str, _Kind] = {
    "n": _INT,
    "offset": _INT,
    "size": _INT,
    "code": _INT,
    "interval": _NUMBER,
    "bytes_per_second": _NUMBER,
    "seconds": _SECONDS,
    "error_type": _TEXT,
    "message": _TEXT,
    "event": _TEXT,
    "content_type": _TEXT,
}


class _Fault(NamedTuple):
    make: Callable[..., Answer]
    arguments: tuple[str, ...]
    required: int

    @property
    def name(self) -> str:
        return self.make.__name__  # a fault's function is named as the fault

    @property
    def form(self) -> str:
        """How it is written, e.g. `stall_after:n[,seconds]`."""
        form, separator = self.name, ":"
        for i, argument in enumerate(self.arguments):
            form += f"{separator}{argument}" if i < self.required else f"[{separator}{argument}"
            separator = ","
        return form + "]" * (len(self.arguments) - self.required)


def _fault(make: Callable[..., Answer], *arguments: str, required: int | None = None) -> _Fault:
    return _Fault(make, arguments, len(arguments) if required is None else required)


_FAULTS: dict[str, _Fault] = {
    f.name: f
    for f in (
        _fault(faults.ok),
        _fault(faults.reset_before_headers),
        _fault(faults.reset_after, "n"),
        _fault(faults.stall_before_headers, "seconds", required=0),
        _fault(faults.stall_after, "n", "seconds", required=1),
        _fault(faults.pings_only_after, "n", "interval", "seconds", required=2),
        _fault(faults.trickle, "bytes_per_second"),
        _fault(faults.status, "code"),
        _fault(faults.sse_error_after, "n", "error_type", "message", required=1),
        _fault(faults.truncate_after, "n"),
        _fault(faults.close_after, "n"),
        _fault(faults.malformed_after, "n"),
        _fault(faults.vanish_before_headers),
        _fault(faults.vanish_after, "n"),
        _fault(faults.unknown_event_after, "n", "event", required=1),
        _fault(faults.huge_line, "size", required=0),
        _fault(faults.invalid_utf8_after, "n"),
        _fault(faults.proxy_error, "code", required=0),
        _fault(faults.wrong_content_type, "content_type", required=0),
        _fault(faults.reset_at_byte, "offset"),
        _fault(faults.buffered, "seconds"),
    )
}


def parse_fault(spec: str) -> Answer:
    """An answer from `NAME[:ARG,ARG...]`, e.g. `reset_after:3`, `stall_after:2,5`, `status:529`.

    Raises `ValueError` saying what is wrong and the form the fault takes.
    """
    name, _, rest = spec.partition(":")
    name = name.strip().replace("-", "_")
    if name not in _FAULTS:
        raise ValueError(
            f"unknown fault {name!r}; the form is NAME[:ARG,...], NAME one of "
            + ", ".join(sorted(_FAULTS))
        )
    fault = _FAULTS[name]
    values = [a.strip() for a in rest.split(",")] if rest else []
    if not fault.required <= len(values) <= len(fault.arguments):
        raise ValueError(f"{spec!r} has {len(values)} argument(s); the form is {fault.form}")
    arguments = []
    for argument, value in zip(fault.arguments, values, strict=False):
        kind = _ARGUMENTS[argument]
        try:
            arguments.append(kind.convert(value))
        except ValueError:
            raise ValueError(
                f"{spec!r}: {argument} must be {kind.what}, got {value!r}; the form is {fault.form}"
            ) from None
    try:
        return fault.make(*arguments)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(f"{spec!r}: {e}; the form is {fault.form}") from None


def _fault_arg(spec: str) -> Answer:
    try:
        return parse_fault(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


_PORT_FORM = "an integer from 0 to 65535 (0 picks a free one)"


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port; give {_PORT_FORM}")
    return port


class _Parser(argparse.ArgumentParser):
    """Says what is wrong in one line, without the usage (`--help` has it); exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line's parser, and its `serve` command's."""
    parser = _Parser(
        prog="python -m sdkguard.testing",
        description="A fake Anthropic Messages API server that injects network faults.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the server until Ctrl-C or SIGTERM",
        description=(
            "Serve the fake Anthropic Messages API. Each Messages request takes the next "
            "--fault in order; then every request gets --default. Faults: "
            + ", ".join(f.form for f in _FAULTS.values())
            + "."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=0, help="port, from 0 to 65535; 0 (default) picks a free one"
    )
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
        help="the answer once the --fault list is used up (ok), e.g. buffered:2",
    )
    return parser, serve


def _start(server: FakeAnthropic, serve: argparse.ArgumentParser) -> None:
    """Start the server, or exit with status 2 naming the argument it cannot listen with."""
    try:
        server.start()
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            serve.error(
                f"argument --port: cannot listen on port {server.port} of {server.host} "
                f"({e.strerror or e}); give a free port, {_PORT_FORM}"
            )
        serve.error(
            f"argument --host: cannot listen on {server.host!r} ({e.strerror or e}); "
            "give an address of this machine, e.g. 127.0.0.1"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser, serve = _parser()
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, on_signal)
    server = FakeAnthropic(host=args.host, port=args.port)
    _start(server, serve)
    try:
        server.script(*args.fault)
        if args.default is not None:
            server.default(args.default)
        print(server.url, flush=True)
        # A timed wait, so signal handlers get to run on every platform.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
