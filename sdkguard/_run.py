"""`sdkguard run -- COMMAND [ARG ...]`: run any command with the guard on in its Python processes.

It sets `SDKGUARD_AUTO=1`, plus `SDKGUARD_<FIELD>` for each policy option given, and replaces
itself with the command (`exec` on POSIX, so the exit status and signals are the command's
own; a child process on Windows, whose exit status is returned). Every Python process of an
environment with sdkguard installed then runs `sdkguard.install()` at start (see
`sdkguard._startup`), the command's children and grandchildren included, as they inherit the
environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from sdkguard import _policy, _startup
from sdkguard._policy import env_names, parse_env

__all__ = ["add_parser", "child_environment"]

# The most used fields come first in --help; every other field has an option too.
_COMMON = (
    "max_attempts",
    "idle_timeout",
    "response_timeout",
    "progress_timeout",
    "connect_timeout",
    "deadline",
    "backoff_initial",
    "backoff_max",
    "max_retry_after",
    "retry_statuses",
    "enabled",
)


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a command with sdkguard on in every Python process it starts",
        usage="%(prog)s [--FIELD VALUE ...] -- COMMAND [ARG ...]",
        description=(
            "Run COMMAND with SDKGUARD_AUTO=1 and the SDKGUARD_* variables of the options "
            "given, so that every Python process it starts (children included) in an "
            "environment where sdkguard is installed runs sdkguard.install() at start. Exits "
            "with the command's exit status. Values take the environment variables' forms: "
            "seconds, 'off' for an optional limit, on/off for a switch."
        ),
        epilog="example: sdkguard run --max-attempts 8 --idle-timeout 30 -- python app.py",
    )
    forms: Mapping[str, str] = getattr(_policy, "_FORMS", {})
    names = env_names()
    group = run.add_argument_group("policy (each sets the SDKGUARD_<FIELD> variable)")
    fields = [f for f in _COMMON if f in names] + [f for f in names if f not in _COMMON]
    for field in fields:
        form = forms.get(field)
        group.add_argument(
            _option(field),
            dest=field,
            type=_validator(field, names[field]),
            default=None,
            metavar="VALUE",
            help=f"{form}; sets {names[field]}" if form else f"sets {names[field]}",
        )
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG ...]",
        help="the command to run, after --",
    )
    run.set_defaults(handler=_run, policy_fields=fields)


def _validator(field: str, variable: str) -> Callable[[str], str]:
    def validate(value: str) -> str:
        try:
            parse_env({variable: value})
        except ValueError as error:
            message = str(error)
            _, found, expected = message.partition("is malformed: ")
            raise argparse.ArgumentTypeError(
                f"{value!r} is malformed: {expected}" if found else message
            ) from None
        return value

    validate.__name__ = field  # argparse names the type in some messages
    return validate


def child_environment(
    fields: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`environ` (default: this process's) with `SDKGUARD_AUTO=1` and the given fields set."""
    env = dict(os.environ if environ is None else environ)
    env[_startup.AUTO_VAR] = "1"
    names = env_names()
    for field, value in fields.items():
        env[names[field]] = value
    return env


def _run(args: argparse.Namespace) -> int:
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "sdkguard run: no command given; usage: sdkguard run -- COMMAND [ARG ...]",
            file=sys.stderr,
        )
        return 2
    fields = {
        field: getattr(args, field)
        for field in args.policy_fields
        if getattr(args, field) is not None
    }
    env = child_environment(fields)
    try:
        parse_env(env)  # a malformed SDKGUARD_* inherited from here would leave it unguarded
    except ValueError as error:
        print(f"sdkguard run: {error}", file=sys.stderr)
        return 2
    if not any(files.complete for files in _startup.find_startup_files()):
        print(
            f"sdkguard run: warning: the sdkguard startup file is not installed for "
            f"{sys.executable}, so its Python processes will not be guarded; reinstall "
            "sdkguard (see docs/activation.md)",
            file=sys.stderr,
        )
    return _exec(command, env)


def _exec(command: Sequence[str], env: Mapping[str, str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if os.name == "posix":
            os.execvpe(command[0], list(command), dict(env))
        process = subprocess.Popen(list(command), env=dict(env))
    except FileNotFoundError:
        print(f"sdkguard run: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError as error:
        print(f"sdkguard run: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
        return 126
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue  # the console gave Ctrl-C to the command too: its exit status decides
