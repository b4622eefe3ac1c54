"""pytest plugin for `tools/sdk_suite.py`: runs the anthropic SDK's own tests with sdkguard on.

Loaded with `-p sdk_suite_plugin` (with `tools/` on `PYTHONPATH`). At configure time, in the
xdist controller and in every worker, it installs sdkguard with waits so short that only
timing-free behaviour is compared: 1-2 ms backoff, no jitter, no process-wide retry budget
(the SDK's tests make thousands of failing calls in one process). Every other policy field
keeps its default, so attempt counts and timeouts are the ones users get. `SDKGUARD_*`
variables (set by `sdk_suite.py --policy`) beat all of these.

It also refuses to run when `anthropic` would be imported from the sdist's `src/` instead of
the installed package that sdkguard patches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Policy fields for the suite. An `SDKGUARD_<FIELD>` variable beats them (`sdk_suite.py
# --policy FIELD=VALUE` sets one for the guarded run; inherited ones are removed).
SUITE_POLICY: dict[str, Any] = {
    "backoff_initial": 0.001,
    "backoff_max": 0.002,
    "jitter": 0.0,
    "retry_budget": False,
}


def _policy_fields() -> dict[str, Any]:
    return {
        name: value
        for name, value in SUITE_POLICY.items()
        if f"SDKGUARD_{name.upper()}" not in os.environ
    }


def _check_anthropic_origin() -> str:
    import anthropic

    origin = Path(anthropic.__file__).resolve()
    if "site-packages" not in origin.parts:
        raise pytest.UsageError(
            f"anthropic is imported from {origin}, not from an installed package: sdkguard "
            "must patch the installed SDK (remove the sdist's src/ from sys.path)"
        )
    return str(origin.parent)


_ORIGIN = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    import sdkguard

    sdkguard.install(**_policy_fields())
    config.stash[_ORIGIN] = _check_anthropic_origin()


def pytest_report_header(config: pytest.Config) -> list[str]:
    import anthropic

    import sdkguard
    from sdkguard._patch import current_policy

    policy = current_policy()
    return [
        f"sdk-suite: sdkguard {sdkguard.__version__} installed={sdkguard.is_installed()} "
        f"on anthropic {anthropic.__version__} from {config.stash.get(_ORIGIN, '?')}",
        f"sdk-suite: policy max_attempts={policy.max_attempts} "
        f"backoff={policy.backoff_initial:g}..{policy.backoff_max:g} s jitter={policy.jitter:g} "
        f"retry_budget={policy.retry_budget}",
    ]
