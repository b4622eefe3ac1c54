"""`sdkguard doctor`: what sdkguard does in this environment, and whether something is wrong.

It prints the effective policy and where each value came from (default, environment variable
by name, code), the installed `anthropic` and whether sdkguard supports it, whether startup
activation is installed and on, whether an OpenTelemetry tracer provider is configured, and
what is patched. Exit status 1 when something is wrong (an SDK that is missing, unsupported or
cannot be patched, a malformed variable, startup activation asked for but not working), else
0; `--json` prints the same report for machines. A guard turned off on purpose
(`SDKGUARD_ENABLED=0`, `install(enabled=False)`) is no fault, but the report says first and
last that no call is guarded.

The report is about the process it runs in: `collect()` can be called from a program too, where
it also sees what the program's own `install(...)` set.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from sdkguard import _patch, _startup
from sdkguard._policy import Policy, env_names, parse_env
from sdkguard._version import ANTHROPIC_REQUIREMENT, __version__, satisfies

__all__ = ["add_parser", "collect", "render"]

_INSTRUMENTOR = "sdkguard.instrumentation:SdkguardInstrumentor"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check the installation: policy and its sources, SDK, startup activation, patches",
        description=(
            "Print the effective policy and where each value came from, the installed "
            "anthropic SDK and whether it is supported, whether startup activation "
            "(SDKGUARD_AUTO) is installed and on, whether an OpenTelemetry tracer provider is "
            "configured, and what sdkguard patches. Exits 1 when something is wrong."
        ),
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report), end="")
    return 0 if report["ok"] else 1


def collect(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The doctor's report on this process, as JSON-able data (see `render`)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    notes: list[str] = []
    report: dict[str, Any] = {
        "sdkguard": {
            "version": __version__,
            "python": sys.version.split()[0],
            "executable": sys.executable,
        },
    }
    report["anthropic"] = _anthropic(problems)
    if report["anthropic"]["version"] is not None:
        # Startup activation waits for this import: let it happen before looking.
        try:
            importlib.import_module("anthropic")
        except Exception as error:
            problems.append(f"import anthropic failed: {type(error).__name__}: {error}")
    policy = _policy(env, problems)
    report["startup"] = _startup_report(env, problems, notes)
    report["policy"] = policy
    report["installed"] = _patch.is_installed()
    report["patched"] = _patched(report["anthropic"], problems)
    report["opentelemetry"] = _opentelemetry(env)
    disabled = _disabled(policy["enabled"])
    if disabled is not None:
        # A deliberate switch, not a fault (the exit status stays 0), but it comes first.
        notes.insert(
            0,
            f"{disabled} (every call goes to the SDK untouched: no retry, no stall "
            "detection); unset it, or set it to 1, to guard calls",
        )
    report["problems"] = problems
    report["notes"] = notes
    report["ok"] = not problems
    return report


# -- anthropic ------------------------------------------------------------------------------


def _anthropic(problems: list[str]) -> dict[str, Any]:
    requirement = _requirement()
    try:
        version: str | None = importlib.metadata.version("anthropic")
    except importlib.metadata.PackageNotFoundError:
        version = None
    supported = None if version is None else satisfies(version, requirement)
    if version is None:
        problems.append(f"anthropic is not installed (sdkguard supports {requirement})")
    elif supported is False:
        problems.append(
            f"anthropic {version} is not supported: sdkguard supports {requirement}; "
            f"install a supported version (pip install '{requirement}')"
        )
    return {
        "version": version,
        "requirement": requirement,
        "supported": supported,
    }


def _requirement() -> str:
    """The `anthropic` requirement of the installed sdkguard (the one in pyproject.toml)."""
    try:
        requires = importlib.metadata.requires("sdkguard") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    for line in requires:
        spec = line.split(";")[0].strip()
        match = re.fullmatch(r"anthropic\s*(?:\[[^\]]*\])?\s*(.*)", spec, re.IGNORECASE)
        if match and "extra" not in line.partition(";")[2]:
            return "anthropic" + ",".join(sorted(match[1].replace(" ", "").split(","), key=_order))
    return ANTHROPIC_REQUIREMENT.replace(" ", "")


def _order(clause: str) -> int:
    # Lower bounds first: ">=0.93,<3" reads better than metadata's "<3,>=0.93".
    return 0 if clause.startswith((">", "~", "=")) else 1


# -- startup activation ---------------------------------------------------------------------


def _startup_report(
    env: Mapping[str, str], problems: list[str], notes: list[str]
) -> dict[str, Any]:
    files = _startup.find_startup_files()
    installed = any(f.complete for f in files)
    reads = _startup.START_NAME if _startup.reads_start_files() else _startup.PTH_NAME
    raw = env.get(_startup.AUTO_VAR)
    auto = _startup.auto_setting(env)
    status = _startup.activation()
    if auto is None:
        problems.append(
            f"environment variable {_startup.AUTO_VAR}={raw!r} is malformed: expected 1 (on) "
            "or 0 (off)"
        )
    if auto and not installed:
        problems.append(
            f"{_startup.AUTO_VAR} is on but the startup file ({reads}) is not installed for "
            f"{sys.executable}: reinstall sdkguard (see docs/activation.md)"
        )
    elif auto and status.startswith("failed"):
        reason = status.removeprefix("failed: ")
        if reason not in problems:  # a malformed variable is reported once
            problems.append(f"startup activation failed in this process: {reason}")
    elif auto and status == "not run":
        problems.append(
            "startup activation did not run in this process although it is on and installed "
            "(was Python started with -S, or SDKGUARD_AUTO set after start?)"
        )
    elif not auto and installed:
        notes.append(
            f"startup activation is off: set {_startup.AUTO_VAR}=1, or use "
            "`sdkguard run -- COMMAND`, to guard every Python process of this environment"
        )
    return {
        "installed": installed,
        "reads": reads,
        "files": [dataclasses.asdict(f) for f in files],
        "auto": raw,
        "on": auto,
        "this_process": status,
    }


# -- policy ---------------------------------------------------------------------------------


def _policy(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    names = env_names()
    from_env: dict[str, Any] = {}
    malformed: dict[str, str] = {}
    for field, variable in names.items():
        if variable in env:
            try:
                from_env.update(parse_env({variable: env[variable]}))
            except ValueError as error:
                malformed[field] = str(error)
                problems.append(str(error))
    try:
        env_policy = Policy(**from_env)
    except (TypeError, ValueError) as error:  # each value is valid alone; never expected
        problems.append(f"the SDKGUARD_* variables do not make a valid policy: {error}")
        env_policy = Policy()
    installed = _patch.is_installed()
    effective = _patch.current_policy() if installed else env_policy
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Policy):
        name = f.name
        value = getattr(effective, name)
        env_var = names.get(name)
        if installed and _differs(value, getattr(env_policy, name)):
            source = "code"
        elif name in malformed:
            source = "malformed"
        elif name in from_env:
            source = "environment"
        else:
            source = "code" if name == "on_retry" and value else "default"
        entry: dict[str, Any] = {
            "value": _json_value(value),
            "display": _display(value),
            "source": source,
            "variable": env_var,
        }
        if name in malformed:
            entry["error"] = malformed[name]
        if source in ("environment", "malformed"):
            entry["raw"] = env.get(env_var or "")
        fields[name] = entry
    return fields


def _disabled(entry: Mapping[str, Any]) -> str | None:
    """What disables the guard, in words, when the effective policy's `enabled` is off."""
    if entry["value"] is not False:
        return None
    if entry["source"] == "environment":
        by = f"{entry['variable']}={entry['raw']}"
    else:
        by = "install(enabled=False)"
    return f"sdkguard is disabled by {by}: no call is guarded"


