"""`sdkguard doctor` from inside a program: `collect()` the report, `render()` it as text.

    from sdkguard.doctor import collect, render

    report = collect()
    if not report["ok"]:
        print(render(report))

The report is the one `sdkguard doctor --json` prints, about the process that calls
`collect()`: there it also sees the policy fields your code gave to `install(...)`. See
docs/activation.md ("Check it") for what each part says.

Importing this module is cheap: the doctor itself loads on the first `collect()` or `render()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast

__all__ = ["Report", "collect", "render"]


class Report(TypedDict):
    """What `collect()` returns: JSON-able data, the same as `sdkguard doctor --json`.

    The top-level keys are public; the contents of the nested sections may gain keys.
    """

    sdkguard: dict[str, Any]
    """`version`, `python` (its version) and `executable`."""
    anthropic: dict[str, Any]
    """The installed SDK: `version` (None when missing), `supported`, `requirement`, ..."""
    startup: dict[str, Any]
    """Startup activation (`SDKGUARD_AUTO`): whether its files are installed, and on."""
    policy: dict[str, Any]
    """Each policy field: its effective value and where it came from."""
    installed: bool
    """Whether sdkguard is installed in this process (`sdkguard.is_installed()`)."""
    patched: dict[str, Any]
    """The SDK methods sdkguard patches (or would patch)."""
    opentelemetry: dict[str, Any]
    """The tracer provider, and whether the `sdkguard` instrumentor is registered."""
    problems: list[str]
    """What is wrong, one sentence each; empty when all is well."""
    notes: list[str]
    """What is worth knowing but not wrong."""
    ok: bool
    """No problems: `sdkguard doctor` exits 0 exactly when this is true."""


def collect(environ: Mapping[str, str] | None = None) -> Report:
    """The doctor's report on this process.

    `environ` replaces `os.environ` as the source of the `SDKGUARD_*` (and OpenTelemetry)
    variables. Never raises for a broken set-up: what is wrong is in `problems`.
    """
    from sdkguard import _doctor

    return cast(Report, _doctor.collect(environ))


def render(report: Mapping[str, Any]) -> str:
    """The report as the text `sdkguard doctor` prints."""
    from sdkguard import _doctor

    return _doctor.render(report)
