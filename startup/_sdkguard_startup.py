"""sdkguard's startup activation, run at every interpreter start of an environment that has
sdkguard installed (by `sdkguard_startup.pth`, or `sdkguard_startup.start` on Python 3.15+).

With `SDKGUARD_AUTO` unset it returns at once and imports nothing. With `SDKGUARD_AUTO=1` it
waits for the program to import `anthropic`, and just before that import runs
`sdkguard.install()` (policy from the `SDKGUARD_*` variables): a process that never uses the
SDK does not even load sdkguard. It never raises: a problem is one line on stderr, and the
program runs unguarded. The work is done by `sdkguard._startup`; this module stays small and
stable because an editable install copies it into site-packages.
"""

import os
import sys

status = "not run"
"""What happened: "off", "armed" (waiting for anthropic), "on", or "failed: <reason>"."""


def activate() -> None:
    """Guard this interpreter if `SDKGUARD_AUTO` asks for it; never raises."""
    global status
    if status != "not run":  # Python 3.11 and older read a venv's site-packages twice
        return
    value = os.environ.get("SDKGUARD_AUTO", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        status = "off"
    elif value not in ("1", "true", "yes", "on"):
        _fail(
            f"environment variable SDKGUARD_AUTO={os.environ['SDKGUARD_AUTO']!r} is "
            "malformed: expected 1 (on) or 0 (off)"
        )
    elif "anthropic" in sys.modules:
        _install()
    else:
        status = "armed"
        sys.meta_path.insert(0, _AnthropicWatcher)  # type: ignore[arg-type]


class _AnthropicWatcher:
    """A finder that takes no part in imports but sees `anthropic` coming."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> object:
        if name != "anthropic":
            return None
        try:
            sys.meta_path.remove(_AnthropicWatcher)  # type: ignore[arg-type]
        except ValueError:
            return None  # another thread got here first
        _install()
        # install() put wrapt's finder, which calls sdkguard once anthropic has loaded, at
        # the front of sys.meta_path, after the import system started its walk: ask the
        # finders from the front, as that walk would.
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                return spec
        return None


def _install() -> None:
    global status
    try:
        from sdkguard import _startup
    except Exception as error:
        _fail(f"cannot import sdkguard ({type(error).__name__}: {error})")
        return
    status = _startup.activate()


def _fail(reason: str) -> None:
    global status
    status = "failed: " + reason
    try:  # noqa: SIM105 -- contextlib is not worth an import here
        sys.stderr.write(f"sdkguard: startup activation failed: {reason}; running unguarded\n")
    except Exception:
        pass
