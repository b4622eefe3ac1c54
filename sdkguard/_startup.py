"""Startup activation: `SDKGUARD_AUTO=1` guards every Python process of an environment.

The wheel ships three files into site-packages (see `pyproject.toml`, `force-include`):

- `sdkguard_startup.pth`, read by Python up to 3.14: one `import` line that checks
  `SDKGUARD_AUTO` with the `os` module `site` has already loaded, and only when it is set
  imports `_sdkguard_startup`;
- `sdkguard_startup.start`, read by Python 3.15 and later (PEP 829): the entry point
  `_sdkguard_startup:activate`. Its name matches the `.pth` file's, so those Pythons ignore
  the `.pth` file's import line: each Python runs exactly one of the two;
- `_sdkguard_startup.py`, a small top-level module (importing `sdkguard` loads `wrapt`, so the
  check has to happen outside the package). With `SDKGUARD_AUTO` on, it puts a finder on
  `sys.meta_path` that waits for `import anthropic` and calls `activate()` here just before
  it: a process that never uses the SDK does not load sdkguard at all.

`activate()` calls `sdkguard.install()` with the policy of the `SDKGUARD_*` variables and
never raises: a malformed variable is reported in one line on stderr and the program runs
unguarded. `sdkguard doctor` reads what happened from `activation()`.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "AUTO_VAR",
    "MODULE_NAME",
    "PTH_NAME",
    "START_NAME",
    "StartupFiles",
    "activate",
    "activation",
    "auto_setting",
    "find_startup_files",
]

AUTO_VAR = "SDKGUARD_AUTO"
PTH_NAME = "sdkguard_startup.pth"
START_NAME = "sdkguard_startup.start"
MODULE_NAME = "_sdkguard_startup"

_ON = {"1", "true", "yes", "on"}
_OFF = {"", "0", "false", "no", "off"}


def auto_setting(environ: Mapping[str, str] | None = None) -> bool | None:
    """Whether `SDKGUARD_AUTO` turns activation on; None when its value is malformed."""
    value = (os.environ if environ is None else environ).get(AUTO_VAR, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    return None


def activate() -> str:
    """Install sdkguard with the environment's policy; the outcome, never an exception.

    Returns "on", or "failed: <reason>" after printing one line on stderr. Called by
    `_sdkguard_startup` when `SDKGUARD_AUTO` is on, just before `anthropic` is imported. When
    the program has called `install()` (or `uninstall()`) itself by then, its choice stands.
    """
    try:
        from sdkguard import _patch

        if _patch._state.hook_registered:
            return "on" if _patch.is_installed() else "off: uninstalled by the program"
        _patch.install()
    except Exception as error:
        reason = str(error) or type(error).__name__
        try:  # noqa: SIM105 -- one line, without loading contextlib
            sys.stderr.write(f"sdkguard: startup activation failed: {reason}; running unguarded\n")
        except Exception:
            pass
        return f"failed: {reason}"
    return "on"


def activation() -> str:
    """What startup activation did in this process: "on", "off", "armed" (waiting for
    anthropic to be imported), "failed: <reason>", or "not run" (no startup file ran)."""
    module = sys.modules.get(MODULE_NAME)
    status = getattr(module, "status", None)
    if isinstance(status, str) and status != "not run":
        return status
    # With SDKGUARD_AUTO off, the .pth line does not even import the module.
    return "off" if auto_setting() is False else "not run"


@dataclass(frozen=True)
class StartupFiles:
    """The startup files found in one site-packages directory."""

    directory: str
    pth: bool
    start: bool
    module: bool

    @property
    def complete(self) -> bool:
        """Whether the file this Python reads and the module it calls are both there."""
        return self.module and (self.start if reads_start_files() else self.pth)


def reads_start_files() -> bool:
    """Whether this Python reads PEP 829 `.start` files (and so ignores our `.pth` line)."""
    return sys.version_info >= (3, 15)


def site_directories() -> list[str]:
    """The directories whose startup files this Python reads, in its order."""
    directories: list[str] = []
    if getattr(site, "ENABLE_USER_SITE", False):
        directories.append(site.getusersitepackages())
    directories.extend(site.getsitepackages())
    seen = set()
    unique = []
    for directory in directories:
        key = os.path.normcase(os.path.abspath(directory))
        if key not in seen:
            seen.add(key)
            unique.append(directory)
    return unique


def find_startup_files() -> list[StartupFiles]:
    """The site-packages directories of this Python that hold any sdkguard startup file."""
    found = []
    for directory in site_directories():
        pth = os.path.isfile(os.path.join(directory, PTH_NAME))
        start = os.path.isfile(os.path.join(directory, START_NAME))
        module = os.path.isfile(os.path.join(directory, MODULE_NAME + ".py"))
        if pth or start or module:
            found.append(StartupFiles(directory, pth, start, module))
    return found