def _differs(a: object, b: object) -> bool:
    return bool(a != b)


def _json_value(value: object) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return [_json_value(v) if isinstance(v, (int, float, str)) else repr(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _display(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, frozenset):
        return " ".join(str(v) for v in sorted(value))
    if isinstance(value, tuple):
        if value and all(callable(v) for v in value):
            return ", ".join(getattr(v, "__qualname__", repr(v)) for v in value)
        return ",".join(_display(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- patches --------------------------------------------------------------------------------


def _patched(anthropic: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """What sdkguard patches: for real when installed, else by a trial install."""
    result: dict[str, Any] = {"trial": not _patch.is_installed(), "targets": [], "error": None}
    if anthropic["version"] is None or "anthropic" not in sys.modules:
        return result  # reported already
    trial = result["trial"]
    try:
        if trial:
            _patch.install(policy=Policy())  # anthropic is imported: patches at once
        result["targets"] = [
            f"{owner.__module__}.{owner.__qualname__}.{name}"
            for owner, name, _ in _patch._state.originals
        ]
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
        problems.append(f"sdkguard cannot patch anthropic {anthropic['version']}: {error}")
    finally:
        if trial:
            _patch.uninstall()
    if not result["targets"] and result["error"] is None:
        result["error"] = "nothing was patched"
        problems.append(f"sdkguard patched nothing in anthropic {anthropic['version']}")
    return result


# -- OpenTelemetry --------------------------------------------------------------------------


def _opentelemetry(env: Mapping[str, str]) -> dict[str, Any]:
    try:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        kind = type(provider)
        provider_name: str | None = f"{kind.__module__}.{kind.__qualname__}"
        configured = kind.__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")
    except Exception:
        provider_name, configured = None, False
    try:
        instrumentation: str | None = importlib.metadata.version("opentelemetry-instrumentation")
    except importlib.metadata.PackageNotFoundError:
        instrumentation = None
    entry_point = any(
        ep.name == "sdkguard" and ep.value == _INSTRUMENTOR
        for ep in importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    )
    disabled_names = {
        name.strip() for name in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    }
    return {
        "tracer_provider": provider_name,
        "configured": configured,
        "instrumentor": {
            "entry_point": entry_point,
            "opentelemetry_instrumentation": instrumentation,
            "disabled": bool(disabled_names & {"sdkguard", "*"}),
        },
    }


# -- text -----------------------------------------------------------------------------------


def render(report: Mapping[str, Any]) -> str:
    """The report as the text `sdkguard doctor` prints."""
    lines: list[str] = []
    add = lines.append
    me = report["sdkguard"]
    add(f"sdkguard {me['version']} on Python {me['python']} ({me['executable']})")
    disabled = _disabled(report["policy"]["enabled"])
    if disabled is not None:
        add(f"DISABLED: {disabled}")

    sdk = report["anthropic"]
    add("")
    add("anthropic SDK")
    if sdk["version"] is None:
        add(f"  not installed (supported: {sdk['requirement']})")
    else:
        verdict = {True: "supported", False: "NOT SUPPORTED", None: "support unknown"}
        add(f"  {sdk['version']}: {verdict[sdk['supported']]} ({sdk['requirement']})")

    start = report["startup"]
    add("")
    add("startup activation")
    if start["files"]:
        for files in start["files"]:
            names = [
                name
                for name, present in (
                    (_startup.PTH_NAME, files["pth"]),
                    (_startup.START_NAME, files["start"]),
                    (_startup.MODULE_NAME + ".py", files["module"]),
                )
                if present
            ]
            add(f"  installed in {files['directory']}: {', '.join(names)}")
        add(f"  this Python reads {start['reads']}")
    else:
        add(f"  NOT INSTALLED for {me['executable']}")
    auto = start["auto"]
    state = {True: "on", False: "off", None: "MALFORMED"}[start["on"]]
    add(f"  {_startup.AUTO_VAR}: {'not set' if auto is None else repr(auto)} ({state})")
    add(f"  in this process: {start['this_process']}")
    add(f"  sdkguard installed in this process: {'yes' if report['installed'] else 'no'}")

    add("")
    add("policy")
    width = max(len(name) for name in report["policy"])
    value_width = max(14, *(len(entry["display"]) for entry in report["policy"].values()))
    for name, entry in report["policy"].items():
        source = entry["source"]
        if source == "environment":
            where = f"environment {entry['variable']}"
        elif source == "malformed":
            where = f"MALFORMED {entry['variable']}={entry['raw']!r} (default shown)"
        elif source == "code":
            where = "code (install())"
        else:
            where = "default"
        add(f"  {name:<{width}}  {entry['display']:<{value_width}}  {where}")

    patched = report["patched"]
    add("")
    add(
        "patched"
        + (" (by a trial install: sdkguard is not installed here)" if patched["trial"] else "")
    )
    for target in patched["targets"]:
        add(f"  {target}")
    if patched["error"]:
        add(f"  ERROR: {patched['error']}")

    otel = report["opentelemetry"]
    add("")
    add("OpenTelemetry")
    if otel["configured"]:
        add(f"  tracer provider: {otel['tracer_provider']}")
    else:
        add("  tracer provider: none configured in this process (spans go nowhere)")
    inst = otel["instrumentor"]
    registered = "registered" if inst["entry_point"] else "NOT registered"
    add(
        f"  instrumentor 'sdkguard': {registered}; opentelemetry-instrumentation "
        + (inst["opentelemetry_instrumentation"] or "not installed")
        + ("; disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS" if inst["disabled"] else "")
    )

    add("")
    if report["problems"]:
        add(f"problems ({len(report['problems'])})")
        lines.extend(f"  - {problem}" for problem in report["problems"])
    else:
        add("no problems found" + (", but no call is guarded" if disabled else ""))
    lines.extend(f"note: {note}" for note in report["notes"])
    return "\n".join(lines) + "\n"
