"""`SdkguardInstrumentor`: sdkguard as an OpenTelemetry instrumentation.

The distribution declares it under the `opentelemetry_instrumentor` entry point group with the
name `sdkguard`, so `opentelemetry-instrument python app.py` installs sdkguard the way it
loads any instrumentation, and `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=sdkguard` leaves it out.
In code: `SdkguardInstrumentor().instrument(max_attempts=8)` (policy fields as keywords).

`opentelemetry-instrumentation` is not a dependency of sdkguard: when it is installed, the
class is a real `BaseInstrumentor`; otherwise it has the same methods on its own.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from sdkguard._patch import install, is_installed, uninstall
from sdkguard._policy import Policy
from sdkguard._version import ANTHROPIC_REQUIREMENT

__all__ = ["ANTHROPIC_REQUIREMENT", "SdkguardInstrumentor"]


_POLICY_FIELDS = frozenset(f.name for f in dataclasses.fields(Policy))


class _Instrumentor:
    """The `BaseInstrumentor` interface, used when opentelemetry-instrumentation is absent."""

    _instance: Any = None
    _is_instrumented_by_opentelemetry = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self._is_instrumented_by_opentelemetry

    def instrumentation_dependencies(self) -> Collection[str]:
        raise NotImplementedError

    def _instrument(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _uninstrument(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def instrument(self, **kwargs: Any) -> Any:
        if self._is_instrumented_by_opentelemetry:
            return None
        kwargs.pop("skip_dep_check", None)
        kwargs.pop("raise_exception_on_conflict", None)
        result = self._instrument(**kwargs)
        self._is_instrumented_by_opentelemetry = True
        return result

    def uninstrument(self, **kwargs: Any) -> Any:
        if not self._is_instrumented_by_opentelemetry:
            return None
        result = self._uninstrument(**kwargs)
        self._is_instrumented_by_opentelemetry = False
        return result


if TYPE_CHECKING:
    _Base = _Instrumentor
else:
    try:
        from opentelemetry.instrumentation.instrumentor import BaseInstrumentor as _Base
    except ImportError:
        _Base = _Instrumentor


class SdkguardInstrumentor(_Base):
    """Installs sdkguard on `instrument()`, uninstalls it on `uninstrument()`.

    Keyword arguments of `instrument()` that name policy fields, or `policy=Policy(...)`, go
    to `sdkguard.install()`; others (such as `tracer_provider`) are ignored. Without them, an
    sdkguard already installed (by `SDKGUARD_AUTO=1` or your code) is left as it is, and a
    malformed `SDKGUARD_*` variable is reported on stderr instead of stopping the program.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return (ANTHROPIC_REQUIREMENT,)

    def _instrument(self, **kwargs: Any) -> None:
        fields = {name: value for name, value in kwargs.items() if name in _POLICY_FIELDS}
        policy = kwargs.get("policy")
        if isinstance(policy, Policy):
            install(policy, **fields)
            return
        if fields:
            install(**fields)
            return
        if is_installed():
            return
        try:
            install()
        except ValueError as error:
            sys.stderr.write(f"sdkguard: instrumentation failed: {error}; running unguarded\n")

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstall()
