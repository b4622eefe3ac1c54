"""The `sdkguard` command line: the console script `sdkguard` and `python -m sdkguard`.

    sdkguard run [POLICY OPTIONS] -- COMMAND [ARG ...]
    sdkguard doctor [--json]
    sdkguard demo [--fast] [--only NAME[,NAME...]]
    sdkguard proxy [--upstream URL] [--port N] [OPTIONS] [-- COMMAND [ARG ...]]

Each subcommand lives in its own module, whose `add_parser(commands)` registers its parser
and sets `handler` to a function of the parsed arguments returning the exit status; `main()`
parses and dispatches. Nothing here imports `anthropic` until a subcommand runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sdkguard import _demo, _doctor, _run
from sdkguard._version import __version__
from sdkguard.proxy import _command as _proxy

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sdkguard doctor --json | head`: the reader left, not an error
        sys.stderr.close()
        return 0


def _prog() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m sdkguard" if argv0 in ("__main__.py", "-c", "") else "sdkguard"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="sdkguard: make calls made with the anthropic SDK survive bad networks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    _run.add_parser(commands)
    _doctor.add_parser(commands)
    _demo.add_parser(commands)
    _proxy.add_parser(commands)
    return parser
